"""Reading jobs: `status`, `endpoints`, and a task's `logs` and `why`."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from cfg.cli.base import (
    Ctx,
    emit_json,
    fail,
    handles_errors,
    output_option,
)
from cfg.cli.output import (
    age,
    make_console,
    show,
    styled,
    table,
)
from cfg.cli.term import Table, escape
from cfg.units import human_size
from proto.borg.v1 import borg_pb2 as pb


def job_json(job: pb.Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "user": job.user,
        "priority": job.priority,
        "kind": job.kind,
        "replicas": job.replicas,
        "state": job.state,
        "version": job.version,
        "running": job.running,
        "ready": job.ready,
        "rollout": job.rollout,
        "tasks": [
            {
                "index": t.index,
                "state": t.state,
                "machine": t.machine or None,
                "version": t.version,
                "restarts": t.restarts,
                "exit_code": None if t.exit_code == -1 else t.exit_code,
                "reason": t.reason,
                "health": t.health or None,
                "cpu_seconds": t.cpu_seconds,
                "memory_bytes": t.memory_bytes,
                "ports": dict(t.ports),
                "ready": t.ready,
                "gpus": list(t.gpus),
            }
            for t in job.tasks
        ],
    } | periodic_json(job)


def is_periodic(job: pb.Job) -> bool:
    return "schedule" in job.spec.fields


def periodic_json(job: pb.Job) -> dict[str, Any]:
    """A periodic job's schedule and children (SPEC: `children`); a child's parent."""
    out: dict[str, Any] = {}
    if is_periodic(job):
        out["schedule"] = job.spec.fields["schedule"].string_value
        out["children"] = list(job.children)
        out["last_run_ms"] = job.last_run_ms or None
        out["next_run_ms"] = job.next_run_ms or None
    if job.parent:
        out["parent"] = job.parent
    return out


def jobs_json(jobs: list[pb.Job]) -> list[dict[str, Any]]:
    return [
        {
            "name": j.name,
            "user": j.user,
            "priority": j.priority,
            "state": j.state,
            "running": j.running,
            "replicas": j.replicas,
            "kind": j.kind,
            "version": j.version,
        }
        for j in jobs
    ]


def job_table(j: pb.Job) -> tuple[str, Table]:
    """The header line and task table of `status JOB`; health and usage columns appear only
    when some task reports them."""
    head = (
        f"[bold]{escape(j.name)}[/]  {styled(j.state)}  user {escape(j.user)}  "
        f"priority {j.priority}  {j.kind}  version {j.version}  "
        f"{j.running}/{j.replicas} running  age {age(j.created_ms)}"
    )
    if j.rollout:
        head += f"\n[yellow]{escape(j.rollout)}[/]"
    if is_periodic(j):
        when = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(j.next_run_ms / 1000))
        head += f"\nschedule {escape(j.spec.fields['schedule'].string_value)}"
        head += f"  next run {when if j.next_run_ms else '-'}"
        head += f"\nchildren: {escape(', '.join(j.children)) or '-'}"
    if j.parent:
        head += f"\nstarted by periodic job {escape(j.parent)}"
    health = any(t.health for t in j.tasks)
    usage = any(t.cpu_seconds or t.memory_bytes for t in j.tasks)
    gpus = any(t.gpus for t in j.tasks)
    cols = ["INDEX", "STATE"] + (["HEALTH"] if health else []) + ["MACHINE", "VERSION"]
    cols += ["GPUS"] if gpus else []
    cols += ["RESTARTS", "EXIT"] + (["CPU", "MEM"] if usage else []) + ["AGE", "REASON"]
    t = table(*cols)
    for task in j.tasks:
        row = [str(task.index), styled(task.state)]
        if health:
            row.append(styled(task.health) if task.health else "-")
        row += [escape(task.machine or "-"), str(task.version)]
        if gpus:
            row.append(escape(",".join(task.gpus) or "-"))
        row.append(str(task.restarts))
        row.append("-" if task.exit_code == -1 else str(task.exit_code))
        if usage:
            row += [f"{task.cpu_seconds:.1f}s", human_size(task.memory_bytes)]
        row += [age(task.updated_ms), escape(task.reason or "")]
        t.add_row(*row)
    return head, t


@click.command()
@click.argument("job", required=False)
@output_option
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def status(ctx: Ctx, job: str | None, output: str, stale: bool) -> None:
    """Table of jobs, or one JOB with its tasks."""
    console = make_console()
    if job:
        j = ctx.client.get_job(job, stale=stale)
        if j is None:
            fail(f"job '{job}' does not exist", 1)
        if output == "json":
            emit_json(job_json(j))
            return
        head, t = job_table(j)
        console.print(head)
        show(console, t)
        return
    jobs = ctx.client.list_jobs(stale=stale)
    if output == "json":
        emit_json(jobs_json(jobs))
        return
    if not jobs:
        click.echo("no jobs", err=True)
        return
    t = table("NAME", "USER", "PRIORITY", "KIND", "STATE", "RUNNING", "VERSION", "AGE")
    for j in jobs:
        t.add_row(
            escape(j.name),
            escape(j.user),
            str(j.priority),
            j.kind,
            styled(j.state),
            f"{j.running}/{j.replicas}",
            str(j.version),
            age(j.created_ms),
        )
    show(console, t)


def endpoint_json(e: pb.Endpoint) -> dict[str, Any]:
    return {
        "index": e.index,
        "machine": e.machine,
        "host": e.host,
        "ports": dict(e.ports),
        "healthy": e.healthy,
        "name": e.name,
    }


@click.command()
@click.argument("job")
@output_option
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def endpoints(ctx: Ctx, job: str, output: str, stale: bool) -> None:
    """JOB's running tasks: BNS name, machine, host and ports (what its DNS names serve)."""
    eps = ctx.client.endpoints(job, stale=stale)
    if output == "json":
        emit_json([endpoint_json(e) for e in eps])
        return
    if not eps:
        click.echo(f"job {job}: no running tasks", err=True)
        return
    t = table("INDEX", "NAME", "MACHINE", "HOST", "PORTS", "HEALTHY")
    for e in eps:
        ports = " ".join(f"{k}={v}" for k, v in sorted(e.ports.items())) or "-"
        t.add_row(
            str(e.index),
            escape(e.name),
            escape(e.machine),
            escape(e.host or "-"),
            escape(ports),
            styled("healthy" if e.healthy else "unhealthy"),
        )
    show(make_console(), t)


def parse_task_ref(ref: str) -> tuple[str, int]:
    name, sep, idx = ref.partition("/")
    if not sep or not name or not idx.isdigit():
        raise click.UsageError(f"TASK must be JOB/INDEX (e.g. web/0), got '{ref}'")
    return name, int(idx)


@click.command()
@click.argument("task")
@click.option("--stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.pass_obj
@handles_errors
def logs(ctx: Ctx, task: str, stderr: bool, follow: bool) -> None:
    """A task's output: TASK is JOB/INDEX (e.g. web/0)."""
    name, idx = parse_task_ref(task)
    job = ctx.client.get_job(name)
    if job is None:
        fail(f"job '{name}' does not exist", 1)
    matches = [t for t in job.tasks if t.index == idx]
    if not matches:
        fail(f"job '{name}' has no task {idx} (it has {job.replicas})", 1)
    if not matches[0].machine:
        fail(f"task {task} has not been placed on a machine (see borgcfg why {task})", 1)
    out = sys.stdout.buffer
    for chunk in ctx.client.logs(name, idx, stderr, follow, matches[0].incarnation):
        out.write(chunk)
        out.flush()


@click.command()
@click.argument("task")
@output_option
@click.pass_obj
@handles_errors
def why(ctx: Ctx, task: str, output: str) -> None:
    """Why TASK (JOB/INDEX) is where it is, or pending: machines rejected per filter."""
    name, idx = parse_task_ref(task)
    res = ctx.client.explain(name, idx)
    rejected = sorted(res.rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    if output == "json":
        emit_json(
            {
                "task": f"{name}/{idx}",
                "state": res.state,
                "machine": res.machine or None,
                "reason": res.reason,
                "machines": res.machines,
                "feasible": res.feasible,
                "rejected": dict(rejected),
            }
        )
        return
    console = make_console()
    where = f" on {escape(res.machine)}" if res.machine else ""
    console.print(f"[bold]{escape(name)}/{idx}[/]: {styled(res.state)}{where}")
    if res.reason:
        console.print(f"reason: {escape(res.reason)}")
    console.print(f"{res.feasible} of {res.machines} machines feasible now")
    if rejected:
        t = table("FILTER", "MACHINES REJECTED")
        for k, v in rejected:
            t.add_row(escape(k), str(v))
        show(console, t)
