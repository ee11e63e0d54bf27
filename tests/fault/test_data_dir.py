"""Data dir and Raft port safety: a replica refuses, with one line and exit 1, a data dir that
is another replica's or whose snapshot is damaged; Raft is never exposed off loopback without
a secret (see also tests/integration/test_hostile_master.py); a cell whose replicas share a
secret file works."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import uuid

import pytest

from borgmaster.fsm import DUMP_MAGIC
from tests.cluster import REPO, Cell, Proc, add_master_with_args, free_port, wait_for
from tests.fault.util import Stubs, list_rows, submit_until_acked

pytestmark = pytest.mark.e2e


def run_argv(argv: list[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, stdin=subprocess.DEVNULL
    )


def with_data_dir(p: Proc, data: str) -> list[str]:
    argv = list(p.argv)
    argv[argv.index("--data-dir") + 1] = data
    return argv


def one_error_line(r: subprocess.CompletedProcess[str]) -> str:
    out = (r.stdout + r.stderr).strip()
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


def test_replica_refuses_another_replicas_data_dir(cell: Cell) -> None:
    m0, m1 = cell.masters[0], cell.masters[1]
    assert m1.stop() == 0
    assert m0.stop() == 0  # else m0's lock on its dir refuses m1 first
    r = run_argv(with_data_dir(m1, m0.info["data"]))
    assert r.returncode == 1, r.stderr
    line = one_error_line(r)
    assert "belongs to replica 'm0'" in line and "not replica 'm1'" in line, line


def test_replica_refuses_a_garbage_snapshot(cell: Cell) -> None:
    m1 = cell.masters[1]
    assert m1.stop() == 0
    with open(os.path.join(m1.info["data"], "raft.snapshot"), "wb") as f:
        f.write(os.urandom(4096))
    r = run_argv(m1.argv)
    assert r.returncode == 1, r.stderr
    assert "raft.snapshot" in one_error_line(r)


def test_replica_refuses_a_snapshot_with_valid_header_and_garbage_body(cell: Cell) -> None:
    m1 = cell.masters[1]
    assert m1.stop() == 0
    with open(os.path.join(m1.info["data"], "raft.snapshot"), "wb") as f:
        f.write(DUMP_MAGIC + os.urandom(4096))
    m1.start()
    wait_for(
        lambda: not m1.alive() or cell.http_get(m1.info["http"], "/healthz")[0] == 200,
        20,
        what="replica exits or serves",
    )
    assert m1.popen is not None
    assert m1.popen.poll() == 1, "started on a damaged snapshot"


def test_replica_with_peers_and_no_raft_secret_is_refused(tmp_path: object) -> None:
    """PySyncObj unpickles unauthenticated frames: a replica with peers must have a secret
    (one line, exit 2), and a secret under 16 characters is refused the same way."""
    base = str(tmp_path)
    argv = [sys.executable, "-m", "borgmaster.cli", "run"]
    argv += ["--id", "m0", "--raft", f"127.0.0.1:{free_port()}"]
    argv += ["--peer", f"127.0.0.1:{free_port()}", "--peer", f"127.0.0.1:{free_port()}"]
    argv += ["--grpc", f"127.0.0.1:{free_port()}", "--http", f"127.0.0.1:{free_port()}"]
    argv += ["--data-dir", os.path.join(base, "d")]
    r = run_argv(argv)
    assert r.returncode == 2, r.stderr
    line = one_error_line(r)
    assert line.startswith("borgmaster: ") and "--raft-secret-file" in line, line
    assert not os.path.exists(os.path.join(base, "d", "raft.journal"))

    short = os.path.join(base, "short")
    with open(short, "w") as f:
        f.write("tooshort\n")
    r = run_argv([*argv, "--raft-secret-file", short])
    assert r.returncode == 2, r.stderr
    assert "16+ characters" in one_error_line(r)


def test_cell_with_a_shared_raft_secret_works(tmp_path: object, stubs: Stubs) -> None:
    cell = Cell()
    try:
        secret = os.path.join(cell.base, "raft.secret")
        with open(secret, "w") as f:
            f.write(uuid.uuid4().hex + "\n")
        os.chmod(secret, 0o600)
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        for i in range(3):
            peers = [r for j, r in enumerate(rafts) if j != i]
            add_master_with_args(cell, i, rafts[i], peers, ["--raft-secret-file", secret])
        cell.wait_ready()
        addrs = [m.info["grpc"] for m in cell.masters]
        a = submit_until_acked(stubs, addrs, "secret", uuid.uuid4().hex, time.monotonic() + 20)
        assert a.response is not None, a.errors
        rows = [list_rows(stubs, addr) for addr in addrs]
        assert rows[0] == rows[1] == rows[2] and rows[0][0][0] == "secret"
    except Exception:
        print(cell.dump_logs())
        raise
    finally:
        cell.close()
