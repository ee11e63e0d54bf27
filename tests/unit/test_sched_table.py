"""CellTable: a table kept up to date between passes gives the same plans as list snapshots."""

from __future__ import annotations

import itertools
import random

import pytest

from borgmaster.model import MACHINE_LOST, JobSpec, Requirements, Resources
from borgmaster.scheduler import BorgScheduler, MachineView, PlacedTask, Plan, Snapshot, TaskRequest
from borgmaster.scheduler.table import CellTable, req_tuple

GiB = 1 << 30


def plan_of(snap: Snapshot) -> Plan:
    c = itertools.count()
    sched = BorgScheduler(seed=3, nonprod_overcommit={"cpu": 1.25})
    return sched.schedule(snap, lambda: f"i{next(c)}")


def shape(plan: Plan) -> tuple[list[tuple[str, int, str]], list[tuple[str, int, str]], list[str]]:
    return (
        [(p.job, p.index, p.machine) for p in plan.placements],
        [(v.job, v.index, v.machine) for v in plan.preemptions],
        sorted(r for _, _, r in plan.failures),
    )


def busy_cell(seed: int) -> tuple[list[MachineView], list[PlacedTask], list[TaskRequest]]:
    """Machines full of low-priority tasks, and pending tasks of every band."""
    rng = random.Random(seed)
    ms = [
        MachineView(
            name=f"m{i:02d}",
            capacity=Resources(cpu=8, ram=16 * GiB, disk=GiB),
            used=Resources(),
            attrs={"rack": f"r{i % 3}"},
            state=MACHINE_LOST if i == 7 else "up",
        )
        for i in range(30)
    ]
    running: list[PlacedTask] = []
    for i, m in enumerate(ms):
        for k in range(rng.randint(2, 6)):
            req = Requirements(cpu=rng.choice([1, 2]), ram=rng.choice([1, 2, 4]) * GiB)
            prio = rng.choice([0, 50, 100, 150])
            running.append(PlacedTask(f"low{prio}", 100 * i + k, m.name, prio, req, f"x{i}-{k}"))
    for m in ms:
        held = [t.requirements for t in running if t.machine == m.name]
        m.used = Resources(cpu=sum(r.cpu for r in held), ram=sum(r.ram for r in held))
    pending: list[TaskRequest] = []
    for j, prio in enumerate([300, 200, 200, 150, 100, 50]):
        spec = JobSpec(
            name=f"p{j}",
            priority=prio,
            replicas=8,
            requirements=Requirements(cpu=rng.choice([2, 3]), ram=rng.choice([2, 4]) * GiB),
            spread="rack" if j == 1 else None,
        )
        pending += [TaskRequest(spec.name, i, 1, spec) for i in range(spec.replicas)]
    return ms, running, pending


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_table_gives_the_plan_of_a_list_snapshot(seed: int) -> None:
    ms, running, pending = busy_cell(seed)
    table = CellTable()
    for m in ms:
        table.set_machine(m.name, m.capacity, state=m.state, attrs=m.attrs)
    # Place more than needed and take some off again, as a cell does between passes.
    extra = Requirements(cpu=1, ram=GiB)
    for t in running:
        table.place(t.job, t.index, t.machine, t.priority, req_tuple(t.requirements), t.incarnation)
        table.place("gone", t.index, t.machine, 10, req_tuple(extra))
        table.remove("gone", t.index)
    want = plan_of(Snapshot(machines=ms, pending=pending, running=running))
    got = plan_of(Snapshot(machines=[], pending=pending, table=table))
    assert want.preemptions, "the cell should need preemption"
    assert shape(got) == shape(want)


def test_table_tracks_used_resources_and_rows() -> None:
    t = CellTable()
    t.set_machine("a", Resources(cpu=4, ram=8 * GiB))
    t.set_machine("b", Resources(cpu=4, ram=8 * GiB))
    req = req_tuple(Requirements(cpu=1.5, ram=GiB, ports=["http"]))
    t.place("j", 0, "a", 100, req, "i0")
    t.place("j", 1, "a", 100, req, "i1")
    assert list(t.used[:, 0]) == [3.0, 2.0 * GiB, 0.0, 0.0, 2.0]
    assert t.remove("j", 0) and not t.remove("j", 0)
    assert list(t.used[:, 0]) == [1.5, float(GiB), 0.0, 0.0, 1.0]
    k = t.place("k", 0, "b", 50, req)
    assert k == t.rows[("j", 1)] - 1  # the dead row is reused
    assert t.on_machine("a") == [("j", 1)] and t.on_machine("b") == [("k", 0)]
    gen = t.machine_gen
    t.set_state("b", MACHINE_LOST)
    assert t.machine_gen == gen + 1 and t.state[1] == MACHINE_LOST
