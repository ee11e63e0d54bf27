"""A job over time: `history` (its remembered versions). `rollback --to-version` (changes.py)
returns to one of them."""

from __future__ import annotations

import time
from typing import Any

import click

from cfg.cli.base import Ctx, emit_json, handles_errors, output_option
from cfg.cli.output import make_console, show, table
from cfg.cli.term import escape
from proto.borg.v1 import borg_pb2 as pb


def history_json(res: pb.JobHistoryResponse) -> list[dict[str, Any]]:
    """SPEC's shape: [{"version", "submitted_ms", "user", "changed": [fields]}], oldest first."""
    return [
        {
            "version": v.version,
            "submitted_ms": v.submitted_ms,
            "user": v.user,
            "changed": list(v.changed),
        }
        for v in res.versions
    ]


def _when(ms: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(ms / 1000)) if ms else "-"


@click.command()
@click.argument("job")
@output_option
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def history(ctx: Ctx, job: str, output: str, stale: bool) -> None:
    """JOB's remembered versions: when, by whom, and which fields each one changed.

    The cell keeps the last 10 versions of each job; `borgcfg rollback JOB --to-version N`
    returns to any of them."""
    res = ctx.client.history(job, stale=stale)
    if output == "json":
        emit_json(history_json(res))
        return
    t = table("VERSION", "SUBMITTED (UTC)", "USER", "CHANGED")
    for v in res.versions:
        mark = " (current)" if v.version == res.current else ""
        changed = ", ".join(v.changed) if v.changed else ("-" if v.version > 1 else "created")
        t.add_row(f"{v.version}{mark}", _when(v.submitted_ms), escape(v.user), escape(changed))
    show(make_console(), t)
