"""Store features behind the controllers (quota, preemption, drain, fencing, rollback, events,
GC, batches) and the pure controller decisions in borgmaster/controllers.py."""

from __future__ import annotations

import msgpack

from borgmaster import commands as C
from borgmaster import controllers
from borgmaster.model import (
    ASSIGNED,
    FAILED,
    KILLED,
    MACHINE_DRAINING,
    PENDING,
    RUNNING,
    HealthCheck,
    HealthKind,
    JobSpec,
    Requirements,
    UpdatePolicy,
)
from borgmaster.store import Store
from tests.unit.test_store import Cell, GiB, spec


def running_job(cell: Cell, name: str = "web", replicas: int = 2, machine: str = "m1") -> None:
    cell.submit(spec(name=name, replicas=replicas))
    for i in range(replicas):
        cell.place(name, i, machine)
        cell.update(name, i, RUNNING)


# ----- quota -----------------------------------------------------------------------------


def test_quota_rejects_submission_over_limit_saying_by_how_much() -> None:
    cell = Cell()
    cell.apply(
        C.SetQuota(user="alice", band="production", limit=C.QuotaLimit(cpu=4.0, ram=8 * GiB))
    )
    ok = cell.submit(spec(name="a", replicas=2, user="alice", priority=200))
    assert ok["result"] == "created"
    r = cell.submit(spec(name="b", replicas=3, user="alice", priority=200))
    assert r["error"] == "quota"
    assert r["message"] == "quota for alice/production exceeded by cpu 1"
    assert "b" not in cell.store.jobs
    # Another band and the free band are not limited by it.
    assert cell.submit(spec(name="c", replicas=3, user="alice", priority=100))["result"]
    assert cell.submit(spec(name="d", replicas=50, user="alice", priority=10))["result"]


def test_quota_counts_an_update_without_its_old_version() -> None:
    cell = Cell()
    cell.apply(C.SetQuota(user="alice", band="batch", limit=C.QuotaLimit(cpu=2.0, ram=4 * GiB)))
    assert cell.submit(spec(name="a", replicas=2, user="alice"))["result"] == "created"
    assert cell.submit(spec(name="a", replicas=2, user="alice", env={"X": "1"}))["version"] == 2
    r = cell.submit(spec(name="a", replicas=3, user="alice"))
    assert r["message"] == "quota for alice/batch exceeded by cpu 1"


def test_set_quota_rejects_unknown_band() -> None:
    cell = Cell()
    assert cell.apply(C.SetQuota(user="a", band="gold", limit=C.QuotaLimit()))["error"] == "invalid"


# ----- preemption ------------------------------------------------------------------------


def test_plan_preemption_evicts_victim_then_places_in_its_room() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0, ram=2 * GiB)
    running_job(cell, "low", replicas=2)
    cell.submit(spec(name="prod", replicas=1, priority=200))
    victim = cell.store.tasks[("low", 0)]
    p = C.Placement(job="prod", index=0, machine="m1", incarnation="p0", version=1)
    r = cell.apply(
        C.ApplyPlan(
            placements=[p],
            preemptions=[
                C.Preemption(job="low", index=0, incarnation=victim.incarnation, machine="m1")
            ],
        )
    )
    assert r == {"placed": 1, "rejected": 0, "preempted": 1}
    assert victim.state == PENDING and victim.reason == "preempted" and victim.machine == ""
    assert cell.store.tasks[("prod", 0)].machine == "m1"
    assert any(e.type == "preempted" and e.job == "low" for e in cell.store.events)


def test_stale_preemption_is_ignored() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0, ram=2 * GiB)
    running_job(cell, "low", replicas=2)
    r = cell.apply(
        C.ApplyPlan(preemptions=[C.Preemption(job="low", index=0, incarnation="old", machine="m1")])
    )
    assert r["preempted"] == 0 and cell.store.tasks[("low", 0)].state == RUNNING


# ----- fencing ---------------------------------------------------------------------------


def test_commands_of_a_deposed_leader_are_rejected() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    cell.apply(C.LeaderElected(term=3))
    p = C.Placement(job="web", index=0, machine="m1", incarnation="x", version=1)
    r = cell.apply(C.ApplyPlan(placements=[p], term=2))
    assert r["error"] == "stale-leader"
    assert cell.store.tasks[("web", 0)].state == PENDING
    assert cell.apply(C.ApplyPlan(placements=[p], term=3))["placed"] == 1
    assert cell.apply(C.MachineLost(name="m1", term=1))["error"] == "stale-leader"


# ----- drain -----------------------------------------------------------------------------


def test_drain_marks_machine_and_controller_moves_tasks_within_max_unavailable() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.machine("m2")
    running_job(cell, "web", replicas=2)
    r = cell.apply(C.SetMachineState(name="m1", state=MACHINE_DRAINING))
    assert r == {"ok": True, "state": MACHINE_DRAINING, "tasks_to_move": 2}
    acts = controllers.plan_all(cell.store)
    assert len(acts) == 1 and len(acts[0].replace_drain) == 1  # max_unavailable 1
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_drain, reason="drained"))
    # One task is now pending: the budget is spent until it runs again elsewhere.
    assert controllers.plan_all(cell.store) == []
    cell.place("web", acts[0].replace_drain[0].index, "m2")
    cell.update("web", acts[0].replace_drain[0].index, RUNNING)
    acts = controllers.plan_all(cell.store)
    assert len(acts[0].replace_drain) == 1


def test_undrain_and_invalid_states() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.apply(C.SetMachineState(name="m1", state=MACHINE_DRAINING))
    assert cell.apply(C.SetMachineState(name="m1", state="up"))["state"] == "up"
    assert cell.apply(C.SetMachineState(name="m1", state="lost"))["error"] == "invalid"
    assert cell.apply(C.SetMachineState(name="zz", state="up"))["error"] == "not-found"
    assert [e.type for e in cell.store.events][-2:] == ["drained", "undrained"]


# ----- rolling updates -------------------------------------------------------------------


def test_rollout_replaces_at_most_max_unavailable_and_halts_on_failure() -> None:
    cell = Cell()
    cell.machine("m1", cpu=16, ram=64 * GiB)
    cell.submit(spec(replicas=4, update=UpdatePolicy(max_unavailable=1)))
    for i in range(4):
        cell.place("web", i, "m1")
        cell.update("web", i, RUNNING)
    cell.submit(spec(replicas=4, update=UpdatePolicy(max_unavailable=1), env={"V": "2"}))
    acts = controllers.plan_all(cell.store)
    assert [a.replace_update for a in acts] == [[C.TaskRef(0, "web-0-m1")]]
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_update, reason="updated"))
    assert controllers.plan_all(cell.store) == []  # waits for task 0 to run again
    cell.apply(
        C.ApplyPlan(
            placements=[C.Placement("web", 0, "m1", "new0", 2)],
        )
    )
    cell.update("web", 0, FAILED, exit_code=1, reason="exit: 1")
    acts = controllers.plan_all(cell.store)
    assert acts[0].rollout_status is not None
    assert acts[0].rollout_status.startswith("halted: task 0 on version 2 failed")
    cell.apply(C.SetRollout(job="web", version=2, status=acts[0].rollout_status))
    assert controllers.plan_all(cell.store) == []
    # Rollback returns to version 1's spec as version 3 and the rollout resumes.
    r = cell.apply(C.Rollback(name="web"))
    assert r["version"] == 3 and r["result"] == "rolled-back"
    job = cell.store.jobs["web"]
    assert job.spec.env == {} and job.rollout == "rolling"
    assert cell.store.tasks[("web", 0)].state == PENDING  # the failed one restarts at once


def test_rollback_without_previous_version_is_invalid() -> None:
    cell = Cell()
    cell.submit(spec())
    assert cell.apply(C.Rollback(name="web"))["error"] == "invalid"
    assert cell.apply(C.Rollback(name="nope"))["error"] == "not-found"


def test_health_checked_tasks_count_as_unavailable_until_healthy() -> None:
    cell = Cell()
    cell.machine("m1", cpu=16, ram=64 * GiB)
    hs = HealthCheck(HealthKind.TCP, "p", interval_ms=1000)
    s = spec(replicas=2, health=hs, requirements=Requirements(cpu=1, ram=GiB, ports=["p"]))
    cell.submit(s)
    for i in range(2):
        cell.place("web", i, "m1")
        cell.update("web", i, RUNNING, health="healthy")
    s2 = JobSpec.from_dict({**s.to_dict(), "env": {"V": "2"}})
    cell.submit(s2)
    acts = controllers.plan_all(cell.store)
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_update))
    cell.apply(C.ApplyPlan(placements=[C.Placement("web", 0, "m1", "n0", 2)]))
    cell.update("web", 0, RUNNING)  # running but health unknown yet
    assert controllers.plan_all(cell.store) == []
    cell.update("web", 0, RUNNING, health="healthy")
    assert controllers.plan_all(cell.store)[0].replace_update == [C.TaskRef(1, "web-1-m1")]


# ----- events, GC, batches, snapshots ----------------------------------------------------


def test_events_record_the_lifecycle_in_order() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=1))
    cell.place("web", 0, "m1")
    cell.update("web", 0, RUNNING)
    cell.update("web", 0, FAILED, exit_code=3)
    cell.apply(C.KillJob(name="web"))
    types = [e.type for e in cell.store.events]
    assert types == ["machine-up", "submitted", "scheduled", "started", "failed", "killed"]
    idx = [e.index for e in cell.store.events]
    assert idx == sorted(idx) and len(set(idx)) == len(idx)
    assert cell.store.events_since(idx[3], "web")[0].type == "started"


def test_gc_removes_old_killed_jobs_with_nothing_running() -> None:
    cell = Cell()
    cell.machine("m1")
    running_job(cell, "web", replicas=1)
    cell.apply(C.KillJob(name="web", ts_ms=1000))
    assert controllers.gc_candidates(cell.store, 10_000_000, 3_600_000) == []  # still stopping
    cell.update("web", 0, KILLED)
    assert controllers.gc_candidates(cell.store, 1000 + 3_599_999, 3_600_000) == []
    assert controllers.gc_candidates(cell.store, 1000 + 3_600_000, 3_600_000) == ["web"]
    assert cell.apply(C.GcJobs(names=["web"])) == {"removed": 1}
    assert "web" not in cell.store.jobs and not cell.store.tasks


def test_batch_applies_each_entry_with_its_own_result_and_request_id() -> None:
    cell = Cell()
    a = C.encode(C.SubmitJob(spec=spec(name="a"), request_id="r1"))
    b = C.encode(C.KillJob(name="nope"))
    r = cell.apply(C.Batch(entries=[a, b]))
    assert r["results"][0]["result"] == "created"
    assert r["results"][1]["error"] == "not-found"
    again = cell.apply(C.Batch(entries=[a]))
    assert again["results"][0]["duplicate"] is True


def test_snapshot_keeps_quotas_events_fence_and_history() -> None:
    cell = Cell()
    cell.machine("m1")
    running_job(cell, "web", replicas=1)
    cell.submit(spec(replicas=1, env={"V": "2"}))
    cell.apply(C.SetQuota(user="u", band="batch", limit=C.QuotaLimit(cpu=1.0)))
    cell.apply(C.LeaderElected(term=7))
    other = Store()
    other.load_snapshot(cell.store.snapshot_bytes())
    assert other.digest() == cell.store.digest()
    assert other.fence_term == 7 and other.jobs["web"].history[1].env == {}
    doc = msgpack.unpackb(cell.store.snapshot_bytes(), raw=False)
    assert doc["format"] == 2


def test_pending_index_matches_a_full_scan_through_a_lifecycle() -> None:
    from borgmaster.store import needs_placement

    cell = Cell()

    def check() -> None:
        scan = {
            k for k, t in cell.store.tasks.items() if needs_placement(t, cell.store.jobs[t.job])
        }
        assert cell.store.pending == scan
        rolling = {n for n, j in cell.store.jobs.items() if j.rollout == "rolling"}
        assert cell.store.rolling == rolling

    cell.machine("m1")
    cell.submit(spec(replicas=3))
    check()
    cell.place("web", 0, "m1")
    cell.update("web", 0, RUNNING)
    check()
    cell.submit(spec(replicas=2, env={"V": "2"}))
    check()
    cell.apply(C.MachineLost(name="m1"))
    check()
    cell.apply(C.KillJob(name="web"))
    check()
    cell.submit(spec(replicas=2))
    check()
    gen = cell.store.capacity_generation
    cell.machine("m2")
    assert cell.store.capacity_generation > gen


def test_new_version_task_must_stay_up_min_ready_before_the_rollout_moves_on() -> None:
    cell = Cell()
    cell.machine("m1", cpu=16, ram=64 * GiB)
    running_job(cell, "web", replicas=2)
    cell.submit(spec(replicas=2, env={"V": "2"}))
    acts = controllers.plan_all(cell.store, now_ms=0)
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_update))
    cell.apply(C.ApplyPlan(placements=[C.Placement("web", 0, "m1", "n0", 2)]))
    cell.update("web", 0, RUNNING)  # at ts 7
    ready_at = 7 + controllers.MIN_READY_MS
    assert controllers.plan_all(cell.store, now_ms=ready_at - 1) == []
    assert controllers.plan_all(cell.store, now_ms=ready_at)[0].replace_update == [
        C.TaskRef(1, "web-1-m1")
    ]
    cell.update("web", 0, RUNNING, restarts=1)  # crashed and came back: not ready any more
    assert controllers.plan_all(cell.store, now_ms=ready_at * 10) == []


def test_rollout_ends_only_when_the_last_new_tasks_run_and_halts_if_they_crash() -> None:
    cell = Cell()
    cell.machine("m1", cpu=16, ram=64 * GiB)
    running_job(cell, "solo", replicas=1)
    cell.submit(spec(name="solo", replicas=1, env={"V": "2"}))
    acts = controllers.plan_all(cell.store, now_ms=0)
    cell.apply(C.ReplaceTasks(job="solo", tasks=acts[0].replace_update))
    job = cell.store.jobs["solo"]
    assert job.rollout == "rolling"
    assert controllers.plan_all(cell.store, now_ms=10**9) == []  # pending: not done yet
    cell.apply(C.ApplyPlan(placements=[C.Placement("solo", 0, "m1", "n0", 2)]))
    cell.update("solo", 0, FAILED, exit_code=3)
    [a] = controllers.plan_all(cell.store, now_ms=10**9)
    assert a.rollout_status is not None and a.rollout_status.startswith("halted: task 0")
    cell.apply(C.SetRollout(job="solo", version=2, status=a.rollout_status))
    assert [e.type for e in cell.store.events][-1] == "rollout-halted"


def test_rollout_completes_via_controller_once_new_tasks_are_ready() -> None:
    cell = Cell()
    cell.machine("m1", cpu=16, ram=64 * GiB)
    running_job(cell, "web", replicas=1)
    cell.submit(spec(name="web", replicas=1, env={"V": "2"}))
    acts = controllers.plan_all(cell.store, now_ms=0)
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_update))
    cell.apply(C.ApplyPlan(placements=[C.Placement("web", 0, "m1", "n0", 2)]))
    cell.update("web", 0, RUNNING)
    [a] = controllers.plan_all(cell.store, now_ms=10**9)
    assert a.rollout_status == "" and not a.replace_update
    cell.apply(C.SetRollout(job="web", version=2, status=""))
    assert [e.type for e in cell.store.events][-1] == "rolled"
    assert controllers.plan_all(cell.store, now_ms=10**9) == []


def test_rollback_after_halted_rollout_keeps_tasks_already_on_the_old_template() -> None:
    cell = Cell()
    cell.machine("m1")
    v1 = spec(replicas=2, user="alice")
    cell.submit(v1)
    for i in (0, 1):
        cell.place("web", i, "m1")
        cell.update("web", i, "running")
    cell.submit(spec(replicas=2, user="alice", command=["false"]))  # v2: a bad template
    # the rollout replaced task 0 only, then halted
    t0 = cell.store.tasks[("web", 0)]
    cell.apply(C.ReplaceTasks(job="web", tasks=[C.TaskRef(0, t0.incarnation)], reason="updated"))
    cell.place("web", 0, "m1", version=2)
    cell.apply(C.SetRollout(job="web", version=2, status="halted: task 0 on version 2 failed"))
    kept = cell.store.tasks[("web", 1)].incarnation
    r = cell.apply(C.Rollback(name="web", user="alice"))
    assert r == {"name": "web", "version": 3, "result": "rolled-back"}
    t0, t1 = cell.store.job_tasks("web")
    # task 1 already runs v1's template (= v3's): same incarnation, now at version 3
    assert (t1.version, t1.incarnation, t1.state) == (3, kept, "running")
    # task 0 runs v2's template: still to be replaced by the rollout controller
    assert t0.version == 2 and t0.state == ASSIGNED
    assert cell.store.jobs["web"].spec.command == v1.command
    assert [t.version for t in cell.store.desired_for("m1")] == [2, 3]


# ----- max_surge -------------------------------------------------------------------------


def _surge_job(cell: Cell, replicas: int, max_unavailable: int, max_surge: int) -> None:
    """A running service on version 1, then an update to version 2 that starts a rollout."""
    cell.machine("m1", cpu=64, ram=256 * GiB)
    update = UpdatePolicy(max_unavailable=max_unavailable, max_surge=max_surge)
    cell.submit(spec(replicas=replicas, update=update))
    for i in range(replicas):
        cell.place("web", i, "m1")
        cell.update("web", i, RUNNING)
    cell.submit(spec(replicas=replicas, update=update, env={"V": "2"}))


def _available(cell: Cell) -> int:
    job = cell.store.jobs["web"]
    return sum(1 for t in cell.store.job_tasks("web") if controllers.available(cell.store, job, t))


def _drive_rollout(cell: Cell) -> list[int]:
    """Run a rollout to its end as the leader would, one change at a time: apply the
    controllers' decision, else start the highest pending task (scheduler, then Borglet:
    surge tasks, queued when the rollout began, start first).
    Returns the available-task count after every change, so a dip anywhere is seen."""
    counts = [_available(cell)]
    for _ in range(100):
        job = cell.store.jobs["web"]
        if job.rollout == "":
            return counts
        acts = controllers.plan_all(cell.store)
        if acts:
            a = acts[0]
            if a.replace_update:
                cell.apply(C.ReplaceTasks(job="web", tasks=a.replace_update, reason="updated"))
            if a.rollout_status is not None:
                cell.apply(C.SetRollout(job="web", version=a.version, status=a.rollout_status))
        else:
            waiting = [t for t in cell.store.job_tasks("web") if t.state == PENDING]
            assert waiting, "rollout stuck: nothing to replace and nothing to start"
            t = waiting[-1]
            cell.place("web", t.index, "m1", version=job.version)
            cell.update("web", t.index, RUNNING)
        counts.append(_available(cell))
    raise AssertionError(f"rollout did not finish: {counts}")


def test_max_surge_with_max_unavailable_0_never_drops_below_replicas() -> None:
    cell = Cell()
    _surge_job(cell, replicas=4, max_unavailable=0, max_surge=1)
    job = cell.store.jobs["web"]
    assert job.surge == 1 and job.rollout == "rolling"
    surge = cell.store.tasks[("web", 4)]
    assert (surge.state, surge.version) == (PENDING, 2)
    assert [t.index for t in cell.store.job_tasks("web")] == [0, 1, 2, 3, 4]
    # Nothing may go down until the surge task stands in for it.
    assert controllers.plan_all(cell.store) == []
    counts = _drive_rollout(cell)
    assert min(counts) == 4, counts  # never below replicas - max_unavailable
    assert max(counts) == 5, counts  # the surge task really added capacity
    tasks = cell.store.job_tasks("web")
    assert [(t.index, t.version, t.state) for t in tasks] == [(i, 2, RUNNING) for i in range(4)]
    assert job.surge == 0 and ("web", 4) not in cell.store.tasks
    gone = [e for e in cell.store.events if e.type == "killed" and e.task_index == 4]
    assert [e.message for e in gone] == ["surge task removed: rollout done"]
    assert job.state == RUNNING and not job.killed


def test_max_surge_2_with_max_unavailable_1_uses_both_and_never_drops_below_3() -> None:
    cell = Cell()
    _surge_job(cell, replicas=4, max_unavailable=1, max_surge=2)
    assert [t.index for t in cell.store.job_tasks("web")] == [0, 1, 2, 3, 4, 5]
    # Before the surge tasks run, max_unavailable alone allows one replacement.
    acts = controllers.plan_all(cell.store)
    assert [len(a.replace_update) for a in acts] == [1]
    counts = _drive_rollout(cell)
    assert min(counts) == 3, counts  # exactly the floor: the allowance was used, not exceeded
    started = {e.task_index for e in cell.store.events if e.type == "started"}
    assert {4, 5} <= started  # both surge tasks ran (and are gone now)
    assert cell.store.jobs["web"].surge == 0
    assert [(t.version, t.state) for t in cell.store.job_tasks("web")] == [(2, RUNNING)] * 4


def test_surge_tasks_count_against_quota() -> None:
    cell = Cell()
    cell.apply(C.SetQuota(user="alice", band="batch", limit=C.QuotaLimit(cpu=4.0, ram=8 * GiB)))
    update = UpdatePolicy(max_unavailable=0, max_surge=1)
    assert cell.submit(spec(replicas=4, user="alice", update=update))["result"] == "created"
    r = cell.submit(spec(replicas=4, user="alice", update=update, env={"V": "2"}))
    assert r["error"] == "quota"
    assert r["message"] == (
        "quota for alice/batch exceeded by cpu 1 (counting 1 surge task(s) of update.max_surge)"
    )
    # With room for the surge task the rollout is admitted, and the task is counted.
    cell.apply(C.SetQuota(user="alice", band="batch", limit=C.QuotaLimit(cpu=5.0)))
    assert cell.submit(spec(replicas=4, user="alice", update=update, env={"V": "2"}))["version"]
    assert cell.store.quota_used("alice", "batch").cpu == 5.0


def test_surge_tasks_follow_scaling_and_rollback_stay_on_halt_and_stop_with_the_job() -> None:
    cell = Cell()
    _surge_job(cell, replicas=4, max_unavailable=0, max_surge=1)
    cell.place("web", 4, "m1", version=2)
    cell.update("web", 4, RUNNING)
    # Scaling mid-rollout: the surge task moves past the new replica count.
    update = UpdatePolicy(max_unavailable=0, max_surge=1)
    cell.submit(spec(replicas=3, update=update, env={"V": "2"}))
    assert [t.index for t in cell.store.job_tasks("web")] == [0, 1, 2, 3]
    assert cell.store.tasks[("web", 3)].state == PENDING  # the new surge task
    assert cell.store.tasks[("web", 3)].version == 2
    # A halted rollout keeps its surge task.
    cell.place("web", 3, "m1", version=2)
    cell.update("web", 3, RUNNING)
    acts = controllers.plan_all(cell.store)
    cell.apply(C.ReplaceTasks(job="web", tasks=acts[0].replace_update, reason="updated"))
    cell.place("web", 0, "m1", version=2)
    cell.update("web", 0, FAILED, exit_code=1)
    halt = controllers.plan_all(cell.store)[0].rollout_status
    assert halt is not None and halt.startswith("halted")
    cell.apply(C.SetRollout(job="web", version=2, status=halt))
    assert cell.store.jobs["web"].surge == 1
    # Rollback: a new version, so a new surge task on it.
    assert cell.apply(C.Rollback(name="web"))["version"] == 3
    surge = cell.store.tasks[("web", 3)]
    assert (surge.version, surge.state, surge.machine) == (3, PENDING, "")
    cell.place("web", 3, "m1", version=3)
    # Kill: the surge task stops with the others and goes with the job's GC.
    assert cell.apply(C.KillJob(name="web"))["tasks_to_stop"] == 3  # 1, 2 and the surge task
    assert [t.machine for t in cell.store.desired_for("m1")] == []
    for i in (1, 2, 3):
        cell.update("web", i, KILLED)
    assert cell.apply(C.GcJobs(names=["web"])) == {"removed": 1}
    assert not [k for k in cell.store.tasks if k[0] == "web"]


def test_surge_survives_a_snapshot() -> None:
    cell = Cell()
    _surge_job(cell, replicas=2, max_unavailable=0, max_surge=1)
    data = cell.store.snapshot_bytes()
    other = Store()
    other.load_snapshot(data)
    assert other.jobs["web"].surge == 1
    assert [t.index for t in other.job_tasks("web")] == [0, 1, 2]
    assert other.snapshot_bytes() == data
