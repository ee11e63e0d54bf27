"""borgcfg as a real process against a real cell (3 masters, 2 Borglets) for the commands
whose server side is the replicated event log, explain, quota, rollback and drain:
`events [-f] [--job] [--tail]`, `why`, `quota set/list` and quota admission, `rollback`,
`drain/undrain`, the `up --wait`/`down --wait` summaries and `status -o json`'s rollout and
health keys.

The commands under test always run as `python -m cfg.cli` subprocesses (what users run);
waiting for the cell to reach a state uses an in-process `cfg.client.Client`, because a
borgcfg process costs about a second to start on a loaded 2-core machine and polling with it
would dominate the runtime. One cell is shared by the module; every test uses its own job
names and stops what it started; the failover test kills the leader, so it runs last.
"""

from __future__ import annotations

import json
import os
import queue
import re
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from borgmaster.convert import dict_from
from cfg.client import Client
from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import REPO, Cell, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

BORGLET_CPU = 2.0


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    """Three masters and two 2-cpu Borglets, shared by this module's tests."""
    yield from real_cell(masters=3, borglets=2, borglet_cpu=BORGLET_CPU, borglet_memory="2Gi")


@pytest.fixture(scope="module")
def api(cell: Cell) -> Iterator[Client]:
    """An in-process client for waiting on conditions (cheap polls; not what is tested)."""
    c = Client(cell.master_addrs.split(","))
    yield c
    c.close()


# ----- helpers -----------------------------------------------------------------------------


def cli_argv(cell: Cell, *args: str, user: str = "tester") -> list[str]:
    return [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs, "--user", user, *args]


def cli(cell: Cell, *args: str, user: str = "tester") -> subprocess.CompletedProcess[str]:
    """One borgcfg run; never a traceback, whatever the exit code."""
    r = subprocess.run(
        cli_argv(cell, *args, user=user), capture_output=True, text=True, timeout=90, cwd=REPO
    )
    assert "Traceback" not in r.stderr, r.stderr
    return r


def ok(r: subprocess.CompletedProcess[str]) -> subprocess.CompletedProcess[str]:
    assert r.returncode == 0, f"{r.args[6:]} -> {r.returncode}: {r.stderr}"
    return r


def one_line(r: subprocess.CompletedProcess[str]) -> str:
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1, r.stderr
    return lines[0]


def json_lines(r: subprocess.CompletedProcess[str]) -> list[dict[str, Any]]:
    return [json.loads(line) for line in ok(r).stdout.splitlines()]


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def service(
    name: str, replicas: int, cmd: str = "exec sleep 600", cpu: float = 0.05, extra: str = ""
) -> str:
    return (
        f"name: {name}\nreplicas: {replicas}\nrun_as: nobody\ncommand: '{cmd}'\n"
        f"requirements: {{cpu: {cpu}, ram: 16Mi}}\nkill_timeout: 1s\n{extra}"
    )


def submit(api: Client, config: str, user: str = "tester") -> None:
    """Set-up submissions go in process (`up` itself is exercised through the CLI)."""
    api.submit(yaml.safe_load(config), user)


def get_job(api: Client, name: str) -> pb.Job:
    j = api.get_job(name)
    assert j is not None, f"job {name} does not exist"
    return j


def wait_job(
    api: Client, name: str, cond: Callable[[pb.Job], bool], timeout: float, what: str
) -> pb.Job:
    def check() -> pb.Job | None:
        j = get_job(api, name)
        return j if cond(j) else None

    j = wait_for(check, timeout, what=what)
    assert j is not None
    return j


def all_running(version: int, n: int) -> Callable[[pb.Job], bool]:
    def cond(j: pb.Job) -> bool:
        ok = [t for t in j.tasks if t.state == "running" and t.version == version]
        return len(ok) == n

    return cond


def types(evs: list[dict[str, Any]]) -> list[str]:
    return [e["type"] for e in evs]


def down(api: Client, *jobs: str) -> None:
    """Clean up (in process: `down` itself is tested with the CLI once, below). No acting
    user, so jobs of any owner go (ownership is only checked for a named user)."""
    for job in jobs:
        api.kill(job, "")


class Follower:
    """`borgcfg events -f` as a subprocess whose stdout a thread reads line by line."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(
            argv,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL,
            text=True,
            cwd=REPO,
            start_new_session=True,
            # SIGABRT dumps every thread's stack to stderr: what it was stuck in, if it hangs
            env={**os.environ, "PYTHONFAULTHANDLER": "1"},
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[dict[str, Any]] = []
        self._t = threading.Thread(target=self._read, daemon=True)
        self._t.start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line)

    def until(self, cond: Callable[[dict[str, Any]], bool], timeout: float, what: str) -> None:
        """Read events into `seen` until one satisfies `cond` (fail after `timeout`)."""
        deadline = time.monotonic() + timeout
        while True:
            left = deadline - time.monotonic()
            if left <= 0 or (self.proc.poll() is not None and self.lines.empty()):
                assert self.proc.stderr is not None
                err = self.proc.stderr.read() if self.proc.poll() is not None else ""
                raise TimeoutError(f"no event {what} in {timeout}s; got {self.seen} {err}")
            try:
                line = self.lines.get(timeout=min(left, 0.5))
            except queue.Empty:
                continue
            ev = json.loads(line)
            self.seen.append(ev)
            if cond(ev):
                return

    def interrupt(self, timeout: float = 10.0) -> tuple[int, str]:
        """Ctrl-C, as a user stops `events -f`; SIGKILL if it does not exit in time."""
        self.proc.send_signal(signal.SIGINT)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.send_signal(signal.SIGABRT)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
            assert self.proc.stderr is not None
            err = self.proc.stderr.read()
            why = f"events -f ignored SIGINT for {timeout}s:\n{err[-4000:]}"
            raise AssertionError(why) from None
        assert self.proc.stderr is not None
        return self.proc.returncode, self.proc.stderr.read()

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(5)
        self._t.join(5)


# ----- up/down --wait and the event log ----------------------------------------------------


def test_up_down_wait_summaries_and_events_show_the_job_lifecycle(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    cfg = write(tmp_path, "life.yaml", service("life", 2))
    r = ok(cli(cell, "up", cfg, "--wait", "--timeout", "60"))
    assert r.stdout == "job life: created (version 1)\n"
    err = r.stderr.splitlines()
    assert err[0] == "✓ life: ready (2/2; 2 running)", r.stderr
    assert re.fullmatch(r"done in \d+\.\ds", err[-1]), r.stderr

    # status -o json: the SPEC keys plus rollout, and health null without a health check
    st = json.loads(ok(cli(cell, "status", "life", "-o", "json")).stdout)
    assert st["rollout"] == "" and st["running"] == 2 and st["version"] == 1
    assert [t["health"] for t in st["tasks"]] == [None, None]
    # why on a placed task: where it is, and that every machine would take it now
    w = json.loads(ok(cli(cell, "why", "life/0", "-o", "json")).stdout)
    assert (w["state"], w["machine"]) == ("running", st["tasks"][0]["machine"])
    assert (w["machines"], w["feasible"], w["rejected"]) == (2, 2, {})

    r = ok(cli(cell, "down", "life", "--wait", "--timeout", "60"))
    assert r.stdout == "job life: killed (2 tasks to stop)\n"
    assert r.stderr.splitlines()[0] == "✓ life: stopped (2/2; 2 killed)", r.stderr

    evs = json_lines(cli(cell, "events", "--job", "life", "-o", "json"))
    assert all(e["job"] == "life" for e in evs)
    idx = [e["index"] for e in evs]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert set(evs[0]) == {"index", "ts_ms", "type", "job", "task_index", "machine", "message"}
    assert evs[0]["type"] == "submitted" and evs[0]["message"] == "version 1, 2 tasks"
    machines = {b.info["name"] for b in cell.borglets}
    for kind in ("scheduled", "started"):
        got = [e for e in evs if e["type"] == kind]
        assert sorted(e["task_index"] for e in got) == [0, 1], evs
        assert all(e["machine"] in machines for e in got)
    [kill] = [e for e in evs if e["type"] == "killed" and e["message"] == "2 tasks to stop"]
    after = [e for e in evs if e["index"] > kill["index"]]
    assert sorted(e["task_index"] for e in after if e["type"] == "killed") == [0, 1], evs
    first_started = min(e["index"] for e in evs if e["type"] == "started")
    assert max(e["index"] for e in evs if e["type"] == "scheduled") < kill["index"]
    assert first_started > evs[0]["index"]

    # --tail N: the last N of this job's events, same objects
    assert json_lines(cli(cell, "events", "--job", "life", "--tail", "2", "-o", "json")) == evs[-2:]

    # the table: one line per event, time first, task events as JOB/INDEX on MACHINE
    lines = ok(cli(cell, "events", "--job", "life")).stdout.splitlines()
    assert len(lines) == len(evs)
    assert re.fullmatch(r"\d\d:\d\d:\d\d submitted\s+life version 1, 2 tasks", lines[0]), lines
    sched = [ln for ln in lines if " scheduled " in ln]
    assert len(sched) == 2
    assert all(re.fullmatch(r"\S+ scheduled\s+life/[01] on \S+", ln) for ln in sched), sched


def test_events_follow_streams_new_events_and_stops_on_ctrl_c(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    f = Follower(cli_argv(cell, "events", "-f", "--job", "fol", "-o", "json"))
    try:
        cfg = (
            "name: fol\nkind: batch\nreplicas: 1\nrun_as: nobody\ncommand: 'exit 3'\n"
            "restart: {policy: never}\nrequirements: {cpu: 0.05, ram: 16Mi}\n"
        )
        submit(api, service("notfol", 1))
        submit(api, cfg)
        f.until(lambda e: e["type"] == "failed", 30, what="failed")
        assert f.proc.poll() is None, "events -f exited after the last event"
        got = f.seen
        assert types(got)[0] == "submitted" and "scheduled" in types(got)
        [failed] = [e for e in got if e["type"] == "failed"]
        assert failed["task_index"] == 0 and failed["message"].startswith("exit 3"), failed
        assert {e["job"] for e in got} == {"fol"}  # --job filters the live stream too
        idx = [e["index"] for e in got]
        assert idx == sorted(set(idx))
        rc, err = f.interrupt()
        assert rc == 130 and err.strip() == "borgcfg: interrupted", (rc, err)
    finally:
        f.close()
    down(api, "notfol")
    assert get_job(api, "fol").state == "failed"


# ----- why ---------------------------------------------------------------------------------


def test_why_counts_machines_rejected_per_filter_for_a_task_nothing_fits(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    submit(api, service("huge", 1, cpu=64))
    cfg = write(tmp_path, "huge.yaml", service("huge", 1, cpu=64))
    wait_job(api, "huge", lambda j: j.tasks[0].reason != "", 30, what="a pending reason")

    # up --wait on it: the timeout summary names where the job stood, exit 1
    r = cli(cell, "up", cfg, "--wait", "--timeout", "1")
    assert r.returncode == 1
    assert r.stdout == "job huge: unchanged (version 1)\n"
    assert r.stderr.splitlines()[-2:] == [
        "… huge: timed out (0/1; 1 pending)",
        "borgcfg: timed out after 1s waiting for huge",
    ], r.stderr

    r = ok(cli(cell, "why", "huge/0"))
    lines = r.stdout.splitlines()
    assert lines[0] == "huge/0: pending"
    assert lines[1].startswith("reason: no-feasible-machine"), lines
    assert lines[2] == "0 of 2 machines feasible now"
    assert re.split(r"\s{2,}", lines[3]) == ["FILTER", "MACHINES REJECTED"]
    assert lines[4].split() == ["cpu", "2"] and len(lines) == 5, lines

    w = json.loads(ok(cli(cell, "why", "huge/0", "-o", "json")).stdout)
    assert w["task"] == "huge/0" and w["state"] == "pending" and w["machine"] is None
    assert (w["machines"], w["feasible"], w["rejected"]) == (2, 0, {"cpu": 2})
    assert w["reason"].startswith("no-feasible-machine")

    r = cli(cell, "why", "nosuch/0")
    assert r.returncode == 1 and one_line(r) == "borgcfg: task nosuch/0 does not exist"
    down(api, "huge")


# ----- quota -------------------------------------------------------------------------------


def test_quota_set_list_and_admission_rejects_with_the_overage(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    r = ok(cli(cell, "quota", "set", "qalice", "production", "cpu=1", "ram=1Gi"))
    assert r.stdout == "quota qalice/production: cpu 1, ram 1Gi, disk unlimited, gpu unlimited\n"
    prod = "priority: 200\n"

    # 3 x 0.5 cpu asks 1.5 of 1: rejected, one line, exit 1, nothing created
    over = write(tmp_path, "q1.yaml", service("qone", 3, cpu=0.5, extra=prod))
    r = cli(cell, "up", over, user="qalice")
    assert r.returncode == 1 and r.stdout == ""
    assert one_line(r) == "borgcfg: rejected: quota for qalice/production exceeded by cpu 0.5"
    assert api.get_job("qone") is None
    big = service("qram", 1, cpu=0.5, extra=prod).replace("ram: 16Mi", "ram: 1536Mi")
    r = cli(cell, "up", write(tmp_path, "q2.yaml", big), user="qalice")
    assert r.returncode == 1
    assert one_line(r) == "borgcfg: rejected: quota for qalice/production exceeded by ram 512Mi"

    # within quota: accepted, and `quota list` shows what it uses
    fits = write(tmp_path, "q3.yaml", service("qfits", 2, cpu=0.25, extra=prod))
    ok(cli(cell, "up", fits, user="qalice"))
    [q] = json.loads(ok(cli(cell, "quota", "list", "qalice", "-o", "json")).stdout)
    assert q == {
        "user": "qalice",
        "band": "production",
        "limit": {"cpu": 1.0, "ram": 1 << 30, "disk": "unlimited", "gpu": "unlimited"},
        "used": {"cpu": 0.5, "ram": 32 << 20, "disk": 0, "gpu": 0},
    }
    table = ok(cli(cell, "quota", "list")).stdout.splitlines()
    assert table[0].split() == ["USER", "BAND", "CPU", "RAM", "DISK", "GPU"]
    assert ["qalice", "production", "0.5/1", "32Mi/1Gi", "0/unlimited", "0/unlimited"] in [
        ln.split() for ln in table[1:]
    ], table
    # what is already used counts: 0.5 + 0.75 > 1
    more = write(tmp_path, "q4.yaml", service("qmore", 1, cpu=0.75, extra=prod))
    r = cli(cell, "up", more, user="qalice")
    assert r.returncode == 1
    assert one_line(r) == "borgcfg: rejected: quota for qalice/production exceeded by cpu 0.25"
    assert api.get_job("qmore") is None
    down(api, "qfits")


# ----- rollback ----------------------------------------------------------------------------


def test_halted_rollout_fails_up_wait_and_rollback_restores_the_previous_version(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    submit(api, service("rb", 2))
    wait_job(api, "rb", all_running(1, 2), 30, what="rb running")
    r = cli(cell, "rollback", "rb")
    assert r.returncode == 1
    assert one_line(r) == "borgcfg: rejected: job 'rb' has no previous version to roll back to"

    bad = service("rb", 2, cmd="exit 3", extra="restart: {policy: on-failure, max_restarts: 1}\n")
    r = cli(cell, "up", write(tmp_path, "rb2.yaml", bad), "--wait", "--timeout", "60")
    assert r.returncode == 1, r.stderr
    assert r.stdout == "job rb: updated (version 2)\n"
    summary, last = r.stderr.splitlines()[-2:]
    assert re.fullmatch(r"✗ rb: halted: task [01] on version 2 failed .*", summary), r.stderr
    assert last == "borgcfg: job(s) failed: rb (see borgcfg status, borgcfg why)"
    st = json.loads(ok(cli(cell, "status", "rb", "-o", "json")).stdout)
    assert st["version"] == 2 and st["rollout"].startswith("halted: task ")
    assert st["running"] == 1  # max_unavailable 1: the other replica kept running

    r = cli(cell, "rollback", "rb", user="mallory")
    assert r.returncode == 1
    assert one_line(r) == (
        "borgcfg: permission denied: mallory may not roll back job 'rb' (owner tester)"
    )
    r = ok(cli(cell, "rollback", "rb", "--wait", "--timeout", "60"))
    assert r.stdout == "job rb: rolled-back (version 3)\n"
    assert r.stderr.splitlines()[0] == "✓ rb: ready (2/2; 2 running)", r.stderr
    j = get_job(api, "rb")
    assert j.rollout == "" and all_running(3, 2)(j)
    assert dict_from(j.spec)["command"] == ["/bin/sh", "-c", "exec sleep 600"]

    evs = json_lines(cli(cell, "events", "--job", "rb", "-o", "json"))
    at = {t: [e for e in evs if e["type"] == t] for t in types(evs)}
    [halted] = at["rollout-halted"]
    assert halted["message"] == st["rollout"]
    [back] = at["rolled-back"]
    assert back["message"] == "version 3, 2 tasks"
    [rolled] = at["rolled"]
    assert rolled["message"] == "all tasks on version 3"
    assert at["updated"][0]["index"] < halted["index"] < back["index"] < rolled["index"]
    down(api, "rb")


def test_events_show_task_index_only_for_task_events(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    submit(api, service("evx", 1))
    wait_job(api, "evx", all_running(1, 1), 30, what="version 1 running")
    submit(api, service("evx", 1, cmd="exec sleep 700"))
    api.rollback("evx", "tester")
    wait_job(api, "evx", all_running(3, 1), 30, what="version 3 running")
    api.kill("evx", "tester")
    wait_job(api, "evx", lambda j: j.tasks[0].state == "killed", 30, what="evx stopped")
    evs = json_lines(cli(cell, "events", "--job", "evx", "-o", "json"))
    lines = ok(cli(cell, "events", "--job", "evx")).stdout.splitlines()
    assert len(lines) == len(evs)
    for e, line in zip(evs, lines, strict=True):
        if e["machine"]:  # a task event: scheduled, started, updated (replaced), killed
            assert f" evx/0 on {e['machine']}" in line, (e, line)
        else:  # a job event: submitted, updated, rolled, rolled-back, killed
            assert "evx/" not in line, (e, line)
    assert {e["task_index"] for e in evs if e["machine"] is None} == {None}


def test_single_replica_rollout_to_a_crashing_version_halts(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    submit(api, service("solo", 1))
    wait_job(api, "solo", all_running(1, 1), 30, what="version 1 running")
    bad = service("solo", 1, cmd="exit 3", extra="restart: {policy: on-failure, max_restarts: 1}\n")
    r = cli(cell, "up", write(tmp_path, "s2.yaml", bad), "--wait", "--timeout", "60")
    down(api, "solo")
    assert r.returncode == 1
    assert r.stderr.splitlines()[-2].startswith("✗ solo: halted: task 0 on version 2 failed")
    evs = json_lines(cli(cell, "events", "--job", "solo", "-o", "json"))
    assert "rollout-halted" in types(evs) and "rolled" not in types(evs)


# ----- drain -------------------------------------------------------------------------------


def test_drain_moves_tasks_off_emits_events_and_undrain_reopens(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    submit(api, service("dr", 2))
    wait_job(api, "dr", all_running(1, 2), 30, what="dr running")
    on = {t.machine for t in get_job(api, "dr").tasks}
    target = sorted(on)[0]
    moving = [t.index for t in get_job(api, "dr").tasks if t.machine == target]
    # tasks of earlier tests may still be stopping there: wait until only ours hold it
    wait_for(
        lambda: {m.name: m.tasks for m in api.list_machines()}[target] == len(moving),
        30,
        what=f"only dr's tasks on {target}",
    )

    r = ok(cli(cell, "drain", target))
    assert r.stdout == f"machine {target}: draining ({len(moving)} tasks to move)\n"
    wait_job(
        api,
        "dr",
        lambda j: all(t.state == "running" and t.machine != target for t in j.tasks),
        60,
        what="tasks moved off the drained machine",
    )
    again = json.loads(ok(cli(cell, "drain", target, "-o", "json")).stdout)
    assert again == {"name": target, "state": "draining", "tasks_to_move": 0}
    assert {m.name: m.state for m in api.list_machines()}[target] == "draining"

    r = ok(cli(cell, "undrain", target))
    assert r.stdout == f"machine {target}: up (scheduling allowed again)\n"
    r = cli(cell, "drain", "no-such-machine")
    assert r.returncode == 1 and one_line(r) == "borgcfg: machine 'no-such-machine' does not exist"

    evs = json_lines(cli(cell, "events", "-o", "json"))
    [drained] = [e for e in evs if e["type"] == "drained" and e["job"] is None]
    assert drained["machine"] == target
    moved = [e for e in evs if e["type"] == "drained" and e["job"] == "dr"]
    assert sorted(e["task_index"] for e in moved) == moving
    assert all(e["machine"] == target and e["index"] > drained["index"] for e in moved)
    [undrained] = [e for e in evs if e["type"] == "undrained"]
    assert undrained["machine"] == target and undrained["index"] > drained["index"]
    down(api, "dr")


# ----- status -o json: health and rollout --------------------------------------------------


def test_status_json_reports_health_and_rollout_in_progress(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    healthy = "health: {exec: ['true'], interval: 200ms}\n"
    submit(api, service("hl", 2, extra=healthy))
    wait_job(api, "hl", lambda j: all(t.health == "healthy" for t in j.tasks), 30, what="healthy")
    st = json.loads(ok(cli(cell, "status", "hl", "-o", "json")).stdout)
    assert [t["health"] for t in st["tasks"]] == ["healthy", "healthy"]
    assert st["rollout"] == ""

    # version 2's first probe is a minute away: its first task never becomes available, so
    # (max_unavailable 1) the other stays on version 1 and the rollout is in progress
    slow = "health: {exec: ['true'], interval: 1s, initial_delay: 60s}\n"
    submit(api, service("hl", 2, extra=slow))
    wait_job(api, "hl", all_running(2, 1), 30, what="a version 2 task running")
    st = json.loads(ok(cli(cell, "status", "hl", "-o", "json")).stdout)
    assert (st["version"], st["rollout"]) == (2, "rolling")
    by_version = {t["version"]: t for t in st["tasks"]}
    assert by_version[2]["health"] is None and by_version[2]["state"] == "running"
    assert by_version[1]["health"] == "healthy" and by_version[1]["state"] == "running"
    down(api, "hl")


# ----- events -f across a failover (last: it kills the leader) -----------------------------


def test_events_follow_resumes_on_another_replica_without_repeats(
    cell: Cell, api: Client, tmp_path: Path
) -> None:
    f = Follower(cli_argv(cell, "events", "-f", "-o", "json"))
    leader = cell.leader()
    try:
        submit(api, service("fo1", 1))
        f.until(lambda e: e["job"] == "fo1" and e["type"] == "started", 30, what="fo1 started")
        leader.kill()  # `events -f` discovered and streams from the leader
        submit(api, service("fo2", 1))
        f.until(lambda e: e["job"] == "fo2" and e["type"] == "started", 30, what="fo2 started")
        idx = [e["index"] for e in f.seen]
        assert idx == sorted(set(idx)), idx  # resumed after the last one shown: no repeats
        assert f.proc.poll() is None
    finally:
        f.close()
        if not leader.alive():
            leader.start()
    wait_for(lambda: cell.http_get(leader.info["http"], "/readyz")[0] == 200, 30, what="back")
    down(api, "fo1", "fo2")
