"""The pure planner: snapshot building, hold-back decisions and the plan command, all from
a bare Store with the times passed in (no clock, no proposals, no metrics)."""

from __future__ import annotations

from typing import Any

from borgmaster import commands as C
from borgmaster import planner
from borgmaster.copies import LiveCopies
from borgmaster.scheduler import Plan
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
