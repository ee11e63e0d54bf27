"""A master process at start and at admission, against real processes: the Raft port binds
only the --raft host, a master whose ports are taken fails at start with one line, ownership
by the acting user, an idempotent `down`, and `quota set` keeping the limits it does not
name."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster import REPO, Cell, add_master_with_args, free_port, wait_for


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    """One master, no Borglet: everything here is decided by the master (jobs stay pending)."""
    c = Cell()
    try:
        c.start(masters=1, borglets=0)
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    try:
        yield c
    finally:
        c.close()


def as_user(cell: Cell, user: str, *args: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "--user", user]
    return subprocess.run(
        [*argv, *args], capture_output=True, text=True, timeout=60, cwd=REPO, check=False
    )


def last_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    return lines[-1] if lines else ""


# ----- the Raft port ------------------------------------------------------------------------


def listeners(port: int) -> set[str]:
    return {
        c.laddr.ip
        for c in psutil.net_connections(kind="inet")
        if c.status == psutil.CONN_LISTEN and c.laddr and c.laddr.port == port
    }


def test_raft_listens_only_on_the_given_loopback_address(cell: Cell) -> None:
    m = cell.masters[0]
    raft_port = int(m.info["raft"].rsplit(":", 1)[1])
    got = wait_for(lambda: listeners(raft_port), 10, what="raft listening")
    assert got == {"127.0.0.1"}, got  # not 0.0.0.0 / ::
    # and nothing answers on the port through another local address
    other = [
        a.address
        for addrs in psutil.net_if_addrs().values()
        for a in addrs
        if a.family == socket.AF_INET and not a.address.startswith("127.")
    ]
    for addr in other[:1]:
        with socket.socket() as s:
            s.settimeout(2)
            assert s.connect_ex((addr, raft_port)) != 0


# ----- ports in use -------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["raft", "grpc", "http"])
def test_a_port_in_use_fails_start_with_one_line(which: str, tmp_path: Path) -> None:
    c = Cell()
    try:
        raft = f"127.0.0.1:{free_port()}"
        p = add_master_with_args(c, 0, raft, [], start=False)
        taken = p.info[which]
        host, port = taken.rsplit(":", 1)
        with socket.socket() as squatter:
            squatter.bind((host, int(port)))
            squatter.listen(1)
            r = subprocess.run(
                p.argv, capture_output=True, text=True, timeout=60, cwd=REPO, check=False
            )
        assert r.returncode == 1, r.stderr
        assert "Traceback" not in r.stderr, r.stderr
        assert r.stderr.strip().splitlines()[-1] == f"borgmaster: {which} address {taken} is in use"
        assert " up: raft " not in r.stderr  # never claimed to be up
    finally:
        c.close()


def test_the_ports_are_free_again_after_a_failed_start(tmp_path: Path) -> None:
    """A start that fails on its gRPC port released Raft: the same replica starts next."""
    c = Cell()
    try:
        p = add_master_with_args(c, 0, f"127.0.0.1:{free_port()}", [], start=False)
        host, port = p.info["grpc"].rsplit(":", 1)
        with socket.socket() as squatter:
            squatter.bind((host, int(port)))
            squatter.listen(1)
            r = subprocess.run(p.argv, capture_output=True, text=True, timeout=60, cwd=REPO)
        assert r.returncode == 1
        p.start()
        c.wait_ready()
    finally:
        c.close()


# ----- ownership and down -------------------------------------------------------------------

JOB = """name: {name}
user: {user}
command: ["sleep", "300"]
replicas: {n}
requirements: {{cpu: 0.1, ram: 16Mi}}
"""


def test_only_the_owner_may_update_or_kill_and_down_is_idempotent(
    cell: Cell, tmp_path: Path
) -> None:
    cfg = tmp_path / "qjob.yaml"
    cfg.write_text(JOB.format(name="qjob", user="alice", n=1))
    assert as_user(cell, "alice", "up", str(cfg)).returncode == 0

    cfg.write_text(JOB.format(name="qjob", user="alice", n=2))
    r = as_user(cell, "bob", "up", str(cfg))
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: bob may not update job 'qjob' (owner alice)"
    r = as_user(cell, "bob", "down", "qjob")
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: permission denied: bob may not kill job 'qjob' (owner alice)"
    job = json.loads(as_user(cell, "alice", "status", "qjob", "-o", "json").stdout)
    assert job["state"] != "killed" and job["replicas"] == 1

    assert as_user(cell, "alice", "down", "qjob").returncode == 0
    # a second `down` of the job status still lists as killed succeeds (exit 0)
    r = as_user(cell, "alice", "down", "qjob")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("job qjob: already killed (")
    r = as_user(cell, "alice", "down", "no-such-job")
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: job 'no-such-job' does not exist"


# ----- quota --------------------------------------------------------------------------------


def test_quota_set_keeps_omitted_limits_and_shows_unlimited(cell: Cell, tmp_path: Path) -> None:
    r = as_user(cell, "admin", "quota", "set", "qann", "production", "cpu=1", "ram=1Gi")
    assert r.returncode == 0, r.stderr
    assert r.stdout == "quota qann/production: cpu 1, ram 1Gi, disk unlimited, gpu unlimited\n"
    r = as_user(cell, "admin", "quota", "set", "qann", "production", "cpu=2")
    assert r.stdout == "quota qann/production: cpu 2, ram 1Gi, disk unlimited, gpu unlimited\n"
    r = as_user(cell, "admin", "quota", "set", "qann", "production", "ram=unlimited", "gpu=1")
    assert r.stdout == "quota qann/production: cpu 2, ram unlimited, disk unlimited, gpu 1\n"

    [q] = json.loads(as_user(cell, "admin", "quota", "list", "qann", "-o", "json").stdout)
    assert q["limit"] == {"cpu": 2.0, "ram": "unlimited", "disk": "unlimited", "gpu": 1}
    table = as_user(cell, "admin", "quota", "list", "qann").stdout.splitlines()
    assert table[1].split() == ["qann", "production", "0/2", "0/unlimited", "0/unlimited", "0/1"]

    # admission: ram is unlimited now, cpu still counts
    big = tmp_path / "big.yaml"
    big.write_text(
        JOB.format(name="qbig", user="qann", n=1).replace("16Mi", "64Gi") + "priority: 200\n"
    )
    r = as_user(cell, "qann", "up", str(big))
    assert r.returncode == 0, r.stderr
    over = tmp_path / "over.yaml"
    over.write_text(
        JOB.format(name="qover", user="qann", n=1).replace("cpu: 0.1", "cpu: 2") + "priority: 200\n"
    )
    r = as_user(cell, "qann", "up", str(over))
    assert r.returncode == 1
    assert last_line(r) == "borgcfg: rejected: quota for qann/production exceeded by cpu 0.1"
    assert as_user(cell, "qann", "down", "qbig").returncode == 0


def test_cell_add_of_an_address_where_nothing_runs_is_refused(cell: Cell) -> None:
    """PySyncObj applies membership on append: three adds of dead addresses used to leave a
    cell needing votes it could never get. Now nothing changes and the user is told why."""
    before = [r["raft"] for r in cell.cell_json()]
    dead = f"127.0.0.1:{free_port()}"
    r = as_user(cell, "admin", "cell", "add", dead)
    assert r.returncode == 1, r.stdout
    assert last_line(r) == (
        f"borgcfg: rejected: cell add: nothing answers at {dead} "
        "(start the replica there with --join first)"
    )
    assert [x["raft"] for x in cell.cell_json()] == before
    # and the cell still takes writes: its majority is unchanged
    wait_for(lambda: cell.http_get(cell.masters[0].info["http"], "/readyz")[0] == 200, 10)
