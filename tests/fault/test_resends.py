"""Resent entries on real replicas: the leader's next index for its followers is moved back
again and again while writes flow (as a late `reset` reply does), so followers keep receiving
entries they already hold and have applied. With Raft's rule (fsm.plan_append) no follower
deletes an applied entry, nothing logs PySyncObj's CRITICAL "truncating already-applied log
entries", every replica applies every write, and their state digests agree."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from borgmaster.fsm import RaftTuning
from borgmaster.server import Master, ProposeError
from tests.cluster import wait_for
from tests.fault.test_inprocess import Trio, submit

pytestmark = pytest.mark.e2e

WRITES = 150
REWIND = 6
"""How far back the leader's next index for each follower is moved, every few ticks."""


class Rewinder:
    """On the leader's tick thread (where PySyncObj itself changes them), every third tick
    moves each follower's next index back by REWIND entries, so the next append-entries
    message resends entries the follower holds."""

    def __init__(self, leader: Master) -> None:
        self.fsm = leader.fsm
        self.ticks = 0
        self.rewinds = 0
        self.on = True
        self.fsm.addOnTickCallback(self)

    def __call__(self) -> None:
        self.ticks += 1
        if not self.on or self.ticks % 3 or not self.fsm.is_leader():
            return
        first = self.fsm._SyncObj__raftLog[0][1]
        nxt: dict[Any, int] = self.fsm._SyncObj__raftNextIndex
        for node, i in list(nxt.items()):
            if i - REWIND > first:
                nxt[node] = i - REWIND
                self.rewinds += 1


class Cuts:
    """Records, on a follower, every deletion of its log suffix that reaches applied entries
    (PySyncObj's `__deleteEntriesFrom` is called through the instance)."""

    def __init__(self, m: Master) -> None:
        self.applied_cut: list[tuple[int, int]] = []
        self.cuts = 0
        fsm = m.fsm
        delete = fsm._SyncObj__deleteEntriesFrom

        def recording(from_idx: int) -> None:
            self.cuts += 1
            if from_idx <= fsm.raftLastApplied:
                self.applied_cut.append((from_idx, fsm.raftLastApplied))
            delete(from_idx)

        fsm._SyncObj__deleteEntriesFrom = recording


@pytest.fixture
def trio() -> Iterator[Trio]:
    t = Trio(RaftTuning())
    try:
        wait_for(lambda: all(m.ready() for m in t.live()), 20, what="replicas ready")
        yield t
    finally:
        t.close()


def test_resent_entries_never_cut_applied_ones(
    trio: Trio, caplog: pytest.LogCaptureFixture
) -> None:
    leader = trio.leader()
    followers = [m for m in trio.live() if m is not leader]
    cuts = [Cuts(m) for m in followers]
    rewinder = Rewinder(leader)
    errors: list[str] = []

    def writer(k: int) -> None:
        for i in range(WRITES // 3):
            deadline = time.monotonic() + 20
            while True:  # the same request id on retry: applied once (an election may occur)
                try:
                    r = submit(trio.leader(), f"w{k}-{i}")
                    if "error" in r:
                        errors.append(str(r))
                    break
                except ProposeError as e:
                    if time.monotonic() > deadline:
                        errors.append(f"w{k}-{i}: {e.message}")
                        break

    with caplog.at_level(logging.WARNING):
        threads = [threading.Thread(target=writer, args=(k,)) for k in range(3)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(60)
        rewinder.on = False
        end = leader.fsm.status().commit_index
        wait_for(
            lambda: all(m.fsm.status().applied_index >= end for m in trio.live()),
            20,
            what="every replica applying every write",
        )
    assert not errors
    assert rewinder.rewinds > 20, "the test provoked too few resends to show anything"
    critical = [r.getMessage() for r in caplog.records if r.levelno >= logging.CRITICAL]
    assert not critical, critical
    assert [c.applied_cut for c in cuts] == [[], []]
    for m in trio.live():
        st = m.fsm.status()
        assert st.log_len >= 1 and m.fsm._SyncObj__getCurrentLogIndex() >= st.applied_index
    with leader.store.lock:
        jobs = len(leader.store.jobs)
    assert jobs == WRITES

    def at_one_index(m: Master) -> tuple[str, str] | None:
        """Both digests, once both replicas stand at the same log index (the leader may go
        on applying its own entries, a term fence after an election, while we look)."""
        with leader.store.lock:
            index, want = leader.store.applied_index, leader.store.state_digest()
        with m.store.lock:
            if m.store.applied_index != index:
                return None
            return want, m.store.state_digest()

    for m in followers:
        want, got = wait_for(
            lambda m=m: at_one_index(m), 10, what="a follower at the leader's index"
        )
        assert got == want
