"""A 3-master cell survives its leader's death, and a restarted replica catches up from disk."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cell, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e


@pytest.fixture
def cell() -> Iterator[Cell]:
    yield from real_cell(masters=3, borglets=1)


def test_leader_sigkill_fails_over_and_restarted_replica_catches_up(
    cell: Cell, tmp_path: Path
) -> None:
    one = tmp_path / "one.yaml"
    one.write_text("name: one\nrun_as: nobody\ncommand: 'sleep 1000'\n")
    assert cell.borgcfg("up", str(one), "--wait", "--timeout", "30").returncode == 0

    old = cell.leader()
    old.kill()
    t0 = time.monotonic()
    rest = [m for m in cell.masters if m is not old]
    addrs = ",".join(m.info["grpc"] for m in rest)
    new = wait_for(
        lambda: next((r for r in cell.cell_json_via(addrs) if r["role"] == "leader"), None),
        20,
        what="a new leader",
    )
    elapsed = time.monotonic() - t0
    print(f"new leader {new['id']} after {elapsed:.2f}s")
    assert new["id"] != old.name

    # The cell keeps taking writes (borgcfg given every address skips the dead one) and the
    # Borglet finds the new leader: the new job runs.
    two = tmp_path / "two.yaml"
    two.write_text("name: two\nrun_as: nobody\ncommand: 'sleep 1000'\n")
    r = cell.borgcfg("up", str(two), "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert cell.job("one")["state"] == "running"

    # The killed replica restarts from its data dir and serves both jobs.
    old.start()
    wait_for(
        lambda: cell.http_get(old.info["http"], "/readyz")[0] == 200, 30, what="old replica ready"
    )
    jobs = cell.borgcfg_json("status", master=old.info["grpc"])
    assert {j["name"] for j in jobs} == {"one", "two"}
    assert all(j["state"] == "running" for j in jobs)
