"""Housekeeping: the slow periodic work of a Borglet, on one thread.

Every --usage-interval: usage of running tasks from their cgroup files (a few small reads per
task, for the master's report) and tasks stuck at pids.max. Every minute: sandboxes of tasks
gone for an hour are deleted, and /metrics counters of task indices gone for ten minutes are
dropped (series of array jobs would otherwise grow without bound).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

GC_INTERVAL_S = 60.0
COUNTER_RETENTION_S = 600.0
"""How long /metrics keeps a forgotten task index's restart and OOM counters."""


class Housekeeper:
    def __init__(
        self,
        usage_interval_s: float,
        refresh_usage: Callable[[], None],
        gc_sandboxes: Callable[[], object],
        prune_counters: Callable[[], object],
    ) -> None:
        self.usage_interval_s = usage_interval_s
        self.refresh_usage = refresh_usage
        self.gc_sandboxes = gc_sandboxes
        self.prune_counters = prune_counters
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="housekeeping", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        last_gc = 0.0
        while not self._stop.wait(self.usage_interval_s):
            self.refresh_usage()
            if time.monotonic() - last_gc >= GC_INTERVAL_S:
                last_gc = time.monotonic()
                self.gc_sandboxes()
                self.prune_counters()
