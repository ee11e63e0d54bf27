"""The store lock, watched: who holds it long, and how long the Raft thread waited for it.

Every replica applies committed entries on PySyncObj's tick thread, under the store lock; the
same thread sends the heartbeats that keep a leader in office. A reader that holds the lock
for a second (a status of a 5,000-task job computed on a machine saturated by its tasks)
therefore silences the leader for a second, and the followers elect another: on the dev cell
a Noop entry once waited 1.8 s to be applied. This lock records, for each outermost hold, where
it was taken; a hold longer than `slow_s` is counted and logged (at most one line per 10 s,
naming the site), so such a reader is found from the log instead of a profiler.

An `RLock` underneath (re-entrant, as the store's code nests); `threading.Condition` works on
it through the three private methods Condition looks for (`_is_owned`, `_release_save`,
`_acquire_restore`), which a wait uses to give the lock up entirely and take it back.
"""

from __future__ import annotations

import logging
import sys
import threading
import time
from dataclasses import dataclass
from types import CodeType
from typing import Any

log = logging.getLogger(__name__)

LOG_EVERY_S = 10.0


@dataclass(frozen=True)
class Hold:
    """One slow hold: how long, and where the lock was taken."""

    seconds: float
    site: str


def _site_of(code: CodeType | None, line: int) -> str:
    if code is None:
        return "?"
    path = code.co_filename
    for marker in ("/borgmaster/", "/borglet/", "/cfg/"):
        at = path.rfind(marker)
        if at >= 0:
            path = path[at + 1 :]
            break
    return f"{code.co_name} ({path}:{line})"


class WatchedLock:
    """A re-entrant lock that measures its outermost holds (see the module docstring)."""

    def __init__(self, name: str, slow_s: float = 0.1) -> None:
        self.name = name
        self.slow_s = slow_s
        self._lock = threading.RLock()
        self._depth = 0  # written by the owner only
        self._since = 0.0
        self._code: CodeType | None = None
        self._line = 0
        self.slow_holds = 0
        """Outermost holds longer than `slow_s` since start (a counter for /metrics)."""
        self.longest: Hold | None = None
        """The longest hold since the last log line."""
        self._logged = 0.0

    # ----- the lock ---------------------------------------------------------------------------

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self._lock.acquire(blocking, timeout):
            return False
        self._depth += 1
        if self._depth == 1:
            self._taken(sys._getframe(1))
        return True

    def _taken(self, frame: Any) -> None:
        while frame is not None and (
            frame.f_code.co_name == "__enter__" or frame.f_code.co_filename == threading.__file__
        ):
            frame = frame.f_back  # the caller's line, not `with` or Condition.wait
        self._code = frame.f_code if frame is not None else None
        self._line = frame.f_lineno if frame is not None else 0
        self._since = time.perf_counter()

    def release(self) -> None:
        self._depth -= 1
        if self._depth:
            self._lock.release()
            return
        held = time.perf_counter() - self._since
        code, line = self._code, self._line
        self._lock.release()
        if held > self.slow_s:
            self._slow(held, code, line)

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()

    def holder(self) -> str:
        """Where the current holder took the lock ("" when free); racy by design: a hint for
        a log line written by a thread that waited."""
        code = self._code
        return _site_of(code, self._line) if self._depth and code is not None else ""

    # ----- what threading.Condition needs -----------------------------------------------------

    def _is_owned(self) -> bool:
        return bool(self._lock._is_owned())  # type: ignore[attr-defined]

    def _release_save(self) -> tuple[Any, int]:
        depth, self._depth = self._depth, 0
        held = time.perf_counter() - self._since
        code, line = self._code, self._line
        state = self._lock._release_save()  # type: ignore[attr-defined]
        if held > self.slow_s:
            self._slow(held, code, line)
        return state, depth

    def _acquire_restore(self, saved: tuple[Any, int]) -> None:
        state, depth = saved
        self._lock._acquire_restore(state)  # type: ignore[attr-defined]
        self._depth = depth
        self._taken(sys._getframe(1))

    # ----- reporting --------------------------------------------------------------------------

    def _slow(self, held: float, code: CodeType | None, line: int) -> None:
        self.slow_holds += 1
        site = _site_of(code, line)
        if self.longest is None or held > self.longest.seconds:
            self.longest = Hold(held, site)
        now = time.monotonic()
        if now - self._logged < LOG_EVERY_S:
            return
        self._logged = now
        worst, self.longest = self.longest, None
        log.warning(
            "%s lock held %.2f s by %s (the longest of %d slow holds so far; the Raft thread "
            "waits for this lock to apply entries)",
            self.name,
            worst.seconds,
            worst.site,
            self.slow_holds,
        )
