"""Followers cut their log only at the first entry whose term conflicts (Raft, section 5.3):
`plan_append`, and a real follower BorgFSM fed append-entries messages on its own tick thread
as a leader would send them (resends, an old heartbeat, a real conflict), beside the pinned
PySyncObj handler that, fed the same messages, cuts applied entries."""

from __future__ import annotations

import logging
import os
import queue
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from pysyncobj import pickle as pysyncobj_pickle
from pysyncobj.syncobj import _COMMAND_TYPE

from borgmaster import commands as C
from borgmaster.fsm import _PYSYNCOBJ_ON_MESSAGE, BorgFSM, RaftTuning, plan_append
from borgmaster.store import Store
from tests.cluster import free_port, wait_for

NEVER_CAMPAIGN = RaftTuning(raft_min_timeout=600, raft_max_timeout=700)


def terms(log: dict[int, int]) -> Callable[[int], int | None]:
    return log.get


def test_plan_skips_entries_already_held_and_cuts_only_at_a_conflict() -> None:
    local = terms({1: 0, 2: 1, 3: 1, 4: 1, 5: 1})
    e = [(b"", i, 1) for i in (2, 3, 4)]
    # A resend of held entries, the log going on past them: nothing to do.
    p = plan_append(1, 0, e, local)
    assert (p.keep_suffix, p.entries, p.verified_end) == (True, [], 4)
    # A heartbeat with an older prev: the same.
    assert plan_append(3, 1, [], local).keep_suffix
    # At the end of the log: append what is new only.
    p = plan_append(3, 1, [(b"", 4, 1), (b"", 5, 1), (b"", 6, 1)], local)
    assert (p.prev_index, p.prev_term, [x[1] for x in p.entries]) == (5, 1, [6])
    assert not p.keep_suffix and p.verified_end == 6
    # A conflict at 4: cut from 4 (prev moves to 3), append 4 and 5 of the new term.
    p = plan_append(2, 1, [(b"", 3, 1), (b"", 4, 2), (b"", 5, 2)], local)
    assert (p.prev_index, [x[1] for x in p.entries], p.keep_suffix) == (3, [4, 5], False)
    # A heartbeat at the end of the log.
    assert not plan_append(5, 1, [], local).keep_suffix


class Follower:
    """A real BorgFSM that never campaigns, with one fake leader peer whose messages are
    delivered on the FSM's own tick thread; its replies are recorded."""

    def __init__(self, base: str, handler: Callable[[Any, Any, Any], None] | None) -> None:
        self.store = Store()
        self.peer = f"127.0.0.1:{free_port()}"
        self.fsm = BorgFSM(
            f"127.0.0.1:{free_port()}",
            [self.peer],
            os.path.join(base, "data"),
            self.store,
            password="x" * 32,
            tuning=NEVER_CAMPAIGN,
        )
        self.apply_id = self.fsm._methodToID[self.fsm._getFuncName("apply")]
        self.node = next(iter(self.fsm.otherNodes))
        self.handler = handler or self.fsm._SyncObj__onMessageReceived
        self.replies: list[dict[str, Any]] = []
        self.membership: list[tuple[str, bool]] = []
        self._inbox: queue.Queue[tuple[dict[str, Any], queue.Queue[None]]] = queue.Queue()
        self.fsm._SyncObj__sendNextNodeIdx = self._reply
        change = self.fsm._SyncObj__doChangeCluster

        def record_change(request: Any, reverse: bool = False) -> Any:
            self.membership.append((request[0], reverse))
            return change(request, reverse)

        self.fsm._SyncObj__doChangeCluster = record_change
        self.fsm.addOnTickCallback(self._deliver)

    def _reply(
        self, node: Any, reset: bool = False, nextNodeIdx: Any = None, success: bool = False
    ) -> None:
        self.replies.append({"next": nextNodeIdx, "success": success, "reset": reset})

    def _deliver(self) -> None:
        while True:
            try:
                msg, done = self._inbox.get_nowait()
            except queue.Empty:
                return
            if self.handler is _PYSYNCOBJ_ON_MESSAGE:
                _PYSYNCOBJ_ON_MESSAGE(self.fsm, self.node, msg)
            else:
                self.handler(self.node, msg)
            done.put(None)

    def send(
        self,
        prev: tuple[int, int],
        entries: list[tuple[bytes, int, int]],
        commit: int,
        term: int = 1,
    ) -> dict[str, Any]:
        done: queue.Queue[None] = queue.Queue()
        msg = {
            "type": "append_entries",
            "term": term,
            "commit_index": commit,
            "entries": entries,
            "prevLogIdx": prev[0],
            "prevLogTerm": prev[1],
        }
        self._inbox.put((msg, done))
        done.get(timeout=10)
        return self.replies[-1]

    def entry(self, index: int, term: int = 1) -> tuple[bytes, int, int]:
        cmd = pysyncobj_pickle.dumps((self.apply_id, (C.encode(C.Noop()),)))
        return (bytes([_COMMAND_TYPE.REGULAR]) + cmd, index, term)

    def add_member(self, index: int, addr: str, term: int = 1) -> tuple[bytes, int, int]:
        from pysyncobj.node import TCPNode

        req = pysyncobj_pickle.dumps(["add", addr, TCPNode(addr)])
        return (bytes([_COMMAND_TYPE.MEMBERSHIP]) + req, index, term)

    def log(self) -> list[tuple[int, int]]:
        j = self.fsm._SyncObj__raftLog
        return [(j[i][1], j[i][2]) for i in range(len(j))]

    def close(self) -> None:
        self.fsm.destroy()
        wait_for(lambda: not self.fsm.tick_thread_alive(), 10, what="the tick thread to stop")


@pytest.fixture
def follower(tmp_path: Any) -> Iterator[Follower]:
    f = Follower(str(tmp_path), None)
    yield f
    f.close()


def fill(f: Follower, commit: int) -> None:
    """Entries 2..7 of term 1, entry 5 adding a member; applied up to `commit`."""
    extra = f"127.0.0.1:{free_port()}"
    entries = [f.entry(i) if i != 5 else f.add_member(i, extra) for i in range(2, 8)]
    assert f.send((1, 0), entries, commit) == {"next": 8, "success": True, "reset": False}
    wait_for(lambda: f.fsm.raftLastApplied >= commit, 10, what=f"applied {commit}")


def test_resends_and_old_heartbeats_leave_the_log_whole(
    follower: Follower, caplog: pytest.LogCaptureFixture
) -> None:
    f = follower
    fill(f, commit=7)
    before = f.log()
    assert [i for i, _ in before] == list(range(1, 8))
    added = list(f.membership)
    with caplog.at_level(logging.WARNING):
        # The leader's next index moved back: it resends 2..5, then 3..4, then heartbeats at 3.
        r1 = f.send((1, 0), [f.entry(2), f.entry(3), f.entry(4), f.add_member(5, "x:1")], 7)
        r2 = f.send((2, 1), [f.entry(3), f.entry(4)], 7)
        r3 = f.send((3, 1), [], 7)
    assert f.log() == before
    assert f.fsm.raftLastApplied == 7 and f.fsm.status().commit_index == 7
    # Each answer says how far the log is known to match the leader's: no further.
    assert [r["next"] for r in (r1, r2, r3)] == [6, 5, 4]
    assert all(r["success"] for r in (r1, r2, r3))
    assert f.membership == added, "a resend reversed and replayed a membership change"
    assert not [r for r in caplog.records if r.levelno >= logging.CRITICAL]


def test_a_real_conflict_still_replaces_the_conflicting_suffix(follower: Follower) -> None:
    f = follower
    fill(f, commit=4)
    # A new leader (term 2) holds 2..5 and a different 6: the follower's 6 and 7 go.
    r = f.send((4, 1), [f.add_member(5, "x:1"), f.entry(6, 2)], commit=4, term=2)
    assert r == {"next": 7, "success": True, "reset": False}
    assert f.log()[-2:] == [(5, 1), (6, 2)]
    assert len(f.log()) == 6
    # The membership change at 5 matched: not reversed; nothing past 6 was a member change.
    assert ("add", True) not in f.membership


def test_commit_never_passes_what_the_message_verified(follower: Follower) -> None:
    f = follower
    fill(f, commit=2)
    # Entries 6 and 7 may be stale; a heartbeat at 3 with the leader at commit 7 commits 3.
    f.send((3, 1), [], commit=7)
    assert f.fsm.status().commit_index == 3
    assert f.fsm.status().leader_commit_index == 7  # still what the leader said


def test_the_pinned_pysyncobj_handler_cuts_applied_entries(
    tmp_path: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """Why the override exists: the same resend through PySyncObj's own handler. If this
    fails after a PySyncObj upgrade, the upgrade fixed it; re-check the override."""
    f = Follower(str(tmp_path), _PYSYNCOBJ_ON_MESSAGE)
    try:
        fill(f, commit=7)
        with caplog.at_level(logging.WARNING):
            f.send((2, 1), [f.entry(3)], 7)
        assert [i for i, _ in f.log()] == [1, 2, 3]  # 4..7 gone, though applied
        assert any("truncating already-applied" in r.getMessage() for r in caplog.records)
        assert ("add", True) in f.membership  # the change at 5 reversed
    finally:
        f.close()
