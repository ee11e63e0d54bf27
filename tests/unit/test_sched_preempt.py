"""Priority bands and preemption (SPEC.md): who may evict whom, and which victims."""

from __future__ import annotations

import itertools

import pytest

from borgmaster.model import JobSpec, Requirements, Resources
from borgmaster.scheduler import (
    BorgScheduler,
    MachineView,
    PlacedTask,
    Plan,
    Snapshot,
    TaskRequest,
)
from borgmaster.scheduler.preempt import Candidate, can_preempt, choose_victims

GiB = 1 << 30
R1 = Requirements(cpu=1, ram=GiB)


def full_machine(name: str, running: list[PlacedTask], cpu: float = 2) -> MachineView:
    used = Resources(
        cpu=sum(t.requirements.cpu for t in running if t.machine == name),
        ram=sum(t.requirements.ram for t in running if t.machine == name),
    )
    return MachineView(name=name, capacity=Resources(cpu=cpu, ram=8 * GiB, disk=GiB), used=used)


def placed(job: str, index: int, machine: str, prio: int, req: Requirements = R1) -> PlacedTask:
    return PlacedTask(job, index, machine, prio, req, incarnation=f"{job}-{index}")


def run(
    ms: list[MachineView], running: list[PlacedTask], prio: int, req: Requirements = R1
) -> Plan:
    spec = JobSpec(name="new", priority=prio, requirements=req)
    c = itertools.count()
    snap = Snapshot(ms, [TaskRequest("new", 0, 1, spec)], running)
    return BorgScheduler().schedule(snap, lambda: f"i{next(c)}")


@pytest.mark.parametrize(
    ("preemptor", "victim", "ok"),
    [
        (200, 100, True),  # production evicts batch
        (300, 50, True),  # monitoring evicts free
        (150, 99, True),  # batch evicts free
        (150, 120, True),  # strictly lower within batch
        (50, 10, True),  # free band tasks are preemptible by anything above
        (120, 120, False),  # never equal priority
        (100, 150, False),  # never higher
        (250, 200, False),  # prod never preempts prod
        (300, 250, False),  # monitoring never preempts production
        (399, 300, False),  # nor monitoring
    ],
)
def test_band_rules(preemptor: int, victim: int, ok: bool) -> None:
    assert can_preempt(preemptor, victim) is ok


def test_production_preempts_batch_in_the_same_plan() -> None:
    running = [placed("batch", 0, "m1", 100), placed("batch", 1, "m1", 100)]
    plan = run([full_machine("m1", running)], running, prio=200)
    assert [(v.job, v.index, v.incarnation, v.machine) for v in plan.preemptions] == [
        ("batch", 0, "batch-0", "m1")
    ]
    assert [(p.job, p.machine) for p in plan.placements] == [("new", "m1")]
    assert plan.preemptions[0].reason == "preempted"


def test_prod_never_preempts_prod() -> None:
    running = [placed("web", 0, "m1", 200), placed("web", 1, "m1", 200)]
    plan = run([full_machine("m1", running)], running, prio=299)
    assert plan.preemptions == [] and plan.placements == []
    assert plan.failures[0][2] == "no-feasible-machine: cpu 1"


def test_monitoring_never_preempts_production() -> None:
    running = [placed("web", 0, "m1", 210), placed("web", 1, "m1", 210)]
    plan = run([full_machine("m1", running)], running, prio=350)
    assert plan.preemptions == [] and plan.placements == []


def test_equal_priority_is_not_preempted() -> None:
    running = [placed("b", 0, "m1", 120), placed("b", 1, "m1", 120)]
    plan = run([full_machine("m1", running)], running, prio=120)
    assert plan.preemptions == []


def test_chooses_lowest_priority_victims_first() -> None:
    running = [placed("batch", 0, "m1", 150), placed("free", 0, "m2", 10)]
    running += [placed("batch", 1, "m1", 150), placed("free", 1, "m2", 10)]
    ms = [full_machine("m1", running), full_machine("m2", running)]
    plan = run(ms, running, prio=200)
    assert {v.job for v in plan.preemptions} == {"free"}
    assert plan.placements[0].machine == "m2"


def test_chooses_fewest_victims() -> None:
    big = Requirements(cpu=2, ram=GiB)
    running = [placed("a", 0, "m1", 50), placed("a", 1, "m1", 50), placed("b", 0, "m2", 50, big)]
    ms = [full_machine("m1", running), full_machine("m2", running)]
    plan = run(ms, running, prio=200, req=Requirements(cpu=2, ram=GiB))
    assert [(v.job, v.index) for v in plan.preemptions] == [("b", 0)]


def test_victims_never_more_than_needed() -> None:
    cands = [Candidate(i, 10 * i, (1.0,)) for i in range(5)]
    got = choose_victims([2.0], cands)
    assert got is not None and [c.key for c in got] == [0, 1]
    assert choose_victims([10.0], cands) is None
    assert choose_victims([0.0], cands) == []


def test_reprieve_drops_victims_the_rest_cover() -> None:
    cands = [Candidate(0, 10, (1.0,)), Candidate(1, 20, (4.0,))]
    got = choose_victims([4.0], cands)
    assert got is not None and [c.key for c in got] == [1]


def test_preemption_can_be_switched_off() -> None:
    running = [placed("batch", 0, "m1", 100), placed("batch", 1, "m1", 100)]
    spec = JobSpec(name="new", priority=200, requirements=R1)
    snap = Snapshot([full_machine("m1", running)], [TaskRequest("new", 0, 1, spec)], running)
    plan = BorgScheduler(preemption=False).schedule(snap, lambda: "x")
    assert plan.preemptions == [] and plan.placements == []
