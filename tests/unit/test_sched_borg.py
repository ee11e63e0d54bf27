"""BorgScheduler passes: queue order, equivalence classes and the other speed tricks change
speed, not results; determinism; no overcommit; non-prod overcommit."""

from __future__ import annotations

import itertools
import random

import pytest

import borgmaster.scheduler
from bench.bestfit import BestFitScheduler
from borgmaster.model import Constraint, JobSpec, Requirements, Resources
from borgmaster.scheduler import (
    BorgScheduler,
    MachineView,
    Plan,
    Snapshot,
    TaskRequest,
)
from borgmaster.scheduler.borg import _queue

GiB = 1 << 30


def ids() -> itertools.count[int]:
    return itertools.count()


def schedule(snap: Snapshot, **kw: object) -> Plan:
    c = ids()
    return BorgScheduler(**kw).schedule(snap, lambda: f"i{next(c)}")  # type: ignore[arg-type]


def cell(machines: int, jobs: int, seed: int) -> Snapshot:
    """A small random cell with constraints, spread and distinct jobs, over-subscribed."""
    rng = random.Random(seed)
    ms = [
        MachineView(
            name=f"m{i:03d}",
            capacity=Resources(cpu=rng.choice([4, 8, 16]), ram=rng.choice([8, 16, 32]) * GiB),
            used=Resources(cpu=rng.choice([0, 1, 2]), ram=0),
            attrs={"rack": f"r{i % 5}"},
        )
        for i in range(machines)
    ]
    pending: list[TaskRequest] = []
    for j in range(jobs):
        spec = JobSpec(
            name=f"j{j:02d}",
            priority=rng.choice([0, 100, 150, 200, 300]),
            replicas=rng.randint(1, 30),
            requirements=Requirements(cpu=rng.choice([0.5, 1, 2, 3]), ram=rng.randint(1, 6) * GiB),
            constraints=[Constraint("rack", "!=", "r0")] if j % 4 == 0 else [],
            spread="rack" if j % 5 == 0 else None,
        )
        if j % 7 == 0:
            spec.distinct_machines = True  # type: ignore[attr-defined]
        pending += [TaskRequest(spec.name, i, 1, spec) for i in range(spec.replicas)]
    return Snapshot(machines=ms, pending=pending)


def triples(plan: Plan) -> list[tuple[str, int, str]]:
    return [(p.job, p.index, p.machine) for p in plan.placements]


def test_queue_high_to_low_round_robin_within_priority() -> None:
    def reqs(job: str, n: int, prio: int) -> list[TaskRequest]:
        spec = JobSpec(name=job, priority=prio)
        return [TaskRequest(job, i, 1, spec) for i in range(n)]

    order = _queue(reqs("b", 3, 100) + reqs("low", 1, 0) + reqs("a", 2, 100) + reqs("p", 1, 200))
    assert [(t.job, t.index) for t in order] == [
        ("p", 0),
        ("a", 0),
        ("b", 0),
        ("a", 1),
        ("b", 1),
        ("b", 2),
        ("low", 0),
    ]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_equivalence_classes_do_not_change_the_plan(seed: int) -> None:
    snap = cell(40, 25, seed)
    on = schedule(snap, seed=seed, sample=False, eqclass=True)
    off = schedule(snap, seed=seed, sample=False, eqclass=False)
    assert triples(on) == triples(off)
    assert on.failures == off.failures
    assert len(on.placements) > 50 and on.failures


@pytest.mark.parametrize("trick", ["score_cache", "incremental"])
def test_score_cache_and_incremental_vectors_do_not_change_the_plan(trick: str) -> None:
    snap = cell(60, 30, 7)
    on = schedule(snap, seed=7, sample_size=8)
    off = schedule(snap, seed=7, sample_size=8, **{trick: False})
    assert triples(on) == triples(off)
    assert on.failures == off.failures


def test_same_seed_same_plan_and_snapshot_untouched() -> None:
    snap = cell(50, 20, 4)
    before = [(m.name, m.used.cpu, m.used.ram) for m in snap.machines]
    a = schedule(snap, seed=11, sample_size=5)
    b = schedule(snap, seed=11, sample_size=5)
    assert triples(a) == triples(b) and a.failures == b.failures
    assert [(m.name, m.used.cpu, m.used.ram) for m in snap.machines] == before


@pytest.mark.parametrize("kw", [{}, {"sample": False}, {"eqclass": False}, {"policy": "spread"}])
def test_never_overcommits_and_accounts_for_every_task(kw: dict[str, object]) -> None:
    snap = cell(30, 30, 5)
    plan = schedule(snap, **kw)
    caps = {m.name: m for m in snap.machines}
    use: dict[str, list[float]] = {m: [m_.used.cpu, m_.used.ram] for m, m_ in caps.items()}
    specs = {(t.job, t.index): t.spec for t in snap.pending}
    for p in plan.placements:
        r = specs[(p.job, p.index)].requirements
        use[p.machine][0] += r.cpu
        use[p.machine][1] += r.ram
    for name, (cpu, ram) in use.items():
        assert cpu <= caps[name].capacity.cpu + 1e-9 and ram <= caps[name].capacity.ram
    done = {(p.job, p.index) for p in plan.placements} | {(j, i) for j, i, _ in plan.failures}
    assert done == set(specs) and len(done) == len(plan.placements) + len(plan.failures)


def test_sampling_still_places_everything_that_fits_somewhere() -> None:
    # One feasible machine among many: the scan grows until it is found.
    ms = [MachineView(f"m{i}", Resources(cpu=1, ram=GiB), Resources()) for i in range(500)]
    ms[317] = MachineView("big", Resources(cpu=8, ram=8 * GiB), Resources())
    spec = JobSpec(name="a", requirements=Requirements(cpu=4, ram=GiB))
    plan = schedule(Snapshot(ms, [TaskRequest("a", 0, 1, spec)]), sample_size=3)
    assert triples(plan) == [("a", 0, "big")]


def test_nonprod_overcommit_applies_below_production_only() -> None:
    ms = [MachineView("m", Resources(cpu=4, ram=8 * GiB), Resources())]
    batch = JobSpec(name="b", priority=100, requirements=Requirements(cpu=1, ram=GiB))
    prod = JobSpec(name="p", priority=200, requirements=Requirements(cpu=1, ram=GiB))
    pending = [TaskRequest("b", i, 1, batch) for i in range(6)]
    pending += [TaskRequest("p", i, 1, prod) for i in range(6)]
    plan = schedule(Snapshot(ms, pending), nonprod_overcommit={"cpu": 1.5})
    got = sorted((p.job, p.index) for p in plan.placements)
    # prod first: 4 cores; batch may then fill to 6 cores (1.5 x 4): 2 more.
    assert got == [("b", 0), ("b", 1)] + [("p", i) for i in range(4)]
    with pytest.raises(ValueError):
        BorgScheduler(nonprod_overcommit={"cpu": 0.5})


def test_bestfit_scheduler_is_only_a_baseline() -> None:
    """The master runs BorgScheduler; the first scheduler lives on in bench/ (make bench's
    scheduler_bestfit figure, tests/unit/test_scheduler.py)."""
    assert not hasattr(borgmaster.scheduler, "BestFitScheduler")
    snap = cell(10, 3, 1)
    assert isinstance(BestFitScheduler().schedule(snap, lambda: "x"), Plan)


def test_scarce_room_widens_the_sample(monkeypatch: pytest.MonkeyPatch) -> None:
    """A class that finds under half the machines feasible scores 4x sample_size of them."""
    from borgmaster.scheduler import borg

    def candidates(free_machines: int) -> int:
        ms = [
            MachineView(
                name=f"m{i:04d}",
                capacity=Resources(cpu=8, ram=8 * GiB),
                used=Resources(cpu=0 if i % 4000 < free_machines else 8, ram=0),
            )
            for i in range(4000)
        ]
        spec = JobSpec(name="j", requirements=Requirements(cpu=1, ram=GiB))
        snap = Snapshot(machines=ms, pending=[TaskRequest("j", 0, 1, spec)])
        p = borg._Pass(BorgScheduler(sample_size=300), snap)
        c = p.class_of(snap.pending[0])
        assert p.pick(c) is not None
        return c.live

    # Plenty: the first chunk (2 x 300 machines) all fit, and that is enough.
    assert candidates(4000) == 600
    # A quarter fit: looking for 4 x 300 finds all 1,000 feasible machines; with a flat
    # sample the scan stops far earlier.
    assert candidates(1000) == 1000
    monkeypatch.setattr(borg, "SCARCE_SAMPLE", 1)
    assert candidates(1000) < 600
