"""A runtime without processes, for unit tests of the whole Borglet shell (no root, no
cgroups): starts, exits, adoption and kills are entries in memory, and an exit is signalled
through a pipe so the shell's exit watcher wakes exactly as it does on a shim's pidfd.

Same interface as `ProcessRuntime` (see `borglet/runtime/base.py`). A test drives it:
`exit(task_id, code)` ends a task, `fail_next(error)` makes the next start raise,
`survivors` holds the tasks a "restarted" Borglet finds again (pass the same instance).
"""

from __future__ import annotations

import contextlib
import os
import threading
from dataclasses import dataclass, field

from borglet.runtime.cgroups import CgroupStats
from borglet.runtime.process import ExitStatus, SpawnSpec


@dataclass
class FakeProcess:
    task_id: str
    control: str
    shim_pid: int
    shim_start: str
    pid: int
    spec: SpawnSpec | None = None
    exit: ExitStatus | None = None
    _fds: list[int] = field(default_factory=list)

    def status(self) -> ExitStatus | None:
        return self.exit

    def open_pidfd(self) -> int:
        if self.exit is not None:
            return -1
        r, w = os.pipe2(os.O_CLOEXEC)
        self._fds.append(w)
        return r

    def _signal_exit(self) -> None:
        fds, self._fds = self._fds, []
        for w in fds:
            with contextlib.suppress(OSError):
                os.write(w, b"x")
            os.close(w)


class FakeRuntime:
    """Tasks as records. Thread-safe: the Borglet calls it from its runners."""

    isolation = "fake"

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.running: dict[str, FakeProcess] = {}
        self.finished: dict[str, FakeProcess] = {}  # ended, status kept until forgotten
        self.starts: list[str] = []  # task ids, in start order
        self.stops: list[str] = []
        self.stats_of: dict[str, CgroupStats] = {}
        self.fail: list[Exception] = []
        self.pid = 1000
        self.closed = False

    # ----- what a test does ---------------------------------------------------------------------

    def fail_next(self, error: Exception) -> None:
        with self.lock:
            self.fail.append(error)

    def exit(self, task_id: str, code: int = 0, signal: int = 0, lost: bool = False) -> None:
        """The task's process ends (`lost`: its supervisor left no status)."""
        with self.lock:
            proc = self.running.pop(task_id)
            proc.exit = None if lost else ExitStatus(code=code, signal=signal)
            if lost:
                proc.shim_pid = 0
            self.finished[task_id] = proc
        proc._signal_exit()

    # ----- the Runtime interface ---------------------------------------------------------------

    def setup(self) -> None:
        return

    def prefill(self) -> None:
        return

    def close(self) -> None:
        self.closed = True

    def control_dir(self, task_id: str, sandbox: str = "") -> str:
        return f"/fake/run/{task_id}"

    def start(self, spec: SpawnSpec) -> FakeProcess:
        with self.lock:
            if self.fail:
                raise self.fail.pop(0)
            self.pid += 2
            proc = FakeProcess(
                spec.task_id, self.control_dir(spec.task_id), self.pid, "1", self.pid + 1, spec
            )
            self.running[spec.task_id] = proc
            self.finished.pop(spec.task_id, None)
            self.starts.append(spec.task_id)
            return proc

    def adopt(self, task_id: str, control: str) -> FakeProcess | None:
        with self.lock:
            return self.running.get(task_id)

    def orphan(self, task_id: str, control: str, pid: int) -> FakeProcess:
        with self.lock:
            done = self.finished.get(task_id)
        exit = done.exit if done is not None else None
        return FakeProcess(task_id, control, 0, "", pid, None, exit)

    def stop(self, task_id: str, proc: FakeProcess | None, grace_s: float) -> None:
        with self.lock:
            self.stops.append(task_id)
            live = self.running.pop(task_id, None)
            if live is not None:
                live.exit = ExitStatus(code=143, signal=15)
                self.finished[task_id] = live
        if live is not None:
            live._signal_exit()

    def stats(self, task_id: str) -> CgroupStats:
        with self.lock:
            return self.stats_of.get(task_id, CgroupStats(0.0, 0, 0))

    def forget(self, proc: FakeProcess) -> None:
        with self.lock:
            self.finished.pop(proc.task_id, None)

    def task_ids(self) -> list[str]:
        with self.lock:
            return sorted(self.running)

    def busy(self, task_id: str) -> bool:
        with self.lock:
            return task_id in self.running

    def remove_cgroup(self, task_id: str) -> None:
        return

    def thaw(self, task_id: str) -> None:
        return

    def procs_files(self, task_id: str) -> list[str]:
        return []

    def remove_parent(self, shared_tops: list[str]) -> None:
        return
