"""Typed Raft commands: one type byte followed by a msgpack map.

Every change to the cell's state is one of these, decoded by our own code (never pickle) and
applied deterministically by `store.Store.apply`. Anything that would differ between replicas
(the time, random incarnation ids, the leader's decisions) is decided before the command is
proposed and travels inside it.

Commands and their nested parts (placements, task updates, specs, machines, quota limits) are
typed dataclasses; the wire form is unchanged since the untyped v1 commands (same field names
and shapes), so existing journals and snapshots still load: tests/unit/test_commands_compat.py
replays entries written by the v1 code.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import MISSING, dataclass, field, fields, is_dataclass
from enum import Enum, IntEnum
from typing import Any, ClassVar, Literal, Union, get_args, get_origin, get_type_hints

import msgpack

from borgmaster.model import HealthCheck, JobSpec, Machine, Replica
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
    PROMOTE = 16
    REVERT_ROLLOUT = 17
    LAUNCH_PERIODIC = 18


class CommandError(ValueError):
    """An entry that is not a well-formed command (unknown type, bad fields)."""


# ----- nested parts ----------------------------------------------------------------------
#
# Each nested part is a dataclass with `to_wire` / `from_wire`. The wire form is frozen: the
# same msgpack field names, shapes and key order the untyped commands wrote (v1, pinned by
# tests/data/commands-v1.msgpack), so journals and snapshots of existing data dirs decode and
# apply to the same state, and a decoded entry re-encodes to the same bytes. Fields a past
# producer did not always write are `X | None` with None meaning "absent on the wire"; they
# are omitted again on encode. `from_wire` checks every type and raises CommandError, which
# the store turns into an error value: a replicated method must never raise.


@dataclass
class Placement:
    """Put task (job, index) on `machine` as a new incarnation of the job's `version`.
    Wire: {job, index, machine, incarnation, version[, gpus]}.

    `gpus`: the machine's GPU devices the task gets, whole, decided by the leader (the
    store checks them: offered by the machine, held by no other task, as many as the job
    asks). None: absent on the wire (entries from before device assignment); omitted again
    on encode."""

    job: str
    index: int
    machine: str
    incarnation: str
    version: int
    gpus: list[str] | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "job": self.job,
            "index": self.index,
            "machine": self.machine,
            "incarnation": self.incarnation,
            "version": self.version,
        }
        if self.gpus is not None:
            d["gpus"] = self.gpus
        return d

    @classmethod
    def from_wire(cls, v: Any, path: str) -> Placement:
        # Fast path first (a plan can hold thousands; msgpack gives exact types), then the
        # field-by-field checks that say what is wrong.
        if type(v) is dict and len(v) == 5 and _PLACEMENT_V1_KEYS.issuperset(v):
            job, index, machine = v["job"], v["index"], v["machine"]
            incarnation, version = v["incarnation"], v["version"]
            if (
                type(job) is str
                and type(index) is int
                and type(machine) is str
                and type(incarnation) is str
                and type(version) is int
            ):
                return cls(job, index, machine, incarnation, version)
        d = _record(v, path, _PLACEMENT_KEYS)
        gpus = d.get("gpus")
        if gpus is not None:
            _check_wire(gpus, list[str], f"{path}.gpus")
        return cls(
            job=_req(d, "job", str, path),
            index=_req(d, "index", int, path),
            machine=_req(d, "machine", str, path),
            incarnation=_req(d, "incarnation", str, path),
            version=_req(d, "version", int, path),
            gpus=gpus,
        )


@dataclass
class Preemption:
    """Evict the placed copy (job, index, incarnation) on `machine` before placing; it goes
    back to pending. Wire: {job, index, incarnation, machine, reason}."""

    job: str
    index: int
    incarnation: str
    machine: str
    reason: str = ""

    def to_wire(self) -> dict[str, Any]:
        return {
            "job": self.job,
            "index": self.index,
            "incarnation": self.incarnation,
            "machine": self.machine,
            "reason": self.reason,
        }

    @classmethod
    def from_wire(cls, v: Any, path: str) -> Preemption:
        d = _record(v, path, _PREEMPTION_KEYS)
        return cls(
            job=_req(d, "job", str, path),
            index=_req(d, "index", int, path),
            incarnation=_req(d, "incarnation", str, path),
            machine=_req(d, "machine", str, path),
            reason=_opt(d, "reason", str, path, ""),
        )


@dataclass
class PlanFailure:
    """Task (job, index) stays pending, and why (`why pending`). Wire: [job, index, reason]."""

    job: str
    index: int
    reason: str

    def to_wire(self) -> list[Any]:
        return [self.job, self.index, self.reason]

    @classmethod
    def from_wire(cls, v: Any, path: str) -> PlanFailure:
        if type(v) is list and len(v) == 3:
            job, index, reason = v
            if type(job) is str and type(index) is int and type(reason) is str:
                return cls(job, index, reason)
        job, index, reason = _tuple(v, path, (str, int, str))
        return cls(job, index, reason)


@dataclass
class TaskRef:
    """One placed copy of a job's task: index and incarnation. Wire: [index, incarnation]."""

    index: int
    incarnation: str

    def to_wire(self) -> list[Any]:
        return [self.index, self.incarnation]

    @classmethod
    def from_wire(cls, v: Any, path: str) -> TaskRef:
        if type(v) is list and len(v) == 2 and type(v[0]) is int and type(v[1]) is str:
            return cls(v[0], v[1])
        index, incarnation = _tuple(v, path, (int, str))
        return cls(index, incarnation)


@dataclass
class TaskUpdate:
    """A copy's observed state as its Borglet reported it. Wire: {job, index, incarnation,
    state, exit_code, reason[, restarts][, health][, ports]}.

    `restarts` None: not reported (keep the task's count); `health` None: not reported (the
    entries from before health checks; the store records ""); `ports` None: not reported
    (keep the task's ports, e.g. the update that says a vanished copy was killed)."""

    job: str
    index: int
    incarnation: str
    state: str
    exit_code: int | None = None
    reason: str = ""
    restarts: int | None = None
    health: str | None = None
    ports: dict[str, int] | None = None

    def to_wire(self) -> dict[str, Any]:
        d: dict[str, Any] = {
            "job": self.job,
            "index": self.index,
            "incarnation": self.incarnation,
            "state": self.state,
            "exit_code": self.exit_code,
            "reason": self.reason,
        }
        if self.restarts is not None:
            d["restarts"] = self.restarts
        if self.health is not None:
            d["health"] = self.health
        if self.ports is not None:
            d["ports"] = self.ports  # packed at once: no copy needed
        return d

    @classmethod
    def from_wire(cls, v: Any, path: str) -> TaskUpdate:
        if type(v) is dict and _TASK_UPDATE_KEYS.issuperset(v):
            g = v.get
            job, index, incarnation, state = g("job"), g("index"), g("incarnation"), g("state")
            exit_code, reason = g("exit_code"), g("reason", "")
            restarts, health, ports = g("restarts"), g("health"), g("ports")
            if (
                type(job) is str
                and type(index) is int
                and type(incarnation) is str
                and type(state) is str
                and (exit_code is None or type(exit_code) is int)
                and type(reason) is str
                and (restarts is None or type(restarts) is int)
                and (health is None or type(health) is str)
                and (
                    ports is None
                    or (
                        type(ports) is dict
                        and all(type(k) is str and type(p) is int for k, p in ports.items())
                    )
                )
            ):
                return cls(
                    job, index, incarnation, state, exit_code, reason, restarts, health, ports
                )
        d = _record(v, path, _TASK_UPDATE_KEYS)
        ports = d.get("ports")
        if ports is not None:
            _check_wire(ports, dict[str, int], f"{path}.ports")
        return cls(
            job=_req(d, "job", str, path),
            index=_req(d, "index", int, path),
            incarnation=_req(d, "incarnation", str, path),
            state=_req(d, "state", str, path),
            exit_code=_opt(d, "exit_code", int, path, None),
            reason=_opt(d, "reason", str, path, ""),
            restarts=_opt(d, "restarts", int, path, None),
            health=_opt(d, "health", str, path, None),
            ports=ports,
        )


@dataclass
class QuotaLimit:
    """The limits a SetQuota gives: an amount, or UNLIMITED (any negative amount); None is a
    resource not given (the store keeps its current limit). Wire: a map holding only the
    given resources, in the order cpu, ram, disk, gpu. Entries from before partial limits
    carry all four. Finiteness is the store's check (its error is part of the replicated
    state: a request id remembers it)."""

    cpu: float | None = None
    ram: int | None = None
    disk: int | None = None
    gpu: int | None = None

    def given(self) -> dict[str, float]:
        """The resources this sets, by name."""
        return {k: v for k in QUOTA_FIELDS if (v := getattr(self, k)) is not None}

    def to_wire(self) -> dict[str, Any]:
        return dict(self.given())

    @classmethod
    def from_wire(cls, v: Any, path: str) -> QuotaLimit:
        if not isinstance(v, dict):
            raise CommandError(f"{path}: expected a map, not {_show(v)}")
        unknown = [k for k in v if k not in QUOTA_FIELDS]
        if unknown:
            raise CommandError(f"{path}: unknown resource(s) {sorted(unknown, key=str)}")
        for k, x in v.items():
            if not _is(x, float if k == "cpu" else int):
                raise CommandError(f"{path}: {k} must be a number, not {x!r}")
        return cls(**v)


QUOTA_FIELDS = ("cpu", "ram", "disk", "gpu")
"""What a quota may limit (disk is recorded and shown, but not admitted against)."""


# ----- commands --------------------------------------------------------------------------


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
    """Create or update a job. Wire: `spec` is `JobSpec.to_dict()` (the contract's form)."""

    type: ClassVar[CommandType] = CommandType.SUBMIT_JOB
    spec: JobSpec = field(default_factory=lambda: JobSpec(name=""))
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
    """A Borglet's machine joins (or comes back). Wire: `machine` is `Machine.to_dict()`."""

    type: ClassVar[CommandType] = CommandType.REGISTER_MACHINE
    machine: Machine = field(default_factory=lambda: Machine(name=""))


@dataclass
class ApplyPlan(Command):
    """A scheduler pass's result. The store re-checks each placement against its own state
    (the task is still waiting, the machine is up and has room) so a plan computed on a stale
    snapshot can only partially apply, never overcommit a machine."""

    type: ClassVar[CommandType] = CommandType.APPLY_PLAN
    placements: list[Placement] = field(default_factory=list)
    failures: list[PlanFailure] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)  # victims, evicted first


@dataclass
class TaskUpdates(Command):
    """Observed task states from one machine's Borglet, coalesced by the leader."""

    type: ClassVar[CommandType] = CommandType.TASK_UPDATES
    machine: str = ""
    updates: list[TaskUpdate] = field(default_factory=list)


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
    """A master replica announces itself. Wire: `replica` is `Replica.to_dict()`."""

    type: ClassVar[CommandType] = CommandType.REGISTER_REPLICA
    replica: Replica = field(default_factory=lambda: Replica(id="", raft="", grpc=""))


@dataclass
class LeaderElected(Command):
    """Proposed by a new leader before its loops act: raises the store's fence to its term."""

    type: ClassVar[CommandType] = CommandType.LEADER_ELECTED
    replica: str = ""


@dataclass
class ReplaceTasks(Command):
    """Send tasks back to the queue at the job's current version (rolling update, drain).
    A task whose incarnation moved on is left alone."""

    type: ClassVar[CommandType] = CommandType.REPLACE_TASKS
    job: str = ""
    tasks: list[TaskRef] = field(default_factory=list)
    reason: str = ""


@dataclass
class SetRollout(Command):
    """Record a rollout's status ("" done, "rolling", "halted: why"; cfg.model.RolloutState)."""

    type: ClassVar[CommandType] = CommandType.SET_ROLLOUT
    job: str = ""
    version: int = 0
    status: str = ""


@dataclass
class Rollback(Command):
    """Return a job to its previous version, or with `version` to that remembered version.
    `version` is left off the wire when 0, so entries from before it re-encode the same."""

    type: ClassVar[CommandType] = CommandType.ROLLBACK
    name: str = ""
    user: str = ""
    version: int = field(default=0, metadata={"omit_default": True})


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
    limit: QuotaLimit = field(default_factory=QuotaLimit)


@dataclass
class GcJobs(Command):
    """Forget killed or finished jobs past their retention."""

    type: ClassVar[CommandType] = CommandType.GC_JOBS
    names: list[str] = field(default_factory=list)


@dataclass
class Promote(Command):
    """`borgcfg promote`: end the canary stage of the job's current version."""

    type: ClassVar[CommandType] = CommandType.PROMOTE
    name: str = ""
    user: str = ""


@dataclass
class RevertRollout(Command):
    """The leader's rollout controller rolls `version` back (update.auto_revert): its tasks
    failed, restarted too often or turned unhealthy. Fenced; a no-op once `version` is no
    longer the job's current one, so a late or repeated decision changes nothing."""

    type: ClassVar[CommandType] = CommandType.REVERT_ROLLOUT
    job: str = ""
    version: int = 0
    reason: str = ""


@dataclass
class LaunchPeriodic(Command):
    """The leader's periodic controller starts periodic job `job`'s run for the fire time
    `scheduled_ms` (decided with its clock, stamped here: apply reads none). Fenced; a fire
    time at or before the job's last launched one is refused, so a repeated or late decision
    (a failover) never starts a run twice."""

    type: ClassVar[CommandType] = CommandType.LAUNCH_PERIODIC
    job: str = ""
    scheduled_ms: int = 0


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
        Promote,
        RevertRollout,
        LaunchPeriodic,
    )
}


# ----- encode / decode -------------------------------------------------------------------

_NO_OMIT: Any = object()
Encoder = Callable[[Any], Any]
Decoder = Callable[[Any, str], Any]


def _model_decoder(cls: type, build: Callable[[dict[str, Any]], Any]) -> Decoder:
    """A contract record (JobSpec, Machine, Replica): its wire form is its own `to_dict`, so
    check the map against the class's type hints, then let the class build itself."""

    def decode(v: Any, path: str) -> Any:
        _check_wire(v, cls, path)
        try:
            return build(v)
        except Exception as e:  # a shape the checks let through but the class refuses
            raise CommandError(f"{path}: {type(e).__name__}: {e}") from None

    return decode


# How each typed nested part travels: (to wire, from wire).
_CODECS: dict[Any, tuple[Encoder, Decoder]] = {
    Placement: (Placement.to_wire, Placement.from_wire),
    Preemption: (Preemption.to_wire, Preemption.from_wire),
    PlanFailure: (PlanFailure.to_wire, PlanFailure.from_wire),
    TaskRef: (TaskRef.to_wire, TaskRef.from_wire),
    TaskUpdate: (TaskUpdate.to_wire, TaskUpdate.from_wire),
    QuotaLimit: (QuotaLimit.to_wire, QuotaLimit.from_wire),
    JobSpec: (JobSpec.to_dict, _model_decoder(JobSpec, JobSpec.from_dict)),
    Machine: (Machine.to_dict, _model_decoder(Machine, Machine.from_dict)),
    Replica: (Replica.to_dict, _model_decoder(Replica, lambda d: Replica(**d))),
}


@dataclass(frozen=True)
class _FieldCodec:
    name: str
    encode: Encoder | None  # None: plain data, sent as it is
    decode: Decoder
    # A field added after v1 with metadata {"omit_default": True}: left off the wire at its
    # default, so older entries decode and re-encode to the same bytes.
    omit: Any = _NO_OMIT


def _field_codec(name: str, tp: Any) -> _FieldCodec:
    codec = _CODECS.get(tp)
    if codec is not None:
        return _FieldCodec(name, codec[0], codec[1])
    if get_origin(tp) is list and get_args(tp)[0] in _CODECS:
        enc, dec = _CODECS[get_args(tp)[0]]

        def enc_list(v: Any) -> Any:
            return [enc(x) for x in v]

        def dec_list(v: Any, path: str) -> Any:
            if not isinstance(v, list):
                raise CommandError(f"{path}: expected a list, not {_show(v)}")
            try:
                return [dec(x, path) for x in v]
            except CommandError:
                # Say which element: only on the error path, not per element of every entry.
                for i, x in enumerate(v):
                    dec(x, f"{path}[{i}]")
                raise

        return _FieldCodec(name, enc_list, dec_list)

    def check(v: Any, path: str) -> Any:
        _check_wire(v, tp, path)
        return v

    return _FieldCodec(name, None, check)


def _with_omit(c: _FieldCodec, f: Any) -> _FieldCodec:
    if not f.metadata.get("omit_default"):
        return c
    return _FieldCodec(c.name, c.encode, c.decode, f.default)


# Field codecs per command class, computed once: every replica decodes every entry, and
# `dataclasses.fields` / type hints rebuilt per decode would be a visible share of apply.
_CODECS_OF: dict[type, dict[str, _FieldCodec]] = {}


def _codecs_of(cls: type) -> dict[str, _FieldCodec]:
    cs = _CODECS_OF.get(cls)
    if cs is None:
        hints = _hints(cls)
        cs = _CODECS_OF[cls] = {
            f.name: _with_omit(_field_codec(f.name, hints[f.name]), f) for f in fields(cls)
        }
    return cs


def encode(cmd: Command) -> bytes:
    """Serialise a command: its type byte, then its fields as a msgpack map (nested parts in
    their v1 wire form). Plain fields go as they are; `dataclasses.asdict` would deep-copy
    every nested spec on the write path."""
    body = {
        name: (c.encode(v) if c.encode is not None else v)
        for name, c in _codecs_of(type(cmd)).items()
        for v in (getattr(cmd, name),)
        if c.omit is _NO_OMIT or v != c.omit
    }
    return bytes([int(cmd.type)]) + msgpack.packb(body, use_bin_type=True)


def decode(entry: bytes) -> Command:
    """Parse an entry made by `encode`; raise CommandError for anything else: an unknown type,
    unknown fields, or any field (nested parts included) of the wrong type or shape."""
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
    codecs = _codecs_of(cls)
    if not codecs.keys() >= body.keys():
        unknown = set(body) - set(codecs)
        raise CommandError(f"{cls.__name__} has unknown fields {sorted(unknown, key=repr)}")
    try:
        kwargs = {k: codecs[k].decode(v, f"{cls.__name__}.{k}") for k, v in body.items()}
        return cls(**kwargs)
    except CommandError:
        raise
    except Exception as e:  # never anything but CommandError out of decode
        raise CommandError(f"bad {cls.__name__}: {type(e).__name__}: {e}") from None


# ----- wire checks -----------------------------------------------------------------------

_PLACEMENT_V1_KEYS = frozenset(("job", "index", "machine", "incarnation", "version"))
_PLACEMENT_KEYS = _PLACEMENT_V1_KEYS | {"gpus"}
_PREEMPTION_KEYS = frozenset(("job", "index", "incarnation", "machine", "reason"))
_TASK_UPDATE_KEYS = frozenset(
    ("job", "index", "incarnation", "state", "exit_code", "reason", "restarts", "health", "ports")
)
_MISSING: Any = object()
_HINTS: dict[type, dict[str, Any]] = {}


def _hints(cls: type) -> dict[str, Any]:
    """A dataclass's field types, resolved once (annotations are strings here)."""
    h = _HINTS.get(cls)
    if h is None:
        h = _HINTS[cls] = get_type_hints(cls)
    return h


def _show(v: Any) -> str:
    return f"{type(v).__name__} {v!r:.60}"


def _is(v: Any, tp: type) -> bool:
    """msgpack's view of a scalar type: bool is not a number, an int is a float."""
    if tp is bool:
        return isinstance(v, bool)
    if isinstance(v, bool):
        return False
    if tp is float:
        return isinstance(v, (int, float))
    return isinstance(v, tp)


def _record(v: Any, path: str, keys: frozenset[str]) -> dict[str, Any]:
    if not isinstance(v, dict):
        raise CommandError(f"{path}: expected a map, not {_show(v)}")
    if not keys.issuperset(v):
        raise CommandError(f"{path}: unknown fields {sorted(set(v) - keys, key=repr)}")
    return v


def _req(d: dict[str, Any], key: str, tp: type, path: str) -> Any:
    v = d.get(key, _MISSING)
    if v is _MISSING:
        raise CommandError(f"{path}: missing {key}")
    if not _is(v, tp):
        raise CommandError(f"{path}.{key}: expected {tp.__name__}, not {_show(v)}")
    return v


def _opt(d: dict[str, Any], key: str, tp: type, path: str, default: Any) -> Any:
    v = d.get(key, default)
    if v is None or v is default:
        return v
    if not _is(v, tp):
        raise CommandError(f"{path}.{key}: expected {tp.__name__}, not {_show(v)}")
    return v


def _tuple(v: Any, path: str, types: tuple[type, ...]) -> list[Any]:
    if not isinstance(v, list) or len(v) != len(types):
        raise CommandError(f"{path}: expected a list of {len(types)}, not {_show(v)}")
    for i, (x, tp) in enumerate(zip(v, types, strict=True)):
        if not _is(x, tp):
            raise CommandError(f"{path}[{i}]: expected {tp.__name__}, not {_show(x)}")
    return v


# Contract records whose wire form is not the map of their fields (a health check is keyed by
# its kind): their own strict `from_dict` is the check.
_OWN_WIRE_FORM: dict[Any, Callable[[Any], Any]] = {HealthCheck: HealthCheck.from_dict}


def _check_wire(v: Any, tp: Any, path: str) -> None:
    """Check a decoded msgpack value against a type hint: scalars, `X | None`, lists, dicts,
    Literals, enums and dataclasses (as maps of their fields: unknown keys and missing
    required fields are errors). A hint of another kind is not checked."""
    if tp is Any or tp is object:
        return
    origin = get_origin(tp)
    if origin is Union or origin is types.UnionType:
        args = get_args(tp)
        if v is None and type(None) in args:
            return
        last: CommandError | None = None
        for a in args:
            if a is type(None):
                continue
            try:
                _check_wire(v, a, path)
                return
            except CommandError as e:
                last = e
        raise last or CommandError(f"{path}: unexpected {_show(v)}")
    if origin is list:
        if not isinstance(v, list):
            raise CommandError(f"{path}: expected a list, not {_show(v)}")
        (item,) = get_args(tp)
        for i, x in enumerate(v):
            _check_wire(x, item, f"{path}[{i}]")
        return
    if origin is dict:
        if not isinstance(v, dict):
            raise CommandError(f"{path}: expected a map, not {_show(v)}")
        kt, vt = get_args(tp)
        for k, x in v.items():
            _check_wire(k, kt, f"{path} key")
            _check_wire(x, vt, f"{path}[{k!r:.40}]")
        return
    if origin is Literal:
        if v not in get_args(tp):
            raise CommandError(f"{path}: {v!r:.60} is not one of {list(get_args(tp))}")
        return
    if origin is not None:
        return
    own = _OWN_WIRE_FORM.get(tp)
    if own is not None:
        try:
            own(v)
        except (ValueError, TypeError) as e:
            raise CommandError(f"{path}: {e}") from None
        return
    if is_dataclass(tp) and isinstance(tp, type):
        if not isinstance(v, dict):
            raise CommandError(f"{path}: expected a map, not {_show(v)}")
        hints = _hints(tp)
        fs = {f.name: f for f in fields(tp) if f.init}
        unknown = set(v) - set(fs)
        if unknown:
            raise CommandError(f"{path}: unknown fields {sorted(unknown, key=repr)}")
        for name, f in fs.items():
            if name in v:
                _check_wire(v[name], hints[name], f"{path}.{name}")
            elif f.default is MISSING and f.default_factory is MISSING:
                raise CommandError(f"{path}: missing {name}")
        return
    if isinstance(tp, type) and issubclass(tp, Enum):
        if v not in {m.value for m in tp}:
            raise CommandError(f"{path}: {v!r:.60} is not a {tp.__name__}")
        return
    if tp in (bool, int, float, str, bytes) and not _is(v, tp):
        raise CommandError(f"{path}: expected {tp.__name__}, not {_show(v)}")


def _resolve(tp: Any, seen: set[Any]) -> None:
    """Resolve the type hints of `tp` and of every dataclass inside it."""
    if tp in seen:
        return
    seen.add(tp)
    for arg in get_args(tp):
        _resolve(arg, seen)
    if is_dataclass(tp) and isinstance(tp, type):
        for hint in _hints(tp).values():
            _resolve(hint, seen)


# Resolve every hint at import: a hint that cannot be resolved (a model change) must fail
# loudly here, not turn every later entry of that command into a CommandError.
_seen: set[Any] = set()
for _cls in _BY_TYPE.values():
    _codecs_of(_cls)
    _resolve(_cls, _seen)
del _seen, _cls
