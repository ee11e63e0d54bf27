"""The watched store lock (borgmaster/locks.py): slow holds are counted once per outermost
hold and named by where they were taken; a Condition's wait is not a hold."""

from __future__ import annotations

import logging
import threading
import time

import pytest

from borgmaster.locks import WatchedLock


def hold_it(lock: WatchedLock, seconds: float) -> None:
    with lock, lock:  # re-entered: still one hold
        until = time.perf_counter() + seconds
        while time.perf_counter() < until:  # busy: the hold itself is what is measured
            pass


def test_a_slow_hold_is_counted_once_and_logged_with_its_site(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lock = WatchedLock("store", slow_s=0.02)
    with caplog.at_level(logging.WARNING, logger="borgmaster.locks"):
        hold_it(lock, 0.05)
    assert lock.slow_holds == 1
    [line] = [r.getMessage() for r in caplog.records]
    assert line.startswith("store lock held 0.0"), line
    assert "by hold_it (" in line and "test_locks.py:" in line, line


def test_short_holds_are_not_counted() -> None:
    lock = WatchedLock("store", slow_s=1.0)
    for _ in range(100):
        hold_it(lock, 0)
    assert lock.slow_holds == 0


def test_holder_names_the_site_while_held_and_nothing_when_free() -> None:
    lock = WatchedLock("store")
    assert lock.holder() == ""
    with lock:
        assert lock.holder().startswith(
            "test_holder_names_the_site_while_held_and_nothing_when_free ("
        )
    assert lock.holder() == ""


def test_a_condition_wait_gives_the_lock_up_and_is_not_a_hold() -> None:
    lock = WatchedLock("store", slow_s=0.05)
    changed = threading.Condition(lock)  # type: ignore[arg-type]
    flag: list[int] = []

    def setter() -> None:
        with changed:  # only possible while the waiter has given the lock up
            flag.append(1)
            changed.notify_all()

    t = threading.Thread(target=setter)
    with changed, lock:  # nested: the wait must release both levels
        t.start()
        assert changed.wait_for(lambda: flag, timeout=5)
        assert lock._is_owned()
    t.join()
    assert lock.slow_holds == 0
    assert not lock._is_owned()
