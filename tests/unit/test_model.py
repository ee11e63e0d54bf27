"""The hand-written JobSpec.to_dict must stay equal to dataclasses.asdict (it exists for speed)."""

from __future__ import annotations

from dataclasses import asdict, fields

from borgmaster.model import (
    Constraint,
    HealthCheck,
    HealthKind,
    JobSpec,
    Requirements,
    Toleration,
)


def test_jobspec_to_dict_matches_asdict_for_every_field() -> None:
    s = JobSpec(
        name="a",
        user="u",
        run_as="nobody",
        command=["x", "y"],
        env={"A": "1"},
        requirements=Requirements(cpu=0.5, ram=1, disk=2, gpu=1, ports=["p"]),
        health=HealthCheck(HealthKind.TCP, "p", interval_ms=1000),
        constraints=[Constraint("rack", "in", ["r1"]), Constraint("os", "exists")],
        tolerations=[Toleration("gpu", "true"), Toleration("k")],
        spread="rack",
        distinct_machines=True,
        gang=True,
    )
    d = s.to_dict()
    # The health check is the one field whose wire form is not its fields (keyed by its kind).
    assert d["health"] == {
        "tcp": {"port": "p"},
        "interval_ms": 1000,
        "timeout_ms": 1000,
        "failure_threshold": 3,
        "initial_delay_ms": 0,
    }
    assert {**d, "health": None} == {**asdict(s), "health": None}
    assert set(d) == {f.name for f in fields(JobSpec)}
    assert JobSpec.from_dict(d) == s
    # gang is left out when false, so specs stored before it encode to the same bytes.
    assert "gang" not in JobSpec(name="a").to_dict()
    d["env"]["B"] = "2"
    assert s.env == {"A": "1"}  # a copy, not a view
