"""One process per data dir: a second `borgmaster run` or `borglet run` on a data dir that a
live process holds exits 1 with one line naming the holder's pid, and the lock ends with its
holder (SIGKILL included), never with the tasks a Borglet leaves running.

Without the lock two replicas would write one journal through two mmaps, and two Borglets
would adopt the same tasks and overwrite one state.json. One master and one Borglet, real
processes, shared by the module's tests."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cluster import REPO, Cell, Proc, free_port, processes_with_env, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    yield from real_cell(masters=1, borglets=1, borglet_cpu=1.0, borglet_memory="1Gi")


def second_on_same_dir(p: Proc, **flags: str) -> subprocess.CompletedProcess[str]:
    """Run `p`'s command line again with `flags` replaced (fresh ports, another name) but the
    same data dir. Without a lock it would start and run, so the timeout fails the test."""
    argv = list(p.argv)
    for flag, value in flags.items():
        argv[argv.index(flag) + 1] = value
    return subprocess.run(
        argv, capture_output=True, text=True, timeout=20, cwd=REPO, stdin=subprocess.DEVNULL
    )


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    out = (r.stdout + r.stderr).strip()
    assert "Traceback" not in out, out
    lines = [ln for ln in out.splitlines() if ln.strip()]
    assert len(lines) == 1, out
    return lines[0]


def test_second_master_on_a_data_dir_in_use_exits_1_naming_the_holder(cell: Cell) -> None:
    m = cell.masters[0]
    assert m.popen is not None
    r = second_on_same_dir(
        m,
        **{
            "--raft": f"127.0.0.1:{free_port()}",
            "--grpc": f"127.0.0.1:{free_port()}",
            "--http": f"127.0.0.1:{free_port()}",
        },
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert one_line(r) == (
        f"borgmaster: data dir {m.info['data']} is in use by another process (pid {m.popen.pid})"
    )
    # The holder is untouched, and the lock goes with it: SIGKILL, and the same command
    # line starts again on the dir.
    assert m.alive()
    m.kill()
    m.start()
    cell.wait_ready()


def test_second_borglet_on_a_data_dir_in_use_exits_1_and_a_restart_takes_it_over(
    cell: Cell, tmp_path: Path
) -> None:
    b = cell.borglets[0]
    cfg = tmp_path / "locked.yaml"
    cfg.write_text(
        "name: locked\nrun_as: nobody\ncommand: 'exec sleep 1000'\n"
        "requirements: {cpu: 0.05, ram: 16Mi}\n"
    )
    assert cell.borgcfg("up", str(cfg), "--wait", "--timeout", "30").returncode == 0
    assert b.popen is not None
    r = second_on_same_dir(
        b,
        **{
            "--name": b.info["name"] + "-twin",
            "--grpc": f"127.0.0.1:{free_port()}",
            "--http": f"127.0.0.1:{free_port()}",
        },
    )
    assert r.returncode == 1, r.stdout + r.stderr
    assert one_line(r) == (
        f"borglet: data dir {b.info['data']} is in use by another process (pid {b.popen.pid})"
    )
    assert b.alive()
    # SIGKILL the Borglet: its task runs on (its supervisor must not hold the lock), and the
    # next Borglet on the dir starts and re-adopts it.
    tasks = processes_with_env("BORG_JOB", "locked")
    assert tasks
    b.kill()
    b.start()
    wait_for(lambda: cell.http_get(b.info["http"], "/healthz")[0] == 200, 20, what="Borglet up")
    assert b.alive(), b.log()[-3000:]
    assert all(t.is_running() for t in tasks)
    assert cell.job("locked")["tasks"][0]["state"] == "running"
    assert cell.borgcfg("down", "locked", "--wait").returncode == 0
