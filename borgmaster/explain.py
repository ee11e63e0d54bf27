"""`why JOB/INDEX`: how many machines each feasibility check rejects for a task, right now.

Uses the scheduler's own `explain` when it has one (so the answer matches what the scheduler
does); otherwise counts the basic resource and machine-state checks.
"""

from __future__ import annotations

from typing import Any

from borgmaster.model import MACHINE_UP, JobSpec
from borgmaster.scheduler import Snapshot


def explain_task(
    scheduler: Any, snap: Snapshot, spec: JobSpec, job: str, index: int
) -> tuple[dict[str, int], int]:
    fn = getattr(scheduler, "explain", None)
    if fn is not None:
        try:
            got, n = fn(snap, job, index)
            return dict(got), int(n)
        except KeyError:
            pass  # not pending (running, finished): the basic counts still say what fits now
    rejected: dict[str, int] = {}
    feasible = 0
    req = spec.requirements
    for m in snap.machines:
        reasons = []
        if m.state != MACHINE_UP:
            reasons.append(m.state)
        else:
            free_cpu = m.capacity.cpu - m.used.cpu
            if req.cpu > free_cpu + 1e-9:
                reasons.append("cpu")
            if req.ram > m.capacity.ram - m.used.ram:
                reasons.append("ram")
            if req.disk > m.capacity.disk - m.used.disk:
                reasons.append("disk")
            if req.gpu > m.capacity.gpu - m.used.gpu:
                reasons.append("gpu")
        for r in reasons:
            rejected[r] = rejected.get(r, 0) + 1
        if not reasons:
            feasible += 1
    return rejected, feasible
