"""Raft command encoding: exact round trips, and CommandError for anything malformed."""

from __future__ import annotations

import dataclasses

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from borgmaster import commands as C
from borgmaster.model import JobSpec, Machine, Replica, Resources

SAMPLES: list[C.Command] = [
    C.Noop(ts_ms=1, request_id="r0"),
    C.SubmitJob(
        ts_ms=2,
        request_id="r1",
        spec=JobSpec(name="hello", replicas=3, command=["echo", "hi"]),
        must_exist=True,
    ),
    C.KillJob(ts_ms=3, name="hello"),
    C.RegisterMachine(
        ts_ms=4,
        machine=Machine(name="m1", address="127.0.0.1:1", capacity=Resources(cpu=4, ram=8 << 30)),
    ),
    C.ApplyPlan(
        ts_ms=5,
        placements=[C.Placement("hello", 0, "m1", "inc-1", 1)],
        failures=[C.PlanFailure("hello", 1, "no-feasible-machine: no machines in the cell")],
        preemptions=[C.Preemption("low", 2, "inc-0", "m1", "preempted by hello/0")],
    ),
    C.TaskUpdates(
        ts_ms=6,
        machine="m1",
        updates=[
            C.TaskUpdate("hello", 0, "inc-1", "running", -1, "", restarts=0),
            C.TaskUpdate("hello", 1, "inc-2", "failed", 1, "x", 2, "unhealthy", {"http": 1}),
        ],
    ),
    C.MachineLost(ts_ms=7, name="m1"),
    C.RegisterReplica(ts_ms=8, replica=Replica(id="a", raft="h:1", grpc="h:2")),
    C.SetMachineState(ts_ms=9, name="m1", state="draining"),
    C.LeaderElected(ts_ms=10, term=4, replica="a"),
    C.ReplaceTasks(ts_ms=11, job="hello", tasks=[C.TaskRef(0, "inc-1")], reason="updated", term=4),
    C.SetRollout(ts_ms=12, job="hello", version=2, status="halted: x", term=4),
    C.Rollback(ts_ms=13, name="hello", user="u"),
    C.SetQuota(ts_ms=14, user="u", band="batch", limit=C.QuotaLimit(cpu=1.0, ram=1, disk=0, gpu=0)),
    C.GcJobs(ts_ms=15, names=["hello"], term=4),
    C.Batch(ts_ms=16, entries=[C.encode(C.Noop()), C.encode(C.KillJob(name="x"))]),
    C.Promote(ts_ms=17, name="hello", user="u"),
    C.RevertRollout(ts_ms=18, job="hello", version=3, reason="task 0 failed", term=4),
    C.Rollback(ts_ms=19, name="hello", user="u", version=2),
    C.LaunchPeriodic(ts_ms=20, job="nightly", scheduled_ms=1_800_000_000_000, term=4),
]


def test_samples_cover_every_command_type() -> None:
    assert {type(c).type for c in SAMPLES} == set(C.CommandType)


@pytest.mark.parametrize("cmd", SAMPLES, ids=lambda c: type(c).__name__)
def test_encode_decode_round_trip(cmd: C.Command) -> None:
    entry = C.encode(cmd)
    assert entry[0] == int(cmd.type)
    back = C.decode(entry)
    assert type(back) is type(cmd)
    assert back == cmd


@pytest.mark.parametrize("cls", [C._BY_TYPE[t] for t in sorted(C._BY_TYPE)])
def test_default_command_round_trips(cls: type[C.Command]) -> None:
    assert C.decode(C.encode(cls())) == cls()


def test_decode_rejects_empty_entry() -> None:
    with pytest.raises(C.CommandError, match="empty"):
        C.decode(b"")


def test_decode_rejects_unknown_type_byte() -> None:
    with pytest.raises(C.CommandError, match="unknown command type 200"):
        C.decode(bytes([200]) + msgpack.packb({}))


@pytest.mark.parametrize("body", [[1, 2], "text", 5, None, b"raw"])
def test_decode_rejects_non_map_body(body: object) -> None:
    entry = bytes([C.CommandType.KILL_JOB]) + msgpack.packb(body, use_bin_type=True)
    with pytest.raises(C.CommandError, match="not a map"):
        C.decode(entry)


def test_decode_rejects_unknown_fields() -> None:
    entry = bytes([C.CommandType.KILL_JOB]) + msgpack.packb({"name": "x", "evil": 1})
    with pytest.raises(C.CommandError, match="unknown fields"):
        C.decode(entry)


def test_decode_rejects_non_string_field_names() -> None:
    entry = bytes([C.CommandType.KILL_JOB]) + msgpack.packb({1: "x", "a": 2, b"b": 3})
    with pytest.raises(C.CommandError):
        C.decode(entry)


def test_decode_rejects_type_field_override() -> None:
    # `type` is a ClassVar, not a field: a body may not set it.
    entry = bytes([C.CommandType.NOOP]) + msgpack.packb({"type": 2})
    with pytest.raises(C.CommandError):
        C.decode(entry)


@pytest.mark.parametrize(
    "tail",
    [b"\xc1", b"\x81", b"\x82\xa1a\x01", b"\x81\xa4name\xa1x\x00trailing", b"\xdd\xff\xff\xff\xff"],
)
def test_decode_rejects_garbage_msgpack(tail: bytes) -> None:
    with pytest.raises(C.CommandError):
        C.decode(bytes([C.CommandType.KILL_JOB]) + tail)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_decode_random_bytes_only_raises_command_error(entry: bytes) -> None:
    try:
        cmd = C.decode(entry)
    except C.CommandError:
        return
    assert isinstance(cmd, C.Command)


_ints = st.integers(-(2**63), 2**64 - 1)  # what msgpack can carry
_keys = st.one_of(st.text(max_size=8), _ints, st.binary(max_size=4), st.booleans())
_values = st.recursive(
    st.none() | st.booleans() | _ints | st.text(max_size=8) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner),
    max_leaves=8,
)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(list(C.CommandType)), st.dictionaries(_keys, _values, max_size=4))
def test_decode_random_maps_only_raises_command_error(
    ctype: C.CommandType, body: dict[object, object]
) -> None:
    entry = bytes([ctype]) + msgpack.packb(body, use_bin_type=True)
    try:
        cmd = C.decode(entry)
    except C.CommandError:
        return
    assert type(cmd).type == ctype


# ----- typed nested parts: the v1 wire shapes, checked on decode ---------------------------


def _entry(ctype: C.CommandType, body: dict[str, object]) -> bytes:
    return bytes([ctype]) + msgpack.packb(body, use_bin_type=True)


def test_nested_parts_keep_the_v1_wire_shapes() -> None:
    plan = C.ApplyPlan(
        placements=[C.Placement("j", 0, "m", "i", 1)],
        failures=[C.PlanFailure("j", 1, "why")],
        preemptions=[C.Preemption("v", 0, "vi", "m", "r")],
    )
    body = msgpack.unpackb(C.encode(plan)[1:])
    assert body["placements"] == [
        {"job": "j", "index": 0, "machine": "m", "incarnation": "i", "version": 1}
    ]
    assert body["failures"] == [["j", 1, "why"]]
    assert body["preemptions"] == [
        {"job": "v", "index": 0, "incarnation": "vi", "machine": "m", "reason": "r"}
    ]
    upd = C.TaskUpdates(updates=[C.TaskUpdate("j", 0, "i", "killed", None, "", 0, "")])
    (u,) = msgpack.unpackb(C.encode(upd)[1:])["updates"]
    assert list(u) == ["job", "index", "incarnation", "state", "exit_code", "reason", "restarts",
                       "health"]  # fmt: skip
    quota = C.SetQuota(limit=C.QuotaLimit(cpu=2.0, gpu=-1))
    assert msgpack.unpackb(C.encode(quota)[1:])["limit"] == {"cpu": 2.0, "gpu": -1}
    tasks = C.ReplaceTasks(tasks=[C.TaskRef(3, "x")])
    assert msgpack.unpackb(C.encode(tasks)[1:])["tasks"] == [[3, "x"]]


def test_task_update_fields_absent_on_the_wire_stay_absent() -> None:
    # An update as written before restarts/health/ports existed decodes, and re-encodes as is.
    u = {"job": "j", "index": 0, "incarnation": "i", "state": "running", "exit_code": None,
         "reason": ""}  # fmt: skip
    body = msgpack.unpackb(C.encode(C.TaskUpdates(machine="m"))[1:])
    entry = _entry(C.CommandType.TASK_UPDATES, {**body, "updates": [u]})
    cmd = C.decode(entry)
    assert isinstance(cmd, C.TaskUpdates)
    assert cmd.updates == [C.TaskUpdate("j", 0, "i", "running")]
    assert cmd.updates[0].restarts is None and cmd.updates[0].ports is None
    assert C.encode(cmd) == entry


_PLACEMENT = {"job": "j", "index": 0, "machine": "m", "incarnation": "i", "version": 1}
_UPDATE = {"job": "j", "index": 0, "incarnation": "i", "state": "running", "exit_code": None}


@pytest.mark.parametrize(
    ("ctype", "body", "message"),
    [
        (C.CommandType.APPLY_PLAN, {"placements": [{"job": "web", "bogus": 1}]}, "unknown fields"),
        (C.CommandType.APPLY_PLAN, {"placements": [{**_PLACEMENT, "index": "0"}]}, "index"),
        (C.CommandType.APPLY_PLAN, {"placements": [{**_PLACEMENT, "index": True}]}, "index"),
        (C.CommandType.APPLY_PLAN, {"placements": [{"job": "j"}]}, "missing"),
        (C.CommandType.APPLY_PLAN, {"placements": {"job": "j"}}, "expected a list"),
        (C.CommandType.APPLY_PLAN, {"failures": [["j", 0]]}, "list of 3"),
        (C.CommandType.APPLY_PLAN, {"failures": [["j", "0", "x"]]}, "failures\\[0\\]\\[1\\]"),
        (C.CommandType.APPLY_PLAN, {"preemptions": [{"job": "j", "index": 0}]}, "missing"),
        (C.CommandType.TASK_UPDATES, {"updates": [5]}, "expected a map"),
        (C.CommandType.TASK_UPDATES, {"updates": [{**_UPDATE, "exit_code": "x"}]}, "exit_code"),
        (C.CommandType.TASK_UPDATES, {"updates": [{**_UPDATE, "ports": {"a": "b"}}]}, "ports"),
        (C.CommandType.TASK_UPDATES, {"updates": [{**_UPDATE, "ports": [1]}]}, "ports"),
        (C.CommandType.TASK_UPDATES, {"updates": [{**_UPDATE, "restarts": 1.5}]}, "restarts"),
        (C.CommandType.REPLACE_TASKS, {"tasks": [[0, 1]]}, "tasks\\[0\\]\\[1\\]"),
        (C.CommandType.SET_QUOTA, {"limit": {"mem": 1}}, "unknown resource"),
        (C.CommandType.SET_QUOTA, {"limit": {"cpu": "lots"}}, "cpu must be a number"),
        (C.CommandType.SET_QUOTA, {"limit": {"ram": True}}, "ram must be a number"),
        (C.CommandType.SET_QUOTA, {"limit": {"ram": 1.5}}, "ram must be a number"),
        (C.CommandType.SET_QUOTA, {"limit": [1]}, "expected a map"),
        (C.CommandType.SUBMIT_JOB, {"spec": 5}, "expected a map"),
        (C.CommandType.SUBMIT_JOB, {"spec": {"replicas": 1}}, "missing name"),
        (C.CommandType.SUBMIT_JOB, {"spec": {"name": "x", "priority": "hi"}}, "priority"),
        (C.CommandType.SUBMIT_JOB, {"spec": {"name": "x", "requirements": {"cpu": "1"}}}, "cpu"),
        (C.CommandType.SUBMIT_JOB, {"spec": {"name": "x", "evil": 1}}, "unknown fields"),
        (C.CommandType.SUBMIT_JOB, {"spec": {"name": "x", "env": {"A": 1}}}, "env"),
        (C.CommandType.REGISTER_MACHINE, {"machine": {"name": "m", "capacity": 4}}, "capacity"),
        (C.CommandType.REGISTER_MACHINE, {"machine": {"name": "m", "taints": [1]}}, "taints"),
        (C.CommandType.REGISTER_REPLICA, {"replica": {"id": "a"}}, "missing"),
        (C.CommandType.GC_JOBS, {"names": ["a", 1]}, "names"),
        (C.CommandType.BATCH, {"entries": ["text"]}, "entries"),
        (C.CommandType.KILL_JOB, {"name": 5}, "name"),
        (C.CommandType.KILL_JOB, {"ts_ms": "now"}, "ts_ms"),
    ],
)
def test_decode_rejects_malformed_nested_parts(
    ctype: C.CommandType, body: dict[str, object], message: str
) -> None:
    with pytest.raises(C.CommandError, match=message):
        C.decode(_entry(ctype, body))


@settings(max_examples=400, deadline=None)
@given(st.data())
def test_decode_random_values_in_real_fields_only_raises_command_error(data: st.DataObject) -> None:
    # Random shapes where the real field names are: decode must type-check them, never crash.
    cls = data.draw(st.sampled_from([C._BY_TYPE[t] for t in sorted(C._BY_TYPE)]))
    names = [f.name for f in dataclasses.fields(cls)]
    body = data.draw(st.dictionaries(st.sampled_from(names), _values, max_size=len(names)))
    entry = bytes([cls.type]) + msgpack.packb(body, use_bin_type=True)
    try:
        cmd = C.decode(entry)
    except C.CommandError:
        return
    assert type(cmd) is cls
    assert C.decode(C.encode(cmd)) == cmd
