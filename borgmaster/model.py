"""The cell's data model: plain dataclasses shared by the state machine, scheduler and API.

Everything here is pure data. Each class converts to and from a msgpack-friendly dict
(`to_dict` / `from_dict`) because the same shapes travel in Raft commands, snapshots and
(as JSON) in API replies; keeping one conversion per class keeps those three in step.

Units: cpu in cores (float), ram/disk in bytes (int), durations in milliseconds (int).
"""

from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field
from typing import Any

# Job kinds.
SERVICE = "service"
BATCH = "batch"

# Task states (SPEC.md): the master's view of one replica.
PENDING = "pending"
ASSIGNED = "assigned"
RUNNING = "running"
SUCCEEDED = "succeeded"
FAILED = "failed"
KILLED = "killed"
LOST = "lost"
TASK_STATES = (PENDING, ASSIGNED, RUNNING, SUCCEEDED, FAILED, KILLED, LOST)
TERMINAL_TASK_STATES = frozenset({SUCCEEDED, FAILED, KILLED, LOST})
# States counted as "running" in job summaries.
ACTIVE_STATES_FOR_COUNT = frozenset({RUNNING})

# Machine states.
MACHINE_UP = "up"
MACHINE_DRAINING = "draining"
MACHINE_LOST = "lost"
MACHINE_STATES = (MACHINE_UP, MACHINE_DRAINING, MACHINE_LOST)

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
class Job:
    """A job as the cell holds it.

    `history` keeps the specs of older versions that tasks still run (a rolling update moves
    them over one by one) and the previous version (for rollback)."""

    spec: JobSpec
    state: str = PENDING  # pending | running | succeeded | failed | killed
    version: int = 1
    created_ms: int = 0
    updated_ms: int = 0
    killed: bool = False
    killed_ms: int = 0
    previous_version: int = 0
    history: dict[int, JobSpec] = field(default_factory=dict)
    # "" when no rollout is in progress, "rolling", or "halted: <why>".
    rollout: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def spec_for(self, version: int) -> JobSpec:
        """The spec a task of `version` runs (the current one if that version is gone)."""
        if version == self.version:
            return self.spec
        return self.history.get(version, self.spec)

    def to_dict(self) -> dict[str, Any]:
        return {
            "spec": self.spec.to_dict(),
            "state": self.state,
            "version": self.version,
            "created_ms": self.created_ms,
            "updated_ms": self.updated_ms,
            "killed": self.killed,
            "killed_ms": self.killed_ms,
            "previous_version": self.previous_version,
            "history": [[v, s.to_dict()] for v, s in sorted(self.history.items())],
            "rollout": self.rollout,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["spec"] = JobSpec.from_dict(d["spec"])
        d["history"] = {int(v): JobSpec.from_dict(s) for v, s in d.get("history") or []}
        return cls(**d)


@dataclass
class Event:
    """One entry of the cell's replicated, bounded event log."""

    index: int
    ts_ms: int
    type: str
    job: str = ""
    task_index: int = -1
    machine: str = ""
    message: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Task:
    """One replica of a job. `incarnation` names one placement of it, so a Borglet can tell a
    stale copy (an older incarnation) from the one the master wants."""

    job: str
    index: int
    state: str = PENDING
    machine: str = ""
    version: int = 1
    incarnation: str = ""
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    submitted_ms: int = 0
    updated_ms: int = 0
    ports: dict[str, int] = field(default_factory=dict)
    health: str = ""  # "" | healthy | unhealthy (as the Borglet's checks last said)

    @property
    def key(self) -> tuple[str, int]:
        return (self.job, self.index)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


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


@dataclass
class Machine:
    """A Borglet's machine as registered with the cell."""

    name: str
    address: str = ""  # the Borglet's gRPC address
    http: str = ""
    capacity: Resources = field(default_factory=Resources)
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)  # {key, value, effect}
    state: str = MACHINE_UP
    registered_ms: int = 0
    # Accounts the Borglet lets tasks run as ([]: it did not say, e.g. an older Borglet).
    task_users: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Machine:
        d = dict(d)
        d["capacity"] = Resources.from_dict(d.get("capacity") or {})
        return cls(**d)


@dataclass
class Replica:
    """A master replica as announced to the cell (so any replica can list all of them)."""

    id: str
    raft: str
    grpc: str
    http: str = ""

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
