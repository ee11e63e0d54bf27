"""Jobs over time against a real cell (one master, one Borglet): `history` and `rollback
--to-version`, and `plan` (what `up` would do, computed by the leader's real scheduler)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import Cell
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

SLEEPER = (
    "name: {name}\nreplicas: {n}\nrun_as: nobody\ncommand: '{cmd}'\n"
    "requirements: {{cpu: {cpu}, ram: 32Mi}}\n"
)


@pytest.fixture(scope="module")
def cell1() -> Iterator[Cell]:
    """One master and one Borglet (2 CPUs), shared by this module's tests."""
    yield from real_cell(masters=1, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def one_line_error(r: object) -> str:
    stderr = getattr(r, "stderr", "")
    assert "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    return str(lines[0])


def test_history_and_rollback_to_version(cell1: Cell, tmp_path: Path) -> None:
    for i, cmd in enumerate(("sleep 301", "sleep 302", "sleep 303")):
        cfg = write(tmp_path, f"h{i}.yaml", SLEEPER.format(name="hist", n=1, cmd=cmd, cpu=0.1))
        r = cell1.borgcfg("up", cfg)
        assert r.returncode == 0, r.stderr
    hist = cell1.borgcfg_json("history", "hist")
    assert [h["version"] for h in hist] == [1, 2, 3]
    assert all(set(h) == {"version", "submitted_ms", "user", "changed"} for h in hist)
    assert [h["changed"] for h in hist] == [[], ["command"], ["command"]]
    assert {h["user"] for h in hist} == {"tester"}
    assert hist[0]["submitted_ms"] <= hist[1]["submitted_ms"] <= hist[2]["submitted_ms"]

    r = cell1.borgcfg("rollback", "hist", "--to-version", "1", "--wait", "--timeout", "60")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("job hist: rolled-back (version 4)")
    job = cell1.job("hist")
    assert job["version"] == 4 and job["rollout"] == ""
    assert {t["version"] for t in job["tasks"]} == {4}
    spec = cell1.borgcfg_json("history", "hist")
    assert spec[-1]["version"] == 4 and spec[-1]["changed"] == ["command"]

    table = cell1.borgcfg("history", "hist")
    assert table.returncode == 0 and "4 (current)" in table.stdout

    gone = cell1.borgcfg("rollback", "hist", "--to-version", "99")
    assert gone.returncode == 1
    assert "to_version: version 99 of job 'hist' is not kept" in one_line_error(gone)
    usage = cell1.borgcfg("rollback", "hist", "--to-version", "0")
    assert usage.returncode == 2
    missing = cell1.borgcfg("history", "no-such-job")
    assert missing.returncode == 1
    assert "job 'no-such-job' does not exist" in one_line_error(missing)
    cell1.borgcfg("down", "hist", check=True)


def test_plan_shows_placements_without_changing_anything(cell1: Cell, tmp_path: Path) -> None:
    machines = [m["name"] for m in cell1.borgcfg_json("machines")]
    assert len(machines) == 1
    (m,) = machines
    fits = write(tmp_path, "p1.yaml", SLEEPER.format(name="plan-a", n=2, cmd="sleep 300", cpu=0.1))
    got = cell1.borgcfg_json("plan", fits)
    assert got == [
        {
            "job": "plan-a",
            "change": "created",
            "version": 1,
            "placements": {m: 2},
            "unplaceable": 0,
            "preemptions": 0,
            "reasons": [],
        }
    ]
    assert cell1.borgcfg("status", "plan-a").returncode == 1  # nothing was written

    # Too big for the one 2-CPU machine: one task fits, two do not, and the table says why.
    big = write(tmp_path, "p2.yaml", SLEEPER.format(name="plan-b", n=3, cmd="sleep 300", cpu=0.9))
    (b,) = cell1.borgcfg_json("plan", big)
    assert (b["placements"], b["unplaceable"]) == ({m: 2}, 1)
    assert b["reasons"] and "cpu" in b["reasons"][0]
    r = cell1.borgcfg("plan", big)
    assert r.returncode == 0, r.stderr
    assert "plan-b" in r.stdout and "plan-b: unplaceable:" in r.stdout

    # After `up`: the same file is unchanged, a new command an update to the next version.
    cell1.borgcfg("up", fits, "--wait", "--timeout", "60", check=True)
    (same,) = cell1.borgcfg_json("plan", fits)
    assert (same["change"], same["version"], same["placements"]) == ("unchanged", 1, {m: 2})
    changed = write(
        tmp_path, "p3.yaml", SLEEPER.format(name="plan-a", n=2, cmd="sleep 301", cpu=0.1)
    )
    (upd,) = cell1.borgcfg_json("plan", changed)
    assert (upd["change"], upd["version"], upd["placements"]) == ("updated", 2, {m: 2})
    assert cell1.job("plan-a")["version"] == 1
    assert [h["version"] for h in cell1.borgcfg_json("history", "plan-a")] == [1]

    bad = write(tmp_path, "p4.yaml", "name: plan-c\nreplicas: -1\ncommand: 'x'\n")
    r = cell1.borgcfg("plan", bad)
    assert r.returncode == 1 and "replicas" in one_line_error(r)
    cell1.borgcfg("down", "plan-a", check=True)
