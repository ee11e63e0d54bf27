"""The scheduler pass's shell: takes the queue, calls the pure planner and the scheduler,
proposes the plan and records metrics. Its state is leader-local and never in the store:

- which pending tasks to look at again next pass (`_retry`: tasks a pass left alone, held
  tasks released, a failed proposal's tasks), on top of the store's `take_new_pending`;
- the held-back tasks (`_held`), released when a copy goes away or a machine is lost;
- the capacity generation of the last pass: tasks that found no machine are retried only
  when capacity may have appeared, so a steady stream of submissions neither re-scores a
  large unplaceable backlog nor pays O(pending) per pass, and a pass with nothing new
  writes nothing.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from borgmaster import commands as C
from borgmaster import planner
from borgmaster.copies import LiveCopies
from borgmaster.metrics import placement_latencies
from borgmaster.scheduler import Scheduler
from borgmaster.store import Store

log = logging.getLogger("borgmaster")

TaskIndex = tuple[str, int]


class PlanMetrics(Protocol):
    def on_plan(self, proposed: int, placed: int, seconds: float) -> None: ...

    def on_preempted(self, n: int) -> None: ...

    def on_placed(self, latencies_s: list[float]) -> None: ...


def new_id() -> str:
    """An incarnation id for a placement (decided before proposing, so replicas agree)."""
    return uuid.uuid4().hex[:12]


class SchedulingShell:
    """One scheduler pass at a time, on the leader's scheduler loop (see module docstring)."""

    def __init__(
        self,
        store: Store,
        scheduler: Scheduler,
        copies: LiveCopies,
        propose: Callable[[C.Command], dict[str, Any]],
        machine_timeout_s: float,
        metrics: Callable[[], PlanMetrics | None] = lambda: None,
    ) -> None:
        self.store = store
        self.scheduler = scheduler
        self.copies = copies
        self.propose = propose
        self.machine_timeout_s = machine_timeout_s
        self.metrics = metrics
        self.wake: Callable[[], None] = lambda: None
        """Set by the composition root to the scheduler loop's `wake`."""
        self._lock = threading.Lock()
        self._retry: set[TaskIndex] = set()
        self._held: set[TaskIndex] = set()
        self._capacity = -1  # store.capacity_generation at the last pass
        self._leader_since: float | None = None
        self._placed = planner.PlacedCache()  # read and written under the store lock

    # ----- leadership ----------------------------------------------------------------------

    def became_leader(self, since: float) -> None:
        """A new term's first pass looks at every pending task: what an earlier term of this
        replica held back or found no room for is not among the new ones any more."""
        with self._lock:
            self._leader_since = since
            self._capacity = -1

    def lost_leadership(self) -> None:
        """Should it lead again, its first pass looks at the tasks it held."""
        with self._lock:
            self._leader_since = None
            self._retry |= self._held
            self._held = set()
        self._placed = planner.PlacedCache()  # a follower needs no memo of placed tasks

    def release_held(self) -> None:
        """A copy went away (or its machine was lost): let the scheduler look again at the
        tasks it held back, now rather than at the next unrelated change."""
        with self._lock:
            if not self._held:
                return
            self._retry |= self._held
            self._held = set()
        self.wake()

    def retry_queue(self) -> set[TaskIndex]:
        """The tasks the next pass looks at again besides the store's new ones (tests)."""
        with self._lock:
            return set(self._retry)

    # ----- one pass ------------------------------------------------------------------------

    def schedule_once(self, term: int = 0, retry_all: bool = True) -> int:
        """One scheduler pass: prepare (pure), schedule, commit. Returns how many tasks it
        placed. Raises ProposeError when the plan did not commit (its tasks are retried)."""
        store = self.store
        with store.lock, self._lock:
            new = store.take_new_pending()
            retry, self._retry = self._retry, set()
            if not store.pending:
                return 0
            if self._capacity != store.capacity_generation:
                retry_all = True
            self._capacity = store.capacity_generation
            only = new | (retry & store.pending)
            if not retry_all and not only:
                return 0
            inp = planner.prepare_pass(
                store,
                None if retry_all else only,
                self.copies,
                now=time.monotonic(),
                leader_since=self._leader_since,
                machine_timeout_s=self.machine_timeout_s,
                placed=self._placed,
            )
            self._held |= inp.held
        if inp.empty:
            return 0
        t0 = time.monotonic()
        try:
            plan = self.scheduler.schedule(inp.snapshot, new_id)
        except Exception:
            self._requeue(inp.keys())
            raise
        elapsed = time.monotonic() - t0
        failed = planner.failed_keys(plan)
        cmd = planner.plan_command(inp, plan, term)
        if cmd is None:
            self._requeue(inp.keys() - failed)
            return 0
        placed = preempted = 0
        ts_ms = 0
        try:
            gangs = {t.job for t in inp.snapshot.pending if t.spec.gang}
            # one entry unless it is over 5,000 placements or 8 MiB
            for part in planner.split_plan(cmd, gangs=gangs):
                res = self.propose(part)  # stamps part.ts_ms
                placed += int(res.get("placed", 0))
                preempted += int(res.get("preempted", 0))
                ts_ms = ts_ms or part.ts_ms
        except Exception:
            self._requeue(inp.keys())  # not (all) committed: look at all of them again
            raise
        cmd.ts_ms = ts_ms
        # Tasks that found no machine wait for capacity; the rest (placements the store
        # rejected, tasks the pass left alone) are looked at again next pass.
        self._requeue(inp.keys() - failed)
        metrics = self.metrics()
        if metrics is not None:
            metrics.on_plan(len(plan.placements), placed, elapsed)
            metrics.on_preempted(preempted)
            with store.lock:
                lat = placement_latencies(store, plan.placements, inp.waiting_since, cmd.ts_ms)
            metrics.on_placed(lat)
        if plan.placements:
            log.info(
                "scheduler placed %d of %d pending tasks in %.1f ms",
                placed,
                len(inp.snapshot.pending),
                elapsed * 1000,
            )
        return placed

    def _requeue(self, keys: set[TaskIndex]) -> None:
        if keys:
            with self._lock:
                self._retry |= keys
