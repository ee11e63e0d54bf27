"""Group commit: concurrent writes coalesced into one Raft entry, and shared read barriers.

PySyncObj appends, ships and fsyncs entries one by one; at a few thousand entries per second
that per-entry cost dominates. The Proposer keeps at most `max_in_flight` entries outstanding
and, while they commit, queues newer writes; the next entry carries all of them as one
`Batch` command (the store applies them in order, each with its own result and request id).
A lone write is proposed as itself, so an idle cell pays no batching delay.

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

from pysyncobj import FAIL_REASON

from borgmaster import commands as C

log = logging.getLogger("borgmaster.proposer")

MAX_BATCH = 512
# A proposal whose callback never came (should not happen) frees its slot after this long.
STUCK_S = 15.0


class Proposer:
    def __init__(self, fsm: Any, max_in_flight: int = 1) -> None:
        self.fsm = fsm
        self.max_in_flight = max_in_flight
        self._lock = threading.Condition()
        self._queue: deque[tuple[bytes, Future[Any]]] = deque()
        self._in_flight = 0
        self._started: deque[float] = deque()  # start times of in-flight proposals
        self._barrier: Future[Any] | None = None  # queued, not yet proposed
        self._stopped = False
        self._thread = threading.Thread(target=self._run, name="proposer", daemon=True)
        self._thread.start()
        self.batches = 0
        self.entries = 0

    def submit(self, entry: bytes) -> Future[Any]:
        """Queue an encoded command; the future resolves to (result, fail_reason)."""
        fut: Future[Any] = Future()
        with self._lock:
            if self._stopped:
                fut.set_result((None, FAIL_REASON.REQUEST_DENIED))
                return fut
            self._queue.append((entry, fut))
            self._lock.notify()
        return fut

    def barrier(self) -> Future[Any]:
        """A no-op commit shared by every reader that asks before it is proposed."""
        with self._lock:
            if self._barrier is not None:
                return self._barrier
            fut: Future[Any] = Future()
            self._barrier = fut
            self._queue.append((C.encode(C.Noop()), fut))
            self._lock.notify()
            return fut

    def stop(self) -> None:
        with self._lock:
            self._stopped = True
            self._lock.notify_all()
            while self._queue:
                _, fut = self._queue.popleft()
                fut.set_result((None, FAIL_REASON.REQUEST_DENIED))

    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._stopped and (
                    not self._queue or self._in_flight >= self.max_in_flight
                ):
                    self._lock.wait(1.0)
                    if self._started and time.monotonic() - self._started[0] > STUCK_S:
                        log.error("a proposal got no answer for %.0f s; freeing its slot", STUCK_S)
                        self._started.popleft()
                        self._in_flight -= 1
                if self._stopped:
                    return
                items: list[tuple[bytes, Future[Any]]] = []
                while self._queue and len(items) < MAX_BATCH:
                    items.append(self._queue.popleft())
                if any(f is self._barrier for _, f in items):
                    self._barrier = None
                self._in_flight += 1
                self._started.append(time.monotonic())
            self.batches += 1
            self.entries += len(items)
            if len(items) == 1:
                entry, fut = items[0]
                self._propose(entry, [fut], single=True)
            else:
                batch = C.encode(C.Batch(entries=[e for e, _ in items]))
                self._propose(batch, [f for _, f in items], single=False)

    def _propose(self, entry: bytes, futs: list[Future[Any]], single: bool) -> None:
        def done(res: Any, err: int) -> None:
            try:
                if err != FAIL_REASON.SUCCESS or res is None:
                    for f in futs:
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
            finally:
                with self._lock:
                    if self._started:
                        self._started.popleft()
                        self._in_flight -= 1
                    self._lock.notify()

        try:
            self.fsm.apply(entry, callback=done)
        except Exception:
            log.exception("proposal failed")
            done(None, FAIL_REASON.REQUEST_DENIED)
