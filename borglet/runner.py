"""One serial runner per task: the start, kill, adoption and exit collection of one task run
in order, one at a time, while different tasks proceed in parallel.

Nomad's task runner gives each task its own goroutine; here each task key gets a queue and, only
while that queue has work, one thread that drains it (a burst of 100 starts runs as 100 parallel
spawns, as before; an idle task costs nothing). Serial per task is what keeps the shell simple:
a kill can never overtake the start it undoes, and an exit is collected exactly once, after
the kill that caused it.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from borglet.state import TaskKey

log = logging.getLogger("borglet")

Step = Callable[[], None]


class TaskRunners:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._queues: dict[TaskKey, deque[Step]] = {}
        self._idle = threading.Condition(self._lock)

    def submit(self, key: TaskKey, step: Step) -> None:
        """Run `step` after every step already queued for `key`."""
        with self._lock:
            q = self._queues.get(key)
            if q is not None:
                q.append(step)
                return
            self._queues[key] = deque([step])
        name = f"task-{key[0]}.{key[1]}"
        threading.Thread(target=self._drain, args=(key,), name=name, daemon=True).start()

    def _drain(self, key: TaskKey) -> None:
        while True:
            with self._lock:
                q = self._queues[key]
                if not q:
                    del self._queues[key]
                    self._idle.notify_all()
                    return
                step = q.popleft()
            try:
                step()
            except Exception:  # one failed step must not wedge the task's queue
                log.exception("task %s/%d: step failed", key[0], key[1])

    def busy(self) -> int:
        with self._lock:
            return len(self._queues)

    def wait_idle(self, timeout_s: float) -> bool:
        """Until every queue has drained (False when `timeout_s` passed first)."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._queues, timeout=timeout_s)
