"""One serial runner per task: the start, kill, adoption and exit collection of one task run
in order, one at a time, while different tasks proceed in parallel.

Nomad's task runner gives each task its own goroutine; here each task key gets a queue and, only
while that queue has work, a thread that drains it (a burst of 100 starts runs as 100 parallel
spawns, as before; an idle task costs nothing). Serial per task is what keeps the shell simple:
a kill can never overtake the start it undoes, and an exit is collected exactly once, after
the kill that caused it.

At most `max_threads` queues drain at once; the others wait their turn in arrival order, and a
thread that has drained one queue takes the next waiting one. Stopping a 5,000-task job made
5,000 threads at once: thousands of Python threads then queue for one GIL (4,600 were seen
waiting on it), each step takes seconds, and the Borglet's own link went silent. Threads are
cheap while they wait in the kernel (a shim's start, a task's grace period), so the cap is
high: starts keep most of their parallelism.
"""

from __future__ import annotations

import logging
import threading
from collections import deque
from collections.abc import Callable

from borglet.state import TaskKey

log = logging.getLogger("borglet")

Step = Callable[[], None]


MAX_THREADS = 256


class TaskRunners:
    def __init__(self, max_threads: int = MAX_THREADS) -> None:
        self._lock = threading.Lock()
        self._queues: dict[TaskKey, deque[Step]] = {}
        self._waiting: deque[TaskKey] = deque()
        """Keys with work and no thread yet (all `max_threads` are draining other keys)."""
        self._threads = 0
        self.max_threads = max(1, max_threads)
        self._idle = threading.Condition(self._lock)

    def submit(self, key: TaskKey, step: Step) -> None:
        """Run `step` after every step already queued for `key`."""
        with self._lock:
            q = self._queues.get(key)
            if q is not None:
                q.append(step)
                return
            self._queues[key] = deque([step])
            if self._threads >= self.max_threads:
                self._waiting.append(key)
                return
            self._threads += 1
        threading.Thread(target=self._drain, args=(key,), daemon=True).start()

    def _drain(self, key: TaskKey) -> None:
        while True:
            with self._lock:
                q = self._queues[key]
                if not q:
                    del self._queues[key]
                    if not self._waiting:
                        self._threads -= 1
                        self._idle.notify_all()
                        return
                    key = self._waiting.popleft()  # this thread drains the next queue
                    q = self._queues[key]
                step = q.popleft()
            threading.current_thread().name = f"task-{key[0]}.{key[1]}"
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
