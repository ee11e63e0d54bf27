"""The master's own records: jobs, tasks, machines, events and replicas as the cell holds them.

The job spec, states, bands and resources are the contract in `cfg.model` (re-exported here
for the master's modules). Everything here is pure data with `to_dict` / `from_dict` for Raft
commands and snapshots.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from cfg.model import (
    ACTIVE_STATES_FOR_COUNT,
    ASSIGNED,
    BANDS,
    BATCH,
    FAILED,
    JOB_STATES,
    KILLED,
    LOST,
    MACHINE_DRAINING,
    MACHINE_LOST,
    MACHINE_STATES,
    MACHINE_UP,
    PENDING,
    RUNNING,
    SERVICE,
    SUCCEEDED,
    TASK_STATES,
    TERMINAL_TASK_STATES,
    Constraint,
    HealthCheck,
    HealthKind,
    JobSpec,
    Kind,
    MachineState,
    Periodic,
    Requirements,
    Resources,
    RestartPolicy,
    Taint,
    TaintEffect,
    TaskState,
    Toleration,
    UpdatePolicy,
    band_of,
)

__all__ = [
    "ACTIVE_STATES_FOR_COUNT",
    "ASSIGNED",
    "BANDS",
    "BATCH",
    "FAILED",
    "JOB_STATES",
    "KILLED",
    "LOST",
    "MACHINE_DRAINING",
    "MACHINE_LOST",
    "MACHINE_STATES",
    "MACHINE_UP",
    "PENDING",
    "RUNNING",
    "SERVICE",
    "SUCCEEDED",
    "TASK_STATES",
    "TERMINAL_TASK_STATES",
    "Constraint",
    "Event",
    "HealthCheck",
    "HealthKind",
    "Job",
    "JobSpec",
    "Kind",
    "Machine",
    "MachineState",
    "Periodic",
    "Replica",
    "Requirements",
    "Resources",
    "RestartPolicy",
    "Taint",
    "TaintEffect",
    "Task",
    "TaskState",
    "Toleration",
    "UpdatePolicy",
    "VersionRecord",
    "band_of",
    "changed_fields",
]

VERSION_MEMORY = 10
"""How many versions of each job the store remembers (`borgcfg history`, `rollback
--to-version`): the newest ones, the current version included."""

# Spec sections whose change is named per key (`requirements.cpu`); any other field is named
# whole (`command`, `env`: an env change names no variable, and their number is unbounded).
_NAMED_BY_KEY = ("requirements", "restart", "update")


def changed_fields(old: JobSpec, new: JobSpec) -> list[str]:
    """The spec fields that differ between two versions, sorted (deterministic: the store
    records them when it applies a submission)."""
    a, b = old.to_dict(), new.to_dict()
    out: list[str] = []
    for k in sorted(a.keys() | b.keys()):
        x, y = a.get(k), b.get(k)
        if x == y:
            continue
        if k in _NAMED_BY_KEY and isinstance(x, dict) and isinstance(y, dict):
            out.extend(f"{k}.{s}" for s in sorted(x.keys() | y.keys()) if x.get(s) != y.get(s))
        else:
            out.append(k)
    return out


@dataclass
class VersionRecord:
    """One version of a job as the store remembers it: who submitted it and when, which
    fields it changed from the version before, and its spec as it last stood (changes that
    keep the version, such as replicas or priority, amend the record), so `rollback
    --to-version` can return to it."""

    version: int
    submitted_ms: int
    user: str
    changed: list[str]
    spec: JobSpec

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "submitted_ms": self.submitted_ms,
            "user": self.user,
            "changed": list(self.changed),
            "spec": self.spec.to_dict(),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> VersionRecord:
        return cls(
            version=int(d["version"]),
            submitted_ms=int(d["submitted_ms"]),
            user=str(d["user"]),
            changed=[str(c) for c in d["changed"]],
            spec=JobSpec.from_dict(d["spec"]),
        )


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
    # A RolloutState as stored: "" (none in progress), "rolling", "canary" or "halted: <why>"
    # (cfg.model.halted_rollout; read it with rollout_state).
    rollout: str = ""
    # Surge tasks (update.max_surge): extra new-version tasks at indices replicas ..
    # replicas+surge-1 that keep capacity up while a rollout replaces the others. Zero
    # outside a rollout; left out of to_dict when zero, so older states encode as before.
    surge: int = 0
    # The last VERSION_MEMORY versions, oldest first (`borgcfg history`). Left out of to_dict
    # when empty, so states from before version records encode as before.
    versions: list[VersionRecord] = field(default_factory=list)
    # The version whose canary stage is over (`borgcfg promote`, or a version made by an
    # automatic revert, which rolls out whole); and the version an automatic revert made
    # (never itself reverted: that would flip back to the broken one). 0: none; left out of
    # to_dict when 0.
    canary_passed: int = 0
    reverted_to: int = 0
    # Periodic jobs (spec.periodic): the fire time of the last launch (ms), and the children
    # launched and still kept, oldest first; a child names its parent. Left out when empty.
    last_scheduled_ms: int = 0
    children: list[str] = field(default_factory=list)
    parent: str = ""

    @property
    def name(self) -> str:
        return self.spec.name

    def spec_for(self, version: int) -> JobSpec:
        """The spec a task of `version` runs (the current one if that version is gone)."""
        if version == self.version:
            return self.spec
        return self.history.get(version, self.spec)

    def to_dict(self) -> dict[str, Any]:
        return (
            {
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
            | ({"surge": self.surge} if self.surge else {})
            | ({"versions": [r.to_dict() for r in self.versions]} if self.versions else {})
            | ({"canary_passed": self.canary_passed} if self.canary_passed else {})
            | ({"reverted_to": self.reverted_to} if self.reverted_to else {})
            | ({"last_scheduled_ms": self.last_scheduled_ms} if self.last_scheduled_ms else {})
            | ({"children": list(self.children)} if self.children else {})
            | ({"parent": self.parent} if self.parent else {})
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Job:
        d = dict(d)
        d["spec"] = JobSpec.from_dict(d["spec"])
        d["history"] = {int(v): JobSpec.from_dict(s) for v, s in d.get("history") or []}
        d["versions"] = [VersionRecord.from_dict(r) for r in d.get("versions") or []]
        return cls(**d)

    def version_record(self, version: int) -> VersionRecord | None:
        """The remembered record of `version`, if it is still kept."""
        for r in self.versions:
            if r.version == version:
                return r
        return None


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
    # The machine's GPU devices this incarnation holds, whole (the master's choice, carried
    # in its Placement); left out of to_dict when empty so older states encode as before.
    gpus: list[str] = field(default_factory=list)

    @property
    def key(self) -> tuple[str, int]:
        return (self.job, self.index)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        if not self.gpus:
            del d["gpus"]
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Task:
        return cls(**d)


@dataclass
class Machine:
    """A Borglet's machine as registered with the cell."""

    name: str
    address: str = ""  # the Borglet's gRPC address
    http: str = ""
    capacity: Resources = field(default_factory=Resources)
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    state: str = MACHINE_UP
    registered_ms: int = 0
    # Accounts the Borglet lets tasks run as ([]: it did not say, e.g. an older Borglet).
    task_users: list[str] = field(default_factory=list)
    # The GPU devices the Borglet offers, by stable id (its device index as a string), healthy
    # ones only. []: none named (an older Borglet): then "0".."capacity.gpu-1". Left out of
    # to_dict when empty so older states encode as before.
    gpus: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["taints"] = [t.to_dict() for t in self.taints]
        if not self.gpus:
            del d["gpus"]
        return d

    def gpu_devices(self) -> list[str]:
        """The devices tasks may be given: the named ones, else one per counted GPU."""
        if self.gpus:
            return list(self.gpus)
        return [str(i) for i in range(max(0, self.capacity.gpu))]

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Machine:
        d = dict(d)
        d["capacity"] = Resources.from_dict(d.get("capacity") or {})
        d["taints"] = [Taint.from_dict(t) for t in d.get("taints") or []]
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
