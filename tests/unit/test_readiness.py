"""The master's readiness rule (borgmaster/readiness.py) and its place in the API: a task is
judged with the master's clock and reported as `ready`; borgcfg only counts it."""

from __future__ import annotations

from borgmaster.convert import job_pb
from borgmaster.model import Job, JobSpec, RestartPolicy, Task
from borgmaster.readiness import task_ready
from cfg.cli.wait import job_progress
from proto.borg.v1 import borg_pb2 as pb


def test_task_ready_needs_a_stable_running_task() -> None:
    now = 1_000_000
    t = pb.Task(state="running", updated_ms=now - 999, exit_code=-1)
    assert not task_ready(t, False, 1000, now)
    t.updated_ms = now - 1000
    assert task_ready(t, False, 1000, now)
    t.state = "pending"
    assert not task_ready(t, False, 1000, now)
    # a health check must pass too
    t.state = "running"
    assert not task_ready(t, True, 1000, now)
    t.health = "healthy"
    assert task_ready(t, True, 1000, now)
    # restarted: must outlast the Borglet's backoff (1s, 2s, 4s...) as well
    t = pb.Task(state="running", restarts=3, updated_ms=now - 4999, exit_code=1)
    assert not task_ready(t, False, 1000, now)
    t.updated_ms = now - 5000
    assert task_ready(t, False, 1000, now)
    # a restart long ago does not block readiness forever
    t.restarts, t.updated_ms = 50, now - 3_600_000
    assert task_ready(t, False, 1000, now)


def job_with(tasks: list[Task], version: int = 2) -> Job:
    spec = JobSpec(name="web", replicas=len(tasks), restart=RestartPolicy(backoff_ms=1000))
    return Job(spec=spec, state="running", version=version)


def test_the_api_reports_ready_tasks_of_the_current_version_by_the_masters_clock() -> None:
    now = 5_000_000
    tasks = [
        Task(job="web", index=0, state="running", version=2, updated_ms=now - 10_000),
        Task(job="web", index=1, state="running", version=2, updated_ms=now - 10),  # too new
        Task(job="web", index=2, state="running", version=1, updated_ms=now - 10_000),  # old
        Task(job="web", index=3, state="pending", version=2),
    ]
    msg = job_pb(job_with(tasks), tasks, None, now_ms=now)
    assert [t.ready for t in msg.tasks] == [True, False, False, False]
    assert msg.ready == 1
    # the client only counts what the master said, whatever its own clock says
    p = job_progress(msg, "web", "up")
    assert (p.done, p.total, p.finished) == (1, 4, False)
    later = job_pb(job_with(tasks), tasks, None, now_ms=now + 2_000)
    assert later.ready == 2
