"""The Borglet's task state machine: pure logic, no processes, no clock of its own.

The agent feeds it events (the master's desired set, a process exit, the time) and carries out
the instructions it returns (start, kill, forget). Keeping the decisions here - when to
restart, with what backoff, what to report - lets them be tested without spawning anything,
in the spirit of dask.distributed's worker state machine.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from typing import Any

from cfg.model import BATCH, FAILED, KILLED, MAX_BACKOFF_MS, RUNNING, SUCCEEDED, JobSpec

# How long a run must last to reset the restart backoff.
STABLE_RUN_MS = 60_000

# Health as reported to the master ("" = no check, or no verdict yet).
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"
# Reasons this module gives.
REASON_UNHEALTHY = "unhealthy"
REASON_PIDS_LIMIT = "pids-limit"

TaskKey = tuple[str, int, str]  # job, index, incarnation

# Local phases of a task on this machine.
STARTING = "starting"  # wanted, not started yet (or waiting out a restart backoff)
LAUNCHING = "launching"  # a Start was handed out; the process is being spawned
ACTIVE = "active"  # process running
STOPPING = "stopping"  # being killed
DONE = "done"  # finished for good; `result` says how


@dataclass
class Desired:
    """One task the master wants on this machine."""

    job: str
    index: int
    incarnation: str
    version: int
    spec: JobSpec
    ports: dict[str, int] = field(default_factory=dict)

    @property
    def key(self) -> TaskKey:
        return (self.job, self.index, self.incarnation)


@dataclass
class LocalTask:
    key: TaskKey
    spec: JobSpec
    phase: str = STARTING
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    result: str = ""  # succeeded | failed | killed once DONE
    next_start_ms: int = 0
    started_ms: int = 0
    consecutive_failures: int = 0
    version: int = 0
    health: str = ""
    oom_kills: int = 0  # over all runs of this task on this machine
    ports: dict[str, int] = field(default_factory=dict)
    pid: int = 0  # the task's main process while ACTIVE
    shim_pid: int = 0
    shim_start: str = ""  # the shim's start time: with shim_pid, identifies it after a restart
    stop_reason: str = ""  # why we are stopping it ourselves (e.g. unhealthy -> restart)

    @property
    def job(self) -> str:
        return self.key[0]

    @property
    def index(self) -> int:
        return self.key[1]

    @property
    def incarnation(self) -> str:
        return self.key[2]

    def observed_state(self) -> str:
        """What the master is told: running while wanted and not finished."""
        return self.result if self.phase == DONE else RUNNING

    def report(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "index": self.index,
            "incarnation": self.incarnation,
            "state": self.observed_state(),
            "exit_code": -1 if self.exit_code is None else self.exit_code,
            "reason": self.reason,
            "restarts": self.restarts,
            "health": self.health if self.phase != DONE else "",
            "pid": self.pid if self.phase in (ACTIVE, STOPPING) else 0,
            "oom_kills": self.oom_kills,
            "ports": dict(self.ports),
        }

    def to_dict(self) -> dict[str, Any]:
        """For the Borglet's state file: everything needed to re-adopt and report the task."""
        return {
            "job": self.job,
            "index": self.index,
            "incarnation": self.incarnation,
            "spec": self.spec.to_dict(),
            "phase": self.phase,
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "reason": self.reason,
            "result": self.result,
            "next_start_ms": self.next_start_ms,
            "started_ms": self.started_ms,
            "consecutive_failures": self.consecutive_failures,
            "version": self.version,
            "oom_kills": self.oom_kills,
            "ports": dict(self.ports),
            "pid": self.pid,
            "shim_pid": self.shim_pid,
            "shim_start": self.shim_start,
            "stop_reason": self.stop_reason,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalTask:
        """Inverse of to_dict; a task caught mid-launch comes back as waiting to start."""
        t = cls(
            key=(str(d["job"]), int(d["index"]), str(d["incarnation"])),
            spec=JobSpec.from_dict(d["spec"]),
        )
        for name in (
            "phase",
            "restarts",
            "exit_code",
            "reason",
            "result",
            "next_start_ms",
            "started_ms",
            "consecutive_failures",
            "version",
            "oom_kills",
            "pid",
            "shim_pid",
            "shim_start",
            "stop_reason",
        ):
            if name in d:
                setattr(t, name, d[name])
        t.ports = {str(k): int(v) for k, v in (d.get("ports") or {}).items()}
        if t.phase == LAUNCHING:
            t.phase = STARTING
        return t


@dataclass
class Start:
    key: TaskKey


@dataclass
class Kill:
    key: TaskKey


Action = Start | Kill


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int, oom: bool) -> str:
    if oom:
        return "oom"
    if returncode < 0:
        try:
            return f"signal: {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal: {-returncode}"
    return "" if returncode == 0 else f"exit: {returncode}"


class TaskStates:
    """All tasks this Borglet knows, and the rules that move them."""

    def __init__(self) -> None:
        self.tasks: dict[TaskKey, LocalTask] = {}

    def reconcile(self, desired: list[Desired], now_ms: int) -> list[Action]:
        """Converge on the desired set: start what is missing, kill what is not wanted."""
        want = {d.key: d for d in desired}
        actions: list[Action] = []
        for key, d in want.items():
            t = self.tasks.get(key)
            if t is None:
                t = self.tasks[key] = LocalTask(
                    key=key, spec=d.spec, next_start_ms=now_ms, version=d.version
                )
            if t.phase == STARTING and t.next_start_ms <= now_ms:
                t.phase = LAUNCHING  # so a concurrent reconcile cannot start it twice
                actions.append(Start(key))
        for key, t in self.tasks.items():
            if key in want:
                continue
            if t.phase in (STARTING,):
                # Never started (or between restarts): nothing to kill.
                t.phase = DONE
                t.result = KILLED
                t.reason = t.reason or "not-wanted"
            elif t.phase == ACTIVE:
                t.phase = STOPPING
                actions.append(Kill(key))
            # LAUNCHING: killed by the next reconcile, once the spawn has finished.
        return actions

    def started(
        self, key: TaskKey, now_ms: int, pid: int = 0, shim_pid: int = 0, shim_start: str = ""
    ) -> None:
        t = self.tasks[key]
        t.phase = ACTIVE
        t.started_ms = now_ms
        t.reason = ""
        t.health = ""
        t.stop_reason = ""
        t.pid, t.shim_pid, t.shim_start = pid, shim_pid, shim_start

    def unhealthy(self, key: TaskKey) -> Kill | None:
        """A running task failed its health check `failure_threshold` times in a row.

        Service tasks are killed and then restarted per their policy (the kill counts as a
        failed run, reason `unhealthy`); batch tasks only report it.
        """
        t = self.tasks.get(key)
        if t is None or t.phase != ACTIVE:
            return None
        t.health = UNHEALTHY
        if t.spec.kind == BATCH:
            return None
        t.phase = STOPPING
        t.stop_reason = REASON_UNHEALTHY
        return Kill(key)

    def set_health(self, key: TaskKey, health: str) -> None:
        t = self.tasks.get(key)
        if t is not None and t.phase == ACTIVE:
            t.health = health

    def pids_limit_hit(self, key: TaskKey) -> None:
        """The task tried to fork past pids.max (a fork bomb, or a leak): say so while it runs."""
        t = self.tasks.get(key)
        if t is not None and t.phase == ACTIVE:
            t.reason = REASON_PIDS_LIMIT

    def launch_aborted(self, key: TaskKey) -> None:
        """A Start was not carried out (the task stopped being wanted meanwhile)."""
        t = self.tasks.get(key)
        if t is not None and t.phase == LAUNCHING:
            t.phase = STARTING

    def start_failed(self, key: TaskKey, message: str, exit_code: int | None = None) -> None:
        """The process could not be started at all (no such user, command not found):
        permanent, so give up rather than restart into the same failure."""
        t = self.tasks[key]
        t.phase = DONE
        t.result = FAILED
        t.reason = message
        if exit_code is not None:
            t.exit_code = exit_code

    def launch_failed(self, key: TaskKey, message: str, now_ms: int) -> None:
        """The machine could not start the process (a transient failure, unlike a missing
        command): count it as a failed run, so the restart policy and its backoff apply."""
        t = self.tasks.get(key)
        if t is None:
            return
        if t.phase == LAUNCHING:
            t.phase = ACTIVE
            t.started_ms = now_ms
        self.exited(key, 126, False, now_ms)
        t.reason = message

    def exited(
        self, key: TaskKey, returncode: int, oom: bool, now_ms: int, pids_limit: bool = False
    ) -> None:
        """A process ended (on its own, or because we stopped it): finish the task or
        schedule a restart per its policy."""
        t = self.tasks.get(key)
        if t is None or t.phase == DONE:
            return
        t.exit_code = exit_code_of(returncode)
        t.reason = describe_exit(returncode, oom)
        t.pid = 0
        if oom:
            t.oom_kills += 1
        elif pids_limit and returncode != 0:
            t.reason = REASON_PIDS_LIMIT
        unhealthy = t.stop_reason == REASON_UNHEALTHY
        t.stop_reason = ""
        if t.phase == STOPPING and not unhealthy:
            t.phase = DONE
            t.result = KILLED
            t.reason = "oom" if oom else "killed"
            return
        if unhealthy:
            t.reason = REASON_UNHEALTHY
        ok = returncode == 0 and not oom and not unhealthy
        policy = t.spec.restart
        if t.spec.kind == BATCH and ok:
            self._finish(t, SUCCEEDED)
            return
        restart = policy.policy == "always" or (policy.policy == "on-failure" and not ok)
        if not restart:
            self._finish(t, SUCCEEDED if ok else FAILED)
            return
        if now_ms - t.started_ms >= STABLE_RUN_MS:
            t.consecutive_failures = 0
        if t.restarts >= policy.max_restarts:
            self._finish(t, SUCCEEDED if ok else FAILED)
            return
        t.restarts += 1
        t.consecutive_failures += 1
        backoff = policy.backoff_ms * (2 ** (t.consecutive_failures - 1))
        t.next_start_ms = now_ms + min(backoff, MAX_BACKOFF_MS)
        t.phase = STARTING

    def killed(self, key: TaskKey) -> None:
        """A kill we asked for has completed."""
        t = self.tasks.get(key)
        if t is None or t.phase == DONE:
            return
        t.phase = DONE
        t.result = KILLED
        t.reason = t.reason if t.reason == "oom" else "killed"
        t.pid = 0

    def _finish(self, t: LocalTask, result: str) -> None:
        t.phase = DONE
        t.result = result
        t.health = ""

    def forget_reported(self, reported: set[TaskKey], desired: set[TaskKey]) -> list[TaskKey]:
        """Drop finished tasks the master has heard about and no longer wants."""
        gone = [
            k
            for k, t in self.tasks.items()
            if t.phase == DONE and k in reported and k not in desired
        ]
        for k in gone:
            del self.tasks[k]
        return gone

    def next_wakeup_ms(self) -> int | None:
        """When the earliest restart backoff ends (None when no task is waiting)."""
        times = [t.next_start_ms for t in self.tasks.values() if t.phase == STARTING]
        return min(times) if times else None
