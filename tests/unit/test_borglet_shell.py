"""The whole Borglet shell (agent, runners, checkpoint, exit watcher) without root or cgroups:
a FakeRuntime stands in for the processes and a fake master link for the master (desired sets
in, reports out, one Sync per call, so every step is deterministic)."""

from __future__ import annotations

import getpass
import json
import os
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest

import borglet.agent
from borglet.agent import Borglet, BorgletConfig
from borglet.checkpoint import Written
from borglet.runtime.fake import FakeRuntime
from borglet.runtime.process import ExecError
from borglet.state import Desired, TaskKey
from cfg.model import SERVICE, HealthCheck, HealthKind, JobSpec, RestartPolicy
from tests.cluster import stays
from tests.cluster import wait_for as wait_until


class FakeLink:
    """The master, as the Borglet's link sees it: `sync(desired)` is one Sync round."""

    def __init__(self) -> None:
        self.connected = False
        self.pokes = 0
        self.host: Any = None

    def start(self) -> None:
        self.connected = True

    def stop(self) -> None:
        self.connected = False

    def poke(self) -> None:
        self.pokes += 1

    def sync(self, desired: list[Desired]) -> list[dict[str, Any]] | None:
        """Report, then hand over the desired set. None: the Borglet sent no report."""
        if self.host.state_written(5.0) is not Written.YES:
            return None
        reports: list[dict[str, Any]] = self.host.reports()
        reported = frozenset((r["job"], r["index"], r["incarnation"]) for r in reports)
        self.host.on_desired(desired, reported, "test-cell")
        return reports


def desired(
    job: str = "web", index: int = 0, *, policy: str = "on-failure", backoff_ms: int = 200
) -> Desired:
    spec = JobSpec(
        name=job,
        kind=SERVICE,
        command=["sleep", "1000"],
        restart=RestartPolicy(policy=policy, max_restarts=5, backoff_ms=backoff_ms),
    )
    return Desired(job=job, index=index, incarnation="inc1", version=1, spec=spec)


def tid(d: Desired) -> str:
    return f"{d.job}.{d.index}.{d.incarnation}"


wait_for = partial(wait_until, timeout=5.0, interval=0.005)


class Shell:
    """A Borglet on a FakeRuntime and a FakeLink, restartable on the same data dir."""

    def __init__(self, data: Path, runtime: FakeRuntime, kill_on_exit: bool = False) -> None:
        self.data, self.runtime, self.kill_on_exit = data, runtime, kill_on_exit
        self.b, self.link = self._new()

    def _new(self) -> tuple[Borglet, FakeLink]:
        cfg = BorgletConfig(
            name="m1",
            masters=[],
            grpc="",
            http="",
            data_dir=str(self.data),
            cpu=2,
            memory=1 << 30,
            task_user=getpass.getuser(),
            allow_root=True,
            kill_tasks_on_exit=self.kill_on_exit,
        )
        link = FakeLink()
        b = Borglet(cfg, runtime=self.runtime, link=link)
        link.host = b
        b.start()
        return b, link

    def restart(self) -> None:
        self.b.stop()
        self.b, self.link = self._new()

    def sync(self, *ds: Desired) -> list[dict[str, Any]] | None:
        return self.link.sync(list(ds))

    def report(self, key: TaskKey) -> dict[str, Any] | None:
        for r in self.b.reports():
            if (r["job"], r["index"], r["incarnation"]) == key:
                return r
        return None


@pytest.fixture
def shell(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Shell]:
    # tmp_path sits under a 0700 directory: nothing here runs as another account.
    monkeypatch.setattr(borglet.agent, "first_closed_dir", lambda path: "")
    s = Shell(tmp_path, FakeRuntime())
    yield s
    s.b.stop()


def test_desired_task_is_started_and_reported_running(shell: Shell) -> None:
    d = desired()
    assert shell.sync(d) == []
    wait_for(lambda: shell.runtime.busy(tid(d)))
    wait_for(lambda: (shell.report(d.key) or {}).get("pid"))
    r = shell.report(d.key)
    assert r is not None and r["state"] == "running" and r["restarts"] == 0
    assert shell.runtime.running[tid(d)].spec is not None
    env = shell.runtime.running[tid(d)].spec.env  # type: ignore[union-attr]
    assert env["BORG_JOB"] == "web" and env["BORG_CELL"] == "test-cell"
    # Level-triggered: the same desired set again starts nothing more.
    shell.sync(d)
    assert stays(lambda: shell.runtime.starts == [tid(d)], 0.05)


def test_exit_is_restarted_after_its_backoff(shell: Shell) -> None:
    d = desired(backoff_ms=300)
    shell.sync(d)
    wait_for(lambda: shell.runtime.busy(tid(d)))
    t0 = time.monotonic()
    shell.runtime.exit(tid(d), code=1)
    wait_for(lambda: (shell.report(d.key) or {}).get("restarts") == 1)
    r = shell.report(d.key)
    assert r is not None and r["reason"] == "exit: 1" and r["exit_code"] == 1
    assert r["state"] == "running"  # between runs, still wanted and reported running
    wait_for(lambda: len(shell.runtime.starts) == 2)
    assert time.monotonic() - t0 >= 0.29  # not before the backoff
    assert shell.b.states.counters.restarts == {("web", 0): 1}
    # The second failure waits twice as long (600 ms).
    wait_for(lambda: shell.runtime.busy(tid(d)))
    t1 = time.monotonic()
    shell.runtime.exit(tid(d), code=1)
    wait_for(lambda: len(shell.runtime.starts) == 3)
    assert time.monotonic() - t1 >= 0.59


def test_unhealthy_task_is_stopped_and_restarted_as_a_failure(shell: Shell) -> None:
    """A TCP check on a port nothing listens on: two failures, then a kill and a restart
    after the backoff, counted as a failed run with reason `unhealthy`."""
    d = desired(backoff_ms=400)
    d.spec.requirements.ports = ["http"]
    d.spec.health = HealthCheck(HealthKind.TCP, "http", interval_ms=30, failure_threshold=2)
    shell.sync(d)
    wait_for(lambda: shell.runtime.busy(tid(d)))
    port = shell.runtime.running[tid(d)].spec.env["BORG_PORT_HTTP"]  # type: ignore[union-attr]
    wait_for(lambda: (shell.report(d.key) or {}).get("reason") == "unhealthy")
    r = shell.report(d.key)
    assert r is not None and r["restarts"] == 1 and r["state"] == "running"
    assert tid(d) in shell.runtime.stops and str(r["ports"]["http"]) == port
    wait_for(lambda: len(shell.runtime.starts) == 2)


def test_successful_exit_with_on_failure_finishes(shell: Shell) -> None:
    d = desired()
    shell.sync(d)
    wait_for(lambda: shell.runtime.busy(tid(d)))
    shell.runtime.exit(tid(d), code=0)
    wait_for(lambda: (shell.report(d.key) or {}).get("state") == "succeeded")
    assert stays(lambda: shell.runtime.starts == [tid(d)], 0.3)


def test_task_removed_from_desired_set_is_killed_then_forgotten(shell: Shell) -> None:
    d, other = desired("web"), desired("db")
    shell.sync(d, other)
    wait_for(lambda: shell.runtime.busy(tid(d)) and shell.runtime.busy(tid(other)))
    shell.sync(other)
    wait_for(lambda: (shell.report(d.key) or {}).get("state") == "killed")
    assert tid(d) in shell.runtime.stops and tid(other) not in shell.runtime.stops
    r = shell.report(d.key)
    assert r is not None and r["reason"] == "killed" and r["pid"] == 0
    # Reported once as killed and still not wanted: forgotten.
    shell.sync(other)
    assert shell.report(d.key) is None and d.key not in shell.b.states.tasks
    assert shell.report(other.key) is not None


def test_kill_waits_for_a_start_in_progress(shell: Shell) -> None:
    """Removed while its start runs: the kill runs after it on the task's runner."""
    d = desired()
    shell.sync(d)
    shell.sync()  # possibly before the runner has even spawned it
    wait_for(lambda: (shell.report(d.key) or {}).get("state") == "killed")
    assert not shell.runtime.busy(tid(d))


def test_permanent_start_failure_is_not_restarted(shell: Shell) -> None:
    d = desired()
    shell.runtime.fail_next(ExecError("exec: not found", 127))
    shell.sync(d)
    wait_for(lambda: (shell.report(d.key) or {}).get("state") == "failed")
    r = shell.report(d.key)
    assert r is not None and r["reason"] == "exec: not found" and r["exit_code"] == 127
    shell.sync(d)
    assert stays(lambda: shell.runtime.starts == [], 0.3)


def test_transient_start_failure_goes_through_the_backoff(shell: Shell) -> None:
    d = desired(backoff_ms=100)
    shell.runtime.fail_next(OSError("cgroup busy"))
    shell.sync(d)
    wait_for(lambda: shell.runtime.busy(tid(d)))
    r = shell.report(d.key)
    assert r is not None and r["restarts"] == 1


def test_restarted_borglet_readopts_running_task_from_the_state_file(shell: Shell) -> None:
    d = desired()
    shell.sync(d)
    wait_for(lambda: (shell.report(d.key) or {}).get("pid"))
    pid = shell.runtime.running[tid(d)].pid
    shell.restart()
    r = shell.report(d.key)
    assert r is not None and r["state"] == "running" and r["pid"] == pid
    shell.sync(d)
    assert stays(lambda: shell.runtime.starts == [tid(d)], 0.1)  # adopted, not started again
    # And watched again: its exit is noticed and restarted per policy.
    shell.runtime.exit(tid(d), code=2)
    wait_for(lambda: len(shell.runtime.starts) == 2)


def test_exit_while_no_borglet_ran_is_reported_with_its_code(shell: Shell) -> None:
    d, e = desired("web", policy="never"), desired("db", policy="never")
    shell.sync(d, e)
    wait_for(lambda: shell.runtime.busy(tid(d)) and shell.runtime.busy(tid(e)))
    shell.b.stop()  # writes the state file
    shell.runtime.exit(tid(d), code=3)
    shell.runtime.exit(tid(e), lost=True)
    shell.b, shell.link = shell._new()
    wait_for(lambda: (shell.report(d.key) or {}).get("state") == "failed")
    wait_for(lambda: (shell.report(e.key) or {}).get("state") == "failed")
    rd, re_ = shell.report(d.key), shell.report(e.key)
    assert rd is not None and (rd["exit_code"], rd["reason"]) == (3, "exit: 3")
    assert re_ is not None and re_["reason"] == "supervisor-lost"


def test_state_file_keeps_its_format_and_mode(shell: Shell) -> None:
    d = desired()
    shell.sync(d)
    wait_for(lambda: (shell.report(d.key) or {}).get("pid"))
    shell.sync(d)  # flushed before this report
    path = shell.data / "state.json"
    assert path.stat().st_mode & 0o777 == 0o600
    doc = json.loads(path.read_text())
    assert doc["version"] == 1 and "boot_id" in doc
    (t,) = doc["tasks"]
    assert (t["job"], t["index"], t["incarnation"], t["phase"]) == ("web", 0, "inc1", "active")
    assert t["spec"]["name"] == "web" and t["shim_pid"] > 0


@pytest.mark.parametrize(
    "corrupt",
    ["{not json", '{"version": 1, "tasks": [{"job": "web"}]}', "[]"],
    ids=["not-json", "task-does-not-parse", "not-an-object"],
)
def test_unreadable_state_file_is_refused_not_forgotten(shell: Shell, corrupt: str) -> None:
    """A state file that cannot be read back is not an empty table: the Borglet touches none
    of the tasks that may still run (no stop, no start beside them), sends no report,
    says why in its state error (/healthz 503), and leaves the file for the operator."""
    d = desired()
    shell.sync(d)
    wait_for(lambda: (shell.report(d.key) or {}).get("pid"))
    shell.b.stop()
    (shell.data / "state.json").write_text(corrupt)
    shell.b, shell.link = shell._new()
    assert "state.json is unreadable" in shell.b.state_error
    assert "running no tasks until it is repaired or removed" in shell.b.state_error
    assert shell.b.reports() == []
    assert shell.sync(d) is None  # nothing reported, so no desired set arrives either
    assert shell.runtime.busy(tid(d)) and shell.runtime.starts == [tid(d)]
    shell.b.stop()
    assert (shell.data / "state.json").read_text() == corrupt
    # Removed by the operator: the next Borglet starts empty (the sweep handles the rest).
    (shell.data / "state.json").unlink()
    shell.b, shell.link = shell._new()
    assert shell.b.state_error == "" and shell.sync() == []


def test_no_reports_while_the_state_file_cannot_be_written(shell: Shell) -> None:
    d = desired()
    shell.sync(d)
    wait_for(lambda: (shell.report(d.key) or {}).get("pid"))
    tmp = shell.data / "state.json.tmp"
    tmp.mkdir()  # a fault the Borglet cannot repair by itself
    (tmp / "x").write_text("")
    shell.runtime.exit(tid(d), code=1)  # a change that must be written before it is reported
    wait_for(lambda: shell.b.state_error)
    assert "cannot write" in shell.b.state_error
    assert shell.sync(d) is None
    os.unlink(tmp / "x")
    tmp.rmdir()
    wait_for(lambda: shell.sync(d) is not None)
    assert shell.b.state_error == ""
    doc = json.loads((shell.data / "state.json").read_text())
    assert doc["tasks"][0]["restarts"] == 1


def test_kill_tasks_on_exit_stops_and_forgets_running_tasks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(borglet.agent, "first_closed_dir", lambda path: "")
    rt = FakeRuntime()
    s = Shell(tmp_path, rt, kill_on_exit=True)
    d, done = desired("web"), desired("job", policy="never")
    s.sync(d, done)
    wait_for(lambda: rt.busy(tid(d)) and rt.busy(tid(done)))
    rt.exit(tid(done), code=0)
    wait_for(lambda: (s.report(done.key) or {}).get("state") == "succeeded")
    s.b.stop()
    assert rt.running == {} and tid(d) in rt.stops
    tasks = json.loads((tmp_path / "state.json").read_text())["tasks"]
    # The finished task is still to be reported; the stopped one is forgotten.
    assert [(t["job"], t["result"]) for t in tasks] == [("job", "succeeded")]
