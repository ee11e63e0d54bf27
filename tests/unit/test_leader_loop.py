"""The leader-loop skeleton: a body runs only while this replica leads, with the fenced
term, after a change, a wake or its period; and the term fence commits LeaderElected once."""

from __future__ import annotations

import threading
from functools import partial
from typing import Any

from borgmaster import commands as C
from borgmaster.facade import ProposeError
from borgmaster.leader_loop import Cadence, LeaderLoop, TermFence
from tests.cluster import stays
from tests.cluster import wait_for as wait_until

wait_for = partial(wait_until, timeout=2.0, interval=0.005)


class World:
    def __init__(self, cadence: Cadence) -> None:
        self.leader = False
        self.term = 4
        self.gen = 0
        self.changed = threading.Condition()
        self.stop = threading.Event()
        self.runs: list[int] = []
        self.loop = LeaderLoop(
            "test",
            self.runs.append,
            cadence,
            is_leader=lambda: self.leader,
            fence=lambda: self.term if self.leader else 0,
            stop=self.stop,
            changed=self.changed,
            generation=lambda: self.gen,
        )
        self.loop.start()

    def change(self) -> None:
        with self.changed:
            self.gen += 1
            self.changed.notify_all()


def test_a_change_driven_loop_runs_only_while_leading_and_with_the_term() -> None:
    w = World(Cadence(period_s=0.05, on_period=False))
    try:
        w.change()
        assert stays(lambda: w.runs == [], 0.15)  # a follower never runs the body
        w.leader = True
        assert wait_for(lambda: w.runs == [4])  # first pass as leader (generation unseen)
        assert stays(lambda: w.runs == [4], 0.15)  # no change, no period runs
        w.change()
        assert wait_for(lambda: len(w.runs) == 2)
        w.loop.wake()
        assert wait_for(lambda: len(w.runs) == 3)  # a wake runs a pass without a change
        w.leader = False
        assert stays(lambda: len(w.runs) == 3, 0.1)
        w.change()
        assert stays(lambda: len(w.runs) == 3, 0.15)  # deposed: stops acting
    finally:
        w.stop.set()
        w.loop.wake()


def test_a_periodic_loop_runs_every_period_while_leading() -> None:
    w = World(Cadence(period_s=0.02, on_change=False, debounce_s=0))
    try:
        w.leader = True
        assert wait_for(lambda: len(w.runs) >= 3)
    finally:
        w.stop.set()
        w.loop.wake()


def test_the_fence_commits_leader_elected_once_per_term_and_not_as_a_follower() -> None:
    proposed: list[Any] = []
    state = {"leader": True, "term": 2, "fail": False}

    def propose(cmd: C.Command, timeout: float | None = None) -> dict[str, Any]:
        if state["fail"]:
            raise ProposeError("unavailable", "no quorum")
        proposed.append(cmd)
        return {}

    fence = TermFence("m0", lambda: bool(state["leader"]), lambda: int(state["term"]), propose)
    assert fence() == 2 and fence() == 2
    assert [(type(c).__name__, c.term) for c in proposed] == [("LeaderElected", 2)]
    state["term"] = 3
    state["fail"] = True
    assert fence() == 0  # not fenced: the loops must not act
    state["fail"] = False
    assert fence() == 3 and len(proposed) == 2
    state["leader"] = False
    assert fence() == 0
