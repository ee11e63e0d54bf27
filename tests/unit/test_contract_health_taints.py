"""Typed health checks and taints keep the dict shapes they replaced.

Raft entries, snapshots, the Borglet's state file and API replies hold a health check as
`{"http"|"tcp"|"exec": body, interval_ms, timeout_ms, failure_threshold, initial_delay_ms}` and
a taint as `{key, value, effect}`; the dataclasses must read and write exactly those bytes.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.model import Machine, Resources
from cfg.model import (
    HealthCheck,
    HealthKind,
    JobSpec,
    Requirements,
    Taint,
    TaintEffect,
    Toleration,
)
from cfg.schema import spec_to_config, validate_job

WIRE_HEALTH: list[dict[str, Any]] = [
    {
        "http": {"port": "http", "path": "/"},
        "interval_ms": 5000,
        "timeout_ms": 1000,
        "failure_threshold": 3,
        "initial_delay_ms": 0,
    },
    {
        "tcp": {"port": "db"},
        "interval_ms": 10000,
        "timeout_ms": 2000,
        "failure_threshold": 1,
        "initial_delay_ms": 500,
    },
    {
        "exec": ["/bin/check", "--deep"],
        "interval_ms": 30000,
        "timeout_ms": 1000,
        "failure_threshold": 5,
        "initial_delay_ms": 3000,
    },
]


@pytest.mark.parametrize("wire", WIRE_HEALTH, ids=["http", "tcp", "exec"])
def test_health_check_round_trips_to_the_same_bytes(wire: dict[str, Any]) -> None:
    check = HealthCheck.from_dict(wire)
    assert check.kind == next(iter(wire))
    assert check.to_dict() == wire
    assert msgpack.packb(check.to_dict()) == msgpack.packb(wire)  # key order too
    assert HealthCheck.from_dict(check.to_dict()) == check


def test_health_check_fields() -> None:
    http = HealthCheck.from_dict(WIRE_HEALTH[0])
    assert (http.kind, http.port, http.path, http.interval_ms) == (
        HealthKind.HTTP,
        "http",
        "/",
        5000,
    )
    ex = HealthCheck.from_dict(WIRE_HEALTH[2])
    assert (ex.kind, ex.argv, ex.initial_delay_ms) == (
        HealthKind.EXEC,
        ["/bin/check", "--deep"],
        3000,
    )


@pytest.mark.parametrize(
    "bad",
    [
        {},
        {"http": {"port": "a"}, "tcp": {"port": "a"}},
        {"tcp": {"port": "a"}, "color": "red"},
        {"tcp": {"port": "a", "path": "/"}},
        {"tcp": {"port": 80}},
        {"exec": "true"},
        {"exec": ["true"], "interval_ms": "1s"},
        {"exec": ["true"], "failure_threshold": True},
        ["exec"],
    ],
)
def test_health_check_from_dict_is_strict(bad: Any) -> None:
    with pytest.raises(ValueError):
        HealthCheck.from_dict(bad)


@pytest.mark.parametrize("wire", WIRE_HEALTH, ids=["http", "tcp", "exec"])
def test_spec_with_health_is_byte_identical_and_round_trips_through_the_config(
    wire: dict[str, Any],
) -> None:
    spec = JobSpec(
        name="web",
        command=["x"],
        requirements=Requirements(ports=["http", "db"]),
        health=HealthCheck.from_dict(wire),
        tolerations=[Toleration("gpu"), Toleration("zone", "a")],
    )
    d = spec.to_dict()
    assert d["health"] == wire
    again = JobSpec.from_dict(msgpack.unpackb(msgpack.packb(d), raw=False))
    assert again == spec  # dataclass equality holds with a typed check
    assert msgpack.packb(again.to_dict()) == msgpack.packb(d)
    assert validate_job(spec_to_config(spec)) == spec


def test_submit_with_a_malformed_health_check_is_refused_at_decode() -> None:
    good = C.encode(C.SubmitJob(spec=JobSpec(name="a", health=HealthCheck(HealthKind.TCP, "p"))))
    assert C.decode(good).spec.health == HealthCheck(HealthKind.TCP, "p")
    cmd = msgpack.unpackb(good[1:], raw=False)
    cmd["spec"]["health"] = {"tcp": {"port": "p"}, "exec": ["true"]}
    bad = good[:1] + msgpack.packb(cmd)
    with pytest.raises(C.CommandError, match=r"spec\.health"):
        C.decode(bad)


def test_taint_wire_form_parse_and_effects() -> None:
    t = Taint.parse("gpu=true:NoSchedule")
    assert t == Taint("gpu", "true", TaintEffect.NO_SCHEDULE)
    assert t.to_dict() == {"key": "gpu", "value": "true", "effect": "NoSchedule"}
    assert Taint.from_dict(t.to_dict()) == t
    assert t.flag() == "gpu=true:NoSchedule"
    assert Taint.parse("k=:PreferNoSchedule").value == ""
    assert TaintEffect.NO_SCHEDULE.rejects and TaintEffect.NO_EXECUTE.rejects
    assert not TaintEffect.PREFER_NO_SCHEDULE.rejects
    assert t.tolerated_by([Toleration("gpu")]) and t.tolerated_by([Toleration("gpu", "true")])
    assert not t.tolerated_by([Toleration("gpu", "false"), Toleration("other")])
    for bad in ("gpu=true", "gpu:NoSchedule", "=v:NoSchedule", "gpu=true:Evict"):
        with pytest.raises(ValueError):
            Taint.parse(bad)
    for wire in ({"key": "k", "value": "v", "effect": "Evict"}, {"key": 1}, {"key": "k", "x": 1}):
        with pytest.raises(ValueError):
            Taint.from_dict(wire)


def test_machine_with_taints_keeps_its_wire_bytes() -> None:
    wire = {
        "name": "m2",
        "address": "10.0.0.2:7100",
        "http": "10.0.0.2:7101",
        "capacity": {"cpu": 8.0, "ram": 1 << 34, "disk": 0, "gpu": 2},
        "attrs": {"rack": "r1"},
        "taints": [
            {"key": "gpu", "value": "yes", "effect": "NoSchedule"},
            {"key": "old", "value": "", "effect": "PreferNoSchedule"},
        ],
        "state": "up",
        "registered_ms": 0,
        "task_users": ["nobody"],
    }
    m = Machine.from_dict(wire)
    assert m.taints[0] == Taint("gpu", "yes") and m.capacity == Resources(8.0, 1 << 34, 0, 2)
    assert msgpack.packb(m.to_dict()) == msgpack.packb(wire)
    reg = C.encode(C.RegisterMachine(machine=m))
    decoded = C.decode(reg)
    assert isinstance(decoded, C.RegisterMachine) and decoded.machine == m
    bad = msgpack.unpackb(reg[1:], raw=False)
    bad["machine"]["taints"][0]["effect"] = "Evict"
    with pytest.raises(C.CommandError, match="taints"):
        C.decode(reg[:1] + msgpack.packb(bad))
