"""borgcfg: submit and inspect jobs. Tables for people, `-o json` for scripts.

Exit codes (SPEC.md): 0 ok, 1 user error (bad config, unknown job, rejected), 2 usage,
3 cell unreachable. Every failure is one line on stderr, never a traceback.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
from google.protobuf import json_format
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from borgmaster.model import TERMINAL_TASK_STATES
from cfg.client import CellError, Client, Unreachable
from cfg.errors import ConfigError
from cfg.loader import load_file
from cfg.schema import spec_to_config
from cfg.units import format_size
from proto.borg.v1 import borg_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

STATE_STYLE = {
    "running": "green",
    "up": "green",
    "succeeded": "green",
    "leader": "bold green",
    "pending": "yellow",
    "assigned": "yellow",
    "draining": "yellow",
    "candidate": "yellow",
    "failed": "red",
    "lost": "red",
    "unreachable": "red",
    "killed": "dim",
}

err_console = Console(stderr=True)


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"borgcfg: {message}", err=True)
    sys.exit(code)


def handles_errors(fn: F) -> F:
    """Map every expected failure to its exit code and one line on stderr."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            fail(str(e), 1)
        except CellError as e:
            fail(f"rejected: {e.message}", 1)
        except Unreachable as e:
            fail(str(e), 3)
        except KeyboardInterrupt:
            fail("interrupted", 130)

    return wrapper  # type: ignore[return-value]


class Ctx:
    def __init__(self, masters: str, user: str) -> None:
        self.masters = [m.strip() for m in masters.split(",") if m.strip()]
        self.user = user
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        if self._client is None:
            self._client = Client(self.masters)
        return self._client


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{state}[/]" if style else state


def age(ms: int) -> str:
    if not ms:
        return "-"
    s = max(0, int(time.time() - ms / 1000))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2, sort_keys=False))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--master",
    default=lambda: os.environ.get("BORG_MASTER", "127.0.0.1:7070"),
    show_default="$BORG_MASTER or 127.0.0.1:7070",
    help="Master address(es), comma separated.",
)
@click.option("--user", default=lambda: getpass.getuser(), show_default="login name")
@click.option("--tls-dir", type=click.Path(file_okay=False), default=None, hidden=True)
@click.pass_context
def main(ctx: click.Context, master: str, user: str, tls_dir: str | None) -> None:
    """borgcfg: run jobs on a borgcell cell."""
    ctx.obj = Ctx(master, user)


def _kv_opts(values: tuple[str, ...], flag: str) -> dict[str, str]:
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"'{v}' is not KEY=VALUE", param_hint=flag)
        out[k] = val
    return out


def _load(ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...]) -> list[Any]:
    return load_file(
        file,
        ext_str=_kv_opts(ext_str, "--ext-str"),
        tla_str=_kv_opts(tla_str, "--tla-str"),
        default_user=ctx.user,
    )


jsonnet_opts = [
    click.option("--ext-str", multiple=True, help="Jsonnet external variable KEY=VALUE."),
    click.option("--tla-str", multiple=True, help="Jsonnet top-level argument KEY=VALUE."),
]


def with_jsonnet_opts(fn: F) -> F:
    for opt in reversed(jsonnet_opts):
        fn = opt(fn)
    return fn


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@with_jsonnet_opts
@click.pass_obj
@handles_errors
def validate(ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...]) -> None:
    """Evaluate and validate FILE locally (no master needed)."""
    specs = _load(ctx, file, ext_str, tla_str)
    for s in specs:
        click.echo(f"{file}: job {s.name}: ok ({s.kind}, {s.replicas} replicas)")


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@click.option("--wait", is_flag=True, help="Wait until tasks run (service) or finish (batch).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to --wait.")
@with_jsonnet_opts
@click.pass_obj
@handles_errors
def up(
    ctx: Ctx,
    file: str,
    wait: bool,
    timeout: float,
    ext_str: tuple[str, ...],
    tla_str: tuple[str, ...],
) -> None:
    """Create or update every job in FILE."""
    specs = _load(ctx, file, ext_str, tla_str)
    names = []
    for s in specs:
        res = ctx.client.submit(spec_to_config(s), ctx.user)
        click.echo(f"job {res.name}: {res.result} (version {res.version})")
        names.append(res.name)
    if wait:
        _wait_jobs(ctx, names, timeout, until="up")


@main.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until every task has stopped.")
@click.option("--timeout", default=120.0, show_default=True)
@click.pass_obj
@handles_errors
def down(ctx: Ctx, job: str, wait: bool, timeout: float) -> None:
    """Kill JOB's tasks and mark it killed."""
    res = ctx.client.kill(job, ctx.user)
    click.echo(f"job {res.name}: killed ({res.tasks_to_stop} tasks to stop)")
    if wait:
        _wait_jobs(ctx, [job], timeout, until="down")


def _job_done(job: pb.Job, until: str) -> tuple[bool, str]:
    states = [t.state for t in job.tasks]
    if until == "down":
        return all(s in TERMINAL_TASK_STATES for s in states), ""
    if job.state == "failed":
        return True, "failed"
    if job.kind == "batch":
        return job.state in ("succeeded", "failed"), ""
    running = sum(1 for t in job.tasks if t.state == "running" and t.version == job.version)
    return running >= job.replicas, ""


def _wait_jobs(ctx: Ctx, names: list[str], timeout: float, until: str) -> None:
    deadline = time.monotonic() + timeout
    failed: list[str] = []
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=False,
    ) as progress:
        bars = {n: progress.add_task(n, total=1, detail="", start=True) for n in names}
        pending = set(names)
        while pending:
            for n in sorted(pending):
                job = ctx.client.get_job(n)
                if job is None:
                    fail(f"job '{n}' does not exist", 1)
                counts: dict[str, int] = {}
                for t in job.tasks:
                    counts[t.state] = counts.get(t.state, 0) + 1
                total = max(1, len(job.tasks))
                if until == "down":
                    done_n = sum(v for k, v in counts.items() if k in TERMINAL_TASK_STATES)
                elif job.kind == "batch":
                    done_n = counts.get("succeeded", 0)
                else:
                    done_n = sum(
                        1 for t in job.tasks if t.state == "running" and t.version == job.version
                    )
                detail = " ".join(f"{k} {v}" for k, v in sorted(counts.items()))
                progress.update(bars[n], completed=done_n, total=total, detail=detail)
                finished, why = _job_done(job, until)
                if finished:
                    pending.discard(n)
                    if why == "failed" or (until == "up" and job.state == "failed"):
                        failed.append(n)
            if not pending:
                break
            if time.monotonic() > deadline:
                fail(f"timed out after {timeout:g}s waiting for {', '.join(sorted(pending))}", 1)
            time.sleep(0.25)
    if failed:
        fail(f"job(s) failed: {', '.join(failed)} (see borgcfg status)", 1)


def job_json(job: pb.Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "user": job.user,
        "priority": job.priority,
        "kind": job.kind,
        "replicas": job.replicas,
        "state": job.state,
        "version": job.version,
        "tasks": [
            {
                "index": t.index,
                "state": t.state,
                "machine": t.machine or None,
                "version": t.version,
                "restarts": t.restarts,
                "exit_code": None if t.exit_code == -1 else t.exit_code,
                "reason": t.reason,
                "ports": dict(t.ports),
            }
            for t in job.tasks
        ],
    }


@main.command()
@click.argument("job", required=False)
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def status(ctx: Ctx, job: str | None, output: str, stale: bool) -> None:
    """Table of jobs, or one JOB with its tasks."""
    console = Console()
    if job:
        j = ctx.client.get_job(job, stale=stale)
        if j is None:
            fail(f"job '{job}' does not exist", 1)
        if output == "json":
            emit_json(job_json(j))
            return
        console.print(
            f"[bold]{j.name}[/]  {styled(j.state)}  user {j.user}  priority {j.priority}  "
            f"{j.kind}  version {j.version}  {j.running}/{j.replicas} running  "
            f"age {age(j.created_ms)}"
        )
        t = Table(box=None, header_style="bold")
        for col in ("INDEX", "STATE", "MACHINE", "VERSION", "RESTARTS", "EXIT", "AGE", "REASON"):
            t.add_column(col)
        for task in j.tasks:
            t.add_row(
                str(task.index),
                styled(task.state),
                task.machine or "-",
                str(task.version),
                str(task.restarts),
                "-" if task.exit_code == -1 else str(task.exit_code),
                age(task.updated_ms),
                task.reason,
            )
        console.print(t)
        return
    jobs = ctx.client.list_jobs(stale=stale)
    if output == "json":
        emit_json(
            [
                {
                    "name": j.name,
                    "user": j.user,
                    "priority": j.priority,
                    "state": j.state,
                    "running": j.running,
                    "replicas": j.replicas,
                }
                for j in jobs
            ]
        )
        return
    t = Table(box=None, header_style="bold")
    for col in ("NAME", "USER", "PRIORITY", "KIND", "STATE", "RUNNING", "VERSION", "AGE"):
        t.add_column(col)
    for j in jobs:
        t.add_row(
            j.name,
            j.user,
            str(j.priority),
            j.kind,
            styled(j.state),
            f"{j.running}/{j.replicas}",
            str(j.version),
            age(j.created_ms),
        )
    if not jobs:
        err_console.print("no jobs")
        return
    console.print(t)


def _res_json(r: pb.Resources) -> dict[str, Any]:
    return {"cpu": r.cpu, "ram": r.ram, "disk": r.disk, "gpu": r.gpu}


@main.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.option("--stale", is_flag=True)
@click.pass_obj
@handles_errors
def machines(ctx: Ctx, output: str, stale: bool) -> None:
    """Machines with capacity, usage, state and attributes."""
    ms = ctx.client.list_machines(stale=stale)
    if output == "json":
        emit_json(
            [
                {
                    "name": m.name,
                    "state": m.state,
                    "capacity": _res_json(m.capacity),
                    "used": _res_json(m.used),
                    "attrs": dict(m.attrs),
                    "tasks": m.tasks,
                    "address": m.address,
                }
                for m in ms
            ]
        )
        return
    t = Table(box=None, header_style="bold")
    for col in ("NAME", "STATE", "CPU", "RAM", "GPU", "TASKS", "ATTRS"):
        t.add_column(col)
    for m in ms:
        t.add_row(
            m.name,
            styled(m.state),
            f"{m.used.cpu:g}/{m.capacity.cpu:g}",
            f"{format_size(m.used.ram)}/{format_size(m.capacity.ram)}",
            f"{m.used.gpu}/{m.capacity.gpu}",
            str(m.tasks),
            ",".join(f"{k}={v}" for k, v in sorted(m.attrs.items())),
        )
    if not ms:
        err_console.print("no machines")
        return
    Console().print(t)


@main.command()
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table")
@click.pass_obj
@handles_errors
def cell(ctx: Ctx, output: str) -> None:
    """Every master replica: id, address, Raft role, term, commit index, leader."""
    reps = ctx.client.cell()
    if output == "json":
        emit_json(
            [
                {
                    "id": r.id,
                    "raft": r.raft,
                    "grpc": r.grpc,
                    "role": r.role,
                    "term": r.term,
                    "commit_index": r.commit_index,
                    "leader": r.leader or None,
                }
                for r in reps
            ]
        )
        return
    t = Table(box=None, header_style="bold")
    for col in ("ID", "RAFT", "GRPC", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER"):
        t.add_column(col)
    for r in reps:
        t.add_row(
            r.id or "?",
            r.raft,
            r.grpc or "-",
            styled(r.role),
            str(r.term),
            str(r.commit_index),
            str(r.applied_index),
            r.leader or "-",
        )
    Console().print(t)


@main.command()
@click.argument("task")
@click.option("--stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.pass_obj
@handles_errors
def logs(ctx: Ctx, task: str, stderr: bool, follow: bool) -> None:
    """A task's output: JOB/INDEX."""
    name, sep, idx = task.partition("/")
    if not sep or not idx.isdigit():
        raise click.BadParameter(f"'{task}' is not JOB/INDEX", param_hint="TASK")
    job = ctx.client.get_job(name)
    if job is None:
        fail(f"job '{name}' does not exist", 1)
    matches = [t for t in job.tasks if t.index == int(idx)]
    if not matches or not matches[0].machine:
        fail(f"task {task} has not been placed on a machine", 1)
    machine = matches[0].machine
    addr = next((m.address for m in ctx.client.list_machines() if m.name == machine), "")
    if not addr:
        fail(f"machine {machine} of task {task} is unknown", 1)
    out = sys.stdout.buffer
    for chunk in ctx.client.logs(addr, name, int(idx), stderr, follow):
        out.write(chunk)
        out.flush()


@main.command()
@click.argument("file", type=click.Path(dir_okay=False))
@with_jsonnet_opts
@click.pass_obj
@handles_errors
def diff(ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...]) -> None:
    """What `up` would change, per job and field."""
    specs = _load(ctx, file, ext_str, tla_str)
    console = Console()
    changed = False
    for s in specs:
        new = spec_to_config(s)
        cur = ctx.client.get_job(s.name)
        if cur is None or cur.state == "killed":
            console.print(f"[green]+ job {s.name}[/] (new: {s.replicas} tasks would start)")
            changed = True
            continue
        old = json_format.MessageToDict(cur.spec)
        lines = _diff_dicts(old, new, "")
        if not lines:
            console.print(f"  job {s.name}: unchanged")
            continue
        changed = True
        console.print(f"[yellow]~ job {s.name}[/]")
        for line in lines:
            console.print("    " + line, highlight=False)
    if not changed:
        return


def _diff_dicts(old: Any, new: Any, path: str) -> list[str]:
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            p = f"{path}.{k}" if path else k
            if k not in new:
                out.append(f"[red]- {p}: {json.dumps(old[k])}[/]")
            elif k not in old:
                out.append(f"[green]+ {p}: {json.dumps(new[k])}[/]")
            else:
                out.extend(_diff_dicts(old[k], new[k], p))
        return out
    if _norm(old) != _norm(new):
        return [f"[yellow]~ {path}: {json.dumps(old)} -> {json.dumps(new)}[/]"]
    return []


def _norm(v: Any) -> Any:
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    return v


if __name__ == "__main__":
    main()
