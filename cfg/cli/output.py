"""Tables and states for people: in colour on a terminal, plain off one (cfg/cli/term.py;
rich only draws `--wait`'s progress bars)."""

from __future__ import annotations

import time
from typing import Any

from cfg.cli.term import Table, Term, escape
from cfg.model import BANDS

__all__ = ["Table", "Term", "escape"]

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


def make_console(stderr: bool = False) -> Term:
    """Where tables and lines go: stdout (or stderr), in colour only on a terminal."""
    return Term(stderr=stderr)


PLAIN_TABLE_ROWS = 200
"""Kept for scripts that read it: every table is now laid out the plain way (term.py)."""


def plain_table(t: Table) -> str:
    """A table as plain columns, two spaces apart (rich's layout without styles)."""
    return "\n".join(t.lines(colour=False)) + "\n"


def show(console: Term, renderable: Any) -> None:
    """Print a table or a markup line."""
    console.print(renderable)


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
    return Table(*cols)
