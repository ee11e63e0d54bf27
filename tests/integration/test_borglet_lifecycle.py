"""The Borglet end to end on real cgroups: one master, one Borglet started with every knob the
Borglet issue adds, real task processes.

Covers: re-adoption after SIGTERM and SIGKILL (same pids, exit codes reported later), leftover
cgroups, unix users (unknown / root refused), exec failures, restart policy with backoff,
health checks (restart of an unhealthy task, healthy verdict), ports other programs on the
host hold (never handed out; a restarting task whose port was taken gets a new one). The
hostile-task half is in test_borglet_hostile.py (same cell set-up, helpers from here).
"""

from __future__ import annotations

import itertools
import json
import os
import signal
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from borglet.runtime.cgroups import detect
from tests.cluster import Cell, Proc, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

LOG_MAX = 256 * 1024
LOG_KEEP = 2
PIDS_MAX = 64
PORT_LO = 41000 + (os.getpid() % 50) * 200
PORT_HI = PORT_LO + 199


# Every flag of the Borglet issue, on top of the cell's usual ones.
BORGLET_FLAGS = [
    "--reserve-cpu",
    "0.5",
    "--reserve-memory",
    "512Mi",
    "--port-range",
    f"{PORT_LO}-{PORT_HI}",
    "--log-max-size",
    str(LOG_MAX),
    "--log-keep",
    str(LOG_KEEP),
    "--task-pids-max",
    str(PIDS_MAX),
    "--usage-interval",
    "0.3",
]


def borglet_cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    """One master and one Borglet with every flag of the Borglet issue (module fixtures)."""

    def add_borglet(cell: Cell) -> None:
        cell.add_borglet(cpu=4, memory="4Gi", extra=BORGLET_FLAGS)
        cell.wait_machines(1)

    yield from real_cell(add_borglet, masters=1, borglets=0)


@pytest.fixture(scope="module")
def cell1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    yield from borglet_cell(tmp_path_factory)


def restart_borglet(cell: Cell, sig: int) -> Proc:
    """Stop the Borglet with `sig` and start a new one on the same name and data dir."""
    old = cell.borglets[0]
    if sig == signal.SIGKILL:
        old.kill()
    else:
        assert old.stop(timeout=15) == 0
    new = Proc(old.name, old.argv, old.log_path, info=dict(old.info))
    new.start()
    cell.borglets[0] = new
    wait_for(lambda: cell.http_get(new.info["http"], "/healthz")[0] == 200, 20, what="borglet up")
    return new


def up(cell: Cell, tmp_path: Path, name: str, yaml: str, *args: str) -> None:
    p = tmp_path / f"{name}.yaml"
    p.write_text(f"name: {name}\nrun_as: nobody\n" + yaml)
    r = cell.borgcfg("up", str(p), *args)
    assert r.returncode == 0, r.stderr


def down(cell: Cell, name: str) -> None:
    r = cell.borgcfg("down", name, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr


def task(cell: Cell, job: str, index: int = 0) -> dict[str, Any]:
    return dict(next(t for t in cell.job(job)["tasks"] if t["index"] == index))


def task_where(cell: Cell, job: str, cond: Any, timeout: float = 20, what: str = "") -> Any:
    def check() -> dict[str, Any] | None:
        t = task(cell, job)
        return t if cond(t) else None

    return wait_for(check, timeout, what=what or f"{job}/0 condition")


def task_pids(cell: Cell, job: str, index: int = 0) -> list[int]:
    cg = cell.task_cgroup(cell.borglets[0], job, index)
    if cg is None:
        return []
    with open(os.path.join(cg, "cgroup.procs")) as f:
        return sorted(int(x) for x in f.read().split())


def sandbox(cell: Cell, job: str, index: int = 0) -> str:
    """The task's sandbox: one per incarnation (`tasks/JOB.INDEX.INCARNATION`), the newest."""
    tasks = Path(cell.borglets[0].info["data"], "tasks")
    found = sorted(tasks.glob(f"{job}.{index}.*"), key=lambda p: p.stat().st_mtime)
    assert found, f"no sandbox for {job}/{index} in {tasks}"
    return str(found[-1])


def test_a_new_job_with_the_same_name_gets_an_empty_sandbox_and_its_own_logs(
    cell1: Cell, tmp_path: Path
) -> None:
    """A sandbox belongs to one incarnation: a later job of the same name (maybe another
    user's) neither sees the files nor the logs an earlier one left."""
    job = "kind: batch\nrequirements: {cpu: 0.05, ram: 16Mi}\ncommand: '%s'\n"
    up(cell1, tmp_path, "same", job % "echo first; echo secret > f", "--wait", "--timeout", "30")
    old = sandbox(cell1, "same")
    assert Path(old, "f").read_text() == "secret\n"
    down(cell1, "same")
    up(cell1, tmp_path, "same", job % "echo second; ls", "--wait", "--timeout", "30")
    new = sandbox(cell1, "same")
    assert new != old and not Path(new, "f").exists()
    logs = cell1.borgcfg("logs", "same/0")
    assert logs.returncode == 0 and logs.stdout.startswith("second\n"), logs.stdout
    assert "first" not in logs.stdout and "secret" not in logs.stdout
    # `logs -f` of the finished task ends by itself.
    follow = cell1.borgcfg("logs", "same/0", "-f")
    assert follow.returncode == 0 and follow.stdout == logs.stdout


def metrics(cell: Cell) -> str:
    code, body = cell.http_get(cell.borglets[0].info["http"], "/metrics")
    assert code == 200
    return body


# ----- re-adoption ---------------------------------------------------------------------------


def test_tasks_survive_borglet_sigterm_and_sigkill_and_are_readopted(
    cell1: Cell, tmp_path: Path
) -> None:
    # `stay` runs until told to stop; `quit` exits 3 while the Borglet is down. One process
    # each (no children coming and going), so the pid sets must stay exactly the same.
    code = "import os, time\nwhile not os.path.exists('stop'): time.sleep(0.05)\nexit(3)"
    loop = ["python3", "-c", code]
    for job in ("stay", "quit"):
        up(
            cell1,
            tmp_path,
            job,
            f"command: {json.dumps(loop)}\nrestart: {{policy: never}}\n"
            "requirements: {ram: 32Mi}\n",
            "--wait",
            "--timeout",
            "30",
        )
    pids = {j: wait_for(lambda j=j: task_pids(cell1, j), 10, what="pids") for j in ("stay", "quit")}

    restart_borglet(cell1, signal.SIGTERM)  # SPEC: a SIGTERM'd Borglet leaves tasks running
    assert task_pids(cell1, "stay") == pids["stay"]
    assert task_pids(cell1, "quit") == pids["quit"]
    assert all(psutil.pid_exists(p) for p in pids["stay"] + pids["quit"])

    cell1.borglets[0].kill()  # SIGKILL: nothing gets a chance to clean up
    assert all(psutil.pid_exists(p) for p in pids["stay"])
    Path(sandbox(cell1, "quit"), "stop").touch()
    wait_for(lambda: not task_pids(cell1, "quit"), 10, what="quit's process to exit")
    b = Proc(cell1.borglets[0].name, cell1.borglets[0].argv, cell1.borglets[0].log_path)
    b.info = dict(cell1.borglets[0].info)
    b.start()
    cell1.borglets[0] = b
    # The exit that happened while no Borglet ran is reported with its code.
    t = task_where(cell1, "quit", lambda t: t["state"] == "failed", what="quit failed")
    assert (t["exit_code"], t["restarts"]) == (3, 0)
    t = task(cell1, "stay")
    assert (t["state"], t["restarts"]) == ("running", 0)
    assert task_pids(cell1, "stay") == pids["stay"]
    assert "re-adopted task stay/0" in b.log()
    # ... and an adopted task's later exit too.
    Path(sandbox(cell1, "stay"), "stop").touch()
    t = task_where(cell1, "stay", lambda t: t["state"] == "failed", what="stay failed")
    assert t["exit_code"] == 3
    for job in ("stay", "quit"):
        down(cell1, job)
    assert not [c for c in cell1.task_cgroups() if c.startswith(("stay.", "quit."))]


def test_restart_removes_leftover_empty_cgroups_of_unknown_tasks(cell1: Cell) -> None:
    b = cell1.borglets[0]
    driver = detect("/sys/fs/cgroup", f"borgcell/{b.info['name']}")
    assert driver is not None
    from borglet.runtime.cgroups import Limits

    driver.create("ghost.0.zz", Limits(cpu=0.1, memory=16 << 20))
    assert driver.exists("ghost.0.zz")
    restart_borglet(cell1, signal.SIGTERM)
    wait_for(lambda: not driver.exists("ghost.0.zz"), 10, what="leftover cgroup removed")
    cell1.wait_machines(1)


# ----- users and exec failures ---------------------------------------------------------------


@pytest.mark.parametrize("run_as", ["no-such-user-borgcell", "root"], ids=["unknown", "root"])
def test_bad_run_as_is_rejected_at_submission(cell1: Cell, tmp_path: Path, run_as: str) -> None:
    """The Borglet reported the accounts it allows (only `nobody` here), so the master
    refuses any other run_as at once, with one line, and creates nothing. (A task placed
    before its machine reported fails on the Borglet instead: test_hostile_master.py.)"""
    p = tmp_path / "u.yaml"
    p.write_text(f"name: baduser\nrun_as: {run_as}\ncommand: 'sleep 100'\n")
    r = cell1.borgcfg("up", str(p))
    assert r.returncode == 1, r.stdout
    lines = r.stderr.strip().splitlines()
    assert (
        len(lines) == 1
        and f"run_as: no machine of the cell lets tasks run as '{run_as}'" in (lines[0])
    ), lines
    assert cell1.borgcfg("status", "baduser").returncode == 1


def test_missing_command_fails_at_once_with_exec_not_found(cell1: Cell, tmp_path: Path) -> None:
    t0 = time.monotonic()
    up(cell1, tmp_path, "nocmd", "command: [no-such-command-borgcell]\n")
    t = task_where(cell1, "nocmd", lambda t: t["state"] == "failed", what="nocmd failed")
    assert t["reason"] == "exec: not found"
    assert (t["exit_code"], t["restarts"]) == (127, 0)
    assert time.monotonic() - t0 < 10
    down(cell1, "nocmd")


# ----- restarts, health ----------------------------------------------------------------------


def test_failing_task_restarts_with_backoff_up_to_max_restarts(cell1: Cell, tmp_path: Path) -> None:
    up(
        cell1,
        tmp_path,
        "flaky",
        "command: 'date +%s.%N >> $HOME/starts; exit 4'\n"
        "restart: {policy: on-failure, max_restarts: 3, backoff: 200ms}\n",
    )
    t = task_where(cell1, "flaky", lambda t: t["state"] == "failed", 30, what="flaky failed")
    assert (t["restarts"], t["exit_code"], t["reason"]) == (3, 4, "exit: 4")
    starts = [float(x) for x in Path(sandbox(cell1, "flaky"), "starts").read_text().split()]
    gaps = [b - a for a, b in itertools.pairwise(starts)]
    assert len(starts) == 4
    # 200 ms, 400 ms, 800 ms: exponential (with some slack for start-up time).
    for gap, want in zip(gaps, (0.2, 0.4, 0.8), strict=True):
        assert want <= gap < want + 1.0, gaps
    assert 'borg_task_restarts_total{index="0",job="flaky"} 3.0' in metrics(cell1)
    down(cell1, "flaky")


def test_unhealthy_service_is_restarted_and_healthy_one_reported(
    cell1: Cell, tmp_path: Path
) -> None:
    up(
        cell1,
        tmp_path,
        "sick",
        "command: 'sleep 1000'\n"
        "health: {exec: ['false'], interval: 200ms, timeout: 1s, failure_threshold: 2}\n",
    )
    up(
        cell1,
        tmp_path,
        "fine",
        "command: 'exec python3 -m http.server --bind 127.0.0.1 $BORG_PORT'\n"
        "requirements: {ports: [http]}\n"
        # Generous: a Python web server takes a while to listen on a busy 2-core host.
        "health: {http: {port: http, path: /}, interval: 300ms, timeout: 1s,\n"
        "         initial_delay: 1s, failure_threshold: 20}\n",
    )
    t = task_where(cell1, "sick", lambda t: t["restarts"] >= 1, 20, what="sick restarted")
    assert t["state"] == "running"
    wait_for(
        lambda: 'borg_task_healthy{index="0",job="fine"} 1.0' in metrics(cell1),
        20,
        what="fine healthy",
    )
    assert task(cell1, "fine")["restarts"] == 0
    assert "unhealthy after 2 failed exec checks" in cell1.borglets[0].log()
    down(cell1, "sick")
    down(cell1, "fine")


# ----- ports held by other programs on the host ----------------------------------------------


def _hold(port: int) -> socket.socket | None:
    """Listen on 127.0.0.1:port as a neighbour program would; None when it is taken."""
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as servers do (TIME_WAIT is ok)
    try:
        s.bind(("127.0.0.1", port))
        s.listen()
    except OSError:
        s.close()
        return None
    return s


def test_port_held_on_the_host_is_not_handed_to_a_task(cell1: Cell, tmp_path: Path) -> None:
    # Everything in the range but one port is held by "someone else" (the range sits in the
    # ephemeral range, so a port may also be busy with some connection): wherever the
    # allocator's cursor is, the task must get a port nobody holds.
    held = [s for p in range(PORT_LO, PORT_HI + 1) if (s := _hold(p)) is not None]
    try:
        assert len(held) >= 2
        free = held.pop()
        want = free.getsockname()[1]
        free.close()
        held_ports = {s.getsockname()[1] for s in held}
        up(
            cell1,
            tmp_path,
            "probed",
            "requirements: {ram: 16Mi, ports: [http]}\ncommand: 'exec sleep 1000'\n",
            "--wait",
            "--timeout",
            "30",
        )
        t = task_where(cell1, "probed", lambda t: t["ports"].get("http"), what="port reported")
        got = t["ports"]["http"]
        assert got not in held_ports and PORT_LO <= got <= PORT_HI, (got, want)
    finally:
        for s in held:
            s.close()
    down(cell1, "probed")


def test_restarted_task_gets_a_new_port_when_its_old_one_was_taken(
    cell1: Cell, tmp_path: Path
) -> None:
    # The task itself never binds its port, so the test can take it while the task runs;
    # then the task exits (file `go`) and is restarted, and must not keep the taken port.
    up(
        cell1,
        tmp_path,
        "moved",
        "requirements: {ram: 16Mi, ports: [http]}\n"
        "restart: {policy: always, backoff: 200ms}\n"
        "command: 'while [ ! -e go ]; do sleep 0.05; done; exit 1'\n",
        "--wait",
        "--timeout",
        "30",
    )
    t = task_where(cell1, "moved", lambda t: t["ports"].get("http"), what="port reported")
    old = t["ports"]["http"]
    holder = _hold(old)
    assert holder is not None, f"port {old} of a task that does not bind it is not free"
    try:
        Path(sandbox(cell1, "moved"), "go").touch()
        t = task_where(
            cell1,
            "moved",
            lambda t: t["restarts"] >= 1 and t["ports"].get("http") not in (None, 0, old),
            what="restarted task on a new port",
        )
        assert PORT_LO <= t["ports"]["http"] <= PORT_HI
        assert f"its port http {old} is taken now" in cell1.borglets[0].log()
    finally:
        holder.close()
    down(cell1, "moved")
