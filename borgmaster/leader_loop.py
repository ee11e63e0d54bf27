"""The one skeleton every leader-only loop runs in (scheduler, controllers, liveness).

Each loop waits for a change of the store, a `wake()` or its period; lets a burst of writes
land (debounce); asks the term fence for the current term; and only then runs its body with
that term. A replica that is not the leader only watches for promotion, so a deposed
leader stops acting at its next turn, and whatever it proposed meanwhile carries its old
term, which the store rejects once the new leader's `LeaderElected` has committed.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass

from borgmaster import commands as C
from borgmaster.facade import ProposeError

log = logging.getLogger("borgmaster.loops")

LOOP_MIN_INTERVAL_S = 0.005
"""Leader loops wait this long after a change before a pass, so bursts share one pass."""
FOLLOWER_POLL_S = 0.05
"""How often a follower's idle leader loops check whether it has become the leader."""
CRASH_PAUSE_S = 1.0
"""A loop whose body raised waits this long before it runs again (and logs the traceback)."""


class TermFence:
    """The term to stamp on leader-loop commands, or 0 when this replica must not act.

    A new leader first commits LeaderElected(term); the store then rejects any fenced
    command from an older term, so a deposed leader's in-flight decisions are void."""

    def __init__(
        self,
        replica: str,
        is_leader: Callable[[], bool],
        term: Callable[[], int],
        propose: Callable[..., object],
    ) -> None:
        self._replica = replica
        self._is_leader = is_leader
        self._term = term
        self._propose = propose
        self._fenced = 0  # the term whose LeaderElected this replica has committed

    def __call__(self) -> int:
        if not self._is_leader():
            return 0
        term = self._term()
        if self._fenced == term:
            return term
        try:
            self._propose(C.LeaderElected(term=term, replica=self._replica), timeout=5)
        except ProposeError as e:
            log.warning("could not fence term %d: %s", term, e.message)
            return 0
        self._fenced = term
        log.info("leader loops fenced at term %d", term)
        return term


@dataclass(frozen=True)
class Cadence:
    """When a loop runs: on a store change (`on_change`), when woken, and every `period_s`
    (`on_period`: also when nothing changed), `debounce_s` after what woke it."""

    period_s: float = 1.0
    on_change: bool = True
    on_period: bool = True
    debounce_s: float = LOOP_MIN_INTERVAL_S


class LeaderLoop:
    """Runs `body(term)` on its own thread while this replica leads (see module docstring)."""

    def __init__(
        self,
        name: str,
        body: Callable[[int], None],
        cadence: Cadence,
        *,
        is_leader: Callable[[], bool],
        fence: Callable[[], int],
        stop: threading.Event,
        changed: threading.Condition | None = None,
        generation: Callable[[], int] = lambda: 0,
    ) -> None:
        self.name = name
        self._body = body
        self._cadence = cadence
        self._is_leader = is_leader
        self._fence = fence
        self._stop = stop
        # A loop that follows the store waits on the store's condition (its `apply` notifies
        # it); the others on their own, which only `wake` and `stop` notify.
        self._cond = changed if changed is not None and cadence.on_change else threading.Condition()
        self._generation = generation if cadence.on_change else (lambda: 0)
        self._woken = False
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name=self.name, daemon=True)
        self._thread.start()

    def wake(self) -> None:
        """Run a pass now (not at the next unrelated change or period), e.g. because held
        work became possible, or because the replica is stopping."""
        with self._cond:
            self._woken = True
            self._cond.notify_all()

    def run(self) -> None:
        while not self._stop.is_set():
            try:
                self._loop()
                return
            except Exception:
                log.exception("%s loop crashed; restarting it", self.name)
                self._stop.wait(CRASH_PAUSE_S)

    def _loop(self) -> None:
        seen = -1
        while not self._stop.is_set():
            if not self._is_leader():
                self._stop.wait(FOLLOWER_POLL_S)  # followers only watch for promotion
                continue
            if not self._wait(seen) and not self._cadence.on_period:
                continue
            if self._cadence.debounce_s:
                self._stop.wait(self._cadence.debounce_s)  # let a burst land in one pass
            gen = self._generation()
            term = self._fence()
            if not term or self._stop.is_set():
                continue
            seen = gen
            self._body(term)

    def _wait(self, seen: int) -> bool:
        """Wait for a change past `seen`, a wake or the period; True unless it timed out."""

        def ready() -> bool:
            return self._generation() != seen or self._woken or self._stop.is_set()

        with self._cond:
            self._cond.wait_for(ready, self._cadence.period_s)
            moved = self._generation() != seen or self._woken
            self._woken = False
        return moved
