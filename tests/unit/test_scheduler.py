"""BestFitScheduler (bench/bestfit.py, the first scheduler, now a baseline and test oracle):
a pure function from plain snapshot data to a plan."""

from __future__ import annotations

import itertools
from collections.abc import Callable

from bench.bestfit import BestFitScheduler
from borgmaster.model import (
    MACHINE_DRAINING,
    MACHINE_LOST,
    MACHINE_UP,
    JobSpec,
    Requirements,
    Resources,
)
from borgmaster.scheduler import MachineView, Plan, Snapshot, TaskRequest

GiB = 1 << 30


def machine(
    name: str,
    cpu: float = 4.0,
    ram: int = 8 * GiB,
    used: Resources | None = None,
    state: str = MACHINE_UP,
) -> MachineView:
    return MachineView(
        name=name,
        capacity=Resources(cpu=cpu, ram=ram, disk=100 * GiB, gpu=0),
        used=used or Resources(),
        state=state,
    )


def tasks(
    job: str, n: int, cpu: float = 1.0, ram: int = GiB, priority: int = 100, version: int = 1
) -> list[TaskRequest]:
    spec = JobSpec(name=job, priority=priority, requirements=Requirements(cpu=cpu, ram=ram))
    return [TaskRequest(job=job, index=i, version=version, spec=spec) for i in range(n)]


def ids() -> Callable[[], str]:
    counter = itertools.count()
    return lambda: f"inc-{next(counter)}"


def run(machines: list[MachineView], pending: list[TaskRequest]) -> Plan:
    return BestFitScheduler().schedule(Snapshot(machines=machines, pending=pending), ids())


def test_places_on_tightest_fitting_machine() -> None:
    ms = [machine("big", cpu=16, ram=32 * GiB), machine("small", cpu=2, ram=2 * GiB)]
    plan = run(ms, tasks("a", 1))
    assert [(p.job, p.index, p.machine) for p in plan.placements] == [("a", 0, "small")]
    assert plan.failures == []


def test_tightest_fit_accounts_for_used_resources() -> None:
    ms = [
        machine("empty", cpu=4, ram=4 * GiB),
        machine("half", cpu=4, ram=4 * GiB, used=Resources(cpu=2, ram=2 * GiB)),
    ]
    plan = run(ms, tasks("a", 1))
    assert plan.placements[0].machine == "half"


def test_ties_break_by_machine_name() -> None:
    plan = run([machine("m2"), machine("m1")], tasks("a", 1))
    assert plan.placements[0].machine == "m1"


def test_never_overcommits_within_one_pass() -> None:
    ms = [machine("m1", cpu=2, ram=8 * GiB), machine("m2", cpu=3, ram=2 * GiB)]
    plan = run(ms, tasks("a", 10, cpu=1.0, ram=GiB))
    per_machine: dict[str, list[int]] = {}
    for p in plan.placements:
        per_machine.setdefault(p.machine, []).append(p.index)
    caps = {m.name: m.capacity for m in ms}
    for name, indexes in per_machine.items():
        assert len(indexes) * 1.0 <= caps[name].cpu
        assert len(indexes) * GiB <= caps[name].ram
    # m1 takes 2 (cpu-bound), m2 takes 2 (ram-bound); the rest wait.
    assert len(plan.placements) == 4
    assert len(plan.failures) == 6
    placed = {(p.job, p.index) for p in plan.placements}
    failed = {(j, i) for j, i, _ in plan.failures}
    assert placed.isdisjoint(failed) and len(placed | failed) == 10


def test_higher_priority_served_first_when_capacity_is_short() -> None:
    low = tasks("low", 2, priority=0)
    high = tasks("high", 2, priority=200)
    plan = run([machine("m1", cpu=2, ram=8 * GiB)], low + high)
    assert sorted((p.job, p.index) for p in plan.placements) == [("high", 0), ("high", 1)]
    assert sorted((j, i) for j, i, _ in plan.failures) == [("low", 0), ("low", 1)]


def test_no_machines_reason() -> None:
    plan = run([], tasks("a", 1))
    assert plan.placements == []
    assert plan.failures == [("a", 0, "no-feasible-machine: no machines in the cell")]


def test_all_machines_down_reason() -> None:
    ms = [machine("m1", state=MACHINE_LOST), machine("m2", state=MACHINE_DRAINING)]
    plan = run(ms, tasks("a", 1))
    assert plan.placements == []
    [(_, _, reason)] = plan.failures
    assert reason == "no-feasible-machine: no machine is up"


def test_too_big_reason_names_short_resources() -> None:
    ms = [machine("m1", cpu=2, ram=64 * GiB), machine("m2", cpu=8, ram=GiB)]
    plan = run(ms, tasks("a", 1, cpu=4, ram=4 * GiB))
    assert plan.placements == []
    [(job, index, reason)] = plan.failures
    assert (job, index) == ("a", 0)
    assert reason.startswith("no-feasible-machine")
    assert "insufficient cpu on 1 of 2 machines" in reason
    assert "insufficient ram on 1 of 2 machines" in reason
    assert "disk" not in reason and "gpu" not in reason


def test_gpu_shortage_is_named() -> None:
    spec = JobSpec(name="g", requirements=Requirements(cpu=0.1, ram=1, gpu=1))
    plan = run([machine("m1")], [TaskRequest(job="g", index=0, version=1, spec=spec)])
    [(_, _, reason)] = plan.failures
    assert reason == "no-feasible-machine: insufficient gpu on 1 of 1 machines"


def test_draining_and_lost_machines_are_skipped() -> None:
    ms = [
        machine("drain", cpu=1, ram=GiB, state=MACHINE_DRAINING),
        machine("lost", cpu=1, ram=GiB, state=MACHINE_LOST),
        machine("up", cpu=64, ram=512 * GiB),
    ]
    plan = run(ms, tasks("a", 3))
    assert {p.machine for p in plan.placements} == {"up"}
    assert plan.failures == []


def test_new_id_names_each_incarnation_and_version_is_carried() -> None:
    plan = run([machine("m1")], tasks("a", 3, version=7))
    assert [p.incarnation for p in plan.placements] == ["inc-0", "inc-1", "inc-2"]
    assert all(p.version == 7 for p in plan.placements)


def test_schedule_does_not_mutate_snapshot() -> None:
    ms = [machine("m1")]
    pending = tasks("a", 2)
    run(ms, pending)
    assert ms[0].used == Resources()
    assert [t.index for t in pending] == [0, 1]
