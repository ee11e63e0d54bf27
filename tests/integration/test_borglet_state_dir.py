"""A Borglet that cannot write its state file stops reporting and says so on /healthz.

The master must never hear of a task the state file does not know: after a restart the
Borglet re-adopts tasks from that file, so a task reported but not recorded could never be
found again. Real master and Borglet processes."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cell, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e


@pytest.fixture
def cell() -> Iterator[Cell]:
    yield from real_cell(masters=1, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


def job(tmp_path: Path, name: str) -> str:
    p = tmp_path / f"{name}.yaml"
    p.write_text(
        f"name: {name}\nrun_as: nobody\ncommand: 'exec sleep 1000'\n"
        "requirements: {cpu: 0.05, ram: 16Mi}\n"
    )
    return str(p)


def state(cell: Cell, name: str) -> str:
    return str(cell.job(name)["tasks"][0]["state"])


def test_no_reports_while_the_state_file_cannot_be_written(cell: Cell, tmp_path: Path) -> None:
    b = cell.borglets[0]
    data = b.info["data"]
    healthz = b.info["http"]
    assert cell.borgcfg("up", job(tmp_path, "before"), "--wait", "--timeout", "30").returncode == 0
    # A fault the Borglet cannot repair by itself: its temp state file is a directory.
    blocker = os.path.join(data, "state.json.tmp")
    os.mkdir(blocker)
    assert cell.borgcfg("up", job(tmp_path, "after")).returncode == 0
    wait_for(lambda: cell.http_get(healthz, "/healthz")[0] == 503, 20, what="/healthz 503")
    assert "cannot write" in cell.http_get(healthz, "/healthz")[1]
    assert state(cell, "after") != "running"  # not reported while it cannot be recorded
    os.rmdir(blocker)
    wait_for(lambda: cell.http_get(healthz, "/healthz")[0] == 200, 20, what="/healthz 200")
    wait_for(lambda: state(cell, "after") == "running", 20, what="after/0 reported running")
    assert os.path.isfile(os.path.join(data, "state.json"))
