"""Helpers shared by the tests that drive a real cgroup hierarchy (v1, v2, cgroup2 mount)."""

from __future__ import annotations

import shutil
import signal
import time
from collections.abc import Callable, Iterable

import psutil

from borglet.runtime.cgroups import CgroupDriver
from borglet.runtime.process import ProcessRuntime, TaskProcess


def wait_for(cond: Callable[[], object], timeout: float, what: str) -> None:
    """Poll a condition against a deadline (never a bare sleep as synchronisation)."""
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() >= deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(0.02)


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def tear_down(
    driver: CgroupDriver,
    runtime: ProcessRuntime,
    started: Iterable[tuple[str, TaskProcess]],
    base: str,
) -> None:
    """Stop what a test started, empty and remove every task cgroup and the parent, and the
    sandboxes; fails if the parent cannot go (something was left behind)."""
    for name, proc in started:
        runtime.stop(name, proc, grace_s=0.1)
    for name in driver.list():
        driver.kill(name, signal.SIGKILL)
        wait_for(lambda n=name: not driver.pids(n), 5, f"cgroup {name} to empty")  # type: ignore[misc]
        driver.remove(name)
    assert driver.remove_parent()
    shutil.rmtree(base, ignore_errors=True)
