"""The Borglet link: the pure diff of what a Borglet observes against the store, the
registration check, and the Sync shell against a bare Store (proposals apply at once)."""

from __future__ import annotations

from typing import Any

import pytest

from borgmaster import commands as C
from borgmaster import link
from borgmaster.copies import LiveCopies
from borgmaster.liveness import lost_machines
from borgmaster.model import Machine, Resources
from proto.borg.v1 import borg_pb2 as pb
from tests.unit.test_store import Cell, spec

GiB = 1 << 30


def wire(x: Any) -> Any:
    return x.to_wire() if hasattr(x, "to_wire") else x


def placed_cell() -> tuple[Cell, str]:
    cell = Cell()
    cell.machine("m1", cpu=16.0, ram=64 * GiB)
    cell.submit(spec(name="a", replicas=2))
    cell.place("a", 0, "m1")
    cell.place("a", 1, "m1")
    return cell, cell.store.tasks[("a", 0)].incarnation


def obs(job: str, index: int, inc: str, state: str, **kw: Any) -> link.Observed:
    return link.Observed(job=job, index=index, incarnation=inc, state=state, **kw)


def test_nothing_changed_is_no_command() -> None:
    cell, _ = placed_cell()
    same = [obs("a", i, t.incarnation, "assigned") for i, t in enumerate(cell.store.job_tasks("a"))]
    assert link.task_updates(cell.store, "m1", same) is None


def test_a_state_change_is_one_update_with_every_field() -> None:
    cell, inc = placed_cell()
    got = link.task_updates(
        cell.store,
        "m1",
        [obs("a", 0, inc, "running", restarts=1, health="healthy", ports={"http": 20000})],
    )
    assert got is not None and got.machine == "m1"
    (u,) = [wire(u) for u in got.updates]
    assert (u["job"], u["index"], u["incarnation"], u["state"]) == ("a", 0, inc, "running")
    assert (u["restarts"], u["health"], u["ports"], u["exit_code"]) == (
        1,
        "healthy",
        {"http": 20000},
        None,
    )


def test_other_incarnations_and_finished_tasks_are_ignored() -> None:
    cell, _ = placed_cell()
    cell.update("a", 1, "succeeded", exit_code=0)
    got = link.task_updates(
        cell.store, "m1", [obs("a", 0, "someone-else", "failed"), obs("a", 1, "x", "running")]
    )
    assert got is None


def test_a_killed_jobs_unreported_tasks_are_killed() -> None:
    cell, inc = placed_cell()
    cell.apply(C.KillJob(name="a"))
    # a/0 is still reported (being stopped); a/1 is gone from the Borglet's list.
    got = link.task_updates(cell.store, "m1", [obs("a", 0, inc, "assigned")])
    assert got is not None
    assert [(wire(u)["index"], wire(u)["state"]) for u in got.updates] == [(1, "killed")]


def test_registration_only_when_new_changed_or_lost() -> None:
    cell = Cell()
    m = Machine(name="m1", address="m1:1", capacity=Resources(cpu=4.0, ram=8 * GiB, disk=GiB))
    assert link.registration(cell.store, m) is not None  # new
    cell.machine("m1")
    assert link.registration(cell.store, m) is None  # the same
    bigger = Machine(name="m1", address="m1:1", capacity=Resources(cpu=8.0, ram=8 * GiB, disk=GiB))
    assert link.registration(cell.store, bigger) is not None
    cell.apply(C.MachineLost(name="m1"))
    assert link.registration(cell.store, m) is not None  # back from lost


def test_observed_from_pb_maps_no_exit_code_to_none() -> None:
    o = link.Observed.from_pb(
        pb.ObservedTask(job="a", index=1, incarnation="i", state="running", exit_code=-1)
    )
    assert o.exit_code is None and o.index == 1
    assert link.Observed.from_pb(pb.ObservedTask(exit_code=3)).exit_code == 3


def test_sync_registers_records_and_replies_with_the_desired_set() -> None:
    cell = Cell()
    cell.submit(spec(name="a", replicas=1))
    proposed: list[C.Command] = []
    released: list[bool] = []

    def propose(cmd: C.Command) -> dict[str, Any]:
        proposed.append(cmd)
        return cell.apply(cmd)

    lk = link.BorgletLink(
        cell.store, LiveCopies(), propose, lambda: True, lambda: released.append(True), "c1"
    )
    req = pb.SyncRequest(
        machine="m1",
        address="m1:1",
        capacity=pb.Resources(cpu=4.0, ram=8 * GiB, disk=GiB),
        wait_ms=0,
    )
    r = lk.sync(req)
    assert [type(c).__name__ for c in proposed] == ["RegisterMachine"]
    assert r.cell == "c1" and list(r.tasks) == []
    assert lk.last_seen_ms("m1") > 0 and lk.last_seen_ms("m2") == 0
    assert released == [True]  # first report to this leader: held tasks may go
    cell.place("a", 0, "m1")
    inc = cell.store.tasks[("a", 0)].incarnation
    req.tasks.append(
        pb.ObservedTask(job="a", index=0, incarnation=inc, state="running", cpu_seconds=2.0)
    )
    r = lk.sync(req)
    assert type(proposed[-1]).__name__ == "TaskUpdates"
    assert cell.store.tasks[("a", 0)].state == "running"
    assert [(t.job, t.index, t.incarnation) for t in r.tasks] == [("a", 0, inc)]
    with cell.store.lock:
        assert lk.machine_usage("m1").cpu == 2.0
    n = len(proposed)
    lk.sync(req)
    assert len(proposed) == n  # a heartbeat that changes nothing writes nothing

    # a Borglet that holds the current generation's set gets just `unchanged`...
    req.known_generation, req.accepts_unchanged = r.generation, True
    idle = lk.sync(req)
    assert idle.unchanged and list(idle.tasks) == [] and idle.generation == r.generation
    # ...an older Borglet (or one asking for the full set) the full set...
    req.accepts_unchanged = False
    assert not lk.sync(req).unchanged
    # ...and one holding another generation the new set
    req.accepts_unchanged = True
    cell.submit(spec(name="b", replicas=1))
    cell.place("b", 0, "m1")
    changed = lk.sync(req)
    assert not changed.unchanged and changed.generation != r.generation
    assert sorted(t.job for t in changed.tasks) == ["a", "b"]


def test_lost_machines_after_the_timeout_counting_from_the_leaders_start() -> None:
    assert lost_machines(["m1"], {}, leader_since=0.0, now=20.0, timeout_s=30.0) == []
    assert lost_machines(["m1", "m2"], {"m2": 35.0}, 0.0, now=40.0, timeout_s=30.0) == [
        ("m1", 40.0)
    ]


def test_shared_specs_go_once_per_job_and_an_older_borglet_gets_them_inline() -> None:
    from types import SimpleNamespace

    from borglet.link import MasterLink

    cell = Cell()
    cell.machine("m1", cpu=16.0, ram=64 * GiB)
    cell.submit(spec(name="a", replicas=3, env={"BIG": "x" * 1000}))
    cell.submit(spec(name="b", replicas=1))
    for job, n in (("a", 3), ("b", 1)):
        for i in range(n):
            cell.place(job, i, "m1")
    lk = link.BorgletLink(cell.store, LiveCopies(), cell.apply, lambda: True, lambda: None, "c1")
    req = pb.SyncRequest(machine="m1", address="m1:1", wait_ms=0, known_generation=-1)
    old = lk.sync(req)
    req.shared_specs = True
    new = lk.sync(req)
    assert sorted(new.specs) == ["a@1", "b@1"] and not old.specs
    assert [t.spec_ref for t in new.tasks] == ["a@1"] * 3 + ["b@1"]
    assert all(not t.HasField("spec") for t in new.tasks)
    assert [t.spec for t in old.tasks] == [new.specs[t.spec_ref] for t in new.tasks]
    assert new.ByteSize() < old.ByteSize() / 2  # a's 1 KB env once, not three times
    # The Borglet resolves both forms to the same desired set.
    fake = SimpleNamespace(_spec_cache={})
    via_ref = MasterLink.desired_of(fake, new)  # type: ignore[arg-type]
    fake._spec_cache = {}
    inline = MasterLink.desired_of(fake, old)  # type: ignore[arg-type]
    assert via_ref == inline and len(via_ref) == 4
    # A reference the reply does not hold: that task is left out, the others still run.
    del new.specs["b@1"]
    fake._spec_cache = {}
    assert [d.job for d in MasterLink.desired_of(fake, new)] == ["a", "a", "a"]  # type: ignore[arg-type]


def test_a_task_not_yet_rolled_gets_the_spec_of_its_own_version() -> None:
    from borgmaster.convert import dict_from

    cell = Cell()
    cell.machine("m1", cpu=16.0, ram=64 * GiB)
    cell.submit(spec(name="a", replicas=1, command=["sleep", "1"]))
    cell.place("a", 0, "m1")
    cell.submit(spec(name="a", replicas=1, command=["sleep", "2"]))  # version 2, not rolled yet
    assert cell.store.jobs["a"].version == 2 and cell.store.tasks[("a", 0)].version == 1
    lk = link.BorgletLink(cell.store, LiveCopies(), cell.apply, lambda: True, lambda: None, "c1")
    for shared in (False, True):
        r = lk.sync(pb.SyncRequest(machine="m1", wait_ms=0, shared_specs=shared))
        [t] = r.tasks
        s = r.specs[t.spec_ref] if shared else t.spec
        assert t.version == 1 and dict_from(s)["command"] == ["sleep", "1"]


def test_idle_heartbeats_stretch_with_the_cells_size() -> None:
    # a Borglet with news asks for no wait and gets none, however big the cell
    assert link.sync_wait_s(0, 10_000) == 0.0
    # small cells: what the Borglet asks (1 s), capped at MAX_SYNC_WAIT_S
    assert link.sync_wait_s(1000, 3) == 1.0
    assert link.sync_wait_s(60_000, 3) == link.MAX_SYNC_WAIT_S
    # ~50 idle Syncs/s cell-wide, never held past MAX_HEARTBEAT_S
    assert link.sync_wait_s(1000, 200) == 4.0
    assert link.sync_wait_s(1000, 10_000) == link.MAX_HEARTBEAT_S
    assert link.MAX_HEARTBEAT_S + 1 < 10  # under the Borglets' client deadline (wait + 10 s)


def test_a_replica_that_stopped_leading_records_nothing() -> None:
    cell = Cell()
    proposed: list[C.Command] = []
    lk = link.BorgletLink(
        cell.store, LiveCopies(), proposed.append, lambda: False, lambda: None, "c1"
    )  # type: ignore[arg-type]
    req = pb.SyncRequest(machine="m1", address="m1:1", capacity=pb.Resources(cpu=1.0))
    with pytest.raises(link.NotLeader):
        lk.record(req)
    assert proposed == []


def test_many_machines_reports_become_one_batch_entry() -> None:
    """A Link replica records the reports it gathered together: registrations and task
    updates of many machines go into one Raft entry (a Batch), not one per machine."""
    cell, inc = placed_cell()
    proposed: list[C.Command] = []

    def propose(cmd: C.Command) -> dict[str, Any]:
        proposed.append(cmd)
        return cell.apply_raw(C.encode(cmd))

    lk = link.BorgletLink(cell.store, LiveCopies(), propose, lambda: True, lambda: None, "c1")
    reports = [
        pb.SyncRequest(
            machine=f"n{i}", address=f"n{i}:1", capacity=pb.Resources(cpu=4.0, ram=GiB, disk=GiB)
        )
        for i in range(5)
    ]
    m1 = pb.SyncRequest(
        machine="m1", address="m1:1", capacity=pb.Resources(cpu=16.0, ram=64 * GiB, disk=GiB)
    )
    m1.tasks.append(pb.ObservedTask(job="a", index=0, incarnation=inc, state="running"))
    failed = lk.record_many([*reports, m1], [[] for _ in range(6)])
    assert failed == []
    assert [type(c).__name__ for c in proposed] == ["Batch"]
    assert all(f"n{i}" in cell.store.machines for i in range(5))
    assert cell.store.tasks[("a", 0)].state == "running"
    assert lk.last_seen_ms("n3") > 0
    assert lk.record_many([m1], [[]]) == [] and len(proposed) == 1  # nothing new: no write


def test_a_stream_gets_only_changes_and_each_spec_once() -> None:
    from borgmaster.linkstream import LinkSession, LinkStreams
    from borgmaster.rpc_loop import Waiters

    cell, _ = placed_cell()
    lk = link.BorgletLink(cell.store, LiveCopies(), cell.apply, lambda: True, lambda: None, "c1")
    ls = LinkStreams(
        cell.store,
        lk,
        Waiters(),
        None,
        lambda: True,
        lambda: "",
        "me:1",
        None,
        "c1",  # type: ignore[arg-type]
    )
    s = LinkSession(machine="m1")
    first = ls.push(s, full=True)
    assert first is not None and first.full and len(first.upserts) == 2
    assert list(first.specs) == ["a@1"]  # one job version: its spec once
    assert ls.push(s, full=False) is None  # nothing changed: nothing to send
    cell.submit(spec(name="b", replicas=1))
    cell.place("b", 0, "m1")
    nxt = ls.push(s, full=False)
    assert nxt is not None and not nxt.full
    assert [(d.job, d.spec_ref) for d in nxt.upserts] == [("b", "b@1")]
    assert list(nxt.specs) == ["b@1"] and not nxt.removes
    cell.apply(C.KillJob(name="a"))
    gone = ls.push(s, full=False)
    assert gone is not None and sorted(k.index for k in gone.removes) == [0, 1]
    assert not gone.upserts and not gone.specs
