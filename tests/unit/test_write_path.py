"""The SubmitJob write path's fast paths: Struct -> dict, command decoding, and the scheduler
looking only at tasks that are new since its last pass."""

from __future__ import annotations

import math
import time
from typing import Any

import pytest
from google.protobuf import json_format

from borgmaster import commands as C
from borgmaster.convert import dict_from, struct_from
from borgmaster.copies import LiveCopies
from borgmaster.scheduler import BorgScheduler
from borgmaster.scheduling import SchedulingShell
from borgmaster.store import Store, needs_placement
from tests.unit.test_store import Cell, spec

# ----- dict_from ---------------------------------------------------------------------------

STRUCTS: list[dict[str, Any]] = [
    {},
    {"name": "web", "replicas": 3, "command": "sleep 1000"},
    {"requirements": {"cpu": 0.5, "ram": "8Mi", "ports": ["http", "admin"]}, "spread": None},
    {"a": [1, "x", None, True, False, {"b": [], "c": {}}], "d": -0.0, "e": 1e300},
    {"health": {"http": {"port": "http", "path": "/healthz"}, "interval_ms": 1000}},
    {"unicode": "ünïcødé", "empty": "", "nested": [[[]]]},
]


@pytest.mark.parametrize("d", STRUCTS)
def test_dict_from_matches_message_to_dict(d: dict[str, Any]) -> None:
    s = struct_from(d)
    got = dict_from(s)
    want = json_format.MessageToDict(s)
    assert got == want
    assert repr(got) == repr(want)  # same types too (numbers are floats in both)
    assert list(got) == list(want)  # and the same key order


def test_dict_from_reads_an_unset_value_as_null_like_message_to_dict() -> None:
    s = struct_from({"x": 1})
    s.fields["y"]  # a map access creates an unset Value
    assert dict_from(s) == json_format.MessageToDict(s) == {"x": 1.0, "y": None}


@pytest.mark.parametrize("bad", [math.inf, -math.inf, math.nan])
def test_dict_from_refuses_non_finite_numbers_like_message_to_dict(bad: float) -> None:
    s = struct_from({"ok": 1})
    s.fields["x"].number_value = bad
    with pytest.raises(ValueError):
        json_format.MessageToDict(s)
    with pytest.raises(ValueError, match=r"Value\.number_value"):
        dict_from(s)
    lst = struct_from({"l": [1]})
    lst.fields["l"].list_value.values[0].number_value = bad
    with pytest.raises(ValueError):
        dict_from(lst)


# ----- decode ------------------------------------------------------------------------------


def test_decode_still_rejects_unknown_fields_once_the_name_cache_is_warm() -> None:
    good = C.encode(C.KillJob(name="web"))
    assert C.decode(good) == C.KillJob(name="web")
    bad = bytes([int(C.CommandType.KILL_JOB)]) + C.msgpack.packb({"name": "w", "zzz": 1})
    with pytest.raises(C.CommandError, match="unknown fields"):
        C.decode(bad)
    assert C.decode(good) == C.KillJob(name="web")


# ----- new_pending -------------------------------------------------------------------------


def check_invariants(store: Store) -> None:
    scan = {k for k, t in store.tasks.items() if needs_placement(t, store.jobs[t.job])}
    assert store.pending == scan
    assert store.new_pending <= store.pending


def test_new_pending_tracks_arrivals_and_is_taken_once() -> None:
    cell = Cell()
    cell.submit(spec(replicas=3))
    assert cell.store.new_pending == {("web", 0), ("web", 1), ("web", 2)}
    with cell.store.lock:
        assert cell.store.take_new_pending() == {("web", 0), ("web", 1), ("web", 2)}
    assert cell.store.new_pending == set() and len(cell.store.pending) == 3
    cell.submit(spec(replicas=5))  # scale up: only the new tasks are new
    assert cell.store.new_pending == {("web", 3), ("web", 4)}
    check_invariants(cell.store)


def test_new_pending_follows_placement_loss_update_and_kill() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2))
    cell.store.take_new_pending()
    cell.place("web", 0, "m1")
    check_invariants(cell.store)
    assert cell.store.new_pending == set()
    cell.apply(C.MachineLost(name="m1"))  # the lost task wants a machine again
    assert cell.store.new_pending == {("web", 0)}
    check_invariants(cell.store)
    cell.store.take_new_pending()
    cell.submit(spec(replicas=2, priority=150))  # same tasks, new priority: look again
    assert cell.store.new_pending == {("web", 0), ("web", 1)}
    cell.store.take_new_pending()
    cell.submit(spec(replicas=2, env={"V": "2"}))  # new template: re-queued at the new version
    assert cell.store.new_pending == {("web", 0), ("web", 1)}
    cell.apply(C.KillJob(name="web"))
    assert cell.store.new_pending == set() and cell.store.pending == set()
    check_invariants(cell.store)


def test_new_pending_is_not_state_snapshots_and_digests_ignore_it() -> None:
    cell = Cell()
    cell.submit(spec(replicas=2))
    other = Store()
    other.load_snapshot(cell.store.snapshot_bytes())
    cell.store.take_new_pending()
    assert other.digest() == cell.store.digest()
    check_invariants(other)


# ----- the scheduler pass ------------------------------------------------------------------


class FakeMaster:
    """The scheduler pass's shell against a bare Store: proposals apply at once."""

    def __init__(self) -> None:
        self.cell = Cell()
        self.plans: list[C.ApplyPlan] = []

        def propose(cmd: C.Command) -> dict[str, Any]:
            assert isinstance(cmd, C.ApplyPlan)
            self.plans.append(cmd)
            return self.cell.apply(cmd)

        self.m = SchedulingShell(
            self.cell.store, BorgScheduler(), LiveCopies(), propose, machine_timeout_s=30.0
        )


def test_a_pass_looks_only_at_new_tasks_and_writes_nothing_when_none_are_new() -> None:
    f = FakeMaster()
    f.cell.submit(spec(name="a", replicas=3))
    assert f.m.schedule_once(term=0, retry_all=False) == 0  # no machines: reasons recorded
    assert len(f.plans) == 1 and sorted(x.job for x in f.plans[0].failures) == ["a"] * 3
    assert all(t.reason for t in f.cell.store.job_tasks("a"))
    assert f.m.schedule_once(term=0, retry_all=False) == 0
    assert len(f.plans) == 1  # nothing new: no Raft write
    f.cell.submit(spec(name="b", replicas=2))
    f.m.schedule_once(term=0, retry_all=False)
    assert len(f.plans) == 2
    assert sorted((x.job, x.index) for x in f.plans[1].failures) == [("b", 0), ("b", 1)]
    assert f.cell.store.new_pending == set()
    # Capacity appears: every pending task is tried again and placed.
    f.cell.machine("m1", cpu=16.0, ram=64 << 30)
    assert f.m.schedule_once(term=0, retry_all=False) == 5
    assert f.cell.store.pending == set() and f.cell.store.new_pending == set()
    check_invariants(f.cell.store)


def test_a_task_whose_old_copy_still_runs_is_held_until_that_copy_is_gone() -> None:
    """At most one copy per index: a replacement waits for its predecessor to stop."""
    f = FakeMaster()
    f.cell.machine("m1", cpu=16.0, ram=64 << 30)
    f.cell.submit(spec(name="a", replicas=2))
    # The Borglet of m1 still reports an old incarnation of a/0 (being stopped).
    f.m.copies.observe("m1", [("a", 0, "old", "running")])
    assert f.m.schedule_once(term=0, retry_all=False) == 1  # only a/1
    t0 = f.cell.store.tasks[("a", 0)]
    assert t0.state == "pending"
    assert t0.reason == "waiting for its previous copy on m1 to stop"
    assert f.m.schedule_once(term=0, retry_all=False) == 0  # still held, nothing written
    plans = len(f.plans)
    assert f.m.schedule_once(term=0, retry_all=False) == 0 and len(f.plans) == plans
    # The next Sync shows the old copy killed: released and placed.
    assert f.m.copies.observe("m1", [("a", 0, "old", "killed")])
    f.m.release_held()
    assert f.m.schedule_once(term=0, retry_all=False) == 1
    assert f.cell.store.tasks[("a", 0)].state == "assigned"
    check_invariants(f.cell.store)


def replaced(f: FakeMaster, job: str, index: int, machine: str) -> None:
    """Place job/index on machine, then replace it as a rollout would (old copy stopping)."""
    f.cell.place(job, index, machine)
    inc = f.cell.store.tasks[(job, index)].incarnation
    f.cell.apply(C.ReplaceTasks(job=job, tasks=[C.TaskRef(index, inc)], reason="updated"))
    assert f.cell.store.tasks[(job, index)].state == "pending"


def test_a_held_task_is_looked_at_again_after_leadership_is_lost_and_regained() -> None:
    f = FakeMaster()
    m = f.m
    f.cell.machine("m1", cpu=16.0, ram=64 << 30)
    f.cell.submit(spec(name="a", replicas=1))
    m.copies.observe("m1", [("a", 0, "old", "running")])
    assert m.schedule_once(term=0, retry_all=False) == 0  # held
    m.lost_leadership()  # lost leadership (leader fallback)...
    m.became_leader(time.monotonic())  # ...and won it back; nothing about capacity changed
    if m.copies.observe("m1", [("a", 0, "old", "killed")]):
        m.release_held()
    assert m.schedule_once(term=0, retry_all=False) == 1


def test_a_new_leader_holds_replaced_tasks_until_every_machine_has_reported() -> None:
    f = FakeMaster()
    m = f.m
    f.cell.machine("m1", cpu=16.0, ram=64 << 30)
    f.cell.machine("m2", cpu=16.0, ram=64 << 30)
    f.cell.submit(spec(name="a", replicas=1))
    f.cell.submit(spec(name="b", replicas=1))
    replaced(f, "a", 0, "m1")  # its old copy may still be stopping on m1
    m.became_leader(time.monotonic())  # a new leader: it has heard from no Borglet yet
    # a/0 waits; b/0 (never placed, no copy anywhere) goes at once.
    assert m.schedule_once(term=0, retry_all=False) == 1
    assert f.cell.store.tasks[("b", 0)].state == "assigned"
    assert f.cell.store.tasks[("a", 0)].reason.startswith("waiting for its previous copy")
    if m.copies.observe("m2", []):
        m.release_held()
    assert m.schedule_once(term=0, retry_all=False) == 0  # m1 has not reported yet
    # m1 reports: the old copy is gone, so a/0 is placed.
    assert m.copies.observe("m1", [])
    m.release_held()
    assert m.schedule_once(term=0, retry_all=False) == 1
    assert f.cell.store.tasks[("a", 0)].state == "assigned"


def test_a_copy_just_sent_to_a_borglet_counts_until_its_next_report() -> None:
    f = FakeMaster()
    m = f.m
    f.cell.machine("m1", cpu=16.0, ram=64 << 30)
    f.cell.submit(spec(name="a", replicas=1))
    m.copies.observe("m1", [])
    f.cell.place("a", 0, "m1")
    inc = f.cell.store.tasks[("a", 0)].incarnation
    m.copies.sent("m1", [("a", 0, inc)])  # the Sync reply that tells m1 to start it
    f.cell.apply(C.ReplaceTasks(job="a", tasks=[C.TaskRef(0, inc)], reason="updated"))
    assert m.schedule_once(term=0, retry_all=False) == 0  # may be starting on m1
    assert m.copies.observe("m1", [("a", 0, inc, "killed")])
    m.release_held()
    assert m.schedule_once(term=0, retry_all=False) == 1


def test_a_failed_proposal_puts_the_pass_tasks_back() -> None:
    from borgmaster.facade import ProposeError

    f = FakeMaster()
    f.cell.submit(spec(name="a", replicas=2))

    def fail(cmd: C.Command) -> dict[str, Any]:
        raise ProposeError("unavailable", "no leader")

    f.m.propose = fail
    with pytest.raises(ProposeError):
        f.m.schedule_once(term=0, retry_all=False)
    assert f.cell.store.new_pending == set()
    assert f.m.retry_queue() == {("a", 0), ("a", 1)}  # the next pass looks at them again
