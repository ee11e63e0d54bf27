"""update.canary and update.auto_revert on a real 3-master cell: the canary stops at its N
tasks, stays stopped across a leader failover (the new leader's controllers read the
replicated rollout state), goes on after `promote`; a version whose task fails is reverted by
the cell itself, with a `reverted` event saying why."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.cluster import Cell, stays, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e

JOB = (
    "name: canary\nreplicas: 3\nrun_as: nobody\ncommand: '{cmd}'\n"
    "requirements: {{cpu: 0.1, ram: 32Mi}}\nrestart: {{policy: never}}\n"
    "update: {{max_unavailable: 1, canary: 1, auto_revert: true}}\n"
)


@pytest.fixture
def cell() -> Iterator[Cell]:
    yield from real_cell(masters=3, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


def versions(job: dict[str, Any]) -> list[int]:
    return sorted(t["version"] for t in job["tasks"] if t["state"] == "running")


def test_canary_survives_failover_then_promote_and_auto_revert(cell: Cell, tmp_path: Path) -> None:
    cfg = tmp_path / "canary.yaml"
    cfg.write_text(JOB.format(cmd="sleep 301"))
    cell.borgcfg("up", str(cfg), "--wait", "--timeout", "60", check=True)

    # `plan` asked of a follower is answered by the leader (the follower forwards it).
    leader = cell.leader()
    follower = next(m for m in cell.masters if m is not leader)
    cfg.write_text(JOB.format(cmd="sleep 302"))
    (plan,) = cell.borgcfg_json("plan", str(cfg), master=follower.info["grpc"])
    assert (plan["change"], plan["version"], plan["unplaceable"]) == ("updated", 2, 0)
    assert sum(plan["placements"].values()) == 3
    assert cell.job("canary")["version"] == 1

    r = cell.borgcfg("up", str(cfg), "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert "canary on version 2 (borgcfg promote canary to go on)" in r.stderr
    job = cell.job("canary")
    assert job["rollout"] == "canary" and versions(job) == [1, 1, 2]

    # The leader dies mid-canary: its successor keeps the canary stopped.
    old = cell.leader()
    old.kill()
    rest = ",".join(m.info["grpc"] for m in cell.masters if m is not old)
    wait_for(
        lambda: any(r["role"] == "leader" for r in cell.cell_json_via(rest)),
        20,
        what="a new leader",
    )

    def still_canary() -> bool:
        j = cell.borgcfg_json("status", "canary", master=rest)
        return bool(j["rollout"] == "canary" and versions(j) == [1, 1, 2])

    assert stays(still_canary, 3.0, interval=0.3)

    r = cell.borgcfg("promote", "canary", "--wait", "--timeout", "60", master=rest)
    assert r.returncode == 0, r.stderr
    assert r.stdout == "job canary: promoted (version 2)\n"
    job = cell.borgcfg_json("status", "canary", master=rest)
    assert job["rollout"] == "" and versions(job) == [2, 2, 2]
    again = cell.borgcfg("promote", "canary", master=rest)
    assert again.returncode == 1 and "no canary waiting" in again.stderr

    # A version whose canary fails is rolled back by the cell, saying why.
    cfg.write_text(JOB.format(cmd='sh -c "exit 3"'))
    cell.borgcfg("up", str(cfg), master=rest, check=True)

    def reverted() -> dict[str, Any] | None:
        r = cell.borgcfg("events", "--job", "canary", "-o", "json", master=rest, check=True)
        evs = [json.loads(line) for line in r.stdout.splitlines()]  # one object per line
        return next((e for e in evs if e["type"] == "reverted"), None)

    ev = wait_for(reverted, 60, what="a reverted event")
    assert ev["message"].startswith("version 4, 3 tasks (version 3 -> version 2's spec: task 0")
    assert "failed" in ev["message"]

    def settled() -> dict[str, Any] | None:
        j = cell.borgcfg_json("status", "canary", master=rest)
        return j if j["rollout"] == "" and versions(j) == [4, 4, 4] else None

    wait_for(settled, 60, what="the revert rolled out")
    hist = cell.borgcfg_json("history", "canary", master=rest)
    assert [(h["version"], h["user"]) for h in hist][-2:] == [(3, "tester"), (4, "borgmaster")]
