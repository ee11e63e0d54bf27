"""The hand-written JobSpec.to_dict must stay equal to dataclasses.asdict (it exists for speed)."""

from __future__ import annotations

from dataclasses import asdict, fields

from borgmaster.model import Constraint, JobSpec, Requirements, Toleration


def test_jobspec_to_dict_matches_asdict_for_every_field() -> None:
    s = JobSpec(
        name="a",
        user="u",
        run_as="nobody",
        command=["x", "y"],
        env={"A": "1"},
        requirements=Requirements(cpu=0.5, ram=1, disk=2, gpu=1, ports=["p"]),
        health={"tcp": {"port": "p"}, "interval_ms": 1000},
        constraints=[Constraint("rack", "in", ["r1"]), Constraint("os", "exists")],
        tolerations=[Toleration("gpu", "true"), Toleration("k")],
        spread="rack",
        distinct_machines=True,
    )
    d = s.to_dict()
    assert d == asdict(s)
    assert set(d) == {f.name for f in fields(JobSpec)}
    assert JobSpec.from_dict(d) == s
    d["env"]["B"] = "2"
    assert s.env == {"A": "1"}  # a copy, not a view
