"""`borgcfg plan`: what submitting some specs would do, placements included, changing nothing.

The leader answers it on a private copy of its store (`Store.load_snapshot` of its own
snapshot): the specs are applied there by the store's own `SubmitJob` (so created / updated /
unchanged, quota and run_as refusals are exactly what `up` would get), every placed task of
an older version is replaced and the rollout marked done (the end state of the rolling update
the controllers would run), and one pass of the real scheduler places what is pending. Nothing
here proposes, and the copy is dropped afterwards.

Pure apart from the copy it builds: the caller passes the time and the incarnation ids.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from borgmaster import commands as C
from borgmaster.model import JobSpec
from borgmaster.planner import build_snapshot
from borgmaster.scheduler import Scheduler
from borgmaster.store import ACTIVE_STATES, Store

MAX_PLAN_JOBS = 1000
"""Specs one plan may hold (each is also held to the API's spec size limit)."""
MAX_REASONS = 3
"""Unplaceable reasons reported per job (the most common ones)."""

PLAN_LOCK = threading.Lock()
"""One plan at a time per replica: each holds a whole copy of the state while it runs."""


@dataclass
class JobPreview:
    """What `up` would do to one job: the change, and where its tasks would run after it."""

    job: str
    change: str  # created | updated | unchanged | rejected
    version: int = 0
    placements: dict[str, int] = field(default_factory=dict)
    unplaceable: int = 0
    preemptions: int = 0
    reasons: list[str] = field(default_factory=list)
    error: str = ""


def copy_of(store: Store) -> Store:
    """A private copy of the store's replicated state (the snapshot codec, so it is exact)."""
    copy = Store()
    copy.load_snapshot(store.snapshot_bytes())
    return copy


def preview(
    copy: Store,
    specs: list[JobSpec],
    user: str,
    scheduler: Scheduler,
    now_ms: int,
    new_id: Callable[[], str],
) -> list[JobPreview]:
    """Apply `specs` to `copy` (a Store nobody else holds) and schedule; see module doc."""
    out: list[JobPreview] = []
    index = copy.applied_index
    accepted: list[JobPreview] = []

    def apply(cmd: C.Command) -> dict[str, Any]:
        nonlocal index
        index += 1
        cmd.ts_ms = now_ms
        return copy.apply(C.encode(cmd), index)

    for spec in specs:
        res = apply(C.SubmitJob(spec=spec, user=user))
        if "error" in res:
            out.append(JobPreview(spec.name, "rejected", error=str(res["message"])))
            continue
        version = int(res["version"])
        p = JobPreview(spec.name, str(res["result"]), version=version)
        out.append(p)
        accepted.append(p)
        if p.change != "updated":
            continue
        # The rollout's end state: every placed task of an older version replaced.
        old = [
            C.TaskRef(t.index, t.incarnation)
            for t in copy.job_tasks(spec.name)
            if t.state in ACTIVE_STATES and t.version != version
        ]
        term = copy.fence_term
        if old:
            apply(C.ReplaceTasks(job=spec.name, tasks=old, reason="updated", term=term))
        if copy.jobs[spec.name].rollout:
            apply(C.SetRollout(job=spec.name, version=version, status="", term=term))
    if not accepted:
        return out
    snap, _ = build_snapshot(copy)
    plan = scheduler.schedule(snap, new_id) if snap.pending else None
    by_job = {p.job: p for p in accepted}
    priority = {name: copy.jobs[name].spec.priority for name in by_job}
    preempted = {(v.job, v.index) for v in plan.preemptions} if plan else set()
    for p in accepted:
        for t in copy.job_tasks(p.job):
            if t.state in ACTIVE_STATES and (t.job, t.index) not in preempted:
                p.placements[t.machine] = p.placements.get(t.machine, 0) + 1
    if plan is None:
        return out
    for pl in plan.placements:
        q = by_job.get(pl.job)
        if q is not None:
            q.placements[pl.machine] = q.placements.get(pl.machine, 0) + 1
    reasons: dict[str, Counter[str]] = {}
    for job, _, why in plan.failures:
        q = by_job.get(job)
        if q is not None:
            q.unplaceable += 1
            reasons.setdefault(job, Counter())[why] += 1
    for job, c in reasons.items():
        by_job[job].reasons = [why for why, _ in c.most_common(MAX_REASONS)]
    # A victim is counted against the first planned job (in file order) placed on its machine
    # at a higher priority: the scheduler evicts only for a task of higher priority there.
    placed_on: dict[str, list[str]] = {}
    for pl in plan.placements:
        if pl.job in by_job:
            placed_on.setdefault(pl.machine, []).append(pl.job)
    order = {p.job: i for i, p in enumerate(accepted)}
    for v in plan.preemptions:
        victim = copy.jobs.get(v.job)
        vprio = victim.spec.priority if victim is not None else 0
        cands = sorted(
            (j for j in set(placed_on.get(v.machine, ())) if priority[j] > vprio),
            key=lambda j: order[j],
        )
        if cands:
            by_job[cands[0]].preemptions += 1
    for p in accepted:
        p.placements = dict(sorted(p.placements.items()))
    return out
