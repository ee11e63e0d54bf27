"""The pure planner: snapshot building, hold-back decisions and the plan command, all from
a bare Store with the times passed in (no clock, no proposals, no metrics)."""

from __future__ import annotations

import random
from typing import Any

from borgmaster import commands as C
from borgmaster import planner
from borgmaster.copies import LiveCopies
from borgmaster.model import Requirements
from borgmaster.scheduler import Plan
from borgmaster.store import ACTIVE_STATES
from tests.unit.test_store import Cell, spec

GiB = 1 << 30


def wire(x: Any) -> Any:
    """A nested command part as plain data, whether commands carry dicts/lists or typed
    parts with `to_wire`."""
    return x.to_wire() if hasattr(x, "to_wire") else x


def cell_with(replicas: int = 2) -> Cell:
    cell = Cell()
    cell.machine("m1", cpu=16.0, ram=64 * GiB)
    cell.submit(spec(name="a", replicas=replicas))
    return cell


def test_snapshot_shows_pending_running_and_machines_and_only_limits_pending() -> None:
    cell = cell_with(3)
    cell.place("a", 0, "m1")
    snap, reasons = planner.build_snapshot(cell.store)
    assert [(t.job, t.index) for t in snap.pending] == [("a", 1), ("a", 2)]
    assert [(p.job, p.index, p.machine) for p in snap.running] == [("a", 0, "m1")]
    assert [m.name for m in snap.machines] == ["m1"]
    assert set(reasons) == {("a", 1), ("a", 2)}
    snap, _ = planner.build_snapshot(cell.store, only={("a", 2), ("a", 0)})
    assert [(t.job, t.index) for t in snap.pending] == [("a", 2)]  # a/0 is not pending


def test_a_task_with_a_live_copy_elsewhere_is_held_with_a_reason_once() -> None:
    cell = cell_with(2)
    copies = LiveCopies()
    copies.observe("m1", [("a", 0, "old", "running")])
    snap, reasons = planner.build_snapshot(cell.store)
    hb = planner.hold_back(snap, reasons, copies, learning=False)
    assert [(t.job, t.index) for t in hb.snapshot.pending] == [("a", 1)]
    assert hb.held == {("a", 0)}
    assert hb.reasons == [["a", 0, "waiting for its previous copy on m1 to stop"]]
    # The reason is recorded already: held again, nothing to write.
    reasons[("a", 0)] = "waiting for its previous copy on m1 to stop"
    again = planner.hold_back(snap, reasons, copies, learning=False)
    assert again.held == {("a", 0)} and again.reasons == []


def test_a_copy_on_a_lost_machine_does_not_hold() -> None:
    cell = cell_with(1)
    cell.apply(C.MachineLost(name="m1"))
    copies = LiveCopies()
    copies.observe("m1", [("a", 0, "old", "running")])
    snap, reasons = planner.build_snapshot(cell.store)
    hb = planner.hold_back(snap, reasons, copies, learning=False)
    assert hb.held == set() and hb.snapshot is snap


def test_a_learning_leader_holds_replaced_tasks_but_not_new_ones() -> None:
    snap_cell = cell_with(2)
    snap, reasons = planner.build_snapshot(snap_cell.store)
    reasons[("a", 0)] = "updated"  # replaced by a rollout: its old copy may still run
    hb = planner.hold_back(snap, reasons, LiveCopies(), learning=True)
    assert hb.held == {("a", 0)}
    assert hb.reasons == [
        ["a", 0, "waiting for its previous copy on an unreported machine to stop"]
    ]
    assert planner.hold_back(snap, reasons, LiveCopies(), learning=False).held == set()


def test_learning_lasts_one_machine_timeout_or_until_every_machine_reported() -> None:
    cell = cell_with(1)
    snap, _ = planner.build_snapshot(cell.store)
    copies = LiveCopies()
    assert planner.still_learning(10.0, 5.0, 30.0, copies, snap.machines)
    assert not planner.still_learning(36.0, 5.0, 30.0, copies, snap.machines)  # timed out
    assert not planner.still_learning(10.0, None, 30.0, copies, snap.machines)  # not leading
    copies.observe("m1", [])
    assert not planner.still_learning(10.0, 5.0, 30.0, copies, snap.machines)


def test_prepare_pass_takes_the_times_it_is_given() -> None:
    cell = cell_with(1)
    cell.place("a", 0, "m1")
    inc = cell.store.tasks[("a", 0)].incarnation
    cell.apply(C.ReplaceTasks(job="a", tasks=[C.TaskRef(0, inc)], reason="updated"))
    copies = LiveCopies()
    young = planner.prepare_pass(
        cell.store, None, copies, now=1.0, leader_since=0.0, machine_timeout_s=30.0
    )
    assert young.held == {("a", 0)} and young.snapshot.pending == []
    assert not young.empty  # the held reason is still to be written
    old = planner.prepare_pass(
        cell.store, None, copies, now=100.0, leader_since=0.0, machine_timeout_s=30.0
    )
    assert old.held == set() and [t.index for t in old.snapshot.pending] == [0]
    assert set(old.waiting_since) == {("a", 0)}


def test_plan_command_writes_only_what_changes() -> None:
    cell = cell_with(2)
    inp = planner.prepare_pass(
        cell.store, None, LiveCopies(), now=0.0, leader_since=None, machine_timeout_s=30.0
    )
    assert planner.plan_command(inp, Plan(), term=3) is None
    reason = "no machine fits"
    cmd = planner.plan_command(inp, Plan(failures=[("a", 0, reason), ("a", 1, reason)]), 3)
    assert cmd is not None and cmd.term == 3
    assert [wire(f) for f in cmd.failures] == [["a", 0, reason], ["a", 1, reason]]
    assert planner.failed_keys(Plan(failures=[("a", 0, reason)])) == {("a", 0)}
    # The same failure reasons recorded already: nothing to write.
    inp.reasons = {("a", 0): reason, ("a", 1): reason}
    assert planner.plan_command(inp, Plan(failures=[("a", 0, reason), ("a", 1, reason)]), 3) is None


def test_may_have_a_copy_names_the_replacement_reasons() -> None:
    assert planner.may_have_a_copy("updated") and planner.may_have_a_copy("drained")
    assert planner.may_have_a_copy("preempted by web/0")
    assert planner.may_have_a_copy(planner.held_reason("m1"))
    assert not planner.may_have_a_copy("") and not planner.may_have_a_copy("no machine fits")


def test_a_plan_over_the_byte_cap_is_split_in_order_preemptions_first() -> None:
    ps = [C.Placement(f"job{i % 7}", i, f"m{i % 13}", f"inc-{i:06d}" * 4, 1) for i in range(500)]
    pre = [C.Preemption("low", 0, "i0", "m1", "preempted")]
    fail = [C.PlanFailure("big", 0, "no-feasible-machine: cpu")]
    cmd = C.ApplyPlan(placements=ps, failures=fail, preemptions=pre, term=4)
    assert planner.split_plan(cmd) == [cmd]  # fits: one entry
    cap = len(C.encode(cmd)) // 5
    parts = planner.split_plan(cmd, max_bytes=cap)
    assert len(parts) >= 5
    assert all(len(C.encode(p)) <= cap for p in parts)
    flat = [p for part in parts for p in part.placements]
    assert sorted(flat, key=lambda p: p.index) == ps
    # grouped by machine, each machine's placements in plan order
    assert flat == sorted(ps, key=lambda p: p.machine)
    assert parts[0].preemptions == pre and parts[0].failures == fail
    assert all(not p.preemptions and not p.failures and p.term == 4 for p in parts[1:])


def test_split_parts_apply_to_the_same_state_as_the_whole_plan() -> None:
    def cell_with_pending() -> Cell:
        c = Cell()
        c.machine("m1", cpu=64.0, ram=1 << 40)
        c.submit(spec(replicas=40))
        return c

    ps = [C.Placement("web", i, "m1", f"web-{i}-m1", 1) for i in range(40)]
    whole, split = cell_with_pending(), cell_with_pending()
    whole.apply(C.ApplyPlan(placements=ps, ts_ms=9))
    parts = planner.split_plan(C.ApplyPlan(placements=ps), max_bytes=400)
    assert len(parts) > 1
    for p in parts:
        p.ts_ms = 9
        split.apply(p)
    assert split.store.state_digest() == whole.store.state_digest()


def test_a_plan_over_the_placement_cap_is_split_and_keeps_each_gang_whole() -> None:
    ps = [C.Placement("web", i, f"m{i % 13}", f"w{i}", 1) for i in range(25)]
    # a gang of 6 whose placements straddle the first boundary, interleaved with others
    gang = [C.Placement("mpi", i, f"m{i}", f"g{i}", 1) for i in range(6)]
    mixed = ps[:8] + gang[:3] + ps[8:12] + gang[3:] + ps[12:]
    cmd = C.ApplyPlan(placements=mixed, term=2)
    parts = planner.split_plan(cmd, max_placements=10, gangs={"mpi"})
    assert len(parts) >= 3
    assert sorted((p.job, p.index) for part in parts for p in part.placements) == sorted(
        (p.job, p.index) for p in mixed
    )
    holding = [part for part in parts if any(p.job == "mpi" for p in part.placements)]
    assert len(holding) == 1 and [p for p in holding[0].placements if p.job == "mpi"] == gang
    # only a gang may take a part past the cap
    assert all(len(part.placements) <= 10 for part in parts if part is not holding[0])
    # the same plan without gangs: every part within the cap, machine by machine in order
    plain = planner.split_plan(cmd, max_placements=10)
    assert all(len(part.placements) <= 10 for part in plain)
    assert [p for part in plain for p in part.placements] == sorted(mixed, key=lambda p: p.machine)
    assert planner.split_plan(cmd, max_placements=len(mixed)) == [cmd]


def test_the_snapshot_holds_every_placed_task_and_what_each_machine_holds() -> None:
    """One walk (`_placed`) gives what `Store.used` and a per-task spec lookup give."""
    c = Cell()
    for m in ("m1", "m2", "m3"):
        c.machine(m, cpu=64.0, ram=1 << 40)
    c.submit(spec("web", replicas=6))
    c.submit(spec("low", replicas=3, priority=50))
    for i in range(6):
        c.place("web", i, f"m{i % 3 + 1}")
    for i in range(2):
        c.place("low", i, "m2")
    c.update("web", 0, "running")
    c.update("web", 1, "failed", exit_code=1)  # finished: holds nothing
    # a new version of web: placed tasks keep the old spec (and its requirements)
    c.submit(spec("web", replicas=6, requirements=Requirements(cpu=2.0, ram=1 << 30)))
    snap, _ = planner.build_snapshot(c.store)
    store = c.store
    assert {m.name: m.used for m in snap.machines} == {m: store.used(m) for m in store.machines}
    want = sorted(
        (
            t.job,
            t.index,
            t.machine,
            store.jobs[t.job].spec.priority,
            store.task_spec(t).requirements,
        )
        for t in store.tasks.values()
        if t.machine and t.state in ACTIVE_STATES
    )
    got = sorted((p.job, p.index, p.machine, p.priority, p.requirements) for p in snap.running)
    assert got == want and len(got) == 7


def test_the_placed_memo_never_disagrees_with_a_fresh_walk() -> None:
    """A `PlacedCache` kept across passes gives what a walk without it gives, after any
    sequence of placements, reports, updates (priority, requirements), kills, lost
    machines, re-registrations and snapshot loads."""
    rng = random.Random(11)
    c = Cell()
    machines = [f"m{i}" for i in range(5)]
    for m in machines:
        c.machine(m, cpu=256.0, ram=1 << 44)
    jobs = ["a", "b", "c"]
    for j in jobs:
        c.submit(spec(j, replicas=4))
    memo = planner.PlacedCache()
    reused = 0

    def view(cache: planner.PlacedCache | None) -> tuple[Any, Any]:
        snap, _ = planner.build_snapshot(c.store, cache=cache)
        placed = sorted(
            (p.job, p.index, p.machine, p.priority, p.requirements, p.incarnation)
            for p in snap.running
        )
        return placed, {m.name: m.used for m in snap.machines}

    for step in range(400):
        op = rng.randrange(9)
        j = rng.choice(jobs)
        store = c.store
        if op <= 2:  # place a pending task
            waiting = sorted(k for k in store.pending if k[0] == j)
            if waiting:
                _, i = waiting[0]
                c.place(j, i, rng.choice(machines), version=store.jobs[j].version)
        elif op == 3:  # a placed task reports running or ends
            live = [t for t in store.job_tasks(j) if t.machine and t.state in ACTIVE_STATES]
            if live:
                t = rng.choice(live)
                c.update(j, t.index, rng.choice(["running", "failed", "succeeded", "running"]))
        elif op == 4:  # a new version: other requirements, maybe another priority
            c.submit(
                spec(
                    j,
                    replicas=rng.randrange(2, 6),
                    priority=rng.choice([100, 150, 200]),
                    requirements=Requirements(cpu=rng.choice([0.5, 1.0, 2.0]), ram=1 << 30),
                )
            )
        elif op == 5:
            c.apply(C.KillJob(ts_ms=step, name=j))
            c.submit(spec(j, replicas=3))  # and up again
        elif op == 6:
            c.apply(C.MachineLost(ts_ms=step, name=rng.choice(machines)))
        elif op == 7:
            c.machine(rng.choice(machines), cpu=256.0, ram=1 << 44)  # comes back
        else:  # a snapshot load (a follower catching up)
            c.store.load_snapshot(c.store.snapshot_bytes())
        reused += sum(
            1
            for name, (gen, placed, _) in memo.machines.items()
            if placed and c.store.machine_generation.get(name) == gen
        )
        assert view(memo) == view(None), step
    assert reused > 100  # the memo was really used, not rebuilt every step


def test_a_split_plan_gives_each_machine_its_placements_in_as_few_parts_as_it_can() -> None:
    """20 machines x 5 tasks in round-robin order, split at 10 placements per part: each
    machine's 5 land in one part (machines hear once), not one per part."""
    ps = [C.Placement("web", i, f"m{i % 20:02d}", f"w{i}", 1) for i in range(100)]
    parts = planner.split_plan(C.ApplyPlan(placements=ps), max_placements=10)
    assert len(parts) == 10
    for part in parts:
        machines = [p.machine for p in part.placements]
        assert len(set(machines)) == 2, machines
    seen = [{p.machine for p in part.placements} for part in parts]
    assert all(not (a & b) for i, a in enumerate(seen) for b in seen[i + 1 :])
