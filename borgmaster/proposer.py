"""Group commit: concurrent writes coalesced into one Raft entry, and shared read barriers.

PySyncObj appends, ships and fsyncs entries one by one; at a few thousand entries per second
that per-entry cost dominates. The Proposer keeps at most `max_in_flight` entries outstanding
and, while they commit, queues newer writes; the next entry carries all of them as one
`Batch` command (the store applies them in order, each with its own result and request id).
A lone write is proposed as itself, so an idle cell pays no batching delay.

There is no proposer thread: the writer that finds a free slot proposes at once from its own
thread, and the callback of a finished proposal (PySyncObj's tick thread) proposes whatever
queued meanwhile, so that batch enters the Raft log in the same tick instead of after two
thread wake-ups. On a CPU-bound replica each hand-off between threads costs a context switch
and a GIL transfer per batch.

Linearizable reads use the same path: a read waits for a no-op to commit. Reads that arrive
while a barrier is queued share it (one no-op serves them all), and because a barrier queued
after a read arrived commits after every write acknowledged before that read, they all see
those writes.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from concurrent.futures import Future
from typing import Any

from borgmaster import commands as C
from borgmaster.fsm import FAIL_LEADER_CHANGED, FAIL_REQUEST_DENIED, FAIL_SUCCESS

log = logging.getLogger("borgmaster.proposer")

MAX_BATCH = 512
MAX_BATCH_BYTES = 4 << 20
"""A batch stops growing once its commands reach this many bytes (a command alone may be up
to MAX_ENTRY_BYTES): one Raft entry is held in memory whole by every replica's journal and
sent whole to each follower, so hundreds of large writes must not pile into one."""
MAX_ENTRY_BYTES = 16 << 20
"""The largest command that may enter the Raft log (the writer refuses a larger one with
`too-large`). Well below PySyncObj's per-send batch (fsm.RaftTuning, 64 MiB), past which it
ships an entry in chunks it mislabels, and the transport's frame bound (raft_guard.MAX_FRAME).
A job spec is at most 1 MiB (api.MAX_SPEC_BYTES); a plan placing 100k tasks is a few MB."""
# A proposal whose callback never came (should not happen) frees its slot after this long.
STUCK_S = 15.0


Flight = tuple[int, list[tuple[bytes, Future[Any]]]]
"""A proposal: its id and the (entry, future) pairs it carries."""


class Proposer:
    def __init__(self, fsm: Any, max_in_flight: int = 1) -> None:
        self.fsm = fsm
        self.max_in_flight = max_in_flight
        self._lock = threading.Lock()
        self._queue: deque[tuple[bytes, Future[Any]]] = deque()
        # In-flight proposals by id: start time and the futures they answer (oldest first).
        self._flights: dict[int, tuple[float, list[Future[Any]]]] = {}
        self._next_flight = 0
        self._barrier: Future[Any] | None = None  # queued, not yet proposed
        self._stopped = False
        # Set while this thread is inside fsm.apply: a callback PySyncObj makes synchronously
        # (queue full) then leaves proposing the next batch to the loop in `_pump`, instead
        # of recursing once per batch.
        self._local = threading.local()
        self._stop_event = threading.Event()
        self.batches = 0
        self.entries = 0
        self._watchdog = threading.Thread(target=self._watch, name="proposer", daemon=True)
        self._watchdog.start()

    def submit(self, entry: bytes) -> Future[Any]:
        """Queue an encoded command; the future resolves to (result, fail_reason)."""
        fut: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                fut.set_result((None, FAIL_REQUEST_DENIED))
                return fut
            self._queue.append((entry, fut))
            flight = self._take()
        if flight:
            self._pump(flight)
        return fut

    def barrier(self) -> Future[Any]:
        """A no-op commit shared by every reader that asks before it is proposed."""
        with self._lock:
            if self._barrier is not None:
                return self._barrier
            fut: Future[Any] = Future()
            if self._stopped:
                fut.set_result((None, FAIL_REQUEST_DENIED))
                return fut
            self._barrier = fut
            self._queue.append((C.encode(C.Noop()), fut))
            flight = self._take()
        if flight:
            self._pump(flight)
        return fut

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            queued = list(self._queue)
            self._queue.clear()
            self._barrier = None
        self._stop_event.set()
        for _, fut in queued:
            fut.set_result((None, FAIL_REQUEST_DENIED))

    # ----- internals ----------------------------------------------------------------------

    def abandon_in_flight(self, reason: int = FAIL_LEADER_CHANGED) -> int:
        """Answer every in-flight and queued write with `reason` now (this replica stopped
        leading).

        PySyncObj keeps a deposed leader's uncommitted entries waiting until a new leader
        overwrites or commits them, which for a leader cut off from the majority means the
        whole write timeout. Their outcome is unknown, which is what UNAVAILABLE says:
        clients retry with the same request id, and the state machine applies it once.
        Returns how many writes were answered."""
        with self._lock:
            flights = [futs for _, futs in self._flights.values()]
            self._flights.clear()
            # Queued writes were never proposed: refuse them too (they would otherwise wait
            # for a leader inside PySyncObj); their clients retry wherever the leader is now.
            flights.append([f for _, f in self._queue])
            self._queue.clear()
            self._barrier = None
        n = 0
        for futs in flights:
            _resolve(futs, False, None, reason)
            n += len(futs)
        return n

    def _take(self) -> Flight | None:
        """The next batch to propose if a slot is free (caller holds the lock); FIFO."""
        if self._stopped or not self._queue or len(self._flights) >= self.max_in_flight:
            return None
        items: list[tuple[bytes, Future[Any]]] = []
        size = 0
        while self._queue and len(items) < MAX_BATCH:
            n = len(self._queue[0][0])
            if items and size + n > MAX_BATCH_BYTES:
                break
            items.append(self._queue.popleft())
            size += n
        if self._barrier is not None and any(f is self._barrier for _, f in items):
            self._barrier = None
        fid = self._next_flight
        self._next_flight += 1
        self._flights[fid] = (time.monotonic(), [f for _, f in items])
        self.batches += 1
        self.entries += len(items)
        return fid, items

    def _free_slot(self, fid: int) -> bool:
        """Release a proposal's slot; False when it was already abandoned (answered)."""
        with self._lock:
            return self._flights.pop(fid, None) is not None

    def _pump(self, flight: Flight | None) -> None:
        """Propose `flight` (its slot is already held), then any batch that can go because
        that proposal failed at once."""
        while flight:
            self._local.sending = True
            try:
                self._propose(*flight)
            finally:
                self._local.sending = False
            with self._lock:
                flight = self._take()

    def _propose(self, fid: int, items: list[tuple[bytes, Future[Any]]]) -> None:
        futs = [f for _, f in items]
        single = len(items) == 1
        entry = items[0][0] if single else C.encode(C.Batch(entries=[e for e, _ in items]))

        def done(res: Any, err: int) -> None:
            if self._free_slot(fid):  # else abandoned: its writes were answered already
                _resolve(futs, single, res, err)
            if getattr(self._local, "sending", False):
                return  # called from inside fsm.apply: `_pump` proposes what is next
            with self._lock:
                nxt = self._take()
            if nxt:
                try:
                    self._pump(nxt)
                except Exception:  # never raise into PySyncObj's tick
                    log.exception("proposing the next batch failed")

        try:
            self.fsm.apply(entry, callback=done)
        except Exception:
            log.exception("proposal failed")
            done(None, FAIL_REQUEST_DENIED)

    def _watch(self) -> None:
        """Free the slot of a proposal whose callback never came (should not happen)."""
        while not self._stop_event.wait(1.0):
            stuck: list[Future[Any]] | None = None
            with self._lock:
                if self._flights:
                    fid, (started, futs) = next(iter(self._flights.items()))
                    if time.monotonic() - started > STUCK_S:
                        del self._flights[fid]
                        stuck = futs
                flight = self._take() if stuck is not None else None
            if stuck is not None:
                log.error("a proposal got no answer for %.0f s; freeing its slot", STUCK_S)
                _resolve(stuck, False, None, FAIL_REQUEST_DENIED)
            if flight:
                self._pump(flight)


def _resolve(futs: list[Future[Any]], single: bool, res: Any, err: int) -> None:
    """Hand each write its own result: a batch's results come back in order."""
    if err != FAIL_SUCCESS or res is None:
        for f in futs:
            if not f.done():
                f.set_result((None, err))
    elif single:
        futs[0].set_result((res, err))
    else:
        results = res.get("results") if isinstance(res, dict) else None
        if results is None or len(results) != len(futs):
            for f in futs:
                f.set_result((res, err))  # a batch-level error
        else:
            for f, r in zip(futs, results, strict=True):
                f.set_result((r, err))
