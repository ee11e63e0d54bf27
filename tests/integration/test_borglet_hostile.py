"""The Borglet end to end, second half: ports, graceful kill of daemonizing tasks, log
rotation under an output flood, fork bombs at pids.max, OOM counted in metrics, usage metrics
and reserved capacity. Same cell set-up as test_borglet_lifecycle.py.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest

from tests.cluster import Cell, processes_with_env, wait_for
from tests.integration.test_borglet_lifecycle import (
    LOG_KEEP,
    LOG_MAX,
    PIDS_MAX,
    PORT_HI,
    PORT_LO,
    borglet_cell,
    down,
    metrics,
    sandbox,
    task,
    task_pids,
    task_where,
    up,
)

pytestmark = [pytest.mark.e2e]


@pytest.fixture(scope="module")
def cell1(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cell]:
    yield from borglet_cell(tmp_path_factory)


# ----- ports, kill, logs, hostile tasks ------------------------------------------------------


def test_ports_come_from_the_range_and_are_distinct(cell1: Cell, tmp_path: Path) -> None:
    up(
        cell1,
        tmp_path,
        "ported",
        "replicas: 3\nrequirements: {cpu: 0.05, ram: 16Mi, ports: [http, admin]}\n"
        "command: 'echo P $BORG_PORT $BORG_PORT_HTTP $BORG_PORT_ADMIN; sleep 1000'\n",
        "--wait",
        "--timeout",
        "30",
    )
    seen: list[int] = []
    for i in range(3):
        out = wait_for(
            lambda i=i: "P " in (s := cell1.borgcfg("logs", f"ported/{i}").stdout) and s,
            10,
            what="port line",
        )
        first, http, admin = (int(x) for x in out.split("P ", 1)[1].split()[:3])
        assert first == http
        seen += [http, admin]
    assert len(set(seen)) == 6
    assert all(PORT_LO <= p <= PORT_HI for p in seen)
    down(cell1, "ported")


def test_kill_stops_daemonizing_task_that_ignores_sigterm(cell1: Cell, tmp_path: Path) -> None:
    up(
        cell1,
        tmp_path,
        "daemon",
        "command: \"trap '' TERM; (setsid sleep 1000 &); sleep 1000\"\nkill_timeout: 500ms\n",
        "--wait",
        "--timeout",
        "30",
    )
    wait_for(lambda: len(task_pids(cell1, "daemon")) >= 3, 10, what="daemon child")
    pids = task_pids(cell1, "daemon")
    t0 = time.monotonic()
    down(cell1, "daemon")
    assert time.monotonic() - t0 < 10
    assert not [p for p in pids if psutil.pid_exists(p) and psutil.Process(p).status() != "zombie"]
    assert not processes_with_env("BORG_JOB", "daemon")
    assert not [c for c in cell1.task_cgroups() if c.startswith("daemon.")]


def test_output_flood_is_rotated_and_does_not_stall_the_borglet(
    cell1: Cell, tmp_path: Path
) -> None:
    up(
        cell1,
        tmp_path,
        "flood",
        "command: 'echo first-line; exec cat /dev/zero'\nrequirements: {cpu: 1, ram: 16Mi}\n",
        "--wait",
        "--timeout",
        "30",
    )
    sb = sandbox(cell1, "flood")
    wait_for(lambda: os.path.exists(os.path.join(sb, f"stdout.{LOG_KEEP}")), 10, what="rotation")
    t_end = time.monotonic() + 2.0
    worst = 0
    while time.monotonic() < t_end:  # measure disk use while the flood goes on
        used = 0
        for f in os.listdir(sb):
            if f.startswith("stdout"):
                with contextlib.suppress(FileNotFoundError):  # rotated meanwhile
                    used += os.path.getsize(os.path.join(sb, f))
        worst = max(worst, used)
        t0 = time.monotonic()
        assert cell1.http_get(cell1.borglets[0].info["http"], "/healthz")[0] == 200
        assert time.monotonic() - t0 < 1.0, "Borglet stalled"
    assert worst <= (LOG_KEEP + 1) * LOG_MAX + (1 << 20)
    assert not os.path.exists(os.path.join(sb, f"stdout.{LOG_KEEP + 1}"))
    st = wait_for(lambda: _stat(os.path.join(sb, "stdout")), 5, what="current log file")
    assert st.st_uid == 65534  # log files belong to the task's account
    assert task(cell1, "flood")["state"] == "running"
    down(cell1, "flood")


def _stat(path: str) -> os.stat_result | None:
    """stat, or None while a rotation has just moved the file away."""
    try:
        return os.stat(path)
    except FileNotFoundError:
        return None


def test_fork_bomb_stops_at_pids_max_and_is_reported(cell1: Cell, tmp_path: Path) -> None:
    up(cell1, tmp_path, "bomb", "command: 'b() { b | b & }; b; sleep 1000'\n")
    t = task_where(cell1, "bomb", lambda t: t["reason"] == "pids-limit", 20, what="pids-limit")
    assert t["state"] == "running"
    assert len(task_pids(cell1, "bomb")) <= PIDS_MAX
    down(cell1, "bomb")
    assert not [c for c in cell1.task_cgroups() if c.startswith("bomb.")]


def test_oom_is_reported_and_counted(cell1: Cell, tmp_path: Path) -> None:
    up(
        cell1,
        tmp_path,
        "hog",
        "kind: batch\nrestart: {policy: never}\nrequirements: {ram: 32Mi}\n"
        "command: ['python3', '-c', 'x = [bytearray(1 << 20) for _ in range(1000)]']\n",
    )
    t = task_where(cell1, "hog", lambda t: t["state"] == "failed", 30, what="hog failed")
    assert (t["reason"], t["exit_code"]) == ("oom", 137)
    assert 'borg_task_oom_kills_total{index="0",job="hog"} 1.0' in metrics(cell1)
    down(cell1, "hog")


def test_usage_metrics_and_reserved_capacity(cell1: Cell, tmp_path: Path) -> None:
    up(
        cell1,
        tmp_path,
        "busy",
        "command: 'while :; do :; done'\nrequirements: {cpu: 0.2, ram: 32Mi}\n",
        "--wait",
        "--timeout",
        "30",
    )

    def cpu_used() -> float:
        for line in metrics(cell1).splitlines():
            if line.startswith('borg_task_cpu_seconds_total{index="0",job="busy"}'):
                return float(line.split()[-1])
        return 0.0

    wait_for(lambda: cpu_used() > 0.05, 10, what="cpu seconds")
    body = metrics(cell1)
    for name in (
        'borg_task_memory_bytes{index="0",job="busy"}',
        'borg_task_memory_peak_bytes{index="0",job="busy"}',
        "borg_task_start_latency_seconds_bucket",
        'borg_machine_capacity{resource="cpu"} 3.5',
        'borg_machine_capacity{resource="ram"} 3.758096384e+09',
        'borg_machine_allocated{resource="cpu"} 0.2',
        'borg_machine_used{resource="ram"}',
    ):
        assert name in body, name
    (m,) = [m for m in cell1.borgcfg_json("machines") if m["name"] == cell1.borglets[0].name]
    assert m["capacity"]["cpu"] == 3.5
    assert m["capacity"]["ram"] == 4 * 2**30 - 512 * 2**20
    down(cell1, "busy")
