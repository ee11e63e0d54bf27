"""A linearizability checker for the cell's job set, in the manner of Jepsen's set checkers.

The workload only ever adds jobs with fresh names and reads the whole set (a grow-only set),
so a history is linearizable only if there is one order of every add and read, consistent with
real time, in which each read returns exactly the adds before it. For a grow-only set of
unique elements that comes down to the conditions `check_set` tests:

1. the sets the reads returned form a chain under inclusion (two reads that each saw an add
   the other missed cannot both be placed);
2. a read holds every add acknowledged before the read was sent (no stale read);
3. a read holds only adds that were sent before it completed (nothing from the future, and
   nothing nobody wrote);
4. a read that began after another ended holds at least what that one held (no going back);
5. an add acknowledged before another add was sent is seen whenever that other is (the log's
   order respects real time).

An add whose outcome is unknown (never acknowledged) may or may not be in the set; it still
bounds when it can appear (3).
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass


@dataclass(frozen=True)
class Add:
    name: str
    invoke: float
    complete: float | None
    """When it was acknowledged; None: outcome unknown (it may or may not have happened)."""


@dataclass(frozen=True)
class Read:
    invoke: float
    complete: float
    seen: frozenset[str]


def check_set(adds: list[Add], reads: list[Read], limit: int = 10) -> list[str]:
    """The violations found (at most `limit`), [] for a linearizable history."""
    problems: list[str] = []
    by_name = {a.name: a for a in adds}
    chain = sorted(reads, key=lambda r: (len(r.seen), r.invoke))
    for lo, hi in itertools.pairwise(chain):
        if not lo.seen <= hi.seen:
            problems.append(
                f"reads not a chain: {sorted(lo.seen - hi.seen)[:3]} seen at {lo.invoke:.3f} "
                f"but not at {hi.invoke:.3f}, which saw more"
            )
    acked = sorted((a for a in adds if a.complete is not None), key=lambda a: a.complete or 0)
    for r in reads:
        stale = [a.name for a in acked if (a.complete or 0) < r.invoke and a.name not in r.seen]
        if stale:
            problems.append(f"stale read at {r.invoke:.3f}: missing acknowledged {stale[:3]}")
        for name in r.seen:
            a = by_name.get(name)
            if a is None:
                problems.append(f"read at {r.invoke:.3f} saw {name!r}, which nobody added")
            elif a.invoke > r.complete:
                problems.append(f"read at {r.invoke:.3f} saw {name!r} before it was sent")
    chain_ok = not problems  # then inclusion between two reads is a comparison of sizes

    def includes(big: Read, small: Read) -> bool:
        if chain_ok:
            return len(small.seen) <= len(big.seen)
        return small.seen <= big.seen

    by_end = sorted(reads, key=lambda r: r.complete)
    for r1 in by_end:
        for r2 in reads:
            if r1.complete < r2.invoke and not includes(r2, r1):
                problems.append(
                    f"read at {r2.invoke:.3f} lost {sorted(r1.seen - r2.seen)[:3]} seen by a "
                    f"read that ended at {r1.complete:.3f}"
                )
                break
        if len(problems) >= limit:
            return problems[:limit]
    # 5, with the chain: the first read (in chain order) holding each name.
    rank: dict[str, int] = {}
    for i, r in enumerate(chain):
        for name in r.seen:
            rank.setdefault(name, i)
    never = len(chain)
    for a in acked:
        for b in adds:
            if b.invoke > (a.complete or 0) and rank.get(b.name, never) < rank.get(a.name, never):
                problems.append(
                    f"{b.name!r} seen without {a.name!r}, acknowledged before {b.name!r} was sent"
                )
                break
        if len(problems) >= limit:
            break
    return problems[:limit]
