"""Terminal output without rich: tables and `[style]...[/]` markup lines, in colour on a
terminal and as plain text elsewhere.

borgcfg's reads (`status`, `machines`, `cell`, `events` ...) print a table or a few lines;
rich lays them out the same way but costs ~35 ms to import, a fifth of a `status`. This
module renders exactly what rich rendered for these tables off a terminal (columns two spaces
apart, no padding at line ends: tests/unit/test_cli_errors.py compares the two) and the same
with ANSI colours on one. Progress bars (`--wait`) still use rich. The markup is rich's:
`escape()` quotes text the same way, so strings escaped for rich read back the same here.
"""

from __future__ import annotations

import re
import sys
from typing import IO, Any

ANSI = {
    "bold": "1",
    "dim": "2",
    "red": "31",
    "green": "32",
    "yellow": "33",
    "cyan": "36",
}
_TAG = re.compile(r"((\\*)\[([a-z#/@][^[]*?)])")
_ESCAPE = re.compile(r"(\\*)(\[[a-z#/@][^[]*?])")


def escape(text: str) -> str:
    """Quote `[...]` in text so it is shown, not read as markup (as rich.markup.escape)."""

    def quote(m: re.Match[str]) -> str:
        backslashes, tag = m.groups()
        return f"{backslashes}{backslashes}\\{tag}"

    text = _ESCAPE.sub(quote, text)
    if text.endswith("\\") and not text.endswith("\\\\"):
        text += "\\"
    return text


def render(markup: str, colour: bool) -> str:
    """Markup as text: styles as ANSI codes when `colour`, dropped otherwise."""
    out: list[str] = []
    stack: list[str] = []
    pos = 0
    for m in _TAG.finditer(markup):
        _full, backslashes, tag = m.groups()
        start = m.start()
        out.append(markup[pos:start])
        pos = m.end()
        if backslashes:
            out.append("\\" * (len(backslashes) // 2))
            if len(backslashes) % 2:  # escaped: the tag is text
                out.append(f"[{tag}]")
                continue
        if tag.startswith("/"):
            if stack:
                stack.pop()
            if colour:
                out.append("\x1b[0m" + "".join(_sgr(s) for s in stack))
            continue
        stack.append(tag)
        if colour:
            out.append(_sgr(tag))
    out.append(markup[pos:])
    if colour and stack:
        out.append("\x1b[0m")
    return "".join(out)


def _sgr(style: str) -> str:
    codes = [ANSI[w] for w in style.split() if w in ANSI]
    return f"\x1b[{';'.join(codes)}m" if codes else ""


def plain(markup: str) -> str:
    return render(markup, colour=False)


class Table:
    """Columns of markup cells, laid out as rich's `Table(box=None, pad_edge=False)`."""

    def __init__(self, *columns: str) -> None:
        self.headers = list(columns)
        self.rows: list[list[str]] = []

    @property
    def row_count(self) -> int:
        return len(self.rows)

    def add_row(self, *cells: Any) -> None:
        self.rows.append([str(c) for c in cells])

    def lines(self, colour: bool) -> list[str]:
        texts = [[plain(c) for c in row] for row in self.rows]
        widths = [len(h) for h in self.headers]
        for row in texts:
            widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
        head = "  ".join(h.ljust(w) for h, w in zip(self.headers, widths, strict=True)).rstrip()
        out = [f"\x1b[1m{head}\x1b[0m" if colour else head]
        for raw, row in zip(self.rows, texts, strict=True):
            cells = []
            for cell, text, w in zip(raw, row, widths, strict=True):
                pad = " " * (w - len(text))
                cells.append((render(cell, True) if colour else text) + pad)
            out.append("  ".join(cells).rstrip())
        return out


class Term:
    """Where output goes: stdout or stderr, in colour only on a terminal."""

    def __init__(self, stderr: bool = False, file: IO[str] | None = None) -> None:
        self.file = file or (sys.stderr if stderr else sys.stdout)
        self.is_terminal = self.file.isatty()

    def print(self, item: Table | str = "") -> None:
        if isinstance(item, Table):
            self.file.write("\n".join(item.lines(self.is_terminal)) + "\n")
        else:
            self.file.write(render(str(item), self.is_terminal) + "\n")
        self.file.flush()
