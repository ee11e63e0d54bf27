"""Store.apply: the deterministic state machine, fed encoded commands as Raft would."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.model import (
    ASSIGNED,
    BATCH,
    FAILED,
    KILLED,
    LOST,
    MACHINE_DRAINING,
    MACHINE_LOST,
    PENDING,
    RUNNING,
    SERVICE,
    SUCCEEDED,
    JobSpec,
    Machine,
    Replica,
    Requirements,
    Resources,
    Task,
)
from borgmaster.store import Store, pending_tasks

GiB = 1 << 30


class Cell:
    """A Store plus a log index, applying commands the way the FSM does."""

    def __init__(self) -> None:
        self.store = Store()
        self.index = 0
        self.entries: list[bytes] = []

    def apply(self, cmd: C.Command) -> dict[str, Any]:
        return self.apply_raw(C.encode(cmd))

    def apply_raw(self, entry: bytes) -> dict[str, Any]:
        self.index += 1
        self.entries.append(entry)
        return self.store.apply(entry, self.index)

    def submit(self, spec: JobSpec, **kw: Any) -> dict[str, Any]:
        return self.apply(C.SubmitJob(ts_ms=self.index * 10, spec=spec, **kw))

    def machine(self, name: str, cpu: float = 4.0, ram: int = 8 * GiB) -> dict[str, Any]:
        m = Machine(name=name, address=f"{name}:1", capacity=Resources(cpu=cpu, ram=ram, disk=GiB))
        return self.apply(C.RegisterMachine(ts_ms=1, machine=m))

    def place(self, job: str, index: int, machine: str, version: int = 1) -> dict[str, Any]:
        p = C.Placement(
            job=job,
            index=index,
            machine=machine,
            incarnation=f"{job}-{index}-{machine}",
            version=version,
        )
        return self.apply(C.ApplyPlan(ts_ms=5, placements=[p]))

    def update(self, job: str, index: int, state: str, **kw: Any) -> dict[str, Any]:
        t = self.store.tasks[(job, index)]
        u = C.TaskUpdate(job=job, index=index, incarnation=t.incarnation, state=state, **kw)
        return self.apply(C.TaskUpdates(ts_ms=7, machine=t.machine, updates=[u]))


def spec(name: str = "web", replicas: int = 2, **kw: Any) -> JobSpec:
    kw.setdefault("command", ["sleep", "100"])
    kw.setdefault("requirements", Requirements(cpu=1.0, ram=GiB))
    return JobSpec(name=name, replicas=replicas, **kw)


def states(cell: Cell, job: str) -> list[str]:
    return [t.state for t in cell.store.job_tasks(job)]


# ----- submit / update ------------------------------------------------------------------


def test_submit_creates_job_and_pending_tasks() -> None:
    cell = Cell()
    r = cell.submit(spec(replicas=3))
    assert r == {"name": "web", "version": 1, "result": "created"}
    job = cell.store.jobs["web"]
    assert job.state == PENDING and job.version == 1
    tasks = cell.store.job_tasks("web")
    assert [t.index for t in tasks] == [0, 1, 2]
    assert all(t.state == PENDING and t.version == 1 and t.machine == "" for t in tasks)


def test_resubmit_identical_spec_is_unchanged() -> None:
    cell = Cell()
    cell.submit(spec())
    cell.place("web", 0, "m1")  # no machine: rejected, changes nothing
    before = cell.store.digest()
    r = cell.submit(spec())
    assert r == {"name": "web", "version": 1, "result": "unchanged"}
    assert cell.store.digest() == before


def test_submit_must_exist_rejects_new_job() -> None:
    cell = Cell()
    r = cell.submit(spec(), must_exist=True)
    assert r["error"] == "not-found"
    assert "web" not in cell.store.jobs


def test_changed_command_bumps_version_and_rolls_placed_tasks_gradually() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec())
    cell.place("web", 0, "m1")
    cell.update("web", 0, RUNNING)
    r = cell.submit(spec(command=["sleep", "200"]))
    assert r == {"name": "web", "version": 2, "result": "updated"}
    job = cell.store.jobs["web"]
    assert job.rollout == "rolling" and job.previous_version == 1
    running, waiting = cell.store.job_tasks("web")
    # The placed task keeps running its old spec until the rollout replaces it ...
    assert running.state == RUNNING and running.version == 1
    assert job.spec_for(1).command != job.spec.command
    assert cell.store.desired_for("m1") == [running]
    # ... while a task that was not placed anywhere moves to the new version at once.
    assert waiting.state == PENDING and waiting.version == 2
    r = cell.apply(
        C.ReplaceTasks(job="web", tasks=[C.TaskRef(0, running.incarnation)], reason="updated")
    )
    assert r == {"replaced": 1}
    assert {t.version for t in cell.store.job_tasks("web")} == {2}
    assert cell.store.desired_for("m1") == []
    # The rollout ends only when the controller has seen every new task run (SetRollout "").
    assert job.rollout == "rolling"
    assert cell.apply(C.SetRollout(job="web", version=2, status="")) == {"ok": True}
    assert job.rollout == ""
    assert [e.type for e in cell.store.events][-2:] == ["updated", "rolled"]


def test_scale_up_adds_tasks_without_version_bump() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2))
    cell.place("web", 0, "m1")
    r = cell.submit(spec(replicas=4))
    assert r == {"name": "web", "version": 1, "result": "updated"}
    tasks = cell.store.job_tasks("web")
    assert [t.index for t in tasks] == [0, 1, 2, 3]
    assert tasks[0].state == ASSIGNED  # untouched
    assert all(t.version == 1 for t in tasks)


def test_scale_down_removes_highest_indexes_without_version_bump() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=3))
    cell.place("web", 2, "m1")
    r = cell.submit(spec(replicas=1))
    assert r["version"] == 1 and r["result"] == "updated"
    assert sorted(k for k in cell.store.tasks if k[0] == "web") == [("web", 0)]
    assert cell.store.desired_for("m1") == []  # the placed index 2 is gone
    assert cell.store.used("m1") == Resources()


def test_submit_by_other_user_is_denied() -> None:
    cell = Cell()
    cell.submit(spec(user="alice"))
    r = cell.submit(spec(user="bob", replicas=5))
    assert r["error"] == "permission-denied"
    assert cell.store.jobs["web"].spec.replicas == 2


def test_resubmit_after_kill_creates_new_version() -> None:
    cell = Cell()
    cell.submit(spec())
    cell.apply(C.KillJob(name="web"))
    r = cell.submit(spec())
    assert r == {"name": "web", "version": 2, "result": "created"}
    assert states(cell, "web") == [PENDING, PENDING]
    assert not cell.store.jobs["web"].killed


# ----- request ids ------------------------------------------------------------------------


def test_request_id_dedupe_returns_first_result_and_applies_once() -> None:
    cell = Cell()
    cmd = C.SubmitJob(request_id="req-1", spec=spec(replicas=1))
    first = cell.apply(cmd)
    assert first == {"name": "web", "version": 1, "result": "created"}
    # A retry of the same request id, even with a different body, is not applied again.
    retry = C.SubmitJob(request_id="req-1", spec=spec(replicas=5))
    second = cell.apply(retry)
    assert second == {**first, "duplicate": True}
    assert "duplicate" not in first
    assert len(cell.store.job_tasks("web")) == 1
    assert cell.store.applied_index == 2


# ----- kill ---------------------------------------------------------------------------------


def test_kill_unknown_job_returns_error_value() -> None:
    cell = Cell()
    r = cell.apply(C.KillJob(name="nope"))
    assert r["error"] == "not-found"
    assert "nope" in r["message"]


def test_kill_twice_succeeds_and_says_already() -> None:
    cell = Cell()
    cell.submit(spec())
    cell.apply(C.KillJob(name="web"))
    assert cell.apply(C.KillJob(name="web")) == {"name": "web", "tasks_to_stop": 0, "already": True}
    assert cell.apply(C.KillJob(name="nosuch"))["error"] == "not-found"


def test_kill_marks_pending_killed_and_waits_for_borglet_on_assigned() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2))
    cell.place("web", 0, "m1")
    r = cell.apply(C.KillJob(ts_ms=50, name="web"))
    assert r == {"name": "web", "tasks_to_stop": 1}
    t0, t1 = cell.store.job_tasks("web")
    assert t1.state == KILLED and t1.reason == "job-killed"
    assert t0.state == ASSIGNED  # still held until the Borglet confirms
    assert cell.store.jobs["web"].state == KILLED
    assert cell.store.desired_for("m1") == []  # killed jobs are not desired
    assert cell.store.used("m1").cpu == 1.0
    assert list(pending_tasks(cell.store)) == []
    assert cell.update("web", 0, KILLED, exit_code=137, reason="killed") == {"applied": 1}
    assert t0.state == KILLED and t0.exit_code == 137
    assert cell.store.used("m1") == Resources()


# ----- machines and plans -------------------------------------------------------------------


def test_register_machine_then_apply_plan_assigns_task() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    r = cell.place("web", 0, "m1")
    assert r == {"placed": 1, "rejected": 0, "preempted": 0}
    t = cell.store.tasks[("web", 0)]
    assert (t.state, t.machine, t.incarnation) == (ASSIGNED, "m1", "web-0-m1")
    assert cell.store.desired_for("m1") == [t]
    assert cell.store.used("m1").cpu == 1.0
    assert list(pending_tasks(cell.store)) == []


def test_apply_plan_rejects_overcommit_within_one_plan() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.5, ram=8 * GiB)
    cell.submit(spec(replicas=3))
    placements = [
        C.Placement(job="web", index=i, machine="m1", incarnation=f"i{i}", version=1)
        for i in range(3)
    ]
    r = cell.apply(C.ApplyPlan(placements=placements))
    assert r == {"placed": 2, "rejected": 1, "preempted": 0}
    assert states(cell, "web") == [ASSIGNED, ASSIGNED, PENDING]
    assert cell.store.used("m1").cpu <= 2.5


def test_apply_plan_rejects_overcommit_against_existing_tasks() -> None:
    cell = Cell()
    cell.machine("m1", cpu=8, ram=int(1.5 * GiB))
    cell.submit(spec(replicas=2))
    assert cell.place("web", 0, "m1") == {"placed": 1, "rejected": 0, "preempted": 0}
    assert cell.place("web", 1, "m1") == {
        "placed": 0,
        "rejected": 1,
        "preempted": 0,
    }  # ram is short
    assert cell.store.tasks[("web", 1)].state == PENDING


def test_apply_plan_rejects_lost_and_draining_and_unknown_machines() -> None:
    cell = Cell()
    cell.machine("lost")
    cell.machine("drain")
    cell.apply(C.MachineLost(name="lost"))
    cell.apply(C.SetMachineState(name="drain", state=MACHINE_DRAINING))
    cell.submit(spec(replicas=1))
    assert cell.place("web", 0, "lost") == {"placed": 0, "rejected": 1, "preempted": 0}
    assert cell.place("web", 0, "drain") == {"placed": 0, "rejected": 1, "preempted": 0}
    assert cell.place("web", 0, "ghost") == {"placed": 0, "rejected": 1, "preempted": 0}
    assert cell.store.tasks[("web", 0)].state == PENDING


def test_apply_plan_rejects_wrong_version() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    cell.submit(spec(replicas=1, command=["true"]))  # version 2
    assert cell.place("web", 0, "m1", version=1) == {"placed": 0, "rejected": 1, "preempted": 0}
    assert cell.place("web", 0, "m1", version=2) == {"placed": 1, "rejected": 0, "preempted": 0}
    assert cell.store.tasks[("web", 0)].version == 2


def test_apply_plan_rejects_already_placed_task() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.machine("m2")
    cell.submit(spec(replicas=1))
    cell.place("web", 0, "m1")
    assert cell.place("web", 0, "m2") == {"placed": 0, "rejected": 1, "preempted": 0}
    assert cell.store.tasks[("web", 0)].machine == "m1"


def test_apply_plan_records_failure_reason_on_pending_task() -> None:
    cell = Cell()
    cell.submit(spec(replicas=1))
    cell.apply(
        C.ApplyPlan(
            failures=[C.PlanFailure("web", 0, "no-feasible-machine: no machines in the cell")]
        )
    )
    assert cell.store.tasks[("web", 0)].reason.startswith("no-feasible-machine")


def test_reregistering_lost_machine_brings_it_back_up() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.apply(C.MachineLost(name="m1"))
    assert cell.store.machines["m1"].state == MACHINE_LOST
    cell.machine("m1")
    assert cell.store.machines["m1"].state == "up"


# ----- task updates and job states ----------------------------------------------------------


def test_task_update_with_stale_incarnation_is_ignored() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    cell.place("web", 0, "m1")
    u = C.TaskUpdate(job="web", index=0, incarnation="old-incarnation", state=RUNNING)
    r = cell.apply(C.TaskUpdates(machine="m1", updates=[u]))
    assert r == {"applied": 0}
    assert cell.store.tasks[("web", 0)].state == ASSIGNED


def test_task_update_from_wrong_machine_is_ignored() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    cell.place("web", 0, "m1")
    u = C.TaskUpdate(job="web", index=0, incarnation="web-0-m1", state=RUNNING)
    assert cell.apply(C.TaskUpdates(machine="m2", updates=[u])) == {"applied": 0}
    assert cell.store.tasks[("web", 0)].state == ASSIGNED


def _placed_batch(cell: Cell, replicas: int) -> None:
    cell.machine("m1")
    cell.submit(spec(name="b", replicas=replicas, kind=BATCH))
    for i in range(replicas):
        cell.place("b", i, "m1")


def test_batch_job_all_succeeded_is_succeeded() -> None:
    cell = Cell()
    _placed_batch(cell, 2)
    cell.update("b", 0, SUCCEEDED, exit_code=0)
    assert cell.store.jobs["b"].state == PENDING
    cell.update("b", 1, RUNNING)
    assert cell.store.jobs["b"].state == RUNNING
    cell.update("b", 1, SUCCEEDED, exit_code=0)
    assert cell.store.jobs["b"].state == SUCCEEDED
    assert cell.store.used("m1") == Resources()


def test_batch_job_with_one_failed_task_is_failed() -> None:
    cell = Cell()
    _placed_batch(cell, 2)
    cell.update("b", 0, RUNNING)
    cell.update("b", 1, FAILED, exit_code=3, reason="exit: 3")
    assert cell.store.jobs["b"].state == FAILED
    t = cell.store.tasks[("b", 1)]
    assert (t.exit_code, t.reason) == (3, "exit: 3")


def test_service_job_with_running_task_is_running() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2, kind=SERVICE))
    cell.place("web", 0, "m1")
    assert cell.store.jobs["web"].state == PENDING
    cell.update("web", 0, RUNNING, restarts=2)
    assert cell.store.jobs["web"].state == RUNNING
    assert cell.store.tasks[("web", 0)].restarts == 2


def test_service_whose_tasks_all_exited_0_without_restart_is_succeeded_not_pending() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2, kind=SERVICE))
    cell.place("web", 0, "m1")
    cell.place("web", 1, "m1")
    cell.update("web", 0, SUCCEEDED, exit_code=0)
    assert cell.store.jobs["web"].state == PENDING  # web/1 not started yet
    cell.update("web", 1, SUCCEEDED, exit_code=0)
    assert cell.store.jobs["web"].state == SUCCEEDED


def test_terminal_task_ignores_later_updates() -> None:
    cell = Cell()
    _placed_batch(cell, 1)
    cell.update("b", 0, SUCCEEDED, exit_code=0)
    assert cell.update("b", 0, RUNNING) == {"applied": 0}
    assert cell.store.tasks[("b", 0)].state == SUCCEEDED


# ----- machine lost ---------------------------------------------------------------------------


def test_machine_lost_marks_active_tasks_lost_and_needing_placement() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2))
    cell.place("web", 0, "m1")
    cell.update("web", 0, RUNNING)
    r = cell.apply(C.MachineLost(name="m1"))
    assert r == {"ok": True, "tasks_lost": 1}
    t = cell.store.tasks[("web", 0)]
    assert (t.state, t.reason) == (LOST, "machine-lost")
    assert cell.store.machines["m1"].state == MACHINE_LOST
    assert sorted(t.key for t in pending_tasks(cell.store)) == [("web", 0), ("web", 1)]
    assert cell.store.used("m1") == Resources()


def test_lost_task_can_be_replaced_on_another_machine() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.machine("m2")
    cell.submit(spec(replicas=1))
    cell.place("web", 0, "m1")
    cell.apply(C.MachineLost(name="m1"))
    assert cell.place("web", 0, "m2") == {"placed": 1, "rejected": 0, "preempted": 0}
    assert cell.store.tasks[("web", 0)].machine == "m2"
    assert cell.store.tasks_by_machine["m1"] == set()


def test_machine_lost_unknown_is_error_value() -> None:
    assert Cell().apply(C.MachineLost(name="ghost"))["error"] == "not-found"


def test_desired_for_excludes_killed_job_tasks() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(name="a", replicas=1))
    cell.submit(spec(name="b", replicas=1))
    cell.place("a", 0, "m1")
    cell.place("b", 0, "m1")
    assert [t.job for t in cell.store.desired_for("m1")] == ["a", "b"]
    cell.apply(C.KillJob(name="a"))
    assert [t.job for t in cell.store.desired_for("m1")] == ["b"]


# ----- snapshots, errors, determinism -------------------------------------------------------


def _busy_cell() -> Cell:
    cell = Cell()
    cell.apply(C.RegisterReplica(replica=Replica(id="r1", raft="h:1", grpc="h:2")))
    cell.machine("m1")
    cell.machine("m2", cpu=1.0)
    cell.apply(C.SubmitJob(request_id="q1", spec=spec(replicas=3, env={"A": "1"})))
    cell.submit(spec(name="b", replicas=1, kind=BATCH))
    cell.place("web", 0, "m1")
    cell.place("web", 1, "m2")
    cell.place("b", 0, "m1")
    cell.update("web", 0, RUNNING)
    cell.update("b", 0, FAILED, exit_code=1, reason="exit: 1")
    cell.apply(C.MachineLost(name="m2"))
    cell.apply(C.ApplyPlan(failures=[C.PlanFailure("web", 2, "no-feasible-machine: x")]))
    return cell


def test_snapshot_round_trip_gives_equal_digest() -> None:
    cell = _busy_cell()
    data = cell.store.snapshot_bytes()
    other = Store()
    other.load_snapshot(data)
    assert other.digest() == cell.store.digest()
    assert other.applied_index == cell.store.applied_index
    assert other.snapshot_bytes() == data
    assert other.desired_for("m1") == cell.store.desired_for("m1")
    assert other.tasks_by_machine == {k: v for k, v in cell.store.tasks_by_machine.items() if v}
    # Request ids survive: a retry after restore is still a duplicate.
    r = other.apply(C.encode(C.SubmitJob(request_id="q1", spec=spec())), 100)
    assert r["duplicate"] is True


def test_load_snapshot_rejects_unknown_format() -> None:
    with pytest.raises(ValueError, match="format"):
        Store().load_snapshot(msgpack.packb({"format": 99}))


def test_malformed_nested_part_is_invalid_and_applies_nothing() -> None:
    cell = Cell()
    cell.submit(spec())
    before = cell.store.digest()
    bad = {"placements": [{"job": "web", "bogus": 1}]}
    r = cell.apply_raw(bytes([C.CommandType.APPLY_PLAN]) + msgpack.packb(bad))
    assert r["error"] == "invalid"
    assert "ApplyPlan.placements[0]" in r["message"]
    assert cell.store.digest() == before
    assert cell.store.applied_index == 2


def test_dispatch_exception_returns_error_and_advances_index(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    cell = Cell()
    cell.submit(spec())

    def boom(self: Store, cmd: C.ApplyPlan) -> dict[str, Any]:
        raise KeyError("a bug")

    monkeypatch.setattr(Store, "_apply_plan", boom)
    r = cell.apply(C.ApplyPlan(placements=[C.Placement("web", 0, "m1", "i", 1)]))
    monkeypatch.undo()
    assert r["error"] == "internal"
    assert "ApplyPlan" in r["message"]
    assert cell.store.applied_index == 2
    # The store still works afterwards.
    assert cell.apply(C.Noop()) == {"ok": True}
    assert cell.store.applied_index == 3


def test_undecodable_entry_returns_invalid_and_advances_index() -> None:
    cell = Cell()
    r = cell.apply_raw(b"\xff garbage")
    assert r["error"] == "invalid"
    assert cell.store.applied_index == 1


def test_apply_is_deterministic() -> None:
    cell = _busy_cell()
    replay = Store()
    for i, entry in enumerate(cell.entries, start=1):
        replay.apply(entry, i)
    assert replay.digest() == cell.store.digest()
    assert replay.snapshot_bytes() == cell.store.snapshot_bytes()


def test_scaling_down_emits_a_killed_event_per_removed_task() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=4, kind=SERVICE))
    cell.place("web", 2, "m1")
    before = cell.store.next_event
    cell.submit(spec(replicas=2, kind=SERVICE))
    evs = [e for e in cell.store.events if e.index >= before and e.type == "killed"]
    assert sorted((e.task_index, e.machine, e.message) for e in evs) == [
        (2, "m1", "scaled down"),
        (3, "", "scaled down"),
    ]


def count_walks(cell: Cell) -> list[str]:
    """The names of the jobs whose tasks the store walks from now on (job_tasks calls)."""
    walks: list[str] = []
    job_tasks = cell.store.job_tasks

    def counting(name: str) -> list[Task]:
        walks.append(name)
        return job_tasks(name)

    cell.store.job_tasks = counting  # type: ignore[method-assign]
    return walks


def test_a_plan_recomputes_each_job_once_not_once_per_placement() -> None:
    """A plan placing N tasks of one job must cost O(N): recomputing the job's state after
    each placement walked all N tasks every time (1.4 s of the Raft thread for 2,000 tasks,
    long enough to lose the leadership on a busy machine). The result is the same."""
    cell = Cell()
    cell.machine("m1", cpu=64.0, ram=64 * GiB)
    cell.submit(spec("wide", replicas=50, requirements=Requirements(cpu=0.1, ram=GiB // 64)))
    walks = count_walks(cell)
    placements = [C.Placement("wide", i, "m1", f"wide-{i}", 1) for i in range(50)]
    assert cell.apply(C.ApplyPlan(ts_ms=5, placements=placements))["placed"] == 50
    assert walks == ["wide"]
    assert cell.store.jobs["wide"].state == PENDING  # assigned, none running yet
    assert {t.state for t in cell.store.job_tasks("wide")} == {ASSIGNED}


def test_a_lost_machine_recomputes_each_job_once_not_once_per_task() -> None:
    """Losing a machine with N tasks of one job must cost O(N) too (per task it took 120 s of
    the Raft thread at 5,000 tasks, during which the cell had no working leader)."""
    cell = Cell()
    cell.machine("m1", cpu=64.0, ram=64 * GiB)
    cell.submit(spec("wide", replicas=50, requirements=Requirements(cpu=0.1, ram=GiB // 64)))
    placements = [C.Placement("wide", i, "m1", f"wide-{i}", 1) for i in range(50)]
    cell.apply(C.ApplyPlan(ts_ms=5, placements=placements))
    walks = count_walks(cell)
    assert cell.apply(C.MachineLost(ts_ms=9, name="m1"))["tasks_lost"] == 50
    assert walks == ["wide"]
    assert {t.state for t in cell.store.tasks.values()} == {LOST}
    assert cell.store.jobs["wide"].state == PENDING


def test_a_batch_of_reports_recomputes_each_job_once_per_entry() -> None:
    """The reports of many machines arrive as one Batch entry, often about one big job: its
    state is recomputed once for the entry, not once per machine's report, and ends the same."""
    cell = Cell()
    for m in ("m1", "m2", "m3"):
        cell.machine(m, cpu=64.0, ram=64 * GiB)
    cell.submit(spec("wide", replicas=30, requirements=Requirements(cpu=0.1, ram=GiB // 64)))
    machine_of = {i: f"m{i % 3 + 1}" for i in range(30)}
    placements = [C.Placement("wide", i, machine_of[i], f"wide-{i}", 1) for i in range(30)]
    cell.apply(C.ApplyPlan(ts_ms=5, placements=placements))
    reports = [
        C.TaskUpdates(
            ts_ms=7,
            machine=m,
            updates=[
                C.TaskUpdate("wide", i, f"wide-{i}", RUNNING)
                for i in range(30)
                if machine_of[i] == m
            ],
        )
        for m in ("m1", "m2", "m3")
    ]
    walks = count_walks(cell)
    cell.apply(C.Batch(entries=[C.encode(r) for r in reports]))
    assert walks == ["wide"]
    assert cell.store.jobs["wide"].state == RUNNING


def test_a_change_after_a_snapshot_load_moves_the_machines_generation() -> None:
    """Pushes and the scheduler's memo see a machine change by its generation: the first
    apply after a load must not leave it where the load put it."""
    c = Cell()
    c.machine("m1")
    c.submit(spec("web", replicas=1))
    c.place("web", 0, "m1")
    c.store.load_snapshot(c.store.snapshot_bytes())
    loaded = c.store.machine_generation["m1"]
    c.update("web", 0, "failed", exit_code=1)  # its desired set changes
    assert c.store.machine_generation["m1"] != loaded
