"""Replica state digests (borgmaster/digests.py, Store.state_digest): what they cover, where
they are taken, how a comparison is judged, and the forked child that computes them."""

from __future__ import annotations

import os
import threading
import time

import pytest

from borgmaster import commands as C
from borgmaster.digests import DigestChecker, Digests, Verdict, due, judge
from borgmaster.store import Store
from tests.cluster import wait_for
from tests.unit.test_store import Cell, _busy_cell, spec


def test_state_digest_is_equal_after_replay_and_after_a_snapshot_round_trip() -> None:
    cell = _busy_cell()
    replay = Store()
    for i, entry in enumerate(cell.entries, start=1):
        replay.apply(entry, i)
    restored = Store()
    restored.load_snapshot(cell.store.snapshot_bytes())
    d = cell.store.state_digest()
    assert len(d) == 32
    assert replay.state_digest() == d
    assert restored.state_digest() == d


def test_state_digest_ignores_the_index_and_scheduler_bookkeeping() -> None:
    cell = Cell()
    cell.submit(spec(replicas=3))
    d = cell.store.state_digest()
    cell.store.applied_index += 5
    cell.store.generation += 1
    cell.store.take_new_pending()
    assert cell.store.state_digest() == d


@pytest.mark.parametrize(
    "flip",
    [
        lambda s: setattr(s.tasks[("web", 1)], "restarts", 1),
        lambda s: setattr(s.jobs["web"].spec.requirements, "cpu", 2.0),
        lambda s: s.jobs["web"].spec.env.update({"X": "1"}),
        lambda s: setattr(s, "fence_term", 9),
        lambda s: s.request_ids.popitem(),
        lambda s: s.events.pop(),
    ],
)
def test_state_digest_sees_one_changed_field(flip: object) -> None:
    cell = Cell()
    cell.submit(spec(replicas=3), request_id="r1")
    d = cell.store.state_digest()
    flip(cell.store)  # type: ignore[operator]
    assert cell.store.state_digest() != d


def test_due_on_crossing_a_multiple() -> None:
    assert due(999, 1000, 1000)
    assert due(999, 1001, 1000)  # 1000 applied nothing (a membership entry): 1001 instead
    assert not due(1000, 1001, 1000)
    assert not due(0, 999, 1000)
    assert due(1500, 2000, 1000)
    assert not due(0, 5000, 0)


def test_judge_agreement_odd_one_out_and_no_majority() -> None:
    mine = {1000: "a", 2000: "b"}
    assert judge(mine, {}, 3) == Verdict()
    assert judge(mine, {"m1": {3000: "x"}}, 3) == Verdict()  # nothing in common yet
    agree = judge(mine, {"m1": {1000: "a", 2000: "b"}, "m2": {1000: "a"}}, 3)
    assert agree == Verdict(index=2000, majority_digest="b")
    # The latest common index decides, not an older one that agreed.
    bad = judge(mine, {"m1": {1000: "a", 2000: "B"}, "m2": {2000: "B"}}, 3)
    assert bad.index == 2000 and bad.mismatched == ("m1", "m2")
    assert bad.odd_one_out and bad.majority_digest == "B"
    # This replica with the majority: the peer is wrong, this one stays ready.
    peer_bad = judge(mine, {"m1": {2000: "B"}, "m2": {2000: "b"}}, 3)
    assert peer_bad.mismatched == ("m1",) and not peer_bad.odd_one_out
    # Two of three, disagreeing, the third unreachable: nobody has a majority.
    split = judge(mine, {"m1": {2000: "B"}}, 3)
    assert split.mismatched == ("m1",) and not split.odd_one_out and split.majority_digest == ""


def test_digest_is_computed_in_a_child_at_the_due_index() -> None:
    cell = Cell()
    digests = Digests(cell.store.state_digest, every=3)
    for _ in range(2):
        before = cell.store.applied_index
        cell.submit(spec(name=f"j{cell.index}"))
        digests.after_apply(before, cell.index)
    assert digests.snapshot() == {}
    before = cell.store.applied_index
    cell.submit(spec(name="third"))
    expected = cell.store.state_digest()
    parent = os.getpid()
    digests.after_apply(before, cell.index)  # index 3: due
    # The state moves on at once; the child hashed the state as of index 3.
    cell.apply(C.Noop())
    cell.submit(spec(name="later"))
    wait_for(lambda: digests.snapshot(), 20, what="the digest at index 3")
    assert os.getpid() == parent
    assert digests.snapshot() == {3: expected}
    assert digests.latest() == (3, expected)
    assert cell.store.state_digest() != expected


def test_a_due_digest_is_skipped_while_the_previous_child_hashes() -> None:
    def slow() -> str:
        time.sleep(1.0)  # in the child only
        return "0" * 32

    digests = Digests(slow, every=1)
    digests.after_apply(0, 1)
    digests.after_apply(1, 2)
    assert digests.skipped == 1
    wait_for(lambda: digests.snapshot() == {1: "0" * 32}, 20, what="the first digest")


def test_a_failing_child_records_nothing() -> None:
    def broken() -> str:
        raise RuntimeError("bug")

    digests = Digests(broken, every=1)
    digests.after_apply(0, 1)
    wait_for(lambda: not digests._busy, 20, what="the child to be reaped")
    assert digests.snapshot() == {}


def test_checker_logs_once_and_reports_divergence(caplog: pytest.LogCaptureFixture) -> None:
    digests = Digests(lambda: "", every=1000)
    digests.record(1000, "a" * 32)
    peers = {"m1": {1000: "b" * 32}, "m2": {1000: "b" * 32}}
    checker = DigestChecker(digests, lambda: peers, lambda: 3, threading.Event())
    with caplog.at_level("WARNING"):
        v = checker.check()
        checker.check()
    assert v.odd_one_out and v.mismatched == ("m1", "m2")
    crit = [r for r in caplog.records if r.levelname == "CRITICAL"]
    assert len(crit) == 1 and "STATE DIGEST MISMATCH at log index 1000" in crit[0].message
    assert "THIS REPLICA DIVERGED" in crit[0].message
    # Peers unreachable: the last verdict stands (a divergence does not heal by hiding).
    peers.clear()
    assert checker.check().odd_one_out
