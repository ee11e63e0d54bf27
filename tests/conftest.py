"""Shared fixtures: real cells of masters and Borglets as processes (see tests/cluster.py)."""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from borglet.runtime.cgroups import detect
from tests.cluster import Cell


def cgroups_usable() -> str | None:
    """Why real-process tests cannot run here, or None when they can."""
    if os.geteuid() != 0:
        return "needs root (tasks run in cgroups as other users)"
    if detect("/sys/fs/cgroup", "borgcell-probe") is None:
        return "no writable cgroup hierarchy (v1 or v2) at /sys/fs/cgroup"
    return None


ALLOWED_SKIPS_ENV = "BORG_ALLOWED_SKIPS"
"""Set (by .ci/run) to a regular expression: then a test skipped for any reason it does not
match FAILS. CI installs the tools the optional tests need (Prometheus, Chromium); one that
went missing must turn CI red, not quietly skip. Developers' machines leave it unset."""


def strict_skip_failure(reason: str, allowed: str | None) -> str | None:
    """Why a skip must fail the run (None when skips are not strict or this one is allowed)."""
    if allowed is None or re.search(allowed, reason):
        return None
    return f"skipped in a run that allows only skips matching {allowed!r}: {reason}"


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    if rep.skipped and isinstance(rep.longrepr, tuple):
        why = strict_skip_failure(str(rep.longrepr[2]), os.environ.get(ALLOWED_SKIPS_ENV))
        if why is not None:
            rep.outcome = "failed"
            rep.longrepr = why
    setattr(item, "rep_" + rep.when, rep)


def real_cell(setup: Callable[[Cell], object] | None = None, **start: Any) -> Iterator[Cell]:
    """Body of a cell fixture: skip without root/cgroups, start the cell (`Cell.start(**start)`,
    then `setup(cell)` for extra Borglets), print its logs if starting fails, always close it."""
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    cell = Cell()
    try:
        cell.start(**start)
        if setup is not None:
            setup(cell)
    except Exception:
        print(cell.dump_logs())
        cell.close()
        raise
    try:
        yield cell
    finally:
        cell.close()


@pytest.fixture(scope="module")
def cell3() -> Iterator[Cell]:
    """Three masters and one Borglet, shared by a module's tests."""
    yield from real_cell(masters=3, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


@pytest.fixture(autouse=True)
def _cell_logs_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the logs of every cell a failed test used (only fixtures it already has)."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is None or not rep.failed:
        return
    for value in getattr(request.node, "funcargs", {}).values():
        if isinstance(value, Cell):
            print(value.dump_logs())
