"""Scheduling on a real cell: preemption by priority band, constraints, spread, drain.

Preemption and drain are checked on the machines too, not only in the master's state: the
victims' processes must be gone and their cgroups removed.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from borglet.runtime.cgroups import detect
from tests.cluster import Cell, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    def two_racks(c: Cell) -> None:
        c.add_borglet(cpu=1.0, memory="1Gi", attrs={"rack": "r1"})
        c.add_borglet(cpu=1.0, memory="1Gi", attrs={"rack": "r2"})
        c.wait_machines(2)

    yield from real_cell(two_racks, masters=1, borglets=0)


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def job(name: str, replicas: int, cpu: float, priority: int, extra: str = "") -> str:
    return (
        f"name: {name}\nreplicas: {replicas}\npriority: {priority}\nrun_as: nobody\n"
        f"command: 'exec sleep 1000'\nkill_timeout: 1s\n"
        f"requirements: {{cpu: {cpu}, ram: 32Mi}}\n{extra}"
    )


def states(cell: Cell, name: str) -> list[tuple[str, str]]:
    return [(t["state"], t["reason"]) for t in cell.job(name)["tasks"]]


def on_machines(cell: Cell, name: str) -> dict[tuple[str, int], list[int]]:
    """What runs of job `name` on the machines themselves: (machine, task index) -> the pids
    in that task's cgroup, read from the cgroup tree (cgroups are `JOB.INDEX.INCARNATION`)."""
    out: dict[tuple[str, int], list[int]] = {}
    for b in cell.borglets:
        driver = detect("/sys/fs/cgroup", f"borgcell/{b.info['name']}")
        assert driver is not None
        for cg in driver.list():
            job_, index, _inc = cg.split(".")
            if job_ == name:
                out[(b.info["name"], int(index))] = sorted(driver.pids(cg))
    return out


def gone(pids: list[int]) -> bool:
    """Every pid has exited (a zombie not yet reaped by init counts as exited)."""
    for pid in pids:
        try:
            if psutil.Process(pid).status() != psutil.STATUS_ZOMBIE:
                return False
        except psutil.NoSuchProcess:
            continue
    return True


def test_production_preempts_batch_which_returns_when_room_appears(
    cell: Cell, tmp_path: Path
) -> None:
    batch = write(tmp_path, "batch.yaml", job("filler", 4, 0.5, 100))
    assert cell.borgcfg("up", batch, "--wait", "--timeout", "30").returncode == 0
    before = on_machines(cell, "filler")
    assert len(before) == 4 and all(before.values()), before
    prod = write(tmp_path, "prod.yaml", job("prodjob", 2, 0.5, 200))
    r = cell.borgcfg("up", prod, "--wait", "--timeout", "30")
    assert r.returncode == 0, r.stderr
    tasks = cell.job("filler")["tasks"]
    st = [(t["state"], t["reason"]) for t in tasks]
    assert sum(1 for s, _ in st if s == "running") == 2, st
    waiting = [reason for s, reason in st if s == "pending"]
    assert len(waiting) == 2 and all(r.startswith("preempted") for r in waiting), st
    # On the machines: each victim's processes died and its cgroup went; the two survivors
    # run untouched (same pids).
    victims = {t["index"] for t in tasks if t["state"] == "pending"}
    killed = [pids for (_, i), pids in before.items() if i in victims]
    kept = {k: pids for k, pids in before.items() if k[1] not in victims}
    assert len(killed) == 2 and len(kept) == 2, before
    wait_for(lambda: all(gone(p) for p in killed), 15, what="preempted processes gone")
    wait_for(lambda: on_machines(cell, "filler") == kept, 15, what="victims' cgroups removed")
    # Production and monitoring never preempt each other: a monitoring job that needs both
    # machines whole can take the batch tasks' room but not production's, so part of it waits.
    mon = write(tmp_path, "mon.yaml", job("monjob", 2, 1.0, 300))
    assert cell.borgcfg("up", mon).returncode == 0
    wait_for(
        lambda: any(r.startswith("no-feasible-machine") for _, r in states(cell, "monjob")),
        15,
        what="monitoring task pending with a reason",
    )
    assert all(s == "running" for s, _ in states(cell, "prodjob"))
    assert cell.borgcfg("down", "monjob", "--wait").returncode == 0
    assert cell.borgcfg("down", "prodjob", "--wait").returncode == 0
    wait_for(
        lambda: all(s == "running" for s, _ in states(cell, "filler")),
        30,
        what="preempted batch tasks running again",
    )
    assert cell.borgcfg("down", "filler", "--wait").returncode == 0


def test_constraint_and_spread_place_on_the_right_racks(cell: Cell, tmp_path: Path) -> None:
    pinned = write(
        tmp_path,
        "pin.yaml",
        job("pinned", 2, 0.1, 100, "constraints: [{attr: rack, op: '==', value: r2}]\n"),
    )
    assert cell.borgcfg("up", pinned, "--wait", "--timeout", "30").returncode == 0
    machines = {m["name"]: m["attrs"].get("rack") for m in cell.borgcfg_json("machines")}
    assert {machines[t["machine"]] for t in cell.job("pinned")["tasks"]} == {"r2"}
    spread = write(tmp_path, "spread.yaml", job("spready", 2, 0.1, 100, "spread: rack\n"))
    assert cell.borgcfg("up", spread, "--wait", "--timeout", "30").returncode == 0
    assert {machines[t["machine"]] for t in cell.job("spready")["tasks"]} == {"r1", "r2"}
    nowhere = write(
        tmp_path,
        "nowhere.yaml",
        job("nowhere", 1, 0.1, 100, "constraints: [{attr: rack, op: '==', value: r9}]\n"),
    )
    assert cell.borgcfg("up", nowhere).returncode == 0
    why = wait_for(lambda: cell.job("nowhere")["tasks"][0]["reason"], 15, what="pending reason")
    assert why.startswith("no-feasible-machine") and "rack" in why
    for name in ("pinned", "spready", "nowhere"):
        assert cell.borgcfg("down", name, "--wait").returncode == 0


def test_drain_stops_the_tasks_on_the_machine_and_runs_them_elsewhere(
    cell: Cell, tmp_path: Path
) -> None:
    """Drained: the master moves the tasks off, and on the drained machine itself every
    process of the job is gone and its cgroups removed; the replacements run (their own
    processes) on the other machine."""
    spec = write(tmp_path, "drainee.yaml", job("drainee", 2, 0.1, 100, "spread: rack\n"))
    assert cell.borgcfg("up", spec, "--wait", "--timeout", "30").returncode == 0
    target, other = (b.info["name"] for b in cell.borglets)
    before = on_machines(cell, "drainee")
    old = before[(target, next(i for m, i in before if m == target))]
    assert old, before
    r = cell.borgcfg("drain", target)
    assert r.returncode == 0, r.stderr
    try:

        def moved() -> bool:
            now = on_machines(cell, "drainee")
            return sorted(now) == [(other, 0), (other, 1)] and all(now.values())

        wait_for(moved, 30, what="both tasks running on the other machine, none on the target")
        assert gone(old), old

        def reported() -> bool:  # the processes run; the master hears of it a moment later
            j = cell.job("drainee")
            return all(t["state"] == "running" and t["machine"] == other for t in j["tasks"])

        wait_for(reported, 10, what="the master showing both tasks running on the other machine")
    finally:
        assert cell.borgcfg("undrain", target).returncode == 0
    assert cell.borgcfg("down", "drainee", "--wait").returncode == 0
