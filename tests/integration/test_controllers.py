"""Controllers on a real cell: lost machines, rolling updates, rollback, drain, batch jobs,
and a leader failover in the middle of a rollout. Three masters, two Borglets."""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, task_index_copies, wait_for
from tests.conftest import real_cell

pytestmark = [pytest.mark.e2e]

MACHINE_TIMEOUT = 3.0


@pytest.fixture(scope="module")
def cell2() -> Iterator[Cell]:
    yield from real_cell(masters=3, borglets=2, machine_timeout=MACHINE_TIMEOUT)


class Sampler:
    """Samples a job's running tasks (and their processes) every 20 ms in the background.

    An independent, coarse view next to the exact ones (`RunningReplay` for the master's
    state, `OverlapLocks` for the processes): if its thread fails, `__exit__` fails the
    test, and `check` asserts it actually sampled."""

    INTERVAL = 0.02

    def __init__(self, cell: Cell, job: str) -> None:
        self.cell = cell
        self.job = job
        self.running: list[int] = []
        self.copies_samples = 0
        self.max_copies = 0  # most live processes seen for any one task index
        self.error: BaseException | None = None
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _stub(self) -> Any:
        addr = self.cell.leader().info["grpc"]
        return borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(addr))

    def _run(self) -> None:
        try:
            stub = self._stub()
            while not self._stop.wait(self.INTERVAL):
                try:
                    j = stub.GetJob(
                        pb.GetJobRequest(name=self.job, options=pb.ReadOptions(stale=True)),
                        timeout=2,
                    )
                except grpc.RpcError:
                    stub = self._stub()  # leader changed
                    continue
                self.running.append(sum(1 for t in j.tasks if t.state == "running"))
                per_index = task_index_copies(self.job)
                self.copies_samples += 1
                if per_index:
                    self.max_copies = max(self.max_copies, max(per_index.values()))
        except BaseException as e:  # reported by __exit__, never lost
            self.error = e

    def __enter__(self) -> Sampler:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join(10)
        if exc[0] is not None:
            return  # the test's own failure comes first
        assert not self._t.is_alive(), "sampler thread did not stop"
        if self.error is not None:
            raise AssertionError(f"sampler thread failed: {self.error!r}") from self.error

    def check(self, min_running: int, min_samples: int = 10) -> None:
        assert len(self.running) >= min_samples, f"only {len(self.running)} samples"
        assert self.copies_samples >= min_samples, f"only {self.copies_samples} process samples"
        assert min(self.running) >= min_running, self.running
        assert self.max_copies <= 1, self.max_copies


# Task-level events after which a task is no longer running in the master's state (the
# store emits one for every such transition; `died` is a restart in place: still running).
LEAVES_RUNNING = frozenset(
    {"updated", "replaced", "drained", "preempted", "succeeded", "failed", "killed", "lost"}
)


class RunningReplay:
    """The job's running-task count after EVERY change of the replicated state, replayed
    from the cell's event log (events are made inside `Store.apply`, one per transition, in
    log order, and replicated): an exact record where a sampler only sees instants."""

    def __init__(self, cell: Cell, job: str) -> None:
        self.cell = cell
        self.job = job
        self.since = self._events(tail=1)[-1].index + 1  # the window starts after this

    def _events(self, tail: int = 0) -> list[Any]:
        stub = borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(self.cell.leader().info["grpc"]))
        return list(stub.WatchEvents(pb.WatchEventsRequest(tail=tail), timeout=10))

    def counts(self) -> list[tuple[int, str, int, int]]:
        """(event index, type, task index, running count after it) for the job's events, and
        each lost machine, since the window began; checked against the job's state now."""
        running: dict[int, str] = {}  # task index -> machine
        out: list[tuple[int, str, int, int]] = []
        events = self._events()
        assert any(e.job == self.job and e.type == "submitted" for e in events), (
            "the job's event history is incomplete: replay impossible"
        )
        for e in events:
            if e.job == self.job and e.task_index < 0 and e.type == "submitted":
                running.clear()  # a new job of that name: the old one's tasks were dropped
            elif e.job == self.job and e.type == "started":
                running[e.task_index] = e.machine
            elif e.job == self.job and e.type in LEAVES_RUNNING:
                running.pop(e.task_index, None)
            elif e.job == "" and e.type == "lost":
                running = {i: m for i, m in running.items() if m != e.machine}
            else:
                continue
            if e.index >= self.since:
                out.append((e.index, e.type, e.task_index, len(running)))
        now = {t["index"] for t in self.cell.job(self.job)["tasks"] if t["state"] == "running"}
        assert set(running) == now, f"replay {sorted(running)} != running now {sorted(now)}"
        return out

    def check(self, min_running: int, replaced: int) -> None:
        """Never fewer than `min_running` running, and exactly that many at the lowest
        (the rollout used its max_unavailable), with `replaced` replacements in the window."""
        counts = self.counts()
        assert sum(1 for _, kind, i, _ in counts if kind == "updated" and i >= 0) >= replaced, (
            counts
        )
        assert min(n for *_, n in counts) == min_running, counts


class OverlapLocks:
    """Each task takes an exclusive flock on its index's file for as long as it runs, and
    takes half a second to stop on SIGTERM (as a service draining its requests would): a
    copy that finds the lock taken, i.e. starts while another copy of its index still runs
    or is still stopping, records itself. Exact, unlike sampling the processes."""

    def __init__(self, cell: Cell, name: str) -> None:
        self.dir = os.path.join(cell.base, f"locks-{name}")
        os.mkdir(self.dir)
        os.chmod(self.dir, 0o1777)  # tasks run as nobody

    def command(self, greeting: str) -> str:
        d = self.dir
        return (
            f"exec 9>>{d}/lock.$BORG_TASK_INDEX; flock -n 9 || "
            f"echo v$BORG_TASK_VERSION pid $$ >> {d}/overlap.$BORG_TASK_INDEX; "
            f'trap "kill \\$! 2>/dev/null; sleep 0.5; exit 0" TERM; '
            f"echo {greeting}; sleep 1000 & wait"
        )

    def overlaps(self) -> dict[str, str]:
        out = {}
        for n in sorted(os.listdir(self.dir)):
            if n.startswith("overlap."):
                with open(os.path.join(self.dir, n)) as f:
                    out[n] = f.read()
        return out


def write(tmp_path: Path, name: str, text: str) -> str:
    p = tmp_path / name
    p.write_text(text)
    return str(p)


def service(
    name: str,
    replicas: int,
    greeting: str,
    extra: str = "",
    locks: OverlapLocks | None = None,
    max_unavailable: int = 1,
    max_surge: int = 0,
) -> str:
    command = locks.command(greeting) if locks is not None else f"echo {greeting}; exec sleep 1000"
    surge = f", max_surge: {max_surge}" if max_surge else ""
    return (
        f"name: {name}\nreplicas: {replicas}\nrun_as: nobody\n"
        f"command: '{command}'\n"
        f"requirements: {{cpu: 0.05, ram: 16Mi}}\n"
        f"update: {{max_unavailable: {max_unavailable}{surge}}}\n"
        f"kill_timeout: 2s\n{extra}"
    )


def all_on_version(cell: Cell, job: str, version: int, n: int) -> bool:
    j = cell.job(job)
    ok = [t for t in j["tasks"] if t["state"] == "running" and t["version"] == version]
    return len(ok) == n


def test_rolling_update_keeps_three_of_four_running_then_rollback(
    cell2: Cell, tmp_path: Path
) -> None:
    locks = OverlapLocks(cell2, "roll")
    v1 = write(tmp_path, "r1.yaml", service("roll", 4, "v1", locks=locks))
    assert cell2.borgcfg("up", v1, "--wait", "--timeout", "30").returncode == 0
    v2 = write(tmp_path, "r2.yaml", service("roll", 4, "v2", locks=locks))
    replay = RunningReplay(cell2, "roll")
    with Sampler(cell2, "roll") as s:
        assert cell2.borgcfg("up", v2).returncode == 0
        wait_for(lambda: all_on_version(cell2, "roll", 2, 4), 60, what="all on version 2")
    s.check(min_running=3)
    replay.check(min_running=3, replaced=4)  # one at a time: never below 3 of 4
    assert locks.overlaps() == {}
    assert cell2.job("roll")["version"] == 2

    # A broken version halts the rollout with a reason; rollback restores the last one.
    bad = write(
        tmp_path,
        "r3.yaml",
        service("roll", 4, "v3", locks=locks).replace("sleep 1000 & wait", "exit 3")
        + "restart: {policy: on-failure, max_restarts: 1, backoff: 100ms}\n",
    )
    replay = RunningReplay(cell2, "roll")
    with Sampler(cell2, "roll") as s:
        assert cell2.borgcfg("up", bad).returncode == 0
        try:
            wait_for(lambda: _rollout(cell2, "roll").startswith("halted"), 60, what="halt")
        except TimeoutError:
            print(cell2.job("roll"))
            raise
    s.check(min_running=3, min_samples=5)
    replay.check(min_running=3, replaced=1)  # the one replaced task never came back
    assert "task" in _rollout(cell2, "roll")
    r = cell2.borgcfg("rollback", "roll")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: all_on_version(cell2, "roll", 4, 4), 60, what="rolled back (version 4)")
    wait_for(lambda: _rollout(cell2, "roll") == "", 15, what="rollout marked done")
    assert locks.overlaps() == {}
    assert cell2.borgcfg("down", "roll", "--wait").returncode == 0


def test_rolling_update_with_max_unavailable_2_replaces_two_at_a_time(
    cell2: Cell, tmp_path: Path
) -> None:
    locks = OverlapLocks(cell2, "roll2")
    v1 = write(tmp_path, "a1.yaml", service("rolltwo", 4, "v1", locks=locks, max_unavailable=2))
    assert cell2.borgcfg("up", v1, "--wait", "--timeout", "30").returncode == 0
    v2 = write(tmp_path, "a2.yaml", service("rolltwo", 4, "v2", locks=locks, max_unavailable=2))
    replay = RunningReplay(cell2, "rolltwo")
    with Sampler(cell2, "rolltwo") as s:
        assert cell2.borgcfg("up", v2).returncode == 0
        wait_for(lambda: all_on_version(cell2, "rolltwo", 2, 4), 60, what="all on version 2")
    s.check(min_running=2)
    # Two at a time: down to exactly 2 of 4 (it used its allowance), never below.
    replay.check(min_running=2, replaced=4)
    assert locks.overlaps() == {}
    assert cell2.borgcfg("down", "rolltwo", "--wait").returncode == 0


@pytest.mark.parametrize(("max_unavailable", "max_surge"), [(0, 1), (1, 2)])
def test_rolling_update_with_max_surge_never_drops_below_replicas_minus_max_unavailable(
    cell2: Cell, tmp_path: Path, max_unavailable: int, max_surge: int
) -> None:
    name = f"surge{max_surge}"
    floor = 4 - max_unavailable
    locks = OverlapLocks(cell2, name)

    def config(file: str, greeting: str) -> str:
        text = service(
            name, 4, greeting, locks=locks, max_unavailable=max_unavailable, max_surge=max_surge
        )
        return write(tmp_path, file, text)

    assert cell2.borgcfg("up", config("s1.yaml", "v1"), "--wait", "--timeout", "30").returncode == 0
    replay = RunningReplay(cell2, name)

    def rolled() -> bool:
        tasks = cell2.job(name)["tasks"]
        done = [t for t in tasks if t["state"] == "running" and t["version"] == 2]
        return len(tasks) == len(done) == 4 and _rollout(cell2, name) == ""

    with Sampler(cell2, name) as s:
        assert cell2.borgcfg("up", config("s2.yaml", "v2")).returncode == 0
        wait_for(rolled, 90, what="all four on version 2 and the surge tasks gone")
    s.check(min_running=floor)
    # Exact: never below replicas - max_unavailable, and down to it (the allowance used).
    replay.check(min_running=floor, replaced=4)
    counts = replay.counts()
    assert max(n for *_, n in counts) > 4, counts  # surge tasks really ran beside the four
    surge_left = [(kind, i) for _, kind, i, _ in counts if i >= 4 and kind in LEAVES_RUNNING]
    assert surge_left and all(kind == "killed" for kind, _ in surge_left), counts
    assert sorted(t["index"] for t in cell2.job(name)["tasks"]) == [0, 1, 2, 3]
    assert locks.overlaps() == {}
    assert cell2.borgcfg("down", name, "--wait").returncode == 0


def _rollout(cell: Cell, job: str) -> str:
    stub = borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(cell.leader().info["grpc"]))
    return str(stub.GetJob(pb.GetJobRequest(name=job), timeout=5).rollout)


def test_batch_job_of_ten_succeeds_and_a_failing_one_fails(cell2: Cell, tmp_path: Path) -> None:
    ok = write(
        tmp_path,
        "b.yaml",
        "name: ten\nkind: batch\nreplicas: 10\nrun_as: nobody\ncommand: 'exit 0'\n"
        "requirements: {cpu: 0.01, ram: 8Mi}\n",
    )
    assert cell2.borgcfg("up", ok, "--wait", "--timeout", "60").returncode == 0
    assert cell2.job("ten")["state"] == "succeeded"
    bad = write(
        tmp_path,
        "f.yaml",
        "name: onefails\nkind: batch\nreplicas: 3\nrun_as: nobody\n"
        "command: 'exit $(( BORG_TASK_INDEX == 1 ))'\nrestart: {policy: never}\n"
        "requirements: {cpu: 0.01, ram: 8Mi}\n",
    )
    r = cell2.borgcfg("up", bad, "--wait", "--timeout", "60")
    assert r.returncode == 1
    j = cell2.job("onefails")
    assert j["state"] == "failed"
    assert [t["exit_code"] for t in j["tasks"]] == [0, 1, 0]


def test_drain_moves_every_task_off_and_nothing_new_lands(cell2: Cell, tmp_path: Path) -> None:
    cfg = write(tmp_path, "d.yaml", service("drainme", 4, "hi"))
    assert cell2.borgcfg("up", cfg, "--wait", "--timeout", "30").returncode == 0
    target = cell2.borglets[0].info["name"]
    r = cell2.borgcfg("drain", target)
    assert r.returncode == 0, r.stderr

    def off() -> bool:
        j = cell2.job("drainme")
        return all(t["state"] == "running" and t["machine"] != target for t in j["tasks"])

    wait_for(off, 60, what="tasks moved off the drained machine")
    other = write(tmp_path, "o.yaml", service("afterdrain", 2, "x"))
    assert cell2.borgcfg("up", other, "--wait", "--timeout", "30").returncode == 0
    assert all(t["machine"] != target for t in cell2.job("afterdrain")["tasks"])
    ms = {m["name"]: m for m in cell2.borgcfg_json("machines")}
    assert ms[target]["state"] == "draining"
    assert cell2.borgcfg("undrain", target).returncode == 0
    wait_for(
        lambda: {m["name"]: m for m in cell2.borgcfg_json("machines")}[target]["state"] == "up",
        10,
    )
    for job in ("drainme", "afterdrain"):
        assert cell2.borgcfg("down", job, "--wait").returncode == 0


def test_leader_failover_mid_rollout_runs_no_index_twice(cell2: Cell, tmp_path: Path) -> None:
    locks = OverlapLocks(cell2, "fo")
    v1 = write(tmp_path, "f1.yaml", service("fo", 4, "v1", locks=locks))
    assert cell2.borgcfg("up", v1, "--wait", "--timeout", "30").returncode == 0
    v2 = write(tmp_path, "f2.yaml", service("fo", 4, "v2", locks=locks))
    replay = RunningReplay(cell2, "fo")
    with Sampler(cell2, "fo") as s:
        assert cell2.borgcfg("up", v2).returncode == 0
        wait_for(
            lambda: any(t["version"] == 2 for t in cell2.job("fo")["tasks"]), 30, what="rolling"
        )
        old = cell2.leader()
        old.kill()
        wait_for(lambda: all_on_version(cell2, "fo", 2, 4), 60, what="rollout finished")
        old.start()
        wait_for(lambda: cell2.http_get(old.info["http"], "/readyz")[0] == 200, 30)
    s.check(min_running=3)
    replay.check(min_running=3, replaced=4)  # the new leader kept the bound
    assert locks.overlaps() == {}
    assert cell2.borgcfg("down", "fo", "--wait").returncode == 0


def test_sigkilled_borglet_machine_is_lost_and_tasks_move_then_stale_copies_go(
    cell2: Cell, tmp_path: Path
) -> None:
    cfg = write(tmp_path, "l.yaml", service("lostjob", 4, "hi"))
    assert cell2.borgcfg("up", cfg, "--wait", "--timeout", "30").returncode == 0
    victim = next(
        b
        for b in cell2.borglets
        if any(t["machine"] == b.info["name"] for t in cell2.job("lostjob")["tasks"])
    )
    name = victim.info["name"]
    victim.kill()
    t0 = time.monotonic()

    def moved() -> bool:
        j = cell2.job("lostjob")
        return all(t["state"] == "running" and t["machine"] != name for t in j["tasks"])

    wait_for(moved, MACHINE_TIMEOUT + 15, what="tasks replaced elsewhere")
    assert time.monotonic() - t0 <= MACHINE_TIMEOUT + 5 + 5  # + a margin for this 2-core box
    ms = {m["name"]: m for m in cell2.borgcfg_json("machines")}
    assert ms[name]["state"] == "lost"
    victim.start()

    def one_copy_each() -> bool:
        per = task_index_copies("lostjob")
        return sorted(per) == ["0", "1", "2", "3"] and set(per.values()) == {1}

    wait_for(one_copy_each, 15, what="stale copies gone")
    wait_for(
        lambda: {m["name"]: m for m in cell2.borgcfg_json("machines")}[name]["state"] == "up", 15
    )
    assert cell2.borgcfg("down", "lostjob", "--wait").returncode == 0
