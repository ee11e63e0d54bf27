"""Scores: normalised 0..100, the three policies pick what they promise, soft spread."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from borgmaster.model import JobSpec, Requirements, Resources
from borgmaster.scheduler import BorgScheduler, MachineView, Plan, Snapshot, TaskRequest
from borgmaster.scheduler.scores import combine, combine_one, fit_score, fit_scores, spread_scores

GiB = 1 << 30


def mv(name: str, cpu: float, ram: int, used: Resources | None = None, **attrs: str) -> MachineView:
    return MachineView(
        name=name,
        capacity=Resources(cpu=cpu, ram=ram, disk=GiB),
        used=used or Resources(),
        attrs=dict(attrs),
    )


def run(ms: list[MachineView], n: int, cpu: float, ram: int, **kw: object) -> Plan:
    spec = JobSpec(name="a", replicas=n, requirements=Requirements(cpu=cpu, ram=ram))
    pending = [TaskRequest(job="a", index=i, version=1, spec=spec) for i in range(n)]
    c = itertools.count()
    return BorgScheduler(**kw).schedule(  # type: ignore[arg-type]
        Snapshot(machines=ms, pending=pending), lambda: f"i{next(c)}"
    )


@pytest.mark.parametrize("policy", ["best", "spread", "hybrid"])
def test_scores_are_normalised_0_to_100(policy: str) -> None:
    rng = np.random.default_rng(3)
    cap = rng.uniform(1, 64, 200)
    free = cap * rng.uniform(0, 1, 200)
    s = fit_scores(policy, free, free * 2, cap, cap * 2, 0.5, 1.0)
    assert s.min() >= 0.0 and s.max() <= 100.0
    assert spread_scores(np.array([0.0, 1.0, 9.0])).tolist() == [100.0, 50.0, 10.0]


def test_scalar_and_vector_scores_agree_bit_for_bit() -> None:
    rng = np.random.default_rng(5)
    for policy in ("best", "spread", "hybrid"):
        cap = rng.uniform(1, 64, 50)
        free = cap * rng.uniform(0, 1, 50)
        vec = combine(
            fit_scores(policy, free, free, cap, cap, 0.3, 0.7), spread_scores(free), 1, 0.25
        )
        for i in range(50):
            one = fit_score(policy, free[i], free[i], cap[i], cap[i], 0.3, 0.7)
            assert combine_one(one, float(free[i]), 1, 0.25) == vec[i]


def test_unknown_policy_rejected() -> None:
    with pytest.raises(ValueError, match="unknown scheduling policy"):
        BorgScheduler("firstfit")


def test_best_fit_packs_onto_fullest_machine() -> None:
    ms = [mv("empty", 8, 8 * GiB), mv("busy", 8, 8 * GiB, Resources(cpu=6, ram=6 * GiB))]
    plan = run(ms, 1, 1, GiB, policy="best", spread_weight=0)
    assert plan.placements[0].machine == "busy"


def test_spread_policy_picks_emptiest_machine() -> None:
    ms = [mv("empty", 8, 8 * GiB), mv("busy", 8, 8 * GiB, Resources(cpu=6, ram=6 * GiB))]
    plan = run(ms, 1, 1, GiB, policy="spread", spread_weight=0)
    assert plan.placements[0].machine == "empty"


def test_hybrid_minimises_stranded_resources() -> None:
    # Both leave the same total free fraction; "balanced" leaves cpu and ram free together,
    # "lopsided" would strand ram (no cpu left to use it). Best fit cannot tell them apart.
    lopsided = mv("lopsided", 4, 8 * GiB, Resources(cpu=2, ram=0))
    balanced = mv("balanced", 4, 8 * GiB, Resources(cpu=1, ram=4 * GiB))
    plan = run([lopsided, balanced], 1, 1, 2 * GiB, policy="hybrid", spread_weight=0)
    assert plan.placements[0].machine == "balanced"


def test_soft_spread_prefers_new_failure_domains() -> None:
    ms = [mv(f"{r}{i}", 64, 64 * GiB, rack=r) for r in "abc" for i in range(3)]
    plan = run(ms, 3, 1, GiB, policy="best", spread_weight=10)
    assert len({p.machine[0] for p in plan.placements}) == 3


def test_without_soft_spread_best_fit_stacks_tasks() -> None:
    ms = [mv(f"{r}{i}", 64, 64 * GiB, rack=r) for r in "abc" for i in range(3)]
    plan = run(ms, 3, 1, GiB, policy="best", spread_weight=0)
    assert len({p.machine for p in plan.placements}) == 1
