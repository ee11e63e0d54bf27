"""Free space in a replica's data dir: writes are refused, with a clear error, while it is
below a reserve, instead of letting the Raft journal run the disk full.

PySyncObj's journal is a memory-mapped file that it grows with `ftruncate`: the new pages
have no disk blocks behind them, so on a full disk the first store into one kills the master
with SIGBUS. Two guards stand in the way: this reserve (every write and consistent read asks
`DataDirSpace.full()` before it is proposed: UNAVAILABLE "disk full on replica m0 ...", so a
client tries another replica), and, for what slips past it (a peer's entries, or the last
megabytes going between the check and the append), `fsm.py` reserves the blocks of every
journal record with `posix_fallocate` before writing it, which fails with ENOSPC instead of
SIGBUS.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

from cfg.units import format_size

MIN_FREE_BYTES = 64 << 20
"""Default reserve (`borgmaster run --min-free`): room for log compaction to write a snapshot
of a small cell and for the journal to take the entries already in flight."""


def free_bytes(path: str) -> int:
    """Bytes an unprivileged process may still write on the file system holding `path`."""
    st = os.statvfs(path)
    return int(st.f_bavail * st.f_frsize)


@dataclass(frozen=True)
class DataDirSpace:
    path: str
    replica: str
    reserve: int = MIN_FREE_BYTES

    def free(self) -> int:
        try:
            return free_bytes(self.path)
        except OSError:
            return 0

    def full(self, at_least: int = 0) -> str:
        """Why writes are refused now ("" while there is room): less free space than the
        reserve, or than `at_least` (the writer asks with 1 MiB after the journal refused an
        entry, so a replica run with `--min-free 0` still says why)."""
        free = self.free()
        if free >= max(self.reserve, at_least):
            return ""
        return (
            f"disk full on replica {self.replica}: {_size(free)} free in {self.path}, "
            f"writes need {_size(max(self.reserve, at_least))}"
        )


def _size(n: int) -> str:
    """Rounded to whole KiB/MiB/GiB for messages (format_size spells exact byte counts)."""
    for shift, unit in ((30, "Gi"), (20, "Mi"), (10, "Ki")):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f}{unit}"
    return format_size(n)
