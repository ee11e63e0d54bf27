"""Changing jobs: `up`, `down`, `rollback` (each with `--wait`) and `diff` (what `up` would
change)."""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, field
from typing import Any

import click

from cfg.cli.base import (
    Ctx,
    cell_error_message,
    emit_json,
    fail,
    handles_errors,
    output_option,
)
from cfg.cli.output import (
    make_console,
)
from cfg.cli.term import escape
from cfg.cli.validate import load, with_jsonnet_opts
from cfg.cli.wait import wait_jobs
from cfg.errors import CellError, ConfigError, Unreachable
from cfg.model import (
    JobSpec,
)
from cfg.schema import spec_to_config, validate_job
from cfg.structs import dict_from
from proto.borg.v1 import borg_pb2 as pb


@click.command()
@click.argument("file")
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
    """Create or update every job in FILE, in file order; stops at the first rejection."""
    specs = load(ctx, file, ext_str, tla_str)
    names: list[str] = []
    for i, s in enumerate(specs):
        try:
            res = ctx.client.submit(spec_to_config(s), ctx.user)
        except (CellError, Unreachable) as e:
            if len(specs) == 1:
                raise
            why = cell_error_message(e) if isinstance(e, CellError) else str(e)
            fail(
                f"job '{s.name}': {why}; {partly_applied(names, [x.name for x in specs[i:]])}",
                1 if isinstance(e, CellError) else 3,
            )
        click.echo(f"job {res.name}: {res.result} (version {res.version})")
        names.append(res.name)
    if wait and names:
        wait_jobs(ctx, names, timeout, until="up")


def partly_applied(applied: list[str], rest: list[str]) -> str:
    """What a multi-job `up` that stopped part way left behind (jobs are not rolled back)."""
    done = f"already applied: {', '.join(applied)}" if applied else "nothing was applied"
    return f"{done}; not applied: {', '.join(rest)}"


@click.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until every task has stopped.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to --wait.")
@click.pass_obj
@handles_errors
def down(ctx: Ctx, job: str, wait: bool, timeout: float) -> None:
    """Kill JOB's tasks and mark it killed."""
    res = ctx.client.kill(job, ctx.user)
    how = "already killed" if res.already else "killed"
    click.echo(f"job {res.name}: {how} ({res.tasks_to_stop} tasks to stop)")
    if wait:
        wait_jobs(ctx, [job], timeout, until="down")


@click.command()
@click.argument("job")
@click.option(
    "--to-version",
    type=click.IntRange(min=1, max=2**62),
    default=None,
    help="Return to this remembered version (borgcfg history) instead of the previous one.",
)
@click.option("--wait", is_flag=True, help="Wait until the version runs everywhere.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to --wait.")
@click.pass_obj
@handles_errors
def rollback(ctx: Ctx, job: str, to_version: int | None, wait: bool, timeout: float) -> None:
    """Return JOB to its previous version, or --to-version N (rolled out like any update)."""
    res = ctx.client.rollback(job, ctx.user, to_version or 0)
    click.echo(f"job {res.name}: {res.result or 'rolled back'} (version {res.version})")
    if wait:
        wait_jobs(ctx, [job], timeout, until="up")


@click.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until the new version runs everywhere.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to --wait.")
@click.pass_obj
@handles_errors
def promote(ctx: Ctx, job: str, wait: bool, timeout: float) -> None:
    """End JOB's canary stage: the rest of its tasks move to the new version."""
    res = ctx.client.promote(job, ctx.user)
    click.echo(f"job {res.name}: promoted (version {res.version})")
    if wait:
        wait_jobs(ctx, [job], timeout, until="up")


@dataclass
class JobDiff:
    """What `up` would do to one job (pure: computed from the current and the new spec)."""

    name: str
    action: str  # create | update | unchanged
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (path, old, new)
    old_version: int = 0
    new_version: int = 0
    start: int = 0
    stop: int = 0
    replace: int = 0
    max_unavailable: int = 1

    def plan(self) -> str:
        parts = []
        if self.start:
            parts.append(f"{self.start} task{'s' if self.start != 1 else ''} would start")
        if self.stop:
            parts.append(f"{self.stop} task{'s' if self.stop != 1 else ''} would stop")
        if self.replace:
            parts.append(
                f"{self.replace} task{'s' if self.replace != 1 else ''} would be replaced, "
                f"{self.max_unavailable} at a time"
            )
        return "; ".join(parts) or "no task changes"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "version": {"old": self.old_version or None, "new": self.new_version},
            "changes": [{"path": p, "old": o, "new": n} for p, o, n in self.changes],
            "plan": {"start": self.start, "stop": self.stop, "replace": self.replace},
        }


_MISSING = object()


def diff_values(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two config trees; a missing side is `None`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            p = f"{path}.{k}" if path else k
            out.extend(diff_values(old.get(k, _MISSING), new.get(k, _MISSING), p))
        return out
    if old is _MISSING or new is _MISSING:
        return [(path, None if old is _MISSING else old, None if new is _MISSING else new)]
    if _norm(old) != _norm(new):
        return [(path, _norm(old), _norm(new))]
    return []


def _norm(v: Any) -> Any:
    """Struct numbers are doubles: 3.0 and 3 are the same replicas count."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def plan_job(new: JobSpec, current: pb.Job | None) -> JobDiff:
    """The same decision the master makes on SubmitJob (borgmaster/store.py): a changed task
    template is a new version rolled over the existing replicas; replicas, priority, update
    policy or owner changes alone apply in place."""
    new_cfg = spec_to_config(new)
    if current is None or current.state == "killed":
        d = JobDiff(new.name, "create", new_version=(current.version + 1) if current else 1)
        d.start = new.replicas
        d.changes = diff_values({}, new_cfg)
        return d
    old_cfg = dict_from(current.spec)
    d = JobDiff(new.name, "update", old_version=current.version, new_version=current.version)
    d.changes = diff_values(old_cfg, new_cfg)
    if not d.changes:
        d.action = "unchanged"
        return d
    try:
        old = validate_job(old_cfg, default_user=current.user)
        template_changed = old.task_template() != new.task_template()
    except ConfigError:  # a spec from an older schema: assume the worst
        template_changed = True
    old_n = int(current.replicas)
    d.start = max(0, new.replicas - old_n)
    d.stop = max(0, old_n - new.replicas)
    d.max_unavailable = new.update.max_unavailable
    if template_changed:
        d.new_version = current.version + 1
        d.replace = min(old_n, new.replicas)
    return d


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


@click.command()
@click.argument("file")
@click.option(
    "--exit-code", is_flag=True, help="Exit 4 when there are differences (like git diff)."
)
@with_jsonnet_opts
@output_option
@click.pass_obj
@handles_errors
def diff(
    ctx: Ctx,
    file: str,
    exit_code: bool,
    ext_str: tuple[str, ...],
    tla_str: tuple[str, ...],
    output: str,
) -> None:
    """What `up` would change, per job and field, and the tasks it would start or stop."""
    specs = load(ctx, file, ext_str, tla_str)
    diffs = [plan_job(s, ctx.client.get_job(s.name)) for s in specs]
    if output == "json":
        emit_json([d.to_json() for d in diffs])
    else:
        console = make_console()
        for d in diffs:
            if d.action == "unchanged":
                console.print(f"  job {escape(d.name)}: unchanged (version {d.old_version})")
                continue
            if d.action == "create":
                head = f"[green]+ job {escape(d.name)}[/]: new, version {d.new_version}"
            elif d.new_version != d.old_version:
                head = (
                    f"[yellow]~ job {escape(d.name)}[/]: version {d.old_version} -> {d.new_version}"
                )
            else:
                head = f"[yellow]~ job {escape(d.name)}[/]: version {d.old_version} (in place)"
            console.print(head)
            if d.action == "update":
                for path, old, new in d.changes:
                    if old is not None:
                        console.print(f"[red]-   {escape(path)}: {escape(_fmt(old))}[/]")
                    if new is not None:
                        console.print(f"[green]+   {escape(path)}: {escape(_fmt(new))}[/]")
            console.print(f"    plan: {d.plan()}")
    if exit_code and any(d.action != "unchanged" for d in diffs):
        sys.exit(4)
