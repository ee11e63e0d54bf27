"""Periodic jobs: schedules (cfg/periodic.py), the leader's due launches (controllers.py) and
the store's LaunchPeriodic (concurrency, history_limit, idempotence across a failover)."""

from __future__ import annotations

from typing import Any

import pytest

from borgmaster import commands as C
from borgmaster import controllers
from borgmaster.model import BATCH, FAILED, KILLED, RUNNING, SUCCEEDED, Periodic
from borgmaster.store import Store
from cfg import periodic
from tests.unit.test_store import Cell, spec

T0 = 1_800_000_000_000  # a whole minute, in ms


def test_every_counts_from_creation_and_catches_up_a_few_missed_runs() -> None:
    s = periodic.parse("@every 30s")
    assert periodic.due(s, 0, T0, T0 + 29_999) == 0
    assert periodic.due(s, 0, T0, T0 + 30_000) == T0 + 30_000
    assert periodic.due(s, T0 + 30_000, T0, T0 + 95_000) == T0 + 60_000  # then 90_000
    # Far behind (an outage of hours): only the latest.
    assert periodic.due(s, T0 + 30_000, T0, T0 + 3_600_000) == T0 + 3_600_000


def test_cron_in_a_time_zone() -> None:
    s = periodic.parse("0 3 * * *", "Europe/Paris")
    nxt = periodic.next_after(s, T0, T0)
    assert nxt > T0 and periodic.next_after(s, nxt, T0) - nxt == 86_400_000
    hourly = periodic.parse("@hourly")
    assert periodic.next_after(hourly, T0, T0) % 3_600_000 == 0


@pytest.mark.parametrize(
    ("text", "why"),
    [
        ("* * *", "expected 5 cron fields"),
        ("* * * * * *", "expected 5 cron fields"),
        ("61 * * * *", "not a valid cron expression"),
        ("@every 500ms", "at least 1s"),
        ("@every soon", "@every:"),
        ("x" * 300, "longer than"),
    ],
)
def test_bad_schedules_say_why(text: str, why: str) -> None:
    with pytest.raises(ValueError, match=why):
        periodic.parse(text)


def periodic_job(cell: Cell, concurrency: str = "forbid", history_limit: int = 3) -> None:
    p = Periodic("@every 60s", concurrency, history_limit)
    s = spec("tick", replicas=1, kind=BATCH, user="alice", periodic=p)
    cell.apply(C.SubmitJob(ts_ms=T0, spec=s, user="alice"))


def launch(cell: Cell, at: int, **kw: Any) -> dict[str, Any]:
    return cell.apply(C.LaunchPeriodic(ts_ms=at + 5, job="tick", scheduled_ms=at, **kw))


def finish(cell: Cell, job: str, state: str = SUCCEEDED) -> None:
    cell.place(job, 0, "m1")
    cell.update(job, 0, RUNNING)
    if state != RUNNING:
        cell.update(job, 0, state, exit_code=0 if state == SUCCEEDED else 1)


def test_a_periodic_job_is_a_template_without_tasks_or_quota() -> None:
    cell = Cell()
    periodic_job(cell)
    job = cell.store.jobs["tick"]
    assert cell.store.job_tasks("tick") == [] and job.state == RUNNING
    assert cell.store.quota_used("alice", "batch").cpu == 0
    assert cell.store.periodic == {"tick"}
    assert controllers.due_launches(cell.store, T0 + 59_000) == []
    assert controllers.due_launches(cell.store, T0 + 61_000) == [("tick", T0 + 60_000)]


def test_launch_starts_a_child_once_per_fire_time() -> None:
    cell = Cell()
    cell.machine("m1")
    periodic_job(cell)
    res = launch(cell, T0 + 60_000)
    child = f"tick-{(T0 + 60_000) // 1000}"
    assert res == {"name": child, "result": "launched"}
    c = cell.store.jobs[child]
    assert c.parent == "tick" and c.spec.periodic is None and c.spec.kind == BATCH
    assert len(cell.store.job_tasks(child)) == 1
    assert cell.store.jobs["tick"].children == [child]
    # A new leader deciding the same run again (or a stale one) changes nothing.
    again = launch(cell, T0 + 60_000)
    assert again["error"] == "invalid" and "already launched" in again["message"]
    assert controllers.due_launches(cell.store, T0 + 61_000) == []
    cell.apply(C.LeaderElected(term=7))
    assert launch(cell, T0 + 120_000, term=6)["error"] == "stale-leader"


def test_concurrency_forbid_skips_allow_runs_beside_replace_kills() -> None:
    for policy, expect in (("forbid", "skipped"), ("allow", "launched"), ("replace", "launched")):
        cell = Cell()
        cell.machine("m1")
        periodic_job(cell, concurrency=policy)
        launch(cell, T0 + 60_000)
        first = f"tick-{(T0 + 60_000) // 1000}"
        finish(cell, first, RUNNING)
        assert launch(cell, T0 + 120_000)["result"] == expect, policy
        kinds = [e.type for e in cell.store.events if e.job == "tick"]
        assert kinds[-1] == ("launch-skipped" if policy == "forbid" else "launched")
        first_state = cell.store.jobs[first].state
        assert first_state == (KILLED if policy == "replace" else RUNNING), policy
        assert cell.store.jobs["tick"].last_scheduled_ms == T0 + 120_000


def test_history_limit_keeps_the_newest_finished_children() -> None:
    cell = Cell()
    cell.machine("m1")
    periodic_job(cell, history_limit=2)
    names = []
    for k in range(1, 6):
        at = T0 + k * 60_000
        launch(cell, at)
        names.append(f"tick-{at // 1000}")
        finish(cell, names[-1], SUCCEEDED if k % 2 else FAILED)
    launch(cell, T0 + 6 * 60_000)  # prunes at the launch
    kept = cell.store.jobs["tick"].children
    assert kept == [*names[-2:], f"tick-{(T0 + 6 * 60_000) // 1000}"]
    assert all(n not in cell.store.jobs for n in names[:-2])


def test_down_stops_the_schedule_and_its_running_children() -> None:
    cell = Cell()
    cell.machine("m1")
    periodic_job(cell, concurrency="allow")
    launch(cell, T0 + 60_000)
    child = f"tick-{(T0 + 60_000) // 1000}"
    finish(cell, child, RUNNING)
    cell.apply(C.KillJob(ts_ms=T0 + 70_000, name="tick"))
    assert cell.store.jobs[child].killed and cell.store.periodic == set()
    assert launch(cell, T0 + 120_000)["error"] == "not-found"


def test_switching_periodic_on_a_live_job_is_refused_and_state_survives_snapshots() -> None:
    cell = Cell()
    cell.machine("m1")
    periodic_job(cell)
    plain = spec("tick", replicas=1, kind=BATCH, user="alice")
    res = cell.apply(C.SubmitJob(ts_ms=T0 + 1, spec=plain, user="alice"))
    assert res["error"] == "invalid" and res["message"].startswith("schedule: job 'tick'")
    launch(cell, T0 + 60_000)
    copy = Store()
    copy.load_snapshot(cell.store.snapshot_bytes())
    assert copy.periodic == {"tick"} and copy.digest() == cell.store.digest()
    assert copy.jobs["tick"].last_scheduled_ms == T0 + 60_000


def test_the_ui_job_page_shows_schedule_next_run_and_children() -> None:
    from borgmaster.http import job_detail, render_job

    cell = Cell()
    cell.machine("m1")
    periodic_job(cell)
    launch(cell, T0 + 60_000)
    d = job_detail(cell.store, "tick")
    assert d is not None
    assert d.schedule == "@every 60s (UTC)" and d.next_run_ms > T0 + 60_000
    assert (d.next_run_ms - T0) % 60_000 == 0
    page = render_job(d)
    child = f"tick-{(T0 + 60_000) // 1000}"
    assert "<dt>next run</dt>" in page and f"<a href='/jobs/{child}'>{child}</a>" in page


def test_a_child_over_quota_is_refused_with_an_event_and_the_run_counts_as_done() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.apply(C.SetQuota(user="alice", band="batch", limit=C.QuotaLimit(cpu=0.5)))
    periodic_job(cell)  # the template itself is not charged
    res = launch(cell, T0 + 60_000)
    assert res["error"] == "quota"
    ev = cell.store.events[-1]
    assert ev.type == "launch-failed" and ev.message.startswith(f"tick-{(T0 + 60_000) // 1000}: ")
    assert cell.store.jobs["tick"].last_scheduled_ms == T0 + 60_000  # not retried every pass
    assert cell.store.jobs["tick"].children == []
