"""The grow-only-set linearizability checker (tests/fault/linearizable.py) on small histories:
it passes a valid one and names each kind of violation."""

from __future__ import annotations

from tests.fault.linearizable import Add, Read, check_set


def r(a: float, b: float, *seen: str) -> Read:
    return Read(a, b, frozenset(seen))


ADDS = [Add("a", 0.0, 1.0), Add("b", 2.0, 3.0), Add("c", 2.5, None)]


def test_a_valid_history_passes() -> None:
    reads = [
        r(0.5, 0.6),
        r(0.5, 1.5, "a"),
        r(1.5, 1.6, "a"),
        r(2.6, 4.0, "a", "c"),
        r(4.1, 5, "a", "b", "c"),
    ]
    assert check_set(ADDS, reads) == []


def test_each_violation_is_named() -> None:
    assert "stale read" in check_set(ADDS, [r(1.5, 1.6)])[0]
    assert "before it was sent" in check_set(ADDS, [r(0.1, 0.2, "a", "b")])[-1]
    assert "nobody added" in check_set(ADDS, [r(5, 6, "a", "b", "zz")])[0]
    assert "not a chain" in check_set(ADDS, [r(2.6, 2.7, "a", "b"), r(2.6, 2.8, "a", "c")])[0]
    lost = check_set(ADDS, [r(2.6, 2.7, "a", "c"), r(2.9, 3.0, "a")])
    assert any("lost ['c']" in p for p in lost), lost
    order = [Add("a", 0.0, 1.0), Add("b", 2.0, None)]
    assert "seen without 'a'" in check_set(order, [r(0.1, 2.5, "b")])[-1]
