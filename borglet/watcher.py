"""The exit watcher: one thread, one poll() over a pidfd per task supervisor.

Nothing polls processes on a timer: a supervisor's exit makes its pidfd readable, which wakes
this thread at once, and it hands the task key to `on_exit` (the shell queues the collection of
the exit status on the task's runner, after any start or kill already queued there). A steady
state costs no CPU at all.
"""

from __future__ import annotations

import contextlib
import os
import select
import threading
from collections.abc import Callable

from borglet.state import TaskKey


class ExitWatcher:
    def __init__(self, on_exit: Callable[[TaskKey], None]) -> None:
        self.on_exit = on_exit
        self._lock = threading.Lock()
        self._new: list[tuple[int, TaskKey]] = []
        self._r, self._w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self._stopped = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="watch", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopped.set()
        self._poke()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def watch(self, key: TaskKey, pidfd: int) -> None:
        """Call on_exit(key) once `pidfd` (owned by the watcher from now on) is readable; at
        once when there is none (-1: the supervisor is already gone)."""
        if pidfd < 0:
            self.on_exit(key)
            return
        with self._lock:
            self._new.append((pidfd, key))
        self._poke()

    def _poke(self) -> None:
        with contextlib.suppress(OSError):
            os.write(self._w, b"x")

    def _loop(self) -> None:
        poller = select.poll()
        poller.register(self._r, select.POLLIN)
        fds: dict[int, TaskKey] = {}
        while not self._stopped.is_set():
            with self._lock:
                new, self._new = self._new, []
            for fd, key in new:
                fds[fd] = key
                poller.register(fd, select.POLLIN)
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._r, 4096)
                    continue
                key = fds.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                self.on_exit(key)
        with self._lock:
            new, self._new = self._new, []
        for fd in list(fds) + [fd for fd, _ in new]:
            os.close(fd)
