"""Machine liveness: a machine whose Borglet has not synced for `machine_timeout_s` is lost.

The judgement (`lost_machines`) is pure over monotonic readings; `Liveness` is the shell the
leader's liveness loop runs: it proposes `MachineLost` (fenced by term), forgets the
machine's live copies and releases the tasks held back for them.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from borgmaster import commands as C
from borgmaster.copies import LiveCopies
from borgmaster.facade import ProposeError
from borgmaster.model import MACHINE_LOST
from borgmaster.store import Store

log = logging.getLogger("borgmaster")


def lost_machines(
    candidates: Iterable[str],
    last_seen: Mapping[str, float],
    leader_since: float,
    now: float,
    timeout_s: float,
) -> list[tuple[str, float]]:
    """(machine, seconds without contact) for each candidate silent longer than `timeout_s`.
    A new leader first gives every Borglet one timeout to find it: a machine it has not
    heard from counts as seen when it took over."""
    if now - leader_since < timeout_s:
        return []
    out = []
    for name in candidates:
        silent = now - last_seen.get(name, leader_since)
        if silent > timeout_s:
            out.append((name, silent))
    return out


class Liveness:
    """The liveness loop's body (leader only)."""

    def __init__(
        self,
        store: Store,
        copies: LiveCopies,
        last_seen: Mapping[str, float],
        propose: Callable[[C.Command], dict[str, Any]],
        release_held: Callable[[], None],
        timeout_s: float,
    ) -> None:
        self.store = store
        self.copies = copies
        self.last_seen = last_seen
        self.propose = propose
        self.release_held = release_held
        self.timeout_s = timeout_s
        self.leader_since: float | None = None
        """Monotonic time this replica became leader; None while it is not."""

    def check(self, term: int, now: float) -> None:
        since = self.leader_since
        if since is None:
            return
        with self.store.lock:
            candidates = [m.name for m in self.store.machines.values() if m.state != MACHINE_LOST]
        seen = dict(self.last_seen)
        for name, silent in lost_machines(candidates, seen, since, now, self.timeout_s):
            log.warning("machine %s lost: no contact for %.0f s", name, silent)
            try:
                self.propose(C.MachineLost(name=name, term=term))
            except ProposeError as e:
                log.warning("could not mark %s lost: %s", name, e.message)
                continue
            self.copies.forget(name)
            self.release_held()
