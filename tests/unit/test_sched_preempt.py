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


# --- cost-aware victim search and the non-production budget (issue 20) ---------------------


def busy(
    n: int, prio_of: dict[int, int], cpu: float = 2
) -> tuple[list[MachineView], list[PlacedTask]]:
    """n full machines (two 1-cpu tasks each); machine i's tasks have priority prio_of[i]
    (default 150)."""
    running = [
        placed(f"t{i}", k, f"m{i:03d}", prio_of.get(i, 150)) for i in range(n) for k in range(2)
    ]
    return [full_machine(f"m{i:03d}", running[2 * i : 2 * i + 2], cpu) for i in range(n)], running


def test_lowest_priority_victim_is_found_anywhere_in_the_cell() -> None:
    # 300 machines (more than preempt_candidates=64 looked at before), one with a free task.
    ms, running = busy(300, {217: 10})
    plan = run(ms, running, prio=200)
    assert [(v.job, v.machine) for v in plan.preemptions] == [("t217", "m217")]
    assert plan.placements[0].machine == "m217"


def test_one_large_victim_rather_than_several_small_ones() -> None:
    small = Requirements(cpu=1, ram=GiB)
    big = Requirements(cpu=2, ram=GiB)
    running = [placed("s", 0, "m1", 50, small), placed("s", 1, "m1", 50, small)]
    running += [placed("b", 0, "m2", 50, big)]
    ms = [full_machine("m1", running), full_machine("m2", running)]
    plan = run(ms, running, prio=200, req=Requirements(cpu=2, ram=GiB))
    assert [(v.job, v.index) for v in plan.preemptions] == [("b", 0)]


def test_among_single_victims_the_largest_of_the_lowest_priority() -> None:
    small, big = Requirements(cpu=1, ram=GiB), Requirements(cpu=3, ram=GiB)
    running = [placed("a", 0, "m1", 50, small), placed("a", 1, "m1", 50, small)]
    running += [placed("b", 0, "m2", 50, small), placed("b", 1, "m2", 50, small)]
    running += [placed("c", 0, "m3", 50, big), placed("c", 1, "m3", 60, small)]
    ms = [full_machine(m, running, cpu=4) for m in ("m1", "m2", "m3")]
    for m in ms:
        m.capacity = Resources(cpu=m.used.cpu, ram=8 * GiB, disk=GiB)
    plan = run(ms, running, prio=200)
    assert [(v.job, v.index) for v in plan.preemptions] == [("c", 0)]


def schedule_many(
    ms: list[MachineView], running: list[PlacedTask], prio: int, n: int, rate: float | None
) -> Plan:
    spec = JobSpec(name="new", priority=prio, requirements=R1)
    c = itertools.count()
    snap = Snapshot(ms, [TaskRequest("new", i, 1, spec) for i in range(n)], running)
    sched = BorgScheduler(nonprod_preempt_rate=rate)
    return sched.schedule(snap, lambda: f"i{next(c)}")


def test_nonprod_preemptions_are_capped_per_pass() -> None:
    ms, running = busy(20, {i: 10 for i in range(20)})
    # 20 machines at 0.4 per 1000 machines: the floor, one victim per pass.
    plan = schedule_many(ms, running, prio=100, n=5, rate=0.4)
    assert len(plan.preemptions) == 1 and len(plan.placements) == 1
    assert {f[2].split(":")[0] for f in plan.failures} == {"no-feasible-machine"}
    assert len(plan.failures) == 4
    # 5,000 machines at 0.4 per 1000: two victims.
    ms, running = busy(5000, {i: 10 for i in range(5000)})
    assert len(schedule_many(ms, running, prio=100, n=5, rate=0.4).preemptions) == 2
    # No limit.
    ms, running = busy(20, {i: 10 for i in range(20)})
    assert len(schedule_many(ms, running, prio=100, n=5, rate=None).preemptions) == 5
    assert schedule_many(ms, running, prio=100, n=5, rate=0.0).preemptions == []


def test_production_is_never_held_back_by_the_budget() -> None:
    ms, running = busy(20, {i: 10 for i in range(20)})
    plan = schedule_many(ms, running, prio=200, n=5, rate=0.4)
    assert len(plan.preemptions) == 5 and len(plan.placements) == 5


def test_budget_counts_victims_not_preemptors() -> None:
    # The only room is two victims on one machine: a budget of one cannot buy it.
    running = [placed("a", 0, "m1", 10), placed("a", 1, "m1", 10)]
    ms = [full_machine("m1", running)]
    spec = JobSpec(name="new", priority=100, requirements=Requirements(cpu=2, ram=GiB))
    snap = Snapshot(ms, [TaskRequest("new", 0, 1, spec)], running)
    assert BorgScheduler(nonprod_preempt_rate=0.0001).schedule(snap, lambda: "x").placements == []
    assert (
        len(BorgScheduler(nonprod_preempt_rate=None).schedule(snap, lambda: "x").preemptions) == 2
    )


def test_an_unrequested_resource_over_capacity_is_not_free() -> None:
    # The store re-checks every resource: a machine already over its cpu takes no task, not
    # even one asking for no cpu (else the plan's placement would be rejected).
    over = MachineView("m1", Resources(cpu=2, ram=8 * GiB), Resources(cpu=3, ram=0))
    spec = JobSpec(name="new", priority=200, requirements=Requirements(cpu=0, ram=GiB))
    plan = BorgScheduler().schedule(Snapshot([over], [TaskRequest("new", 0, 1, spec)]), lambda: "x")
    assert plan.placements == [] and plan.failures[0][2] == "no-feasible-machine: cpu 1"


def test_production_task_of_a_job_never_uses_the_nonprod_overcommit() -> None:
    # Two tasks of one job (the trace has such jobs) differing only in priority: the
    # production one must not share the batch one's equivalence class (and its overcommit).
    m = MachineView("m1", Resources(cpu=2, ram=8 * GiB), Resources(cpu=1.5, ram=0))
    req = Requirements(cpu=1, ram=GiB)
    batch = JobSpec(name="j", priority=100, requirements=req)
    prod = JobSpec(name="j", priority=200, requirements=req)
    snap = Snapshot([m], [TaskRequest("j", 0, 1, batch), TaskRequest("j", 1, 1, prod)])
    sched = BorgScheduler(nonprod_overcommit={"cpu": 1.5})
    plan = sched.schedule(snap, lambda: "x")
    assert [(p.job, p.index) for p in plan.placements] == [("j", 0)]
