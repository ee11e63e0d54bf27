"""Raft command encoding: exact round trips, and CommandError for anything malformed."""

from __future__ import annotations

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
        spec=JobSpec(name="hello", replicas=3, command=["echo", "hi"]).to_dict(),
        must_exist=True,
    ),
    C.KillJob(ts_ms=3, name="hello"),
    C.RegisterMachine(
        ts_ms=4,
        machine=Machine(
            name="m1", address="127.0.0.1:1", capacity=Resources(cpu=4, ram=8 << 30)
        ).to_dict(),
    ),
    C.ApplyPlan(
        ts_ms=5,
        placements=[
            {"job": "hello", "index": 0, "machine": "m1", "incarnation": "inc-1", "version": 1}
        ],
        failures=[["hello", 1, "no-feasible-machine: no machines in the cell"]],
    ),
    C.TaskUpdates(
        ts_ms=6,
        machine="m1",
        updates=[
            {
                "job": "hello",
                "index": 0,
                "incarnation": "inc-1",
                "state": "running",
                "exit_code": -1,
                "reason": "",
                "restarts": 0,
            }
        ],
    ),
    C.MachineLost(ts_ms=7, name="m1"),
    C.RegisterReplica(ts_ms=8, replica=Replica(id="a", raft="h:1", grpc="h:2").to_dict()),
    C.SetMachineState(ts_ms=9, name="m1", state="draining"),
    C.LeaderElected(ts_ms=10, term=4, replica="a"),
    C.ReplaceTasks(ts_ms=11, job="hello", tasks=[[0, "inc-1"]], reason="updated", term=4),
    C.SetRollout(ts_ms=12, job="hello", version=2, status="halted: x", term=4),
    C.Rollback(ts_ms=13, name="hello", user="u"),
    C.SetQuota(ts_ms=14, user="u", band="batch", limit={"cpu": 1.0, "ram": 1, "disk": 0, "gpu": 0}),
    C.GcJobs(ts_ms=15, names=["hello"], term=4),
    C.Batch(ts_ms=16, entries=[C.encode(C.Noop()), C.encode(C.KillJob(name="x"))]),
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
