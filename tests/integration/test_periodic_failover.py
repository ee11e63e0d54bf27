"""A periodic job on a real 3-master cell: children start at each fire time, and a leader
failover in the middle of the schedule neither skips nor doubles a run (each launch is
committed with its fire time; the new leader goes on from the replicated last one)."""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cell, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e

JOB = (
    "name: tick\nkind: batch\nrun_as: nobody\ncommand: 'true'\n"
    "requirements: {cpu: 0.1, ram: 32Mi}\n"
    "schedule: '@every 2s'\nconcurrency: allow\nhistory_limit: 20\n"
)


@pytest.fixture
def cell() -> Iterator[Cell]:
    yield from real_cell(masters=3, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


def launched(cell: Cell, master: str) -> list[str]:
    """Children named by the periodic job's `launched` events, in order."""
    r = cell.borgcfg("events", "--job", "tick", "-o", "json", master=master, check=True)
    evs = [json.loads(line) for line in r.stdout.splitlines()]
    return [e["message"].split(",")[0] for e in evs if e["type"] == "launched"]


def test_periodic_launches_survive_a_leader_failover(cell: Cell, tmp_path: Path) -> None:
    cfg = tmp_path / "tick.yaml"
    cfg.write_text(JOB)
    r = cell.borgcfg("up", str(cfg), "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert "tick: scheduled" in r.stderr

    def parent() -> dict[str, Any]:
        return dict(cell.borgcfg_json("status", "tick", master=rest))

    rest = cell.master_addrs
    wait_for(lambda: len(parent()["children"]) >= 2, 30, what="two runs")
    p = parent()
    assert p["schedule"] == "@every 2s" and p["next_run_ms"] > p["last_run_ms"] > 0
    first = p["children"][0]
    wait_for(
        lambda: cell.borgcfg_json("status", first, master=rest)["state"] == "succeeded",
        30,
        what=f"{first} to succeed",
    )
    assert cell.borgcfg_json("status", first, master=rest)["parent"] == "tick"

    old = cell.leader()
    before = len(launched(cell, rest))
    old.kill()
    rest = ",".join(m.info["grpc"] for m in cell.masters if m is not old)
    wait_for(
        lambda: any(r["role"] == "leader" for r in cell.cell_json_via(rest)),
        20,
        what="a new leader",
    )
    wait_for(lambda: len(launched(cell, rest)) >= before + 4, 40, what="four runs more")

    names = launched(cell, rest)
    stamps = [int(n.rsplit("-", 1)[1]) for n in names]
    assert len(set(names)) == len(names), names  # nothing doubled
    assert [b - a for a, b in itertools.pairwise(stamps)] == [2] * (len(stamps) - 1)
    kids = parent()["children"]  # read after: launches may have gone on meanwhile
    latest = launched(cell, rest)
    assert kids == sorted(kids) and set(kids) <= set(latest) and kids[0] == latest[0]
