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
from collections.abc import Sequence
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
    # Move this many replicas to a new version first, then stop (rollout state `canary`)
    # until `borgcfg promote`; 0: no canary stage.
    canary: int = 0
    # The cell rolls a version back by itself when its tasks fail, restart
    # ROLLOUT_MAX_RESTARTS times or turn unhealthy during the rollout (event `reverted`).
    auto_revert: bool = False


CONCURRENCY = ("forbid", "allow", "replace")
"""What a periodic job does at a fire time while an earlier child still runs: skip this run
(forbid), start another beside it (allow), or kill it and start the new one (replace)."""


@dataclass
class Periodic:
    """`schedule` and its companions: the job is a template from which the master starts a
    child batch job `NAME-UNIXTIME` at each fire time (cfg/periodic.py)."""

    schedule: str
    concurrency: str = "forbid"
    history_limit: int = 3
    time_zone: str = "UTC"


@dataclass
class Constraint:
    attr: str
    op: str  # == != in not-in exists
    value: Any = None  # str for == / !=, list[str] for in / not-in, None for exists


@dataclass
class Toleration:
    """Lets a job's tasks onto machines with a matching taint (the key, and the value if named)."""

    key: str
    value: str | None = None

    def matches(self, taint: Taint) -> bool:
        return self.key == taint.key and (self.value is None or self.value == taint.value)


class TaintEffect(StrEnum):
    """What a machine's taint does to tasks that do not tolerate it.

    The values are Kubernetes' spellings because they are what `borglet --taint` takes and what
    machines have registered with (Raft entries, snapshots, the Sync protocol)."""

    NO_SCHEDULE = "NoSchedule"
    PREFER_NO_SCHEDULE = "PreferNoSchedule"
    # Not offered by `borglet --taint`; known so a machine that would evict a task (as in
    # Kubernetes) is not given one either. Nothing evicts here.
    NO_EXECUTE = "NoExecute"

    @property
    def rejects(self) -> bool:
        """Whether the effect keeps new untolerated tasks off the machine (Prefer only hints)."""
        return self is not TaintEffect.PREFER_NO_SCHEDULE


@dataclass(frozen=True)
class Taint:
    """A mark on a machine that keeps tasks without a matching toleration away.

    Wire form (`to_dict`): `{key, value, effect}`, as machines have always registered, so Raft
    entries, snapshots and API replies keep their bytes."""

    key: str
    value: str = ""
    effect: TaintEffect = TaintEffect.NO_SCHEDULE

    def to_dict(self) -> dict[str, Any]:
        return {"key": self.key, "value": self.value, "effect": self.effect.value}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Taint:
        """Strict (a wire form comes from Raft entries and Borglets): unknown keys, non-string
        fields and unknown effects raise ValueError."""
        if not isinstance(d, dict) or set(d) - {"key", "value", "effect"}:
            raise ValueError(f"a taint is a map of key, value, effect, not {d!r:.60}")
        key, value = d.get("key"), d.get("value", "")
        if not isinstance(key, str) or not isinstance(value, str):
            raise ValueError(f"a taint's key and value are strings, not {d!r:.60}")
        return cls(key=key, value=value, effect=TaintEffect(d.get("effect", "NoSchedule")))

    @classmethod
    def parse(cls, text: str) -> Taint:
        """`KEY=VALUE:EFFECT` (`borglet --taint`); ValueError when it is not that."""
        kv, sep, effect = text.rpartition(":")
        key, sep2, value = kv.partition("=")
        if not sep or not sep2 or not key:
            raise ValueError(f"{text!r} is not KEY=VALUE:EFFECT")
        return cls(key=key, value=value, effect=TaintEffect(effect))

    def flag(self) -> str:
        """The `KEY=VALUE:EFFECT` form `parse` reads (the web UI shows it)."""
        return f"{self.key}={self.value}:{self.effect.value}"

    def tolerated_by(self, tolerations: Sequence[Toleration]) -> bool:
        return any(t.matches(self) for t in tolerations)


class HealthKind(StrEnum):
    """How a health check probes a task: an HTTP GET, a TCP connect, or a command's exit."""

    HTTP = "http"
    TCP = "tcp"
    EXEC = "exec"


DEFAULT_HEALTH_INTERVAL_MS = 10_000
DEFAULT_HEALTH_TIMEOUT_MS = 1_000
DEFAULT_FAILURE_THRESHOLD = 3
_HEALTH_TIMING = ("interval_ms", "timeout_ms", "failure_threshold", "initial_delay_ms")


@dataclass
class HealthCheck:
    """A job's health check, normalised (cfg/schema.py builds it from the config's `health`).

    `port` (http, tcp) names one of the task's `requirements.ports`; the Borglet resolves it
    to the number it allocated. `path` is for http, `argv` for exec.

    Wire form (`to_dict`), unchanged from when checks were dicts, so Raft entries, snapshots and
    the Borglet's state file keep their bytes: the kind is the key of its body,
    `{"http": {port, path}}`, `{"tcp": {port}}` or `{"exec": [argv]}`, followed by
    `interval_ms`, `timeout_ms`, `failure_threshold`, `initial_delay_ms`."""

    kind: HealthKind
    port: str = ""
    path: str = "/"
    argv: list[str] = field(default_factory=list)
    interval_ms: int = DEFAULT_HEALTH_INTERVAL_MS
    timeout_ms: int = DEFAULT_HEALTH_TIMEOUT_MS
    failure_threshold: int = DEFAULT_FAILURE_THRESHOLD
    initial_delay_ms: int = 0

    def to_dict(self) -> dict[str, Any]:
        body: Any
        if self.kind is HealthKind.EXEC:
            body = list(self.argv)
        elif self.kind is HealthKind.HTTP:
            body = {"port": self.port, "path": self.path}
        else:
            body = {"port": self.port}
        return {
            self.kind.value: body,
            "interval_ms": self.interval_ms,
            "timeout_ms": self.timeout_ms,
            "failure_threshold": self.failure_threshold,
            "initial_delay_ms": self.initial_delay_ms,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> HealthCheck:
        """Strict (the wire form comes from Raft entries and state files): exactly one kind,
        no unknown keys, every field of its type; ValueError otherwise. A timing left out
        takes its default."""
        if not isinstance(d, dict):
            raise ValueError(f"a health check is a map, not {d!r:.60}")
        kinds = [k for k in HealthKind if k.value in d]
        if len(kinds) != 1:
            raise ValueError(f"a health check has exactly one of http, tcp, exec: {d!r:.60}")
        kind = kinds[0]
        unknown = set(d) - {kind.value, *_HEALTH_TIMING}
        if unknown:
            raise ValueError(f"unknown health check fields {sorted(unknown, key=repr)}")
        body = d[kind.value]
        check = cls(kind=kind)
        if kind is HealthKind.EXEC:
            if not isinstance(body, list) or not all(isinstance(a, str) for a in body):
                raise ValueError(f"health.exec is a list of strings, not {body!r:.60}")
            check.argv = list(body)
        else:
            allowed = {"port", "path"} if kind is HealthKind.HTTP else {"port"}
            if not isinstance(body, dict) or set(body) - allowed:
                raise ValueError(f"health.{kind.value} is a map of {sorted(allowed)}")
            if not all(isinstance(v, str) for v in body.values()):
                raise ValueError(f"health.{kind.value} holds strings, not {body!r:.60}")
            check.port = body.get("port", "")
            check.path = body.get("path", "/")
        for k in _HEALTH_TIMING:
            v = d.get(k)
            if v is None:
                continue
            if isinstance(v, bool) or not isinstance(v, int):
                raise ValueError(f"health.{k} is an integer, not {v!r:.60}")
            setattr(check, k, v)
        return check


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
    health: HealthCheck | None = None
    constraints: list[Constraint] = field(default_factory=list)
    tolerations: list[Toleration] = field(default_factory=list)
    spread: str | None = None
    # At most one task of the job per machine (the trace's "different machine" restriction).
    distinct_machines: bool = False
    update: UpdatePolicy = field(default_factory=UpdatePolicy)
    kill_timeout_ms: int = 10_000
    # All pending replicas are placed in one scheduler pass or none is (a training job whose
    # workers are useless alone); preemption may make room for the whole gang only.
    gang: bool = False
    # A periodic job's schedule (batch only); None: an ordinary job. Not part of the task
    # template: it says when children start, not what they run.
    periodic: Periodic | None = None

    def to_dict(self) -> dict[str, Any]:
        """Plain data (hand-written: `dataclasses.asdict` is slow on the write path)."""
        r, rs, u = self.requirements, self.restart, self.update
        return (
            {
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
                "health": None if self.health is None else self.health.to_dict(),
                "constraints": [
                    {"attr": c.attr, "op": c.op, "value": copy.deepcopy(c.value)}
                    for c in self.constraints
                ],
                "tolerations": [{"key": t.key, "value": t.value} for t in self.tolerations],
                "spread": self.spread,
                "distinct_machines": self.distinct_machines,
                # canary / auto_revert only when set: specs from before them encode as before
                # (journals, snapshots and digests of existing cells stay byte for byte).
                "update": {"max_unavailable": u.max_unavailable, "max_surge": u.max_surge}
                | ({"canary": u.canary} if u.canary else {})
                | ({"auto_revert": True} if u.auto_revert else {}),
                "kill_timeout_ms": self.kill_timeout_ms,
            }
            | (
                # gang and periodic only when set: older states encode as before
                {"gang": True} if self.gang else {}
            )
            | ({"periodic": asdict(self.periodic)} if self.periodic is not None else {})
        )

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> JobSpec:
        d = dict(d)
        d["requirements"] = Requirements(**d.get("requirements") or {})
        d["restart"] = RestartPolicy(**d.get("restart") or {})
        d["update"] = UpdatePolicy(**d.get("update") or {})
        d["constraints"] = [Constraint(**c) for c in d.get("constraints") or []]
        d["tolerations"] = [Toleration(**t) for t in d.get("tolerations") or []]
        if d.get("health") is not None:
            d["health"] = HealthCheck.from_dict(d["health"])
        if d.get("periodic") is not None:
            d["periodic"] = Periodic(**d["periodic"])
        return cls(**d)

    def task_template(self) -> dict[str, Any]:
        """The part of the spec that defines a task's process: a change here needs new tasks."""
        d = self.to_dict()
        # gang only says how pending tasks are placed: running ones need not move.
        for k in ("replicas", "update", "user", "priority", "gang", "periodic"):
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


class Reason(StrEnum):
    """The fixed words the master records as a pending or lost task's `reason` (and, for some,
    as event types). A reason may carry detail after its word (`no-feasible-machine: ram 3`,
    `preempted (no-feasible-machine: ...)`, `waiting for its previous copy on m1 to stop`):
    the wire keeps the string, `reason_word` reads the word back. A Borglet's reasons
    (`exit 1`, `oom-killed`, ...) are free text here."""

    PREEMPTED = "preempted"
    UPDATED = "updated"
    DRAINED = "drained"
    MACHINE_LOST = "machine-lost"
    NO_FEASIBLE_MACHINE = "no-feasible-machine"
    HELD = "waiting for its previous copy"


def with_detail(word: StrEnum, detail: str) -> str:
    """`word: detail` (or the word alone): the one spelling of a reason or rollout status that
    carries detail."""
    return f"{word.value}: {detail}" if detail else word.value


def reason_word(reason: str) -> Reason | None:
    """The fixed word `reason` starts with (the whole string, or the word followed by `:` or a
    space), or None for free text such as a Borglet's exit reason."""
    for word in Reason:
        w = word.value
        if reason.startswith(w) and (len(reason) == len(w) or reason[len(w)] in ": "):
            return word
    return None


class RolloutState(StrEnum):
    """Where a job's rolling update stands. `Job.rollout` stores it as a string: "" (none in
    progress), "rolling", or "halted: <why>" (`halted_rollout`); `rollout_state` reads it."""

    NONE = ""
    ROLLING = "rolling"
    HALTED = "halted"
    # update.canary replicas run the new version; the rest wait for `borgcfg promote`.
    CANARY = "canary"

    @property
    def in_progress(self) -> bool:
        """Rolling or stopped at its canary: the controllers watch the new version's tasks."""
        return self in (RolloutState.ROLLING, RolloutState.CANARY)


def halted_rollout(why: str) -> str:
    """The stored rollout status of a halted rollout: `halted: why`."""
    return with_detail(RolloutState.HALTED, why)


def rollout_state(rollout: str) -> RolloutState:
    """The state of a stored rollout status (anything unknown reads as halted: it is a
    status the master did not write, and a halt is the state that asks for a look)."""
    if rollout in (RolloutState.NONE, RolloutState.ROLLING, RolloutState.CANARY):
        return RolloutState(rollout)
    return RolloutState.HALTED


UNLIMITED = -1
"""A quota limit with no bound (in SetQuota requests and in the store)."""
QUOTA_KEEP = -2
"""In a SetQuota request: this limit was not given; keep the current one."""

MIN_READY_MS = 1000
"""A running task counts as ready (available) once it has run unchanged this long."""
MAX_BACKOFF_MS = 300_000
"""The longest a Borglet waits before restarting a task that keeps failing."""
