"""The Borglet's state file: what it knows about its tasks, so a new Borglet re-adopts them.

`<data-dir>/state.json`, one JSON document (`version`, `boot_id`, `tasks`: each
`LocalTask.to_dict()`), mode 0600 whatever the umask or the data dir's mode (it holds every
task's spec, env included). A write is all or nothing: a temp file created exclusively without
following links, fsync'ed, renamed over the old one, then the directory fsync'ed so the rename
itself survives a power cut. Writes are coalesced: `mark_dirty` after each change, a write
(on its own thread, `written`) before each report to the master. While the file cannot be
written `error` says why: the shell then sends no reports (the master must never hear of a
task the file does not know) and /healthz
answers 503 with it.

A file that exists but cannot be read back (not JSON, not the expected shape, a task that does
not parse) is never taken for an empty table: that would forget tasks that may still be
running, and the start's sweep would then stop their processes as unknown. `load` says why
instead, and `refuse` keeps the Borglet from writing over the evidence until an operator has
repaired or removed the file (see docs/borglet.md, "Re-adoption").
"""

from __future__ import annotations

import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from borglet.state import LocalTask
from cfg.datadir import write_atomic

log = logging.getLogger("borglet")

STATE_FILE = "state.json"
STATE_VERSION = 1


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


class Written(Enum):
    """Whether the state file holds the task table as of the question (`Checkpoint.written`)."""

    YES = "yes"
    WRITING = "writing"
    """A write is under way and did not finish in the time asked: ask again."""
    FAILED = "failed"
    """It cannot be written (`error` says why)."""


@dataclass(frozen=True)
class Loaded:
    """What a state file held: its tasks, and whether they were written in this boot."""

    tasks: tuple[LocalTask, ...]
    same_boot: bool
    error: str = ""  # why the file cannot be trusted ("" when it was read, or is absent)


class Checkpoint:
    def __init__(self, data_dir: str, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """`snapshot` returns the tasks to write (called under the caller's own lock)."""
        self.path = os.path.join(data_dir, STATE_FILE)
        self._snapshot = snapshot
        self._dirty = False
        self._lock = threading.Lock()  # one writer at a time
        self.error = ""  # why the state file cannot be written ("" when it can)
        self.refused = ""  # why the file must not be written at all (see `refuse`)
        self._writes = threading.Condition()
        self._asked = 0  # writes `written` asked for, and the last one the writer finished
        self._done = 0
        self._done_ok = False
        self._writer: threading.Thread | None = None

    def refuse(self, why: str) -> None:
        """Never write the file again in this process (the unreadable one stays as it is for
        the operator), and report `why` as the state error: no reports, /healthz 503."""
        self.refused = self.error = why

    def mark_dirty(self) -> None:
        self._dirty = True

    def flush(self, force: bool = False) -> bool:
        """Write the table when it changed. False when it cannot be written."""
        if self.refused:
            return False
        if not (self._dirty or force or self._lock.locked()):
            return not self.error
        with self._lock:  # a write under way (its snapshot may predate a change) ends first
            if not (self._dirty or force):
                return not self.error
            self._dirty = False
            doc = {"version": STATE_VERSION, "boot_id": boot_id(), "tasks": self._snapshot()}
            try:
                write_atomic(self.path, json.dumps(doc, separators=(",", ":")).encode())
            except OSError as e:
                self._dirty = True
                if not self.error:
                    log.error("cannot write %s: %s", self.path, e)
                self.error = f"cannot write {self.path}: {e.strerror or e}"
                return False
            if self.error:
                log.info("state file %s written again", self.path)
            self.error = ""
            return True

    def written(self, wait_s: float) -> Written:
        """Whether the file holds the table as of now, writing it first when it changed. The
        write runs on the checkpoint's writer thread and this waits at most `wait_s` for it:
        the link goes on heartbeating while a large table (thousands of tasks starting) is
        written, so the master never takes a Borglet busy writing for a lost machine."""
        if self.refused:
            return Written.FAILED
        with self._writes:
            if self._dirty or self._lock.locked():  # changed, or another caller is writing
                self._asked += 1
                if self._writer is None:
                    self._writer = threading.Thread(
                        target=self._write_loop, name="state-file", daemon=True
                    )
                    self._writer.start()
                self._writes.notify_all()
            elif self._done == self._asked:
                return Written.FAILED if self.error else Written.YES
            asked = self._asked  # a write under way took its snapshot before now: wait for it
            if not self._writes.wait_for(lambda: self._done >= asked, wait_s):
                return Written.WRITING
            return Written.YES if self._done_ok else Written.FAILED

    def _write_loop(self) -> None:
        while True:
            with self._writes:
                self._writes.wait_for(lambda: self._asked > self._done)
                asked = self._asked
            ok = self.flush()  # clears the dirty mark, then snapshots: covers every ask so far
            with self._writes:
                self._done, self._done_ok = asked, ok
                self._writes.notify_all()

    def load(self) -> Loaded:
        """The tasks of the last write; none when the file is missing. A file that cannot be
        read back, or holds a task that does not parse, gives no tasks and `error` says why
        (the caller refuses to run rather than forget tasks that may be running)."""
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return Loaded((), True)
        except (OSError, ValueError) as e:
            return Loaded((), True, self._unreadable(str(e)))
        if not isinstance(doc, dict) or not isinstance(doc.get("tasks", []), list):
            return Loaded((), True, self._unreadable("not a state document"))
        out = []
        for d in doc.get("tasks", []):
            try:
                out.append(LocalTask.from_dict(d))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                return Loaded((), True, self._unreadable(f"a task does not parse: {e!r}"))
        return Loaded(tuple(out), doc.get("boot_id") == boot_id())

    def _unreadable(self, detail: str) -> str:
        return (
            f"state file {self.path} is unreadable ({detail}): running no tasks until it is "
            "repaired or removed (tasks it listed may still be running)"
        )
