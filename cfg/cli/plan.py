"""`plan`: what `up` would do, placements included, without changing anything."""

from __future__ import annotations

from typing import Any

import click

from cfg.cli.base import Ctx, emit_json, handles_errors, output_option
from cfg.cli.output import make_console, show, table
from cfg.cli.term import escape
from cfg.cli.validate import load, with_jsonnet_opts
from cfg.schema import spec_to_config
from proto.borg.v1 import borg_pb2 as pb


def plan_json(p: pb.JobPlan) -> dict[str, Any]:
    """SPEC's keys (job, change, placements, unplaceable, preemptions), plus the version `up`
    would leave, the main unplaceable reasons, and `error` for a job `up` would refuse."""
    out: dict[str, Any] = {
        "job": p.job,
        "change": p.change,
        "version": p.version or None,
        "placements": dict(sorted(p.placements.items())),
        "unplaceable": p.unplaceable,
        "preemptions": p.preemptions,
        "reasons": list(p.reasons),
    }
    if p.change == "rejected":
        out["error"] = p.error
    return out


def _where(placements: dict[str, int]) -> str:
    return ", ".join(f"{m}: {n}" for m, n in sorted(placements.items())) or "-"


@click.command()
@click.argument("file")
@with_jsonnet_opts
@output_option
@click.option("--stale", is_flag=True, help="Plan on this replica's state, not the leader's.")
@click.pass_obj
@handles_errors
def plan(
    ctx: Ctx,
    file: str,
    ext_str: tuple[str, ...],
    tla_str: tuple[str, ...],
    output: str,
    stale: bool,
) -> None:
    """What `up` would do, placements included, without changing anything.

    The leader applies FILE's jobs to a copy of its state and runs its scheduler there:
    per job the change (created, updated, unchanged, or rejected as `up` would be), where its
    tasks would run once the rollout is done, how many find no machine (and why), and how
    many tasks of other jobs it would preempt."""
    specs = load(ctx, file, ext_str, tla_str)
    plans = ctx.client.plan([spec_to_config(s) for s in specs], ctx.user, stale=stale)
    if output == "json":
        emit_json([plan_json(p) for p in plans])
        return
    t = table("JOB", "CHANGE", "VERSION", "PLACEMENTS", "UNPLACEABLE", "PREEMPTIONS")
    notes: list[str] = []
    for p in plans:
        if p.change == "rejected":
            t.add_row(escape(p.job), "[red]rejected[/]", "-", "-", "-", "-")
            notes.append(f"{escape(p.job)}: {escape(p.error)}")
            continue
        unplaceable = f"[yellow]{p.unplaceable}[/]" if p.unplaceable else "0"
        t.add_row(
            escape(p.job),
            p.change,
            str(p.version),
            escape(_where(dict(p.placements))),
            unplaceable,
            str(p.preemptions),
        )
        notes.extend(f"{escape(p.job)}: unplaceable: {escape(why)}" for why in p.reasons)
    console = make_console()
    show(console, t)
    for n in notes:
        console.print(f"  {n}")
