"""Shared fixtures: real cells of masters and Borglets as processes (see tests/cluster.py)."""

from __future__ import annotations

import os
from collections.abc import Iterator

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


@pytest.hookimpl(tryfirst=True, hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep = outcome.get_result()  # type: ignore[attr-defined]
    setattr(item, "rep_" + rep.when, rep)


@pytest.fixture(scope="module")
def cell3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    """Three masters and one Borglet, shared by a module's tests."""
    why = cgroups_usable()
    if why:
        pytest.skip(why)
    cell = Cell(str(tmp_path_factory.mktemp("cell3")))
    try:
        cell.start(masters=3, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")
    except Exception:
        print(cell.dump_logs())
        cell.close()
        raise
    yield cell
    cell.close()


@pytest.fixture
def dump_on_failure(request: pytest.FixtureRequest) -> Iterator[None]:
    """Print the cell's logs when the test using it fails."""
    yield
    rep = getattr(request.node, "rep_call", None)
    if rep is not None and rep.failed:
        for name in ("cell3", "cell1"):
            if name in request.fixturenames:
                print(request.getfixturevalue(name).dump_logs())
