"""What the Borglet needs of a runtime: `ProcessRuntime` on a real machine, `FakeRuntime` in
unit tests. Written down as a Protocol so the shell is typed against the interface, not the
class that spawns real processes and needs root and cgroups."""

from __future__ import annotations

from typing import Any, Protocol

from borglet.runtime.cgroups import CgroupStats
from borglet.runtime.process import ExitStatus, SpawnSpec


class Process(Protocol):
    """A started (or re-adopted) task: its supervisor and its main process."""

    task_id: str
    control: str
    shim_pid: int
    shim_start: str
    pid: int

    def status(self) -> ExitStatus | None:
        """The recorded exit status, None while there is none (or none was left)."""
        ...

    def open_pidfd(self) -> int:
        """An fd that polls readable once the supervisor has exited, or -1 when it is gone."""
        ...


class Runtime(Protocol):
    @property
    def isolation(self) -> str: ...

    def setup(self) -> None: ...

    def prefill(self) -> None: ...

    def close(self) -> None: ...

    def control_dir(self, task_id: str, sandbox: str = "") -> str: ...

    def start(self, spec: SpawnSpec) -> Process: ...

    def adopt(self, task_id: str, control: str) -> Process | None: ...

    def orphan(self, task_id: str, control: str, pid: int) -> Process:
        """A record of a supervisor that is gone (to read the status it may have left)."""
        ...

    def stop(self, task_id: str, proc: Any, grace_s: float) -> None:
        """`proc`: a Process of this runtime, or None."""
        ...

    def stats(self, task_id: str) -> CgroupStats: ...

    def forget(self, proc: Any) -> None: ...

    def task_ids(self) -> list[str]: ...

    def busy(self, task_id: str) -> bool: ...

    def remove_cgroup(self, task_id: str) -> None: ...

    def thaw(self, task_id: str) -> None: ...

    def procs_files(self, task_id: str) -> list[str]: ...

    def remove_parent(self, shared_tops: list[str]) -> None: ...
