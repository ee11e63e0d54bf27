"""The Borglet's task state machine: decisions only, no processes and no clock."""

from __future__ import annotations

import pytest

from borglet.state import (
    ACTIVE,
    DONE,
    LAUNCHING,
    MAX_BACKOFF_MS,
    STABLE_RUN_MS,
    STARTING,
    STOPPING,
    Adopt,
    Adopted,
    Desired,
    DesiredSet,
    EndRun,
    Exited,
    Forget,
    HealthResult,
    Kill,
    LocalTask,
    MachineDown,
    MachineDownDone,
    Persist,
    Report,
    Restored,
    Start,
    Started,
    TaskStates,
    Tick,
    WakeAt,
    WatchHealth,
    exit_code_of,
)
from cfg.model import (
    BATCH,
    FAILED,
    KILLED,
    RUNNING,
    SERVICE,
    SUCCEEDED,
    JobSpec,
    RestartPolicy,
)


def desired(
    index: int = 0,
    *,
    kind: str = SERVICE,
    policy: str = "on-failure",
    max_restarts: int = 10,
    backoff_ms: int = 1000,
    incarnation: str = "inc",
) -> Desired:
    spec = JobSpec(
        name="j",
        kind=kind,
        restart=RestartPolicy(policy=policy, max_restarts=max_restarts, backoff_ms=backoff_ms),
    )
    return Desired(job="j", index=index, incarnation=f"{incarnation}{index}", version=1, spec=spec)


def running(d: Desired, now_ms: int = 0) -> TaskStates:
    """A TaskStates with `d` started at `now_ms`."""
    ts = TaskStates()
    assert ts.reconcile([d], now_ms) == [Start(d.key)]
    ts.started(d.key, now_ms)
    return ts


# ----- reconcile ----------------------------------------------------------------------------


def test_reconcile_starts_desired_tasks() -> None:
    ts = TaskStates()
    a, b = desired(0), desired(1)
    assert ts.reconcile([a, b], 0) == [Start(a.key), Start(b.key)]
    assert ts.tasks[a.key].phase == LAUNCHING
    ts.started(a.key, 5)
    assert ts.tasks[a.key].phase == ACTIVE
    # a is active and b is being launched: nothing more to do.
    assert ts.reconcile([a, b], 10) == []


def test_launching_task_is_neither_restarted_nor_killed() -> None:
    ts = TaskStates()
    d = desired()
    assert ts.reconcile([d], 0) == [Start(d.key)]
    assert ts.reconcile([d], 1) == []  # a concurrent reconcile does not start it twice
    assert ts.reconcile([], 2) == []  # nor kill it mid-spawn
    assert ts.tasks[d.key].phase == LAUNCHING
    assert ts.next_wakeup_ms() is None
    ts.started(d.key, 3)
    assert ts.reconcile([], 4) == [Kill(d.key)]  # killed once the spawn has finished


def test_launch_aborted_lets_the_task_start_again() -> None:
    ts = TaskStates()
    d = desired()
    ts.reconcile([d], 0)
    ts.launch_aborted(d.key)
    assert ts.tasks[d.key].phase == STARTING
    assert ts.reconcile([d], 1) == [Start(d.key)]


def test_reconcile_kills_undesired_active_task() -> None:
    d = desired()
    ts = running(d)
    assert ts.reconcile([], 10) == [Kill(d.key)]
    assert ts.tasks[d.key].phase == STOPPING
    assert ts.reconcile([], 20) == []  # a kill is asked for once
    ts.killed(d.key)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, KILLED, "killed")


def test_reconcile_new_incarnation_replaces_old() -> None:
    old = desired(incarnation="old")
    new = desired(incarnation="new")
    ts = running(old)
    assert ts.reconcile([new], 10) == [Start(new.key), Kill(old.key)]


def test_never_started_undesired_task_is_done_killed_without_kill() -> None:
    ts = TaskStates()
    d = desired()
    ts.reconcile([d], 0)
    ts.launch_aborted(d.key)  # the Start was never carried out
    assert ts.reconcile([], 1) == []
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, KILLED, "not-wanted")
    assert t.report()["state"] == KILLED


def test_task_in_backoff_that_becomes_undesired_is_done_without_kill() -> None:
    d = desired()
    ts = running(d)
    ts.exited(d.key, 1, False, 100)
    assert ts.tasks[d.key].phase == STARTING
    assert ts.reconcile([], 200) == []
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, KILLED, "exit: 1")


def test_reconcile_does_not_start_before_next_start_ms() -> None:
    d = desired(backoff_ms=1000)
    ts = running(d)
    ts.exited(d.key, 1, False, 100)
    assert ts.tasks[d.key].next_start_ms == 1100
    assert ts.reconcile([d], 1099) == []
    assert ts.reconcile([d], 1100) == [Start(d.key)]


def test_exit_while_stopping_is_killed() -> None:
    d = desired()
    ts = running(d)
    ts.reconcile([], 1)
    ts.exited(d.key, -15, False, 2)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason, t.exit_code) == (DONE, KILLED, "killed", 143)


def test_start_failed_is_done_failed() -> None:
    ts = TaskStates()
    d = desired()
    ts.reconcile([d], 0)
    ts.start_failed(d.key, "no such user")
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, FAILED, "no such user")
    assert ts.reconcile([d], 1) == []  # done for good: not restarted


# ----- exits and restart policies ---------------------------------------------------------

RESTART = "restart"

# (kind, policy, returncode, oom) -> RESTART or the final result
EXIT_CASES = [
    (SERVICE, "always", 0, False, RESTART),
    (SERVICE, "always", 1, False, RESTART),
    (SERVICE, "always", -9, True, RESTART),
    (SERVICE, "on-failure", 0, False, SUCCEEDED),
    (SERVICE, "on-failure", 1, False, RESTART),
    (SERVICE, "on-failure", -9, True, RESTART),
    (SERVICE, "never", 0, False, SUCCEEDED),
    (SERVICE, "never", 1, False, FAILED),
    (SERVICE, "never", -9, True, FAILED),
    (BATCH, "always", 0, False, SUCCEEDED),
    (BATCH, "always", 1, False, RESTART),
    (BATCH, "always", -9, True, RESTART),
    (BATCH, "on-failure", 0, False, SUCCEEDED),
    (BATCH, "on-failure", 1, False, RESTART),
    (BATCH, "on-failure", -9, True, RESTART),
    (BATCH, "never", 0, False, SUCCEEDED),
    (BATCH, "never", 1, False, FAILED),
    (BATCH, "never", -9, True, FAILED),
    # exit 0 but the kernel's OOM killer was involved: a failure, not a success.
    (BATCH, "on-failure", 0, True, RESTART),
    (SERVICE, "never", 0, True, FAILED),
]


@pytest.mark.parametrize(("kind", "policy", "returncode", "oom", "expect"), EXIT_CASES)
def test_exit_per_policy(kind: str, policy: str, returncode: int, oom: bool, expect: str) -> None:
    d = desired(kind=kind, policy=policy)
    ts = running(d)
    ts.exited(d.key, returncode, oom, 500)
    t = ts.tasks[d.key]
    assert t.exit_code == exit_code_of(returncode)
    if oom:
        assert t.reason == "oom"
    if expect == RESTART:
        assert t.phase == STARTING
        assert t.restarts == 1
        assert t.next_start_ms == 1500
        assert t.report()["state"] == RUNNING
    else:
        assert (t.phase, t.result) == (DONE, expect)
        assert t.restarts == 0
        assert t.report()["state"] == expect


def test_max_restarts_exhausted_is_failed() -> None:
    d = desired(max_restarts=2, backoff_ms=10)
    ts = running(d)
    now = 0
    for expected_restarts in (1, 2):
        now += 1000
        ts.exited(d.key, 1, False, now)
        t = ts.tasks[d.key]
        assert (t.phase, t.restarts) == (STARTING, expected_restarts)
        now = t.next_start_ms
        assert ts.reconcile([d], now) == [Start(d.key)]
        ts.started(d.key, now)
    ts.exited(d.key, 1, False, now + 1)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.restarts) == (DONE, FAILED, 2)
    assert t.report()["state"] == FAILED


def test_max_restarts_zero_fails_at_first_exit() -> None:
    d = desired(max_restarts=0)
    ts = running(d)
    ts.exited(d.key, 2, False, 10)
    assert (ts.tasks[d.key].phase, ts.tasks[d.key].result) == (DONE, FAILED)


def test_backoff_doubles_and_is_capped() -> None:
    d = desired(max_restarts=100, backoff_ms=1000)
    ts = running(d)
    now = 0
    seen = []
    for _ in range(12):
        now += 10  # crashes quickly: never a stable run
        ts.exited(d.key, 1, False, now)
        t = ts.tasks[d.key]
        seen.append(t.next_start_ms - now)
        assert ts.next_wakeup_ms() == t.next_start_ms
        now = t.next_start_ms
        ts.reconcile([d], now)
        ts.started(d.key, now)
    expected = [min(1000 * 2**i, MAX_BACKOFF_MS) for i in range(12)]
    assert seen == expected
    assert seen[-1] == MAX_BACKOFF_MS


def test_stable_run_resets_backoff() -> None:
    d = desired(max_restarts=100, backoff_ms=1000)
    ts = running(d)
    ts.exited(d.key, 1, False, 10)
    ts.started(d.key, 1010)
    ts.exited(d.key, 1, False, 1020)
    assert ts.tasks[d.key].next_start_ms == 1020 + 2000
    ts.started(d.key, 3020)
    ts.exited(d.key, 1, False, 3020 + STABLE_RUN_MS)
    assert ts.tasks[d.key].next_start_ms == 3020 + STABLE_RUN_MS + 1000
    assert ts.tasks[d.key].restarts == 3


def test_next_wakeup_is_none_without_waiting_tasks() -> None:
    d = desired()
    ts = running(d)
    assert ts.next_wakeup_ms() is None
    ts.exited(d.key, 1, False, 50)
    assert ts.next_wakeup_ms() == 1050


def test_next_wakeup_is_earliest_of_waiting_tasks() -> None:
    a = desired(0, backoff_ms=5000)
    b = desired(1, backoff_ms=100)
    ts = TaskStates()
    ts.reconcile([a, b], 0)
    ts.started(a.key, 0)
    ts.started(b.key, 0)
    ts.exited(a.key, 1, False, 10)
    ts.exited(b.key, 1, False, 20)
    assert ts.next_wakeup_ms() == 120


def test_exit_of_unknown_task_is_ignored() -> None:
    ts = TaskStates()
    ts.exited(("x", 0, "i"), 1, False, 0)
    ts.killed(("x", 0, "i"))
    assert ts.tasks == {}


def test_killed_keeps_oom_reason() -> None:
    d = desired()
    ts = running(d)
    ts.tasks[d.key].reason = "oom"
    ts.killed(d.key)
    assert ts.tasks[d.key].reason == "oom"


# ----- forgetting and reporting -------------------------------------------------------------


def test_forget_reported_only_drops_reported_undesired_done_tasks() -> None:
    done_reported = desired(0)
    done_unreported = desired(1)
    done_still_desired = desired(2)
    active = desired(3)
    ds = [done_reported, done_unreported, done_still_desired, active]
    ts = TaskStates()
    ts.reconcile(ds, 0)
    for d in ds:
        ts.started(d.key, 0)
    for d in ds[:3]:
        ts.exited(d.key, 0, False, 10)  # on-failure, exit 0: done, succeeded
    all_keys = {d.key for d in ds}
    reported = all_keys - {done_unreported.key}
    gone = ts.forget_reported(reported, {done_still_desired.key, active.key})
    assert gone == [done_reported.key]
    assert set(ts.tasks) == all_keys - {done_reported.key}


def test_exit_code_of_signal() -> None:
    assert exit_code_of(-9) == 137
    assert exit_code_of(-15) == 143
    assert exit_code_of(0) == 0
    assert exit_code_of(3) == 3


def test_report_shape() -> None:
    d = desired(incarnation="abc")
    ts = TaskStates()
    ts.reconcile([d], 0)
    assert ts.tasks[d.key].report() == {
        "job": "j",
        "index": 0,
        "incarnation": "abc0",
        "state": RUNNING,
        "exit_code": -1,
        "reason": "",
        "restarts": 0,
        "health": "",
        "pid": 0,
        "oom_kills": 0,
        "ports": {},
    }
    ts.started(d.key, 0, pid=42)
    assert ts.tasks[d.key].report()["pid"] == 42
    ts.exited(d.key, -9, True, 10)
    r = ts.tasks[d.key].report()
    assert (r["state"], r["exit_code"], r["reason"], r["restarts"]) == (RUNNING, 137, "oom", 1)
    d_never = desired(1, policy="never")
    ts.reconcile([d, d_never], 10_000)
    ts.started(d_never.key, 10_000)
    ts.exited(d_never.key, 2, False, 10_001)
    r = ts.tasks[d_never.key].report()
    assert r == {
        "job": "j",
        "index": 1,
        "incarnation": "inc1",
        "state": FAILED,
        "exit_code": 2,
        "reason": "exit: 2",
        "restarts": 0,
        "health": "",
        "pid": 0,
        "oom_kills": 0,
        "ports": {},
    }


# ----- health, permanent failures, pids limit, persistence ------------------------------------


def test_unhealthy_service_is_killed_then_restarted_as_a_failure() -> None:
    d = desired(policy="on-failure", backoff_ms=100)
    ts = running(d)
    assert ts.unhealthy(d.key) == Kill(d.key)
    t = ts.tasks[d.key]
    assert (t.phase, t.health) == (STOPPING, "unhealthy")
    ts.exited(d.key, -15, False, 50)  # our SIGTERM
    assert (t.phase, t.restarts, t.reason, t.next_start_ms) == (STARTING, 1, "unhealthy", 150)
    assert ts.reconcile([d], 150) == [Start(d.key)]
    ts.started(d.key, 150)
    assert (t.health, t.reason) == ("", "")


def test_unhealthy_with_policy_never_fails() -> None:
    d = desired(policy="never")
    ts = running(d)
    ts.unhealthy(d.key)
    ts.exited(d.key, -15, False, 50)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, FAILED, "unhealthy")


def test_unhealthy_batch_task_is_only_reported() -> None:
    d = desired(kind=BATCH)
    ts = running(d)
    assert ts.unhealthy(d.key) is None
    assert (ts.tasks[d.key].phase, ts.tasks[d.key].health) == (ACTIVE, "unhealthy")


def test_start_failed_is_permanent_with_exit_code() -> None:
    d = desired(policy="always")
    ts = TaskStates()
    ts.reconcile([d], 0)
    ts.start_failed(d.key, "exec: not found", 127)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason, t.exit_code, t.restarts) == (
        DONE,
        FAILED,
        "exec: not found",
        127,
        0,
    )
    assert ts.reconcile([d], 10_000) == []  # no restart storm
    assert ts.next_wakeup_ms() is None


def test_launch_failed_counts_as_failed_run_with_backoff() -> None:
    d = desired(backoff_ms=500)
    ts = TaskStates()
    ts.reconcile([d], 0)
    ts.launch_failed(d.key, "start-failed: boom", 10)
    t = ts.tasks[d.key]
    assert (t.phase, t.restarts, t.reason, t.next_start_ms) == (
        STARTING,
        1,
        "start-failed: boom",
        510,
    )


def test_pids_limit_is_reported_while_running_and_at_exit() -> None:
    d = desired(policy="never")
    ts = running(d)
    ts.pids_limit_hit(d.key)
    assert ts.tasks[d.key].report()["reason"] == "pids-limit"
    ts.exited(d.key, 1, False, 10, pids_limit=True)
    assert (ts.tasks[d.key].result, ts.tasks[d.key].reason) == (FAILED, "pids-limit")


def test_oom_kills_accumulate_over_restarts() -> None:
    d = desired(backoff_ms=1)
    ts = running(d)
    ts.exited(d.key, -9, True, 10)
    ts.reconcile([d], 100)
    ts.started(d.key, 100)
    ts.exited(d.key, -9, True, 110)
    assert ts.tasks[d.key].oom_kills == 2


def test_local_task_round_trips_through_state_file_dict() -> None:
    d = desired(policy="always")
    ts = running(d, 5)
    t = ts.tasks[d.key]
    t.ports = {"http": 20001}
    t.pid, t.shim_pid, t.shim_start, t.restarts = 11, 10, "12345", 2
    back = LocalTask.from_dict(t.to_dict())
    assert back == t


def test_task_caught_mid_launch_comes_back_waiting_to_start() -> None:
    d = desired()
    ts = TaskStates()
    ts.reconcile([d], 0)
    assert ts.tasks[d.key].phase == LAUNCHING
    back = LocalTask.from_dict(ts.tasks[d.key].to_dict())
    assert back.phase == STARTING


# ----- events in, instructions out (TaskStates.handle) ----------------------------------------


def test_desired_set_event_starts_with_the_spec_and_persists() -> None:
    ts = TaskStates()
    d = desired()
    out = ts.handle(DesiredSet((d,)), 0)
    assert out == [Start(d.key), Persist()]
    start = out[0]
    assert isinstance(start, Start) and start.desired is d
    out = ts.handle(Started(d.key, pid=7, shim_pid=6, shim_start="s"), 5)
    assert out == [WatchHealth(d.key, 5), Persist(), Report()]
    assert (ts.tasks[d.key].phase, ts.tasks[d.key].pid) == (ACTIVE, 7)


def test_exit_event_counts_the_restart_and_wakes_at_the_backoff() -> None:
    ts = TaskStates()
    d = desired(backoff_ms=1000)
    ts.handle(DesiredSet((d,)), 0)
    ts.handle(Started(d.key), 0)
    out = ts.handle(Exited(d.key, 1), 100)
    assert out == [EndRun(d.key), Persist(), WakeAt(1100), Report()]
    assert ts.counters.restarts == {("j", 0): 1}
    assert ts.handle(Tick(), 1099) == []
    assert ts.handle(Tick(), 1100) == [Start(d.key), Persist()]


def test_lost_shim_is_reported_as_supervisor_lost() -> None:
    ts = TaskStates()
    d = desired(policy="never")
    ts.handle(DesiredSet((d,)), 0)
    ts.handle(Started(d.key), 0)
    ts.handle(Exited(d.key, -9, lost=True), 10)
    t = ts.tasks[d.key]
    assert (t.phase, t.result, t.reason) == (DONE, FAILED, "supervisor-lost")


def test_task_started_after_it_stopped_being_wanted_is_killed_at_once() -> None:
    ts = TaskStates()
    d = desired()
    ts.handle(DesiredSet((d,)), 0)
    ts.handle(DesiredSet(()), 1)  # mid-spawn: not killed yet
    out = ts.handle(Started(d.key), 2)
    assert Kill(d.key) in out and ts.tasks[d.key].phase == STOPPING


def test_nothing_converges_before_the_master_has_answered() -> None:
    """A restarted Borglet must not retire its restored tasks on an empty desired set."""
    d = desired()
    running_task = LocalTask(key=d.key, spec=d.spec, phase=ACTIVE, pid=9)
    waiting = LocalTask(key=("j", 1, "x"), spec=d.spec, phase=STARTING, next_start_ms=0)
    ts = TaskStates()
    assert ts.handle(Restored((running_task, waiting)), 0) == [Adopt(d.key), Persist()]
    assert ts.handle(Tick(), 10) == []
    assert ts.tasks[d.key].phase == ACTIVE and ts.tasks[("j", 1, "x")].phase == STARTING
    assert ts.handle(Adopted(d.key, 9), 11) == [WatchHealth(d.key, 0)]


def test_restored_from_another_boot_clears_monotonic_times() -> None:
    d = desired()
    t = LocalTask(key=d.key, spec=d.spec, phase=STARTING, next_start_ms=99, started_ms=50)
    ts = TaskStates()
    ts.handle(Restored((t,), same_boot=False), 0)
    assert (t.next_start_ms, t.started_ms) == (0, 0)


def test_stale_health_result_of_an_earlier_run_is_dropped() -> None:
    ts = TaskStates()
    d = desired()
    ts.handle(DesiredSet((d,)), 0)
    ts.handle(Started(d.key), 100)
    assert ts.handle(HealthResult(d.key, "unhealthy", True, run_started_ms=5), 200) == []
    out = ts.handle(HealthResult(d.key, "unhealthy", True, run_started_ms=100), 200)
    assert Kill(d.key) in out and ts.tasks[d.key].stop_reason == "unhealthy"


def test_machine_down_kills_running_tasks_and_forgets_them() -> None:
    ts = TaskStates()
    a, b = desired(0), desired(1, policy="never")
    ts.handle(DesiredSet((a, b)), 0)
    ts.handle(Started(a.key), 0)
    ts.handle(Started(b.key), 0)
    ts.handle(Exited(b.key, 0), 5)  # finished, not yet reported: kept
    assert ts.handle(MachineDown(), 10) == [Kill(a.key)]
    assert ts.handle(Tick(), 11) == []
    ts.handle(Exited(a.key, -15), 12)
    assert ts.handle(MachineDownDone(), 13) == [Forget(a.key), Persist()]
    assert list(ts.tasks) == [b.key]


def test_forgotten_task_index_starts_its_counter_retention() -> None:
    ts = TaskStates()
    d = desired(policy="never")
    ts.handle(DesiredSet((d,)), 0)
    ts.handle(Started(d.key), 0)
    ts.handle(Exited(d.key, 1), 5)
    assert ts.handle(DesiredSet((), frozenset({d.key})), 7) == [Forget(d.key), Persist()]
    assert ts.counters.forgotten_at_ms == {("j", 0): 7}
