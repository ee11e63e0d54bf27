"""Tables and states for people (rich): laid out to the terminal, or plain off one."""

from __future__ import annotations

import sys
import time
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from cfg.model import BANDS

STATE_STYLE = {
    "running": "green",
    "up": "green",
    "succeeded": "green",
    "healthy": "green",
    "leader": "bold green",
    "follower": "cyan",
    "pending": "yellow",
    "assigned": "yellow",
    "draining": "yellow",
    "candidate": "yellow",
    "failed": "red",
    "lost": "red",
    "unhealthy": "red",
    "unreachable": "red",
    "killed": "dim",
}

BAND_NAMES = [b[0] for b in BANDS]


def make_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width on a TTY; otherwise wide enough that no
    column is truncated or wrapped (pipes, `watch`, CI logs), without colour codes."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(
        file=stream, width=500, no_color=True, highlight=False, soft_wrap=True, emoji=False
    )


PLAIN_TABLE_ROWS = 200
"""Tables longer than this are laid out by `plain_table` (rich takes ~1.3 ms a row)."""


def plain_table(t: Table) -> str:
    """A big table as plain columns, two spaces apart, like rich's layout without styles:
    `status` of a 5,000-task job in milliseconds instead of seconds."""
    cols = [[Text.from_markup(str(c)).plain for c in col._cells] for col in t.columns]
    heads = [str(col.header) for col in t.columns]
    widths = [max([len(h), *(len(v) for v in col)]) for h, col in zip(heads, cols, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in zip(*cols, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def show(console: Console, renderable: Any) -> None:
    """Print a table; off a terminal, without the padding rich leaves at line ends (so `diff`
    and golden files see clean lines)."""
    if isinstance(renderable, Table) and renderable.row_count > PLAIN_TABLE_ROWS:
        console.file.write(plain_table(renderable))
        return
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as cap:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in cap.get().splitlines())
    console.file.write(text + "\n")


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def age(ms: int, now: float | None = None) -> str:
    """How long ago `ms` (epoch milliseconds) was, like kubectl: 45s, 12m, 5h, 3d."""
    if not ms:
        return "-"
    s = max(0, int((time.time() if now is None else now) - ms / 1000))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def table(*cols: str) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in cols:
        t.add_column(c, no_wrap=True, overflow="fold")
    return t
