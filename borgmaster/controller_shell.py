"""The controllers loop's body: turns the pure decisions of `controllers.py` (rolling
updates, drains within `max_unavailable`, job GC) into fenced commands and proposes them."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from borgmaster import commands as C
from borgmaster import controllers
from borgmaster.facade import ProposeError, now_ms
from borgmaster.store import Store
from cfg.model import Reason

log = logging.getLogger("borgmaster")

GC_EVERY_S = 10.0
"""How often the leader looks for finished jobs past their retention."""


class ControllerShell:
    def __init__(
        self,
        store: Store,
        propose: Callable[[C.Command], dict[str, Any]],
        job_retention_s: float,
    ) -> None:
        self.store = store
        self.propose = propose
        self.job_retention_s = job_retention_s
        self._last_gc = 0.0

    def run(self, term: int) -> None:
        with self.store.lock:
            actions = controllers.plan_all(self.store, now_ms())
        for a in actions:
            try:
                if a.revert:
                    self.propose(
                        C.RevertRollout(job=a.job, version=a.version, reason=a.revert, term=term)
                    )
                    log.warning("job %s: version %d reverted: %s", a.job, a.version, a.revert)
                    continue
                if a.rollout_status is not None:
                    status = a.rollout_status
                    self.propose(
                        C.SetRollout(job=a.job, version=a.version, status=status, term=term)
                    )
                    log.warning("job %s: rollout %s", a.job, a.rollout_status)
                if a.replace_drain:
                    self.propose(
                        C.ReplaceTasks(
                            job=a.job, tasks=a.replace_drain, reason=Reason.DRAINED, term=term
                        )
                    )
                if a.replace_update:
                    self.propose(
                        C.ReplaceTasks(
                            job=a.job, tasks=a.replace_update, reason=Reason.UPDATED, term=term
                        )
                    )
                    log.info(
                        "job %s: rolling %d task(s) to version %d",
                        a.job,
                        len(a.replace_update),
                        a.version,
                    )
            except ProposeError as e:
                log.warning("controller write for %s not committed: %s", a.job, e.message)
        with self.store.lock:
            launches = controllers.due_launches(self.store, now_ms())
        for job, scheduled_ms in launches:
            try:
                res = self.propose(C.LaunchPeriodic(job=job, scheduled_ms=scheduled_ms, term=term))
                log.info("periodic job %s: run of %d: %s", job, scheduled_ms, res)
            except ProposeError as e:
                log.warning("launch of %s not committed: %s", job, e.message)
        if time.monotonic() - self._last_gc > GC_EVERY_S:
            self._last_gc = time.monotonic()
            with self.store.lock:
                names = controllers.gc_candidates(
                    self.store, now_ms(), int(self.job_retention_s * 1000)
                )
            if names:
                try:
                    self.propose(C.GcJobs(names=names, term=term))
                    log.info("garbage-collected jobs: %s", ", ".join(names))
                except ProposeError as e:
                    log.warning("gc not committed: %s", e.message)
