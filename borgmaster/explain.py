"""`why JOB/INDEX`: how many machines each feasibility check rejects for a task, right now.

The answer comes from the scheduler's own filter table (`BorgScheduler.explain`), the steps
it places with, so `why` cannot drift from the decision. A task that is not pending (running,
finished) is explained through the same table: where it would fit now.
"""

from __future__ import annotations

from typing import Any

from borgmaster.model import JobSpec
from borgmaster.scheduler import BorgScheduler, Snapshot, TaskRequest


def explain_task(
    scheduler: Any, snap: Snapshot, spec: JobSpec, job: str, index: int
) -> tuple[dict[str, int], int]:
    """Machines rejected per filter and how many fit, for task job/index of `spec`.

    `scheduler` is the master's; one without a filter table (a test double) is explained
    with a default `BorgScheduler`."""
    sched = scheduler if isinstance(scheduler, BorgScheduler) else BorgScheduler()
    try:
        got, n = sched.explain(snap, job, index)
    except KeyError:
        task = TaskRequest(job=job, index=index, version=0, spec=spec)
        got, n = sched.explain_request(snap, task)
    return dict(got), int(n)
