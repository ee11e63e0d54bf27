"""One filter table places and explains: `why` agrees with the decision on random cells.

`BorgScheduler.explain` counts, per named check of the filter table, the machines it removes;
a pass places with the same steps. So on any snapshot a lone pending task is placed iff
explain finds a feasible machine, the counts add up to the cell, the reason a pass gives for
a task it cannot place is exactly explain's counts, and the scalar fast path (`_Pass.one`)
agrees with the vectorised masks machine by machine.
"""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from borgmaster.model import (
    MACHINE_DRAINING,
    MACHINE_LOST,
    MACHINE_UP,
    Constraint,
    JobSpec,
    Requirements,
    Resources,
    Taint,
    TaintEffect,
    Toleration,
)
from borgmaster.scheduler import BorgScheduler, MachineView, PlacedTask, Snapshot, TaskRequest, borg
from borgmaster.scheduler.borg import FILTERS, NEG, format_reason

GiB = 1 << 30
RACKS = ["r0", "r1", "r2", "r3"]


def random_cell(rng: random.Random) -> Snapshot:
    """A small cell with every filter in play: states, taints, attributes, nearly full
    machines, running tasks of the pending jobs (spread, distinct-machines), ports."""
    machines = []
    for i in range(rng.randint(1, 40)):
        cap = Resources(cpu=rng.choice([2, 4, 8]), ram=rng.choice([4, 8, 16]) * GiB, disk=GiB)
        cap.gpu = rng.choice([0, 0, 0, 2])
        used = Resources(
            cpu=rng.uniform(0, cap.cpu * 1.1),  # sometimes over capacity (capacity shrunk)
            ram=int(rng.uniform(0, 1.0) * cap.ram),
            disk=rng.choice([0, 0, GiB]),
        )
        attrs = {"rack": rng.choice(RACKS)}
        if rng.random() < 0.5:
            attrs["ssd"] = rng.choice(["yes", "no"])
        taints = []
        if rng.random() < 0.2:
            effect = rng.choice(list(TaintEffect))
            taints.append(Taint("gpu", rng.choice(["true", "a100"]), effect))
        state = rng.choices([MACHINE_UP, MACHINE_DRAINING, MACHINE_LOST], [8, 1, 1])[0]
        machines.append(MachineView(f"m{i}", cap, used, attrs, taints, state))
    jobs = []
    for j in range(rng.randint(1, 5)):
        cons = []
        if rng.random() < 0.4:
            cons.append(
                rng.choice(
                    [
                        Constraint("rack", "!=", "r1"),
                        Constraint("rack", "in", ["r0", "r2"]),
                        Constraint("ssd", "exists"),
                        Constraint("ssd", "==", "yes"),
                        Constraint("ssd", "not-in", ["no"]),
                    ]
                )
            )
        tols = [Toleration("gpu", rng.choice([None, "true"]))] if rng.random() < 0.3 else []
        spec = JobSpec(
            name=f"j{j}",
            replicas=rng.randint(1, 12),
            priority=rng.choice([0, 100, 200, 360]),
            requirements=Requirements(
                cpu=rng.choice([0.0, 0.5, 1, 2, 3]),
                ram=rng.choice([0, GiB, 3 * GiB]),
                gpu=rng.choice([0, 0, 0, 1]),
                ports=["http"] * rng.choice([0, 0, 1]),
            ),
            constraints=cons,
            tolerations=tols,
            spread=rng.choice([None, None, "rack"]),
            distinct_machines=rng.random() < 0.3,
        )
        jobs.append(spec)
    pending, running = [], []
    up = [m for m in machines if m.state == MACHINE_UP] or machines
    for spec in jobs:
        for i in range(spec.replicas):
            if rng.random() < 0.4:
                m = rng.choice(up)
                running.append(PlacedTask(spec.name, i, m.name, spec.priority, spec.requirements))
            else:
                pending.append(TaskRequest(job=spec.name, index=i, version=1, spec=spec))
    return Snapshot(machines=machines, pending=pending, running=running)


def schedulers(rng: random.Random) -> list[BorgScheduler]:
    over = rng.choice([None, {"cpu": 1.25, "ram": 1.2}])
    return [
        BorgScheduler(seed=rng.randint(0, 9), preemption=False, max_ports=rng.choice([1, 1000])),
        BorgScheduler(
            seed=rng.randint(0, 9), preemption=False, sample_size=2, nonprod_overcommit=over
        ),
    ]


@pytest.mark.parametrize("seed", range(60))
def test_explain_agrees_with_placing(seed: int) -> None:
    rng = random.Random(seed)
    snap = random_cell(rng)
    n = len(snap.machines)
    for sched in schedulers(rng):
        for t in snap.pending:
            rejected, feasible = sched.explain(snap, t.job, t.index)
            assert sum(rejected.values()) + feasible == n
            assert all(k > 0 for k in rejected.values())
            alone = Snapshot(snap.machines, [t], snap.running)
            plan = sched.schedule(alone, lambda: "i")
            if feasible:
                assert [p.index for p in plan.placements] == [t.index]
            else:
                assert plan.placements == []
                assert plan.failures == [(t.job, t.index, format_reason(rejected, n))]


@pytest.mark.parametrize("seed", range(60))
def test_scalar_fast_path_agrees_with_masks_through_a_pass(seed: int) -> None:
    """`_Pass.one` (one machine, plain floats) and `_Pass.feasible` (numpy) say the same for
    every machine and class, before and after each placement of a pass; the explain count
    of feasible machines is their number."""
    rng = random.Random(seed)
    snap = random_cell(rng)
    for sched in schedulers(rng):
        p = borg._Pass(sched, snap)
        every = np.arange(p.n, dtype=np.int64)
        for t in borg._queue(snap.pending):
            c = p.class_of(t)
            free = p.cur_free()
            mask = p.feasible(c, every, free)
            one = np.array([p.one(c, m, free) > NEG for m in range(p.n)], dtype=bool)
            assert (mask == one).all()
            _, feasible = p.rejections(c)
            assert feasible == int(mask.sum())
            m = p.pick(c)
            assert (m is not None) == bool(mask.any())
            if m is not None:
                assert mask[m]
                p.place(c, m)


def test_every_step_has_a_name_and_resources_come_last() -> None:
    names = [f.name for f in FILTERS]
    assert names == ["state", "taint", "constraint", "distinct-machines", "spread", "resources"]
    assert [f.name for f in FILTERS if f.room] == ["resources"]
    assert all(f.one is not None for f in FILTERS if not f.per_machine)


def test_explain_a_running_task_uses_the_same_table() -> None:
    """`why` on a task that is not pending counts through the filter table too."""
    from borgmaster.explain import explain_task

    ms = [
        MachineView("a", Resources(cpu=4, ram=8 * GiB), Resources(), {"rack": "r1"}),
        MachineView("b", Resources(cpu=4, ram=8 * GiB), Resources(), {"rack": "r2"}),
        MachineView("c", Resources(cpu=4, ram=8 * GiB), Resources(), state=MACHINE_DRAINING),
    ]
    spec = JobSpec(
        name="j",
        requirements=Requirements(cpu=1, ram=GiB),
        constraints=[Constraint("rack", "!=", "r1")],
    )
    snap = Snapshot(ms, [], [PlacedTask("j", 0, "b", 100, spec.requirements)])
    got = explain_task(object(), snap, spec, "j", 0)
    assert got == ({"draining": 1, "constraint rack!=r1": 1}, 1)
    ids = itertools.count()
    pending = Snapshot(ms, [TaskRequest("j", 0, 1, spec)])
    assert explain_task(BorgScheduler(), pending, spec, "j", 0) == got
    assert BorgScheduler().schedule(pending, lambda: str(next(ids))).placements[0].machine == "b"
