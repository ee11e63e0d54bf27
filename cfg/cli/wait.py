"""`--wait`: live progress per job until its tasks are ready (the master's verdict), finished
or stopped."""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field

from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from cfg.cli.base import (
    Ctx,
    fail,
)
from cfg.model import (
    RUNNING,
    TERMINAL_TASK_STATES,
    RolloutState,
    rollout_state,
)
from proto.borg.v1 import borg_pb2 as pb


@dataclass
class JobProgress:
    """Where one job stands while `--wait` watches it (pure: computed from a `pb.Job`)."""

    name: str
    done: int = 0
    total: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    failed: str = ""
    # tasks of the current version that keep restarting: "web/0 (3 restarts, last: exit: 1)"
    crash_looping: list[str] = field(default_factory=list)
    # Said instead of "ready" when finished short of it on purpose (a canary stage).
    outcome: str = ""

    def detail(self) -> str:
        order = ["running", "pending", "assigned", "succeeded", "failed", "killed", "lost"]
        keys = [k for k in order if k in self.counts] + sorted(set(self.counts) - set(order))
        parts = [f"{self.counts[k]} {k}" for k in keys]
        if self.crash_looping:
            parts.append(f"{len(self.crash_looping)} crash-looping")
        return ", ".join(parts) or "no tasks"


def last_exit(t: pb.Task) -> str:
    if t.reason:
        return t.reason
    return f"exit {t.exit_code}" if t.exit_code >= 0 else "unknown"


def job_progress(job: pb.Job | None, name: str, until: str) -> JobProgress:
    """`until` is "up" (running on the job's version / finished) or "down" (all stopped).

    Readiness is the master's verdict (`Job.ready`, `Task.ready`, judged with its clock):
    borgcfg only counts, so a client clock that is off changes nothing."""
    p = JobProgress(name)
    if job is None:
        p.finished = until == "down"
        p.failed = "" if until == "down" else "job does not exist"
        return p
    for t in job.tasks:
        p.counts[t.state] = p.counts.get(t.state, 0) + 1
    p.total = max(1, len(job.tasks) if until == "down" else int(job.replicas))
    if until == "down":
        p.done = sum(1 for t in job.tasks if t.state in TERMINAL_TASK_STATES)
        p.finished = p.done >= len(job.tasks)
        if p.finished:
            p.done = p.total
        return p
    if "schedule" in job.spec.fields and until == "up":
        # A periodic job has no tasks of its own: submitted is all `up` does.
        p.finished, p.done, p.outcome = True, p.total, "scheduled"
        return p
    if job.kind == "batch":
        p.done = p.counts.get("succeeded", 0)
        p.finished = job.state in ("succeeded", "failed", "killed")
        if job.state in ("failed", "killed"):
            p.failed = f"job {job.state}"
        return p
    p.done = int(job.ready)
    p.crash_looping = [
        f"{job.name}/{t.index} ({t.restarts} restart{'s' if t.restarts != 1 else ''}, "
        f"last: {last_exit(t)})"
        for t in job.tasks
        if t.version == job.version and t.restarts > 0 and t.state == RUNNING and not t.ready
    ]
    rollout = rollout_state(job.rollout)
    if rollout is RolloutState.HALTED:
        p.finished, p.failed = True, job.rollout
    elif rollout is RolloutState.CANARY:
        # Stopped at its canary on purpose: done until `promote` (nothing more will move).
        p.finished = True
        p.outcome = f"canary on version {job.version} (borgcfg promote {job.name} to go on)"
    elif job.state in ("failed", "killed"):
        p.finished, p.failed = True, f"job {job.state}"
    elif job.state == "succeeded":
        p.finished = True  # a service whose tasks all exited 0 and are not restarted
        p.done = p.total
    else:
        p.finished = p.done >= job.replicas and rollout is not RolloutState.ROLLING
    return p


def _stderr_console() -> Console:
    """rich's console for the live bars: the terminal's width on a TTY; off one, wide enough
    that no summary line is wrapped, without colour codes."""
    if sys.stderr.isatty():
        return Console(stderr=True, highlight=False)
    return Console(
        file=sys.stderr, width=500, no_color=True, highlight=False, soft_wrap=True, emoji=False
    )


def wait_jobs(ctx: Ctx, names: list[str], timeout: float, until: str) -> None:
    """A live bar per job with its task counts, then one summary line per job.

    Exit 1 when a job fails or the timeout passes (the summary says where each job stood).
    """
    ctx.client.discover()
    start = time.monotonic()
    deadline = start + timeout
    latest: dict[str, JobProgress] = {}
    err = _stderr_console()
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        bars = {n: progress.add_task(n, total=1, detail="") for n in names}
        pending = list(names)
        while pending:
            for n in list(pending):
                p = job_progress(ctx.client.get_job(n), n, until)
                latest[n] = p
                progress.update(bars[n], completed=p.done, total=p.total, detail=p.detail())
                if p.finished:
                    pending.remove(n)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    took = time.monotonic() - start
    failed: list[str] = []
    for n in names:
        p = latest[n]
        verb = "stopped" if until == "down" else "ready"
        if p.failed:
            mark, failed = "[red]✗[/]", [*failed, n]
            what = p.failed
        elif p.finished:
            mark, what = "[green]✓[/]", p.outcome or verb
        else:
            mark, what = "[yellow]…[/]", "timed out"
        err.print(f"{mark} {escape(n)}: {escape(what)} ({p.done}/{p.total}; {escape(p.detail())})")
    stuck = [n for n in names if not latest[n].finished]
    if stuck:
        looping = [t for n in stuck for t in latest[n].crash_looping]
        why = f"; crash-looping: {', '.join(looping)}" if looping else ""
        fail(f"timed out after {timeout:g}s waiting for {', '.join(stuck)}{why}", 1)
    if failed:
        fail(f"job(s) failed: {', '.join(failed)} (see borgcfg status, borgcfg why)", 1)
    err.print(f"done in {took:.1f}s")
