"""Raft dumps (log compaction) written by a forked child, off PySyncObj's tick thread.

PySyncObj compacts its log every `log_compaction_min_entries` entries by asking for a dump of
the whole state. With a serializer of our own (msgpack, not pickle) it calls it on the tick
thread, the one that also sends heartbeats and applies entries: encoding 5,000 tasks and their
events held it 0.3 s, on every replica at once (they compact at the same index), and the cell
changed leaders twice in the middle of a start storm; 100,000 tasks take seconds. So the tick
thread only forks (as for the state digests, digests.py, and Redis's BGSAVE): the child holds a
copy-on-write image of the store at exactly the applied index, encodes it, writes
`raft.snapshot` (temporary file, fsync, rename, fsync of the directory) and `_exit`s; PySyncObj
learns the outcome through its `serializeChecker` hook on a later tick, and only then drops the
log entries the dump covers.

PySyncObj renames its temporary file over the dump as soon as the serializer returns. The
serializer therefore leaves no such file (the rename fails, which PySyncObj takes as "not
done yet" and then defers to the checker) and the child renames its own, complete, file.

The child must not take any lock (another thread may have held one at the fork and is gone
in the child): the encoder it runs reads the store without its lock, which is safe because
only the forking thread ever changes the store, and it is busy forking.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import threading
from collections.abc import Callable

from pysyncobj.config import SERIALIZER_STATE

from cfg.datadir import write_atomic

log = logging.getLogger(__name__)

_LIBC = ctypes.CDLL(None, use_errno=True)  # loaded here: the child must not load anything
_PR_SET_PDEATHSIG = 1
TMP_SUFFIX = ".tmp"
PART_SUFFIX = ".part"


class BackgroundDumps:
    """One dump at a time, in a child process; `check` is PySyncObj's `serializeChecker`."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pid = 0
        self.written = 0
        self.failed = 0

    def start(self, tmp_file: str, encode: Callable[[], bytes]) -> None:
        """PySyncObj's serializer: fork a child that writes `encode()` to the dump file (the
        name PySyncObj would rename `tmp_file` to)."""
        final = tmp_file.removesuffix(TMP_SUFFIX)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_file)  # PySyncObj's rename must find nothing (module docstring)
        with self._lock:
            if self._pid:
                return  # PySyncObj never asks twice; a second child would race the first
            pid = os.fork()
            if pid == 0:  # the child: no locks, no logging, no cleanup handlers
                code = 1
                try:
                    # Go with the master: an orphan would still hold files in its data dir.
                    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
                    # Not PySyncObj's temporary name: it renames that one itself.
                    write_atomic(final, encode(), PART_SUFFIX)
                    code = 0
                except BaseException:
                    pass
                os._exit(code)
            self._pid = pid

    def check(self) -> int:
        """NOT_SERIALIZING, SERIALIZING, or (once per dump) SUCCESS or FAILED."""
        with self._lock:
            if not self._pid:
                return int(SERIALIZER_STATE.NOT_SERIALIZING)
            try:
                pid, status = os.waitpid(self._pid, os.WNOHANG)
            except ChildProcessError:
                pid, status = self._pid, -1
            if pid == 0:
                return int(SERIALIZER_STATE.SERIALIZING)
            self._pid = 0
        if status == 0:
            self.written += 1
            return int(SERIALIZER_STATE.SUCCESS)
        self.failed += 1
        log.warning(
            "Raft dump failed (child status %d): the log is kept until the next try", status
        )
        return int(SERIALIZER_STATE.FAILED)

    def close(self) -> None:
        """Wait for a dump under way (at shutdown: the data dir's lock goes with us)."""
        with self._lock:
            pid, self._pid = self._pid, 0
        if pid:
            with contextlib.suppress(ChildProcessError):
                os.waitpid(pid, 0)
