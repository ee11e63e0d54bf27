"""borgcfg as a real process against a real cell (one master, one Borglet): `up --wait`,
`diff` after a change, `status -o json` keys per SPEC.md, `down --wait`, exit codes, rejected
writes and an unreachable cell. The commands whose server side is still being built (events,
drain, why, rollback, quota, cell add/remove) are covered against a fake in
tests/unit/test_cli.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import REPO, Cell, free_port, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

SLEEPER = "name: {name}\nreplicas: {n}\nrun_as: nobody\ncommand: '{cmd}'\n" + (
    "requirements: {{cpu: 0.1, ram: 32Mi}}\n"
)


@pytest.fixture(scope="module")
def cell1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    """One master and one Borglet, shared by this module's tests."""
    yield from real_cell(masters=1, borglets=1, borglet_cpu=2.0, borglet_memory="2Gi")


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def borgcfg(*args: str, master: str, user: str = "tester") -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cfg.cli", "--master", master, "--user", user, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=90, cwd=REPO)


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    assert "Traceback" not in r.stderr, r.stderr
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def test_up_wait_status_json_and_down(cell1: Cell, tmp_path: Path) -> None:
    cfg = write(tmp_path, "a.yaml", SLEEPER.format(name="cli-a", n=2, cmd="sleep 300"))
    r = cell1.borgcfg("up", cfg, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "job cli-a: created (version 1)\n"
    assert "✓ cli-a: ready (2/2; 2 running)" in r.stderr

    job = cell1.borgcfg_json("status", "cli-a")
    assert set(job) >= {"name", "user", "priority", "kind", "replicas", "state", "version"}
    assert (job["name"], job["user"], job["kind"], job["replicas"]) == (
        "cli-a",
        "tester",
        "service",
        2,
    )
    assert job["state"] == "running"
    for t in job["tasks"]:
        assert set(t) >= {"index", "state", "machine", "version", "restarts", "exit_code"}
        assert "reason" in t
        assert t["state"] == "running" and t["machine"] == cell1.borglets[0].info["name"]
    jobs = cell1.borgcfg_json("status")
    [row] = [j for j in jobs if j["name"] == "cli-a"]
    assert set(row) >= {"name", "user", "priority", "state", "running", "replicas"}
    assert row["running"] == 2

    # the human table, piped: every column present, nothing truncated
    table = cell1.borgcfg("status", "cli-a", check=True).stdout.splitlines()
    assert table[0].startswith("cli-a  running  user tester")
    assert table[1].split()[:2] == ["INDEX", "STATE"]
    assert all(cell1.borglets[0].info["name"] in line for line in table[2:4])

    r = cell1.borgcfg("down", "cli-a", "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "job cli-a: killed (2 tasks to stop)\n"
    assert "✓ cli-a: stopped" in r.stderr
    job = cell1.job("cli-a")
    assert job["state"] == "killed"
    assert {t["state"] for t in job["tasks"]} <= {"killed"}


def test_diff_after_a_change_then_up_applies_it(cell1: Cell, tmp_path: Path) -> None:
    v1 = write(tmp_path, "b.yaml", SLEEPER.format(name="cli-b", n=1, cmd="sleep 300"))
    r = cell1.borgcfg("diff", v1)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["+ job cli-b: new, version 1", "    plan: 1 task would start"]
    assert cell1.borgcfg("up", v1).returncode == 0

    r = cell1.borgcfg("diff", v1, "--exit-code")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "  job cli-b: unchanged (version 1)\n"

    v2 = write(tmp_path, "b2.yaml", SLEEPER.format(name="cli-b", n=2, cmd="sleep 400"))
    r = cell1.borgcfg("diff", v2)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "~ job cli-b: version 1 -> 2"
    assert "-   replicas: 1" in lines and "+   replicas: 2" in lines
    assert '+   command: ["/bin/sh", "-c", "sleep 400"]' in lines
    assert lines[-1] == "    plan: 1 task would start; 1 task would be replaced, 1 at a time"
    assert cell1.borgcfg("diff", v2, "--exit-code").returncode == 4
    [d] = json.loads(cell1.borgcfg("diff", v2, "-o", "json", check=True).stdout)
    assert d["plan"] == {"start": 1, "stop": 0, "replace": 1}

    r = cell1.borgcfg("up", v2)
    assert r.stdout == "job cli-b: updated (version 2)\n"
    assert cell1.borgcfg("diff", v2).stdout == "  job cli-b: unchanged (version 2)\n"
    assert cell1.borgcfg("down", "cli-b").returncode == 0


def test_exit_codes(cell1: Cell, tmp_path: Path) -> None:
    bad = write(tmp_path, "bad.yaml", "name: x\ncommand: y\nreplica: 2\n")
    r = cell1.borgcfg("up", bad)
    assert r.returncode == 1
    assert one_line(r) == f"borgcfg: {bad}:3: unknown key 'replica', did you mean 'replicas'?"

    r = cell1.borgcfg("status", "no-such-job")
    assert r.returncode == 1
    assert one_line(r) == "borgcfg: job 'no-such-job' does not exist"

    assert cell1.borgcfg("status", "-o", "yaml").returncode == 2
    assert cell1.borgcfg("no-such-command").returncode == 2

    # rejected by the cell: a job owned by someone else
    own = write(tmp_path, "c.yaml", SLEEPER.format(name="cli-c", n=1, cmd="sleep 300"))
    assert cell1.borgcfg("up", own).returncode == 0
    r = borgcfg("up", own, master=cell1.master_addrs, user="mallory")
    assert r.returncode == 1
    assert one_line(r).startswith("borgcfg: permission denied: mallory may not update")
    assert cell1.borgcfg("down", "cli-c").returncode == 0


def test_unreachable_cell_exit_3_names_addresses(tmp_path: Path) -> None:
    a, b = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    r = borgcfg("status", master=f"{a},{b}")
    assert r.returncode == 3
    assert one_line(r) == (
        f"borgcfg: cell unreachable; tried {a} (connection refused), {b} (connection refused)"
    )


def test_dead_replica_in_master_list_is_skipped(cell1: Cell) -> None:
    dead = f"127.0.0.1:{free_port()}"
    ms = cell1.borgcfg_json("machines", master=f"{dead},{cell1.master_addrs}")
    [m] = ms
    assert set(m) >= {"name", "state", "capacity", "used", "attrs", "tasks"}
    assert m["state"] == "up" and m["capacity"]["ram"] == 2 << 30
    table = cell1.borgcfg("machines", check=True).stdout
    assert "/2Gi" in table  # human sizes, not bytes


def test_cell_json_keys(cell1: Cell) -> None:
    [rep] = wait_for(lambda: cell1.cell_json(), 10, what="cell status")
    assert set(rep) >= {"id", "raft", "grpc", "role", "term", "commit_index", "leader"}
    assert rep["role"] == "leader" and rep["leader"] == rep["raft"]


def test_up_wait_judges_readiness_by_the_masters_clock_not_the_clients(
    cell1: Cell, tmp_path: Path
) -> None:
    """A client whose clock is 30 s ahead: with readiness judged on the client, a task that
    restarts every half second looked "up for 30 s" and `--wait` called a crash loop ready.
    The master judges it now, so the crash loop times out and a healthy job is ready."""
    from unittest import mock

    from click.testing import CliRunner

    from cfg.cli import main

    real = time.time
    runner = CliRunner()
    master = ["--master", cell1.master_addrs, "--user", "tester"]
    crashy = write(
        tmp_path,
        "skew-crash.yaml",
        "name: skew-crash\nrun_as: nobody\nrequirements: {cpu: 0.05, ram: 16Mi}\n"
        "restart: {policy: always, backoff: 100ms}\ncommand: 'sleep 0.5; exit 1'\n",
    )
    fine = write(
        tmp_path,
        "skew-ok.yaml",
        "name: skew-ok\nrun_as: nobody\nrequirements: {cpu: 0.05, ram: 16Mi}\n"
        "command: 'sleep 100000'\n",
    )
    with mock.patch("time.time", lambda: real() + 30):
        r = runner.invoke(main, [*master, "up", crashy, "--wait", "--timeout", "6"])
        assert r.exit_code == 1, r.output
        assert "timed out" in r.output and "ready" not in r.output.split("timed out")[0]
        ok = runner.invoke(main, [*master, "up", fine, "--wait", "--timeout", "30"])
        assert ok.exit_code == 0, ok.output
    for job in ("skew-crash", "skew-ok"):
        assert borgcfg("down", job, master=cell1.master_addrs).returncode == 0
