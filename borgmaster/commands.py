"""Typed Raft commands: one type byte followed by a msgpack map.

Every change to the cell's state is one of these, decoded by our own code (never pickle) and
applied deterministically by `store.Store.apply`. Anything that would differ between replicas
(the time, random incarnation ids, the leader's decisions) is decided before the command is
proposed and travels inside it.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from enum import IntEnum
from typing import Any, ClassVar

import msgpack

from cfg.model import QUOTA_KEEP, UNLIMITED

__all__ = ["QUOTA_KEEP", "UNLIMITED"]


class CommandType(IntEnum):
    NOOP = 0
    SUBMIT_JOB = 1
    KILL_JOB = 2
    REGISTER_MACHINE = 3
    APPLY_PLAN = 4
    TASK_UPDATES = 5
    MACHINE_LOST = 6
    REGISTER_REPLICA = 7
    SET_MACHINE_STATE = 8
    LEADER_ELECTED = 9
    REPLACE_TASKS = 10
    SET_ROLLOUT = 11
    ROLLBACK = 12
    SET_QUOTA = 13
    GC_JOBS = 14
    BATCH = 15


class CommandError(ValueError):
    """An entry that is not a well-formed command (unknown type, bad fields)."""


@dataclass
class Command:
    type: ClassVar[CommandType]
    ts_ms: int = 0
    request_id: str = ""
    # Raft term of the leader whose loop decided this (0 for client writes). The store rejects
    # a fenced command older than the newest LeaderElected it has applied, so a deposed
    # leader's scheduler or controller cannot apply stale decisions.
    term: int = 0


@dataclass
class Noop(Command):
    """A barrier: once applied, every write before it is applied on this replica too."""

    type: ClassVar[CommandType] = CommandType.NOOP


@dataclass
class SubmitJob(Command):
    type: ClassVar[CommandType] = CommandType.SUBMIT_JOB
    spec: dict[str, Any] = field(default_factory=dict)  # JobSpec.to_dict()
    must_exist: bool = False
    # Who is acting (the request's user). A live job is updated only by its owner; "" (an
    # API client that names nobody, or an entry from before this field) is not checked.
    user: str = ""


@dataclass
class KillJob(Command):
    type: ClassVar[CommandType] = CommandType.KILL_JOB
    name: str = ""
    user: str = ""  # who is acting; as for SubmitJob, "" is not checked


@dataclass
class RegisterMachine(Command):
    type: ClassVar[CommandType] = CommandType.REGISTER_MACHINE
    machine: dict[str, Any] = field(default_factory=dict)  # Machine.to_dict()


@dataclass
class Placement:
    job: str
    index: int
    machine: str
    incarnation: str
    version: int


@dataclass
class ApplyPlan(Command):
    """A scheduler pass's result. The store re-checks each placement against its own state
    (the task is still waiting, the machine is up and has room) so a plan computed on a stale
    snapshot can only partially apply, never overcommit a machine."""

    type: ClassVar[CommandType] = CommandType.APPLY_PLAN
    placements: list[dict[str, Any]] = field(default_factory=list)  # Placement as dicts
    failures: list[list[Any]] = field(default_factory=list)  # [job, index, reason]
    # Victims to evict first: {job, index, incarnation, machine, reason}.
    preemptions: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class TaskUpdates(Command):
    """Observed task states from one machine's Borglet, coalesced by the leader."""

    type: ClassVar[CommandType] = CommandType.TASK_UPDATES
    machine: str = ""
    # {job, index, incarnation, state, exit_code, reason, restarts}
    updates: list[dict[str, Any]] = field(default_factory=list)


@dataclass
class MachineLost(Command):
    type: ClassVar[CommandType] = CommandType.MACHINE_LOST
    name: str = ""


@dataclass
class SetMachineState(Command):
    type: ClassVar[CommandType] = CommandType.SET_MACHINE_STATE
    name: str = ""
    state: str = ""


@dataclass
class RegisterReplica(Command):
    type: ClassVar[CommandType] = CommandType.REGISTER_REPLICA
    replica: dict[str, Any] = field(default_factory=dict)  # Replica.to_dict()


@dataclass
class LeaderElected(Command):
    """Proposed by a new leader before its loops act: raises the store's fence to its term."""

    type: ClassVar[CommandType] = CommandType.LEADER_ELECTED
    replica: str = ""


@dataclass
class ReplaceTasks(Command):
    """Send tasks back to the queue at the job's current version (rolling update, drain).
    Each entry is [index, incarnation]; a task whose incarnation moved on is left alone."""

    type: ClassVar[CommandType] = CommandType.REPLACE_TASKS
    job: str = ""
    tasks: list[list[Any]] = field(default_factory=list)
    reason: str = ""


@dataclass
class SetRollout(Command):
    """Record a rollout's status ("" done, "halted: why")."""

    type: ClassVar[CommandType] = CommandType.SET_ROLLOUT
    job: str = ""
    version: int = 0
    status: str = ""


@dataclass
class Rollback(Command):
    type: ClassVar[CommandType] = CommandType.ROLLBACK
    name: str = ""
    user: str = ""


# A quota limit of UNLIMITED (any negative amount) does not limit that resource; QUOTA_KEEP is
# on the wire only (SetQuotaRequest.quota.limit, whose fields have no presence): "this resource
# was not given: keep its current limit", never stored. Both are the contract's (cfg.model).


@dataclass
class SetQuota(Command):
    """Set some of a user's limits in a band. `limit` holds only the resources given (an
    amount, or UNLIMITED); the store keeps the current limit of every resource left out,
    or UNLIMITED when the user had no quota there. Entries from before partial limits
    carry all four resources, so they still replace the whole quota."""

    type: ClassVar[CommandType] = CommandType.SET_QUOTA
    user: str = ""
    band: str = ""
    limit: dict[str, Any] = field(default_factory=dict)  # a subset of Resources.to_dict()


@dataclass
class GcJobs(Command):
    """Forget killed or finished jobs past their retention."""

    type: ClassVar[CommandType] = CommandType.GC_JOBS
    names: list[str] = field(default_factory=list)


@dataclass
class Batch(Command):
    """Several client commands coalesced into one Raft entry; results come back in order."""

    type: ClassVar[CommandType] = CommandType.BATCH
    entries: list[bytes] = field(default_factory=list)


_BY_TYPE: dict[int, type[Command]] = {
    c.type: c
    for c in (
        Noop,
        SubmitJob,
        KillJob,
        RegisterMachine,
        ApplyPlan,
        TaskUpdates,
        MachineLost,
        SetMachineState,
        RegisterReplica,
        LeaderElected,
        ReplaceTasks,
        SetRollout,
        Rollback,
        SetQuota,
        GcJobs,
        Batch,
    )
}


def encode(cmd: Command) -> bytes:
    """Serialise a command: its type byte, then its fields as a msgpack map.

    Field values are plain data already (dicts, lists, scalars), so a shallow map is enough;
    `dataclasses.asdict` would deep-copy every nested spec on the write path."""
    body = {f.name: getattr(cmd, f.name) for f in _fields_of(type(cmd))}
    return bytes([int(cmd.type)]) + msgpack.packb(body, use_bin_type=True)


_FIELDS: dict[type, tuple[Any, ...]] = {}
# Field names per command class, computed once: every replica decodes every entry, and
# `dataclasses.fields` rebuilt per decode was a visible share of the apply path.
_NAMES: dict[type, frozenset[str]] = {}


def _fields_of(cls: type) -> tuple[Any, ...]:
    fs = _FIELDS.get(cls)
    if fs is None:
        fs = _FIELDS[cls] = fields(cls)
    return fs


def _names_of(cls: type) -> frozenset[str]:
    names = _NAMES.get(cls)
    if names is None:
        names = _NAMES[cls] = frozenset(f.name for f in _fields_of(cls))
    return names


def decode(entry: bytes) -> Command:
    """Parse an entry made by `encode`; raise CommandError for anything else."""
    if not entry:
        raise CommandError("empty entry")
    cls = _BY_TYPE.get(entry[0])
    if cls is None:
        raise CommandError(f"unknown command type {entry[0]}")
    try:
        body = msgpack.unpackb(entry[1:], raw=False, strict_map_key=False)
    except Exception as e:
        raise CommandError(f"undecodable {cls.__name__}: {e}") from None
    if not isinstance(body, dict):
        raise CommandError(f"{cls.__name__} body is not a map")
    names = _names_of(cls)
    if not names.issuperset(body):
        unknown = set(body) - names
        raise CommandError(f"{cls.__name__} has unknown fields {sorted(unknown, key=repr)}")
    try:
        return cls(**body)
    except TypeError as e:
        raise CommandError(f"bad {cls.__name__}: {e}") from None
