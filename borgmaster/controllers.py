"""Leader-only controllers as pure decisions over the store: rollouts, drains, garbage.

Each function reads the store (the caller holds its lock) and returns what to propose; the
leader's loop in server.py turns that into fenced Raft commands. Level-triggered: running a
decision twice on the same state gives the same answer, and the commands it yields are safe
to apply late (the store re-checks incarnations and versions).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from borgmaster import commands as C
from borgmaster.model import (
    BATCH,
    FAILED,
    MACHINE_DRAINING,
    RUNNING,
    SUCCEEDED,
    Job,
    Task,
)
from borgmaster.store import ACTIVE_STATES, Store
from cfg import periodic
from cfg.model import MIN_READY_MS, RolloutState, halted_rollout, rollout_state

# A new-version task that has restarted this often is crash-looping: halt the rollout.
ROLLOUT_MAX_RESTARTS = 3
# A new-version task counts as available only after running unchanged for MIN_READY_MS
# (cfg.model; like Kubernetes' minReadySeconds), so a task that starts and dies at once cannot
# fake progress.


@dataclass
class JobActions:
    """What the controllers want done to one job now."""

    job: str
    version: int
    replace_update: list[C.TaskRef] = field(default_factory=list)
    replace_drain: list[C.TaskRef] = field(default_factory=list)
    rollout_status: str | None = None  # set when it should change
    revert: str = ""  # update.auto_revert: roll this version back, for this reason


def available(store: Store, job: Job, t: Task, now_ms: int | None = None) -> bool:
    """Running, and healthy when the task's spec has a health check. With `now_ms`, a task of
    the job's current version must also have run unchanged for MIN_READY_MS without a
    restart while a rollout is in progress."""
    if t.state != RUNNING:
        return False
    spec = job.spec_for(t.version)
    if spec.health is not None and t.health != "healthy":
        return False
    if now_ms is not None and rollout_state(job.rollout).in_progress and t.version == job.version:
        return t.restarts == 0 and now_ms - t.updated_ms >= MIN_READY_MS
    return True


def _failure(job: Job, tasks: list[Task]) -> str:
    """Why the rollout's new version is failing (the first of its tasks that failed,
    restarted ROLLOUT_MAX_RESTARTS times or turned unhealthy), or ""."""
    for t in tasks:
        if t.version != job.version:
            continue
        why = ""
        if t.state == FAILED:
            why = f"failed ({t.reason or f'exit {t.exit_code}'})"
        elif t.restarts >= ROLLOUT_MAX_RESTARTS:
            why = f"restarted {t.restarts} times ({t.reason or 'crash loop'})"
        elif t.state == RUNNING and t.health == "unhealthy":
            why = "unhealthy"
        if why:
            return f"task {t.index} on version {job.version} {why}"
    return ""


def _halt_reason(job: Job, tasks: list[Task]) -> str:
    why = _failure(job, tasks)
    return halted_rollout(why) if why else ""


def in_canary(job: Job, replicas: int) -> bool:
    """Whether the job's current version is still in its canary stage: update.canary set
    (and below the replicas: a canary of all of them is a plain rollout), not promoted."""
    canary = job.spec.update.canary
    return 0 < canary < replicas and job.canary_passed != job.version


def revertible(job: Job) -> bool:
    """update.auto_revert, a previous version to return to, and not itself made by a revert
    (reverting that would bring back the version that just failed: it halts instead)."""
    return (
        job.spec.update.auto_revert
        and job.previous_version > 0
        and job.previous_version in job.history
        and job.reverted_to != job.version
    )


def replace_budget(store: Store, job: Job, tasks: list[Task], now_ms: int | None = None) -> int:
    """How many available tasks may be taken down now: the available ones (of any version,
    surge tasks included) above the floor of `replicas - max_unavailable` (Kubernetes'
    rule). Without surge tasks this is `max_unavailable - unavailable replicas`, as before;
    with them, `max_unavailable: 0` works: a replica goes only once a surge task stands in
    for it. A job with no surge tasks (none configured, not rolling, a batch job) still
    moves one at a time, so a drain can always make progress."""
    max_unavailable = job.spec.update.max_unavailable
    if job.surge == 0:
        max_unavailable = max(1, max_unavailable)
    up = sum(1 for t in tasks if available(store, job, t, now_ms))
    return up - (job.spec.replicas - max_unavailable)


def plan_job(store: Store, job: Job, now_ms: int | None = None) -> JobActions | None:
    """Rolling-update and drain replacements for one job, within its max_unavailable (and
    its surge tasks' extra capacity, see `replace_budget`)."""
    if job.killed:
        return None
    tasks = store.job_tasks(job.name)
    # The replicas proper; surge tasks (indexes >= replicas) are extra capacity that goes
    # when the rollout is done, so they neither need replacing nor hold up its end.
    replicas = [t for t in tasks if t.index < job.spec.replicas]
    out = JobActions(job=job.name, version=job.version)
    budget = replace_budget(store, job, tasks, now_ms)

    draining = [
        t
        for t in tasks
        if t.state in ACTIVE_STATES
        and (m := store.machines.get(t.machine)) is not None
        and m.state == MACHINE_DRAINING
    ]
    # Tasks that are already unavailable cost nothing to move; available ones spend budget.
    for t in sorted(draining, key=lambda t: (available(store, job, t, now_ms), t.index)):
        if available(store, job, t, now_ms):
            if budget <= 0:
                continue
            budget -= 1
        out.replace_drain.append(C.TaskRef(t.index, t.incarnation))
    moving = {r.index for r in out.replace_drain}

    state = rollout_state(job.rollout)
    canary = in_canary(job, len(replicas))
    if state.in_progress:
        failing = _failure(job, tasks)
        if job.spec.kind == BATCH and job.state in (SUCCEEDED, FAILED):
            out.rollout_status = ""  # a finished batch job has nothing left to roll
        elif failing and revertible(job):
            out.revert = failing
        elif failing:
            out.rollout_status = halted_rollout(failing)
        elif state is RolloutState.CANARY:
            pass  # waits for `borgcfg promote`
        elif canary and sum(1 for t in replicas if t.version == job.version) >= (
            job.spec.update.canary
        ):
            new = [t for t in replicas if t.version == job.version]
            if all(available(store, job, t, now_ms) for t in new):
                out.rollout_status = RolloutState.CANARY.value
        elif all(t.version == job.version for t in replicas):
            if all(available(store, job, t, now_ms) or t.state == SUCCEEDED for t in replicas):
                out.rollout_status = ""  # done: every replica on the new version and ready
        else:
            outdated = [
                t
                for t in replicas
                if t.version != job.version and t.state in ACTIVE_STATES and t.index not in moving
            ]
            # In the canary stage, only as many as make up update.canary new-version replicas.
            room = len(outdated)
            if canary:
                room = job.spec.update.canary - sum(1 for t in replicas if t.version == job.version)
            for t in sorted(outdated, key=lambda t: (available(store, job, t, now_ms), t.index)):
                if room <= 0:
                    break
                if available(store, job, t, now_ms):
                    if budget <= 0:
                        continue
                    budget -= 1
                out.replace_update.append(C.TaskRef(t.index, t.incarnation))
                room -= 1
    if out.replace_update or out.replace_drain or out.rollout_status is not None or out.revert:
        return out
    return None


def plan_all(store: Store, now_ms: int | None = None) -> list[JobActions]:
    """Decisions for every job that may need one: jobs mid-rollout and jobs with tasks on a
    draining machine. Cheap when nothing is rolling or draining (no scan of all tasks)."""
    names = set(store.rolling)
    for m in store.machines.values():
        if m.state == MACHINE_DRAINING:
            for key in store.tasks_by_machine.get(m.name, ()):
                if store.tasks[key].state in ACTIVE_STATES:
                    names.add(key[0])
    out = []
    for name in sorted(names):
        a = plan_job(store, store.jobs[name], now_ms)
        if a is not None:
            out.append(a)
    return out


def due_launches(store: Store, now_ms: int) -> list[tuple[str, int]]:
    """Periodic jobs with a run due now, and the fire time of that run (cfg/periodic.py:
    the first after the last one launched, which the store keeps; one per job per pass)."""
    out = []
    for name in sorted(store.periodic):
        job = store.jobs.get(name)
        if job is None or job.killed or job.spec.periodic is None:
            continue
        p = job.spec.periodic
        s = periodic.parsed(p.schedule, p.time_zone)
        if s is None:
            continue
        t = periodic.due(s, job.last_scheduled_ms, job.created_ms, now_ms)
        if t:
            out.append((name, t))
    return out


def gc_candidates(store: Store, now_ms: int, retention_ms: int) -> list[str]:
    """Killed or finished jobs older than the retention, with nothing left running."""
    out = []
    for name, job in sorted(store.jobs.items()):
        finished_ms = 0
        if job.killed:
            finished_ms = job.killed_ms
        elif job.state in (SUCCEEDED, FAILED) and job.spec.kind == "batch":
            finished_ms = max((t.updated_ms for t in store.job_tasks(name)), default=0)
        if not finished_ms or now_ms - finished_ms < retention_ms:
            continue
        if any(t.state in ACTIVE_STATES for t in store.job_tasks(name)):
            continue
        out.append(name)
    return out
