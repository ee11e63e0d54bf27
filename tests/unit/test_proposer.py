"""The Proposer's group commit against a fake FSM: order, batching, barriers, failures."""

from __future__ import annotations

from typing import Any

from pysyncobj import FAIL_REASON

from borgmaster import commands as C
from borgmaster import proposer as P


class FakeFSM:
    """Records proposals; the test decides when (and how) each one completes."""

    def __init__(self) -> None:
        self.calls: list[tuple[bytes, Any]] = []
        self.raise_on_apply = False

    def apply(self, entry: bytes, callback: Any) -> None:
        if self.raise_on_apply:
            raise RuntimeError("boom")
        self.calls.append((entry, callback))

    def commit(self, i: int) -> None:
        """Complete proposal i as Store.apply would: a batch gets one result per entry."""
        entry, cb = self.calls[i]
        cmd = C.decode(entry)
        if isinstance(cmd, C.Batch):
            cb({"results": [{"n": C.decode(e).request_id} for e in cmd.entries]}, 0)
        else:
            cb({"n": cmd.request_id}, 0)


def w(n: int) -> bytes:
    return C.encode(C.KillJob(name="x", request_id=str(n)))


def test_lone_write_goes_at_once_and_later_ones_share_the_next_entry_in_order() -> None:
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    try:
        f0 = p.submit(w(0))
        assert len(fsm.calls) == 1 and C.decode(fsm.calls[0][0]) == C.decode(w(0))
        rest = [p.submit(w(n)) for n in range(1, 5)]
        assert len(fsm.calls) == 1  # one in flight: the rest wait
        fsm.commit(0)  # the callback proposes the queued writes as one Batch
        assert f0.result(1) == ({"n": "0"}, 0)
        assert len(fsm.calls) == 2
        batch = C.decode(fsm.calls[1][0])
        assert isinstance(batch, C.Batch)
        assert [C.decode(e).request_id for e in batch.entries] == ["1", "2", "3", "4"]
        fsm.commit(1)
        assert [f.result(1) for f in rest] == [({"n": str(n)}, 0) for n in range(1, 5)]
        assert (p.batches, p.entries) == (2, 5)
    finally:
        p.stop()


def test_readers_share_one_queued_barrier() -> None:
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    try:
        p.submit(w(0))
        b1, b2 = p.barrier(), p.barrier()
        assert b1 is b2
        fsm.commit(0)
        fsm.commit(1)
        assert b1.result(1)[1] == 0
        b3 = p.barrier()  # the old one is proposed: a new reader gets a new barrier
        assert b3 is not b1
    finally:
        p.stop()


def test_failures_reach_every_write_and_do_not_wedge_the_queue() -> None:
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    try:
        first = p.submit(w(0))
        queued = [p.submit(w(n)) for n in range(1, 2000)]  # several MAX_BATCH batches
        fsm.raise_on_apply = True
        fsm.calls[0][1](None, FAIL_REASON.NOT_LEADER)
        assert first.result(1) == (None, FAIL_REASON.NOT_LEADER)
        assert all(f.result(1) == (None, FAIL_REASON.REQUEST_DENIED) for f in queued)
        fsm.raise_on_apply = False
        again = p.submit(w(9))  # the slot came back
        fsm.commit(len(fsm.calls) - 1)
        assert again.result(1) == ({"n": "9"}, 0)
    finally:
        p.stop()


def test_stop_denies_queued_and_later_writes() -> None:
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    p.submit(w(0))
    queued = p.submit(w(1))
    p.stop()
    assert queued.result(1) == (None, FAIL_REASON.REQUEST_DENIED)
    assert p.submit(w(2)).result(1) == (None, FAIL_REASON.REQUEST_DENIED)
    assert p.barrier().result(1) == (None, FAIL_REASON.REQUEST_DENIED)


def test_losing_leadership_answers_in_flight_and_queued_writes_at_once() -> None:
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    try:
        f0 = p.submit(w(0))
        queued = p.submit(w(1))
        assert not f0.done() and len(fsm.calls) == 1
        assert p.abandon_in_flight() == 2
        assert f0.result(1) == (None, FAIL_REASON.LEADER_CHANGED)
        assert queued.result(1) == (None, FAIL_REASON.LEADER_CHANGED)  # never proposed
        fsm.commit(0)  # PySyncObj answers the abandoned entry late: nothing changes
        assert f0.result(1) == (None, FAIL_REASON.LEADER_CHANGED)
        # The slot was freed once: the next write goes out at once.
        later = p.submit(w(2))
        assert len(fsm.calls) == 2
        fsm.commit(1)
        assert later.result(1) == ({"n": "2"}, 0)
    finally:
        p.stop()


def test_a_batch_stops_growing_at_its_byte_cap() -> None:
    """Many large writes queued at once go in several entries, each at most MAX_BATCH_BYTES
    of commands (plus one), not one entry of everything."""
    fsm = FakeFSM()
    p = P.Proposer(fsm)
    big = C.encode(C.KillJob(name="x" * ((1 << 20) - 1024), request_id="b"))  # < 1 MiB
    try:
        first = p.submit(w(0))
        queued = [p.submit(big) for _ in range(10)]
        fsm.commit(0)
        assert first.result(1) == ({"n": "0"}, 0)
        sizes = []
        while len(fsm.calls) > len(sizes) + 1:
            entry = fsm.calls[len(sizes) + 1][0]
            cmd = C.decode(entry)
            n = len(cmd.entries) if isinstance(cmd, C.Batch) else 1
            sizes.append(n)
            assert n * len(big) <= P.MAX_BATCH_BYTES
            fsm.commit(len(sizes))
        assert sizes == [4, 4, 2]
        assert all(f.result(1)[1] == 0 for f in queued)
    finally:
        p.stop()
