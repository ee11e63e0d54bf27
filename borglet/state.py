"""The Borglet's task state machine: typed events in, typed instructions out.

Pure: no processes, no files, no clock of its own (every event comes with the time). The
shell (`borglet/agent.py` and its parts) turns what happens - the master's desired set, a
process exit, a health verdict, a start that failed, the time - into an `Event`, hands it to
`TaskStates.handle`, and carries out the `Instruction`s it returns (start, kill, forget,
persist, report). Every decision about a task - when to start it, when to restart it and with
what backoff, which reason to give, what counts as a restart - is made here, and no other
module changes a `LocalTask`: that is what lets the rules be tested without spawning anything,
as dask.distributed's worker state machine and Nomad's task runner do.
"""

from __future__ import annotations

import signal
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from cfg.model import BATCH, FAILED, KILLED, MAX_BACKOFF_MS, RUNNING, SUCCEEDED, JobSpec

STABLE_RUN_MS = 60_000
"""How long a run must last to reset the restart backoff."""

# Health as reported to the master ("" = no check, or no verdict yet).
HEALTHY = "healthy"
UNHEALTHY = "unhealthy"


class Reason(StrEnum):
    """The fixed reasons this module gives (others carry details: `exit: 1`, `run_as: ...`)."""

    KILLED = "killed"
    NOT_WANTED = "not-wanted"
    OOM = "oom"
    UNHEALTHY = "unhealthy"
    PIDS_LIMIT = "pids-limit"
    SUPERVISOR_LOST = "supervisor-lost"


REASON_UNHEALTHY = Reason.UNHEALTHY
REASON_PIDS_LIMIT = Reason.PIDS_LIMIT
REASON_SUPERVISOR_LOST = Reason.SUPERVISOR_LOST

TaskKey = tuple[str, int, str]  # job, index, incarnation
JobIndex = tuple[str, int]


class Phase(StrEnum):
    """Where a task is on this machine (written to the state file as its string)."""

    STARTING = "starting"  # wanted, not started yet (or waiting out a restart backoff)
    LAUNCHING = "launching"  # a Start was handed out; the process is being spawned
    ACTIVE = "active"  # process running
    STOPPING = "stopping"  # being killed
    DONE = "done"  # finished for good; `result` says how


STARTING = Phase.STARTING
LAUNCHING = Phase.LAUNCHING
ACTIVE = Phase.ACTIVE
STOPPING = Phase.STOPPING
DONE = Phase.DONE


def task_id_of(key: TaskKey) -> str:
    """The task's name on this machine: its cgroup, control dir and sandbox are named so."""
    job, index, inc = key
    return f"{job}.{index}.{inc}"


@dataclass
class Desired:
    """One task the master wants on this machine."""

    job: str
    index: int
    incarnation: str
    version: int
    spec: JobSpec
    ports: dict[str, int] = field(default_factory=dict)
    gpus: list[str] = field(default_factory=list)  # device ids the master gave it

    @property
    def key(self) -> TaskKey:
        return (self.job, self.index, self.incarnation)


@dataclass
class LocalTask:
    key: TaskKey
    spec: JobSpec
    phase: Phase = STARTING
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
    gpus: list[str] = field(default_factory=list)  # its devices (the master's choice)

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
            "state": str(self.observed_state()),
            "exit_code": -1 if self.exit_code is None else self.exit_code,
            "reason": str(self.reason),
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
            "phase": str(self.phase),
            "restarts": self.restarts,
            "exit_code": self.exit_code,
            "reason": str(self.reason),
            "result": str(self.result),
            "next_start_ms": self.next_start_ms,
            "started_ms": self.started_ms,
            "consecutive_failures": self.consecutive_failures,
            "version": self.version,
            "oom_kills": self.oom_kills,
            "ports": dict(self.ports),
            "pid": self.pid,
            "shim_pid": self.shim_pid,
            "shim_start": self.shim_start,
            "stop_reason": str(self.stop_reason),
            "gpus": list(self.gpus),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LocalTask:
        """Inverse of to_dict; a task caught mid-launch comes back as waiting to start."""
        t = cls(
            key=(str(d["job"]), int(d["index"]), str(d["incarnation"])),
            spec=JobSpec.from_dict(d["spec"]),
        )
        for name in (
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
        if "phase" in d:
            t.phase = Phase(d["phase"])
        t.ports = {str(k): int(v) for k, v in (d.get("ports") or {}).items()}
        t.gpus = [str(g) for g in d.get("gpus") or []]
        if t.phase == LAUNCHING:
            t.phase = STARTING
        return t


# ----- events: what happened -----------------------------------------------------------------


@dataclass(frozen=True)
class DesiredSet:
    """The master's reply to a Sync: every task it wants here. `reported` holds the tasks
    that Sync reported: a finished task the master has heard of and no longer wants can go."""

    tasks: tuple[Desired, ...]
    reported: frozenset[TaskKey] = frozenset()


@dataclass(frozen=True)
class Tick:
    """The time passed: restart backoffs that ended let their tasks start again."""


@dataclass(frozen=True)
class PortsAssigned:
    """The ports a task about to start got (chosen by the shell: they need a host probe)."""

    key: TaskKey
    ports: dict[str, int]


@dataclass(frozen=True)
class Started:
    key: TaskKey
    pid: int = 0
    shim_pid: int = 0
    shim_start: str = ""


@dataclass(frozen=True)
class StartAborted:
    """A Start was not carried out: the task stopped being wanted before its turn came."""

    key: TaskKey


@dataclass(frozen=True)
class StartFailed:
    """The process could not be started. `permanent`: it never can be here as specified
    (no such command, account refused); otherwise a transient machine problem."""

    key: TaskKey
    reason: str
    permanent: bool
    exit_code: int | None = None


@dataclass(frozen=True)
class Exited:
    """A task's supervisor ended (on its own, or because we stopped it). `lost`: it left no
    exit status (killed, or the machine rebooted)."""

    key: TaskKey
    returncode: int
    oom: bool = False
    pids_limit: bool = False
    lost: bool = False


@dataclass(frozen=True)
class Killed:
    """A kill we asked for completed without a process to collect (none was running)."""

    key: TaskKey


@dataclass(frozen=True)
class HealthResult:
    """A health probe's outcome: the tracker's status, and whether it just went unhealthy."""

    key: TaskKey
    health: str
    went_bad: bool = False
    run_started_ms: int | None = None
    """The run the probe was of (None: the current one); a verdict on an earlier run of the
    task is dropped."""


@dataclass(frozen=True)
class PidsLimitHit:
    key: TaskKey


@dataclass(frozen=True)
class Restored:
    """Tasks read back from the state file at start. `same_boot`: their monotonic times are
    from this boot (else they mean nothing and are cleared)."""

    tasks: tuple[LocalTask, ...]
    same_boot: bool = True


@dataclass(frozen=True)
class Adopted:
    """The supervisor of a restored task still runs: it is ours again."""

    key: TaskKey
    pid: int


@dataclass(frozen=True)
class MachineDown:
    """--kill-tasks-on-exit: the Borglet is going away and takes its tasks with it."""


@dataclass(frozen=True)
class MachineDownDone:
    """The kills of a MachineDown have run: forget the tasks it stopped."""


@dataclass(frozen=True)
class PruneCounters:
    """Drop per job/index counters of indices gone for `retention_ms`."""

    retention_ms: int


Event = (
    DesiredSet
    | Tick
    | PortsAssigned
    | Started
    | StartAborted
    | StartFailed
    | Exited
    | Killed
    | HealthResult
    | PidsLimitHit
    | Restored
    | Adopted
    | MachineDown
    | MachineDownDone
    | PruneCounters
)


# ----- instructions: what the shell is to do ------------------------------------------------


@dataclass
class Start:
    """Spawn the task (the shell picks its ports, then reports Started or StartFailed)."""

    key: TaskKey
    desired: Desired | None = field(default=None, compare=False)


@dataclass
class Kill:
    """Stop the task's processes (SIGTERM, SIGKILL after grace_s); then report its exit."""

    key: TaskKey
    grace_s: float = field(default=10.0, compare=False)


@dataclass
class Adopt:
    """Find the supervisor of a restored task (report Adopted, or its exit)."""

    key: TaskKey


@dataclass
class Forget:
    """The task is gone from the table: drop whatever the shell holds for it."""

    key: TaskKey


@dataclass
class Persist:
    """The table changed: write the state file before the next report."""


@dataclass
class Report:
    """Something the master should hear now, not at the next heartbeat."""


@dataclass
class WatchHealth:
    """A run began: probe it per its health check (from started_ms)."""

    key: TaskKey
    started_ms: int


@dataclass
class EndRun:
    """A run ended: stop probing it, drop its usage figures."""

    key: TaskKey


@dataclass
class WakeAt:
    """A restart backoff ends at `at_ms`: send a Tick then."""

    at_ms: int


Action = Start | Kill
Instruction = Start | Kill | Adopt | Forget | Persist | Report | WatchHealth | EndRun | WakeAt


def exit_code_of(returncode: int) -> int:
    """Shell convention: a process killed by signal N reports 128 + N."""
    return 128 - returncode if returncode < 0 else returncode


def describe_exit(returncode: int, oom: bool) -> str:
    if oom:
        return Reason.OOM
    if returncode < 0:
        try:
            return f"signal: {signal.Signals(-returncode).name}"
        except ValueError:
            return f"signal: {-returncode}"
    return "" if returncode == 0 else f"exit: {returncode}"


@dataclass
class TaskCounters:
    """Per job/index counters for /metrics that outlive one incarnation (monotonic), and when
    the last copy of an index was forgotten (its counters go `retention` later)."""

    restarts: dict[JobIndex, int] = field(default_factory=dict)
    oom_kills: dict[JobIndex, int] = field(default_factory=dict)
    forgotten_at_ms: dict[JobIndex, int] = field(default_factory=dict)


class TaskStates:
    """All tasks this Borglet knows, and the rules that move them.

    `handle` is the shell's only entry; the rule methods below it are public for the tests
    of each rule."""

    def __init__(self) -> None:
        self.tasks: dict[TaskKey, LocalTask] = {}
        self.desired: dict[TaskKey, Desired] = {}
        self.counters = TaskCounters()
        self._down = False  # MachineDown: no more starts
        self._heard = False  # a desired set has arrived (before it, nothing is converged)
        self._for_exit: set[TaskKey] = set()

    # ----- queries (read only) ---------------------------------------------------------------

    def wanted(self, key: TaskKey) -> bool:
        return key in self.desired and not self._down

    def ports_in_use(self, but: TaskKey) -> set[int]:
        """Ports held by live tasks other than `but`."""
        live = [o for k, o in self.tasks.items() if k != but and o.phase != DONE]
        return {p for o in live for p in o.ports.values()}

    def reports(self) -> list[dict[str, Any]]:
        return [t.report() for t in self.tasks.values()]

    def to_doc(self) -> list[dict[str, Any]]:
        return [t.to_dict() for t in self.tasks.values()]

    def next_wakeup_ms(self) -> int | None:
        """When the earliest restart backoff ends (None when no task is waiting)."""
        times = [t.next_start_ms for t in self.tasks.values() if t.phase == STARTING]
        return min(times) if times else None

    # ----- the one entry ----------------------------------------------------------------------

    def handle(self, ev: Event, now_ms: int) -> list[Instruction]:
        """Apply one event; return what the shell must do, in order."""
        if isinstance(ev, DesiredSet):
            return self._on_desired(ev, now_ms)
        if isinstance(ev, Tick):
            return self._converge(now_ms)
        if isinstance(ev, PortsAssigned):
            t = self.tasks.get(ev.key)
            if t is not None:
                t.ports = dict(ev.ports)
            return []
        if isinstance(ev, Started):
            return self._on_started(ev, now_ms)
        if isinstance(ev, StartAborted):
            self.launch_aborted(ev.key)
            return []
        if isinstance(ev, StartFailed):
            if ev.key not in self.tasks:
                return []
            if ev.permanent:
                self.start_failed(ev.key, ev.reason, ev.exit_code)
            else:
                self.launch_failed(ev.key, ev.reason, now_ms)
            return [Persist(), *self._wake_for(ev.key, now_ms), Report()]
        if isinstance(ev, Exited):
            return self._on_exited(ev, now_ms)
        if isinstance(ev, Killed):
            self.killed(ev.key)
            return [EndRun(ev.key), Persist(), Report()]
        if isinstance(ev, HealthResult):
            return self._on_health(ev)
        if isinstance(ev, PidsLimitHit):
            t = self.tasks.get(ev.key)
            before = t.reason if t is not None else None
            self.pids_limit_hit(ev.key)
            return [Report()] if t is not None and t.reason != before else []
        if isinstance(ev, Restored):
            return self._on_restored(ev)
        if isinstance(ev, Adopted):
            return self._on_adopted(ev)
        if isinstance(ev, MachineDown):
            return self._on_machine_down()
        if isinstance(ev, MachineDownDone):
            return self._on_machine_down_done()
        if isinstance(ev, PruneCounters):
            self.prune_counters(now_ms, ev.retention_ms)
            return []
        raise TypeError(f"not an event: {ev!r}")

    def _on_desired(self, ev: DesiredSet, now_ms: int) -> list[Instruction]:
        self.desired = {d.key: d for d in ev.tasks}
        self._heard = True
        out: list[Instruction] = []
        gone = self.forget_reported(set(ev.reported), set(self.desired))
        live = {k[:2] for k in self.tasks}
        for key in gone:
            if key[:2] not in live:
                self.counters.forgotten_at_ms[key[:2]] = now_ms
            out.append(Forget(key))
        out += self._converge(now_ms)
        if gone and not any(isinstance(i, Persist) for i in out):
            out.append(Persist())
        return out

    def _converge(self, now_ms: int) -> list[Instruction]:
        if self._down or not self._heard:
            # Restored tasks are not retired (nor restarted) on an empty desired set that
            # only means the master has not answered yet.
            return []
        actions = self.reconcile(list(self.desired.values()), now_ms)
        out: list[Instruction] = []
        for a in actions:
            if isinstance(a, Start):
                a.desired = self.desired[a.key]
            else:
                a.grace_s = self.tasks[a.key].spec.kill_timeout_ms / 1000
            out.append(a)
        if actions:
            out.append(Persist())
        return out

    def _on_started(self, ev: Started, now_ms: int) -> list[Instruction]:
        if ev.key not in self.tasks:
            return []
        self.started(ev.key, now_ms, ev.pid, ev.shim_pid, ev.shim_start)
        t = self.tasks[ev.key]
        out: list[Instruction] = [WatchHealth(ev.key, now_ms), Persist()]
        if self._down or ev.key not in self.desired:
            # No longer wanted while it was being spawned (or the machine is going down):
            # stop it now rather than at the next reconcile.
            t.phase = STOPPING
            if self._down:
                self._for_exit.add(ev.key)
            out.append(Kill(ev.key, t.spec.kill_timeout_ms / 1000))
        out.append(Report())
        return out

    def _on_exited(self, ev: Exited, now_ms: int) -> list[Instruction]:
        t = self.tasks.get(ev.key)
        if t is None or t.phase == DONE:
            return []
        before = t.restarts
        self.exited(ev.key, ev.returncode, ev.oom, now_ms, pids_limit=ev.pids_limit)
        ji = ev.key[:2]
        if t.restarts > before:
            self.counters.restarts[ji] = self.counters.restarts.get(ji, 0) + t.restarts - before
        if ev.oom:
            self.counters.oom_kills[ji] = self.counters.oom_kills.get(ji, 0) + 1
        if ev.lost and t.reason.startswith("signal"):
            t.reason = Reason.SUPERVISOR_LOST
        return [EndRun(ev.key), Persist(), *self._wake_for(ev.key, now_ms), Report()]

    def _wake_for(self, key: TaskKey, now_ms: int) -> list[Instruction]:
        t = self.tasks.get(key)
        if t is not None and t.phase == STARTING:
            return [WakeAt(t.next_start_ms)]
        return []

    def _on_health(self, ev: HealthResult) -> list[Instruction]:
        t = self.tasks.get(ev.key)
        if t is None or (ev.run_started_ms is not None and ev.run_started_ms != t.started_ms):
            return []
        self.set_health(ev.key, ev.health)
        out: list[Instruction] = []
        if ev.went_bad:
            kill = self.unhealthy(ev.key)
            out.append(Persist())
            if kill is not None:
                kill.grace_s = self.tasks[ev.key].spec.kill_timeout_ms / 1000
                out.append(kill)
        out.append(Report())
        return out

    def _on_restored(self, ev: Restored) -> list[Instruction]:
        out: list[Instruction] = []
        for t in ev.tasks:
            if not ev.same_boot:  # monotonic times are from another boot
                t.next_start_ms = t.started_ms = 0
            self.tasks[t.key] = t
            if t.phase in (ACTIVE, STOPPING):
                out.append(Adopt(t.key))
        out.append(Persist())
        return out

    def _on_adopted(self, ev: Adopted) -> list[Instruction]:
        t = self.tasks.get(ev.key)
        if t is None:
            return []
        t.pid = ev.pid
        out: list[Instruction] = [WatchHealth(ev.key, t.started_ms)]
        if t.phase == STOPPING:  # a kill was under way when the last Borglet went
            out.append(Kill(ev.key, t.spec.kill_timeout_ms / 1000))
        return out

    def _on_machine_down(self) -> list[Instruction]:
        """Like a machine going down, not like a kill the master asked for: the tasks it
        stops are neither reported nor recorded as finished (a `killed` in the state file
        would reach the master from the next Borglet on this data dir and end tasks of a
        live service job). Tasks the master was already stopping, and finished ones not yet
        reported, keep their records so their results still reach the master."""
        self._down = True
        out: list[Instruction] = []
        for k, t in self.tasks.items():
            if t.phase == ACTIVE:
                t.phase = STOPPING
                self._for_exit.add(k)
                out.append(Kill(k, t.spec.kill_timeout_ms / 1000))
        return out

    def _on_machine_down_done(self) -> list[Instruction]:
        out: list[Instruction] = []
        for k, t in list(self.tasks.items()):
            if k in self._for_exit or t.phase in (ACTIVE, LAUNCHING):
                del self.tasks[k]
                out.append(Forget(k))
        out.append(Persist())
        return out

    # ----- the rules ----------------------------------------------------------------------------

    def reconcile(self, desired: list[Desired], now_ms: int) -> list[Action]:
        """Converge on the desired set: start what is missing, kill what is not wanted."""
        want = {d.key: d for d in desired}
        actions: list[Action] = []
        for key, d in want.items():
            t = self.tasks.get(key)
            if t is None:
                t = self.tasks[key] = LocalTask(
                    key=key,
                    spec=d.spec,
                    next_start_ms=now_ms,
                    version=d.version,
                    gpus=list(d.gpus),
                )
            if t.phase == STARTING and t.next_start_ms <= now_ms:
                t.phase = LAUNCHING  # so a concurrent reconcile cannot start it twice
                actions.append(Start(key))
        for key, t in self.tasks.items():
            if key in want:
                continue
            if t.phase == STARTING:
                # Never started (or between restarts): nothing to kill.
                t.phase = DONE
                t.result = KILLED
                t.reason = t.reason or Reason.NOT_WANTED
            elif t.phase == ACTIVE:
                t.phase = STOPPING
                actions.append(Kill(key))
            # LAUNCHING: killed once the spawn has finished (see Started).
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
            t.reason = Reason.OOM if oom else Reason.KILLED
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
        t.reason = t.reason if t.reason == Reason.OOM else Reason.KILLED
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

    def prune_counters(self, now_ms: int, retention_ms: int) -> int:
        """Drop the restart and OOM counters of task indices gone for `retention_ms`, so
        /metrics does not keep series of jobs long gone (they would grow without bound with
        array jobs) while a just-finished task's figures can still be scraped."""
        c = self.counters
        live = {k[:2] for k in self.tasks}
        old = [
            ji for ji, at in c.forgotten_at_ms.items() if ji in live or now_ms - at >= retention_ms
        ]
        for ji in old:
            del c.forgotten_at_ms[ji]
            if ji not in live:
                c.restarts.pop(ji, None)
                c.oom_kills.pop(ji, None)
        return len(old)
