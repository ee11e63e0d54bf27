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
