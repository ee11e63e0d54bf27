"""Preemption rules (SPEC.md priority bands) and victim choice on one machine.

A pending task may evict placed tasks of strictly lower priority, except that production
(200-299) and monitoring (300-399) never evict each other: a task of either band can only evict
batch (100-199) and free (0-99) tasks. So the rule reduces to one threshold per preemptor:
victims must have priority below `victim_ceiling(p)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

PROD_LOW = 200  # first production priority; production and monitoring are >= this


def victim_ceiling(priority: int) -> int:
    """Victims must have priority strictly below this number."""
    if priority >= PROD_LOW:
        return PROD_LOW
    return priority


def can_preempt(preemptor: int, victim: int) -> bool:
    """Whether a task of priority `preemptor` may evict one of priority `victim`."""
    return victim < victim_ceiling(preemptor)


@dataclass(frozen=True)
class Candidate:
    """A placed task that could be evicted: its priority and what evicting it frees."""

    key: int  # caller's handle
    priority: int
    need: tuple[float, ...]  # resources it holds, same order as the shortfall vector


def choose_victims(
    shortfall: Sequence[float], candidates: Sequence[Candidate]
) -> list[Candidate] | None:
    """Fewest, lowest-priority victims whose resources cover `shortfall` (per resource, the
    amount missing; <= 0 means nothing missing), or None if all of them would not suffice.

    Greedy: take victims lowest priority first (largest first within a priority, so fewer are
    needed), then give back ("reprieve", as kube-scheduler does) every victim, highest priority
    first, that the rest still cover without.
    """
    dims = len(shortfall)
    if all(s <= 1e-9 for s in shortfall):
        return []
    order = sorted(candidates, key=lambda c: (c.priority, -sum(c.need), c.key))
    freed = [0.0] * dims
    chosen: list[Candidate] = []
    for c in order:
        chosen.append(c)
        for r in range(dims):
            freed[r] += c.need[r]
        if all(freed[r] + 1e-9 >= shortfall[r] for r in range(dims)):
            break
    else:
        return None
    for c in sorted(chosen, key=lambda c: (-c.priority, sum(c.need), -c.key)):
        rest = [freed[r] - c.need[r] for r in range(dims)]
        if all(rest[r] + 1e-9 >= shortfall[r] for r in range(dims)):
            chosen.remove(c)
            freed = rest
    return chosen


def victims_cost(victims: Sequence[Candidate]) -> tuple[int, int, int]:
    """Machines compare by: highest victim priority, then how many victims, then the sum of
    their priorities (lower is better for each), so a production task evicts a free-band task
    before a batch one, and one task before two."""
    if not victims:
        return (-1, 0, 0)
    return (max(v.priority for v in victims), len(victims), sum(v.priority for v in victims))
