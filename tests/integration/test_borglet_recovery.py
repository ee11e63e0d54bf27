"""The Borglet's recovery paths with real processes: what a new Borglet does with what an
earlier one (or the machine) left behind, and that tasks outlive their masters.

Each test stops the real Borglet, changes what it left (kills a shim, plants a cgroup, corrupts
or ages the state file), starts a new one on the same data dir and checks the processes on
the machine, not only what the master says.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import pytest

from borglet.runtime.cgroups import Limits, detect
from tests.cluster import Cell, Proc, wait_for
from tests.conftest import real_cell
from tests.integration.test_borglet_lifecycle import down, task, task_pids, task_where, up

pytestmark = [pytest.mark.e2e]

# One process that never forks, so a task's pid set stays exactly the same while it runs.
LOOP_CODE = "import time\nwhile True: time.sleep(0.2)"
LOOP = (
    f"command: {json.dumps(['python3', '-c', LOOP_CODE])}\nrequirements: {{cpu: 0.05, ram: 32Mi}}\n"
)


@pytest.fixture(scope="module")
def cell(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    yield from real_cell(masters=1, borglets=1)


def borglet(cell: Cell) -> Proc:
    return cell.borglets[0]


def start_again(cell: Cell) -> Proc:
    """A new Borglet process on the same name and data dir (the old one must be gone)."""
    old = borglet(cell)
    assert not old.alive()
    new = Proc(old.name, old.argv, old.log_path, info=dict(old.info))
    new.start()
    cell.borglets[0] = new
    return new


def healthz(cell: Cell) -> tuple[int, str]:
    return cell.http_get(borglet(cell).info["http"], "/healthz")


def state_file(cell: Cell) -> Path:
    return Path(borglet(cell).info["data"], "state.json")


def state_doc(cell: Cell) -> dict[str, object]:
    doc = json.loads(state_file(cell).read_text())
    assert isinstance(doc, dict)
    return doc


def cgroup_name(cell: Cell, job: str, index: int = 0) -> str | None:
    cg = cell.task_cgroup(borglet(cell), job, index)
    return os.path.basename(cg) if cg else None


def running(cell: Cell, tmp_path: Path, job: str, yaml: str = LOOP) -> list[int]:
    """Submit `job` and wait until it runs; its task's pids."""
    up(cell, tmp_path, job, yaml, "--wait", "--timeout", "30")
    return list(wait_for(lambda: task_pids(cell, job), 10, what=f"{job}'s pids"))


def holds_for(check: Callable[[], None], seconds: float) -> None:
    """Run `check` (it asserts) again and again for `seconds`: a negative property ("nothing
    starts") needs an observation window; this synchronises with nothing."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        check()
        threading.Event().wait(0.2)


def log_since(p: Proc, mark: int) -> str:
    return p.log()[mark:]


def test_supervisor_vanished_while_the_borglet_was_down(cell: Cell, tmp_path: Path) -> None:
    """Shim killed while no Borglet ran: the task is reported failed (`supervisor-lost`),
    and what is left of it in its cgroup (the task still runs: it called setsid) is stopped,
    since nothing could supervise or report on it any more."""
    pids = running(cell, tmp_path, "orphan", LOOP + "restart: {policy: never}\n")
    name = cgroup_name(cell, "orphan")
    assert name is not None
    control = Path(borglet(cell).info["data"], "run", name)
    _pid, shim, _start = (control / "pid").read_text().split()
    assert borglet(cell).stop() == 0
    os.kill(int(shim), signal.SIGKILL)
    wait_for(lambda: not psutil.pid_exists(int(shim)), 10, what="shim gone")
    assert all(psutil.pid_exists(p) for p in pids)  # the task outlived its shim
    start_again(cell)
    t = task_where(cell, "orphan", lambda t: t["state"] == "failed", what="orphan failed")
    assert (t["reason"], t["restarts"]) == ("supervisor-lost", 0)
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 10, what="task pids gone")
    wait_for(lambda: cgroup_name(cell, "orphan") is None, 10, what="its cgroup removed")
    down(cell, "orphan")


def freeze_file(cell: Cell, name: str) -> tuple[str, str, str]:
    """The task cgroup's freeze control file, and what it reads frozen and thawed."""
    parent = f"borgcell/{borglet(cell).info['name']}"
    driver = detect("/sys/fs/cgroup", parent)
    assert driver is not None
    if driver.version == 2:
        return os.path.join("/sys/fs/cgroup", parent, name, "cgroup.freeze"), "1", "0"
    return os.path.join("/sys/fs/cgroup/freezer", parent, name, "freezer.state"), "FROZEN", "THAWED"


def test_a_task_left_frozen_by_a_killed_borglet_is_thawed_and_adopted(
    cell: Cell, tmp_path: Path
) -> None:
    """A SIGKILL freezes the task's cgroup, signals, thaws: a Borglet killed in between
    leaves the task frozen, and nothing else ever thaws it. The next Borglet does, and
    adopts the task as it is (same pids, no restart)."""
    pids = running(cell, tmp_path, "icy")
    name = cgroup_name(cell, "icy")
    assert name is not None
    borglet(cell).kill()
    path, frozen, thawed = freeze_file(cell, name)
    with open(path, "w") as f:
        f.write(frozen)  # fault injection: where the killed Borglet's SIGKILL stopped
    wait_for(lambda: Path(path).read_text().strip() == frozen, 10, what="icy frozen")
    start_again(cell)
    wait_for(lambda: Path(path).read_text().strip() == thawed, 20, what="icy thawed")
    t = task_where(cell, "icy", lambda t: t["state"] == "running", what="icy running")
    assert t["restarts"] == 0 and task_pids(cell, "icy") == pids
    down(cell, "icy")


def test_unknown_cgroup_with_live_processes_is_stopped_at_start(cell: Cell) -> None:
    """A task cgroup under our parent that the state file does not know, with a process in
    it: nothing could report on it, so the start stops it and removes the cgroup."""
    b = borglet(cell)
    driver = detect("/sys/fs/cgroup", f"borgcell/{b.info['name']}")
    assert driver is not None
    assert b.stop() == 0
    driver.create("ghost.0.zz", Limits(cpu=0.1, memory=32 << 20))
    stray = subprocess.Popen(["sleep", "1000"], start_new_session=True)
    try:
        for procs in driver.procs_files("ghost.0.zz"):
            with open(procs, "w") as f:
                f.write(str(stray.pid))
        assert driver.pids("ghost.0.zz") == [stray.pid]
        mark = len(b.log())
        new = start_again(cell)
        assert stray.wait(15) == -signal.SIGTERM  # stopped, not left to run unwatched
        wait_for(lambda: not driver.exists("ghost.0.zz"), 10, what="ghost cgroup removed")
        assert "stopping processes of unknown task cgroup ghost.0.zz" in log_since(new, mark)
    finally:
        if stray.poll() is None:
            stray.kill()
            stray.wait(5)
    cell.wait_machines(1)


def test_task_being_stopped_when_the_borglet_died_is_stopped_by_the_next(
    cell: Cell, tmp_path: Path
) -> None:
    """`down` while the task ignores SIGTERM: the Borglet records it as stopping and waits out
    its kill_timeout; SIGKILL'd meanwhile, the next Borglet finishes the kill (the master no
    longer lists the task, so nothing else would) and the cgroup empties."""
    code = "import signal\nsignal.signal(signal.SIGTERM, signal.SIG_IGN)\n" + LOOP_CODE
    stubborn = (
        f"command: {json.dumps(['python3', '-c', code])}\n"
        "requirements: {cpu: 0.05, ram: 32Mi}\nkill_timeout: 4s\n"
    )
    pids = running(cell, tmp_path, "stubborn", stubborn)
    r = cell.borgcfg("down", "stubborn")
    assert r.returncode == 0, r.stderr

    def stopping_recorded() -> bool:
        tasks = state_doc(cell)["tasks"]
        assert isinstance(tasks, list)
        return any(t["job"] == "stubborn" and t["phase"] == "stopping" for t in tasks)

    wait_for(stopping_recorded, 10, what="stopping in the state file")
    borglet(cell).kill()  # well within the 4 s kill_timeout: the kill never finished
    assert all(psutil.pid_exists(p) for p in pids), "SIGTERM is ignored: the task still runs"
    start_again(cell)
    # The new Borglet's own kill: SIGTERM (ignored), then SIGKILL after the kill_timeout.
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 20, what="task killed")
    wait_for(lambda: cgroup_name(cell, "stubborn") is None, 10, what="cgroup removed")
    down(cell, "stubborn")  # the master hears the task is gone: the job is down


def test_corrupt_state_file_refuses_to_run_instead_of_forgetting_tasks(
    cell: Cell, tmp_path: Path
) -> None:
    """An unreadable state.json is not an empty table (that would sweep the running task's
    cgroup as unknown and kill it): the Borglet starts, /healthz answers 503 with the reason,
    it leaves the task alone, reports nothing (so it runs no new task) and logs one line."""
    pids = running(cell, tmp_path, "kept")
    name = cgroup_name(cell, "kept")
    assert borglet(cell).stop() == 0
    state_file(cell).write_text('{"version": 1, "tasks": [')
    mark = len(borglet(cell).log())
    new = start_again(cell)
    _, body = wait_for(lambda: (r := healthz(cell))[0] == 503 and r, 20, what="503")
    assert "state.json is unreadable" in body and "running no tasks" in body, body
    # A new job's task lands on the only machine, whose Borglet must not start it: the
    # master hears nothing from it (no Link stream at all), so the task stays pending/unstarted.
    up(cell, tmp_path, "fresh", LOOP)

    def refusing() -> None:
        assert task_pids(cell, "kept") == pids and cgroup_name(cell, "kept") == name
        assert cgroup_name(cell, "fresh") is None
        assert healthz(cell)[0] == 503

    holds_for(refusing, 3.0)
    lines = [ln for ln in log_since(new, mark).splitlines() if "unreadable" in ln]
    assert len(lines) == 1, lines
    assert "linked to master" not in log_since(new, mark)  # its first-contact line
    assert state_file(cell).read_text() == '{"version": 1, "tasks": ['  # left for the operator
    # The operator removes the file: the task is unknown now, so it is stopped, and the master
    # (which still wants it) gets it started afresh, with the new job.
    assert new.stop() == 0
    state_file(cell).unlink()
    start_again(cell)
    wait_for(lambda: healthz(cell)[0] == 200, 20, what="healthy again")
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 15, what="old pids gone")
    wait_for(lambda: task_pids(cell, "kept"), 30, what="kept started afresh")
    wait_for(lambda: task_pids(cell, "fresh"), 30, what="fresh started")
    down(cell, "kept")
    down(cell, "fresh")


def test_tasks_of_an_earlier_boot_are_not_readopted(cell: Cell, tmp_path: Path) -> None:
    """A state file written in another boot: its shims are gone whatever /proc says now (a
    pid and start time may belong to another process), so nothing is adopted; the task is
    reported lost, whatever is in its cgroup is stopped, and the master's restart runs it
    anew."""
    pids = running(cell, tmp_path, "booted", LOOP + "restart: {policy: always, backoff: 100ms}\n")
    old_name = cgroup_name(cell, "booted")
    assert borglet(cell).stop() == 0
    doc = state_doc(cell)
    doc["boot_id"] = "00000000-0000-0000-0000-earlier-boot"
    state_file(cell).write_text(json.dumps(doc))
    mark = len(borglet(cell).log())
    new = start_again(cell)
    wait_for(lambda: not any(psutil.pid_exists(p) for p in pids), 15, what="old pids gone")
    t = task_where(cell, "booted", lambda t: t["restarts"] >= 1 and t["state"] == "running")
    assert t["reason"] == "supervisor-lost" or t["restarts"] == 1, t
    new_pids = wait_for(lambda: task_pids(cell, "booted"), 10, what="new pids")
    assert not set(new_pids) & set(pids)
    log = log_since(new, mark)
    assert "task booted/0 is from an earlier boot: not re-adopted" in log
    assert "re-adopted task booted/0" not in log
    assert cgroup_name(cell, "booted") == old_name  # same placement, a new run
    down(cell, "booted")


def test_tasks_keep_running_while_every_master_is_unreachable(cell: Cell, tmp_path: Path) -> None:
    """The masters go away (all of them: one here) and come back: the task is never stopped
    or restarted, same cgroup, same pids, reported running with no restart."""
    pids = running(cell, tmp_path, "steady")
    name = cgroup_name(cell, "steady")
    m = cell.masters[0]
    assert m.stop() == 0
    # The Borglet notices (its syncs fail) and keeps the task as it is.
    wait_for(
        lambda: (
            "borg_borglet_connected 0.0" in cell.http_get(borglet(cell).info["http"], "/metrics")[1]
        ),
        20,
        what="borglet disconnected",
    )
    assert task_pids(cell, "steady") == pids
    back = Proc(m.name, m.argv, m.log_path, info=dict(m.info))
    back.start()
    cell.masters[0] = back
    cell.wait_ready()
    wait_for(
        lambda: (
            "borg_borglet_connected 1.0" in cell.http_get(borglet(cell).info["http"], "/metrics")[1]
        ),
        30,
        what="borglet connected again",
    )
    t = task_where(cell, "steady", lambda t: t["state"] == "running", what="steady running")
    assert t["restarts"] == 0
    assert task_pids(cell, "steady") == pids and cgroup_name(cell, "steady") == name
    assert task(cell, "steady")["state"] == "running"
    down(cell, "steady")
