"""The contract shared by the three programs: what a job is, its states and bands, resources.

Everything here is pure data, imported by `borgmaster`, `borglet` and the `borgcfg` CLI and
importing none of them. Each class converts to and from a msgpack-friendly dict
(`to_dict` / `from_dict`) because the same shapes travel in Raft commands, snapshots and
(as JSON) in API replies; keeping one conversion per class keeps those three in step. States
are `StrEnum`s: they compare, hash, encode (msgpack, JSON, protobuf) as their strings, so data
written before they were enums still reads back the same.

Units: cpu in cores (float), ram/disk in bytes (int), durations in milliseconds (int).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import Any


class Kind(StrEnum):
    """What a job's tasks do: keep running (service) or run to completion (batch)."""

    SERVICE = "service"
    BATCH = "batch"


SERVICE = Kind.SERVICE
BATCH = Kind.BATCH


class TaskState(StrEnum):
    """A task's state as the master reports it (SPEC.md `status JOB -o json`)."""

    PENDING = "pending"
    ASSIGNED = "assigned"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    KILLED = "killed"
    LOST = "lost"


PENDING = TaskState.PENDING
ASSIGNED = TaskState.ASSIGNED
RUNNING = TaskState.RUNNING
SUCCEEDED = TaskState.SUCCEEDED
FAILED = TaskState.FAILED
KILLED = TaskState.KILLED
LOST = TaskState.LOST
TASK_STATES = tuple(TaskState)
TERMINAL_TASK_STATES = frozenset({SUCCEEDED, FAILED, KILLED, LOST})
# States counted as "running" in job summaries.
ACTIVE_STATES_FOR_COUNT = frozenset({RUNNING})


class MachineState(StrEnum):
    UP = "up"
    DRAINING = "draining"
    LOST = "lost"


MACHINE_UP = MachineState.UP
MACHINE_DRAINING = MachineState.DRAINING
MACHINE_LOST = MachineState.LOST
MACHINE_STATES = tuple(MachineState)

# Job states.
JOB_STATES = (PENDING, RUNNING, SUCCEEDED, FAILED, KILLED)

# Priority bands (SPEC.md).
BANDS = (("free", 0, 99), ("batch", 100, 199), ("production", 200, 299), ("monitoring", 300, 399))


def band_of(priority: int) -> str:
    """Name of the priority band `priority` falls in."""
    for name, lo, hi in BANDS:
        if lo <= priority <= hi:
            return name
    raise ValueError(f"priority {priority} is outside 0..399")


@dataclass
class Requirements:
    """Per-task resource request."""

    cpu: float = 0.1
    ram: int = 64 * 1024 * 1024
    disk: int = 0
    gpu: int = 0
    ports: list[str] = field(default_factory=list)


@dataclass
class RestartPolicy:
    """What the Borglet does when a task's process exits."""

    policy: str = "on-failure"  # always | on-failure | never
    max_restarts: int = 10
    backoff_ms: int = 1000


@dataclass
class UpdatePolicy:
    max_unavailable: int = 1
    max_surge: int = 0


@dataclass
class Constraint:
    attr: str
    op: str  # == != in not-in exists
    value: Any = None  # str for == / !=, list[str] for in / not-in, None for exists


@dataclass
class Toleration:
    key: str
    value: str | None = None


@dataclass
class JobSpec:
    """A validated job as the user asked for it (the config's meaning, normalised)."""

    name: str
    user: str = ""
    run_as: str = ""
    priority: int = 100
    kind: str = SERVICE
    replicas: int = 1
    command: list[str] = field(default_factory=list)
    env: dict[str, str] = field(default_factory=dict)
    requirements: Requirements = field(default_factory=Requirements)
    restart: RestartPolicy = field(default_factory=RestartPolicy)
    health: dict[str, Any] | None = None
    constraints: list[Constraint] = field(default_factory=list)
    tolerations: list[Toleration] = field(default_factory=list)
    spread: str | None = None
    # At most one task of the job per machine (the trace's "different machine" restriction).
    distinct_machines: bool = False
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    kill_timeout_ms: int = 10_000

    def to_dict(self) -> dict[str, Any]:
        """Plain data (hand-written: `dataclasses.asdict` is slow on the write path)."""
        r, rs, u = self.requirements, self.restart, self.update
        return {
            "name": self.name,
            "user": self.user,
            "run_as": self.run_as,
            "priority": self.priority,
            "kind": self.kind,
            "replicas": self.replicas,
            "command": list(self.command),
            "env": dict(self.env),
            "requirements": {
                "cpu": r.cpu,
                "ram": r.ram,
                "disk": r.disk,
                "gpu": r.gpu,
                "ports": list(r.ports),
            },
            "restart": {
                "policy": rs.policy,
                "max_restarts": rs.max_restarts,
                "backoff_ms": rs.backoff_ms,
            },
            "health": copy.deepcopy(self.health),
            "constraints": [
                {"attr": c.attr, "op": c.op, "value": copy.deepcopy(c.value)}
                for c in self.constraints
            ],
            "tolerations": [{"key": t.key, "value": t.value} for t in self.tolerations],
            "spread": self.spread,
            "distinct_machines": self.distinct_machines,
            "update": {"max_unavailable": u.max_unavailable, "max_surge": u.max_surge},
            "kill_timeout_ms": self.kill_timeout_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        d = dict(d)
        d["requirements"] = Requirements(**d.get("requirements") or {})
        d["restart"] = RestartPolicy(**d.get("restart") or {})
        d["update"] = UpdatePolicy(**d.get("update") or {})
        d["constraints"] = [Constraint(**c) for c in d.get("constraints") or []]
        d["tolerations"] = [Toleration(**t) for t in d.get("tolerations") or []]
        return cls(**d)

    def task_template(self) -> dict[str, Any]:
        """The part of the spec that defines a task's process: a change here needs new tasks."""
        d = self.to_dict()
        for k in ("replicas", "update", "user", "priority"):
            d.pop(k, None)
        return d


@dataclass
class Resources:
    cpu: float = 0.0
    ram: int = 0
    disk: int = 0
    gpu: int = 0

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Resources:
        return cls(**d)

    def add(self, other: Resources, times: float = 1) -> Resources:
        """This plus `times` x other (times -1 subtracts)."""
        return Resources(
            cpu=self.cpu + times * other.cpu,
            ram=int(self.ram + times * other.ram),
            disk=int(self.disk + times * other.disk),
            gpu=int(self.gpu + times * other.gpu),
        )

    def fits(self, free: Resources, eps: float = 1e-9) -> bool:
        """Whether this request fits in `free` (cpu compared with a small tolerance)."""
        return (
            self.cpu <= free.cpu + eps
            and self.ram <= free.ram
            and self.disk <= free.disk
            and self.gpu <= free.gpu
        )


UNLIMITED = -1
"""A quota limit with no bound (in SetQuota requests and in the store)."""
QUOTA_KEEP = -2
"""In a SetQuota request: this limit was not given; keep the current one."""

MIN_READY_MS = 1000
"""A running task counts as ready (available) once it has run unchanged this long."""
MAX_BACKOFF_MS = 300_000
"""The longest a Borglet waits before restarting a task that keeps failing."""
