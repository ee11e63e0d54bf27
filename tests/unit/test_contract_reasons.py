"""Reason words and rollout states: enums over the strings the master has always stored.

The wire keeps strings (`preempted`, `no-feasible-machine: ram 3`, `halted: task 1 ...`), so
the API and stored data are unchanged; these helpers are the one place that spells and reads
them, instead of string prefixes scattered over the master and the CLI.
"""

from __future__ import annotations

import pytest

from borgmaster.planner import held_reason, may_have_a_copy
from cfg.model import (
    Reason,
    RolloutState,
    halted_rollout,
    reason_word,
    rollout_state,
    with_detail,
)


def test_values_are_the_stored_strings() -> None:
    assert [r.value for r in Reason] == [
        "preempted",
        "updated",
        "drained",
        "machine-lost",
        "no-feasible-machine",
        "waiting for its previous copy",
    ]
    assert [s.value for s in RolloutState] == ["", "rolling", "halted", "canary"]
    assert Reason.PREEMPTED == "preempted"  # compares (and encodes) as its string


@pytest.mark.parametrize(
    ("text", "word"),
    [
        ("preempted", Reason.PREEMPTED),
        ("preempted by web/2 (priority 200)", Reason.PREEMPTED),
        ("preempted (no-feasible-machine: cpu 3)", Reason.PREEMPTED),
        ("no-feasible-machine: ram 9812, draining 3", Reason.NO_FEASIBLE_MACHINE),
        ("machine-lost", Reason.MACHINE_LOST),
        ("updated", Reason.UPDATED),
        ("drained", Reason.DRAINED),
        (held_reason("m1"), Reason.HELD),
        ("exit 1", None),
        ("oom-killed", None),
        ("", None),
        ("preemptedx", None),
    ],
)
def test_reason_word(text: str, word: Reason | None) -> None:
    assert reason_word(text) is word


def test_detail_spelling() -> None:
    assert with_detail(Reason.NO_FEASIBLE_MACHINE, "ram 3") == "no-feasible-machine: ram 3"
    assert with_detail(Reason.PREEMPTED, "") == "preempted"
    assert halted_rollout("task 1 on version 2 unhealthy") == (
        "halted: task 1 on version 2 unhealthy"
    )
    assert held_reason("m1") == "waiting for its previous copy on m1 to stop"


def test_rollout_state_reads_stored_statuses() -> None:
    assert rollout_state("") is RolloutState.NONE
    assert rollout_state("rolling") is RolloutState.ROLLING
    assert rollout_state(halted_rollout("task 0 failed")) is RolloutState.HALTED


def test_may_have_a_copy() -> None:
    for reason in ("updated", "drained", "preempted", "preempted (no-feasible-machine: x)"):
        assert may_have_a_copy(reason)
    assert may_have_a_copy(held_reason("m1"))
    for reason in ("", "machine-lost", "no-feasible-machine: cpu 1", "exit 1"):
        assert not may_have_a_copy(reason)
