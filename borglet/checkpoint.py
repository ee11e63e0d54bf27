"""The Borglet's state file: what it knows about its tasks, so a new Borglet re-adopts them.

`<data-dir>/state.json`, one JSON document (`version`, `boot_id`, `tasks`: each
`LocalTask.to_dict()`), mode 0600 whatever the umask or the data dir's mode (it holds every
task's spec, env included). A write is all or nothing: a temp file created exclusively without
following links, fsync'ed, renamed over the old one, then the directory fsync'ed so the rename
itself survives a power cut. Writes are coalesced: `mark_dirty` after each change, `flush` before
each report to the master. While the file cannot be written `error` says why: the shell then
sends no reports (the master must never hear of a task the file does not know) and /healthz
answers 503 with it.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from borglet.state import LocalTask

log = logging.getLogger("borglet")

STATE_FILE = "state.json"
STATE_VERSION = 1


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass(frozen=True)
class Loaded:
    """What a state file held: its tasks, and whether they were written in this boot."""

    tasks: tuple[LocalTask, ...]
    same_boot: bool


class Checkpoint:
    def __init__(self, data_dir: str, snapshot: Callable[[], list[dict[str, Any]]]) -> None:
        """`snapshot` returns the tasks to write (called under the caller's own lock)."""
        self.path = os.path.join(data_dir, STATE_FILE)
        self._snapshot = snapshot
        self._dirty = False
        self._lock = threading.Lock()  # one writer at a time
        self.error = ""  # why the state file cannot be written ("" when it can)

    def mark_dirty(self) -> None:
        self._dirty = True

    def flush(self, force: bool = False) -> bool:
        """Write the table when it changed. False when it cannot be written."""
        if not (self._dirty or force):
            return not self.error
        with self._lock:
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

    def load(self) -> Loaded:
        """The tasks of the last write; none (logged) when the file is missing or unreadable,
        and a task that does not parse is skipped, not the file."""
        try:
            with open(self.path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return Loaded((), True)
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable state file %s: %s", self.path, e)
            return Loaded((), True)
        if not isinstance(doc, dict):
            log.error("ignoring unreadable state file %s: not an object", self.path)
            return Loaded((), True)
        out = []
        for d in doc.get("tasks", []):
            try:
                out.append(LocalTask.from_dict(d))
            except (KeyError, TypeError, ValueError, AttributeError) as e:
                log.error("ignoring unreadable task in state file: %s", e)
        return Loaded(tuple(out), doc.get("boot_id") == boot_id())


def write_atomic(path: str, data: bytes) -> None:
    """Replace `path` with `data` (0600) so that a crash leaves the old file or the new one."""
    tmp = path + ".tmp"
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
