"""`events`: the cell's event stream, as lines or JSON."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from typing import Any

import click

from cfg.cli.base import (
    Ctx,
    fail,
    handles_errors,
    output_option,
)
from cfg.cli.output import (
    make_console,
)
from cfg.cli.term import escape
from proto.borg.v1 import borg_pb2 as pb


def event_json(e: pb.Event) -> dict[str, Any]:
    return {
        "index": e.index,
        "ts_ms": e.ts_ms,
        "type": e.type,
        "job": e.job or None,
        "task_index": e.task_index if e.job and e.task_index >= 0 else None,
        "machine": e.machine or None,
        "message": e.message,
    }


EVENT_STYLE = {
    "failed": "red",
    "died": "red",
    "lost": "red",
    "preempted": "yellow",
    "rollout-halted": "red",
    "reverted": "red",
    "canary": "yellow",
    "drained": "yellow",
    "killed": "dim",
    "started": "green",
    "succeeded": "green",
}


def event_line(e: pb.Event) -> str:
    ts = time.strftime("%H:%M:%S", time.localtime(e.ts_ms / 1000)) if e.ts_ms else "--:--:--"
    what = e.job if e.job else ""
    if e.job and e.task_index >= 0:
        what = f"{e.job}/{e.task_index}"
    style = EVENT_STYLE.get(e.type, "")
    typ = f"[{style}]{e.type:<14}[/]" if style else f"{e.type:<14}"
    parts = [ts, typ, escape(what)]
    if e.machine:
        parts.append(f"on {escape(e.machine)}")
    if e.message:
        parts.append(escape(e.message))
    return " ".join(p for p in parts if p)


@click.command()
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new events.")
@click.option("--job", default="", help="Only this job's events.")
@click.option("--tail", default=0, type=click.IntRange(min=0), help="Only the last N events.")
@output_option
@click.pass_obj
@handles_errors
def events(ctx: Ctx, follow: bool, job: str, tail: int, output: str) -> None:
    """The cell's event stream (submitted, scheduled, started, died, preempted...).

    With -o json, one JSON object per line (for `jq`).
    """
    if follow:
        ctx.client.discover()
    console = make_console()
    stream: Iterator[pb.Event] = ctx.client.watch_events(job=job, follow=follow, tail=tail)
    shown = 0
    for e in stream:
        if output == "json":
            click.echo(json.dumps(event_json(e)))
        else:
            console.print(event_line(e))
        sys.stdout.flush()
        shown += 1
    # No events for --job: a typo or a job that never existed? One GetJob (only then) tells.
    # With -f, waiting for a job that does not exist yet is legitimate.
    if job and not shown and not follow and ctx.client.get_job(job) is None:
        fail(f"job '{job}' does not exist", 1)


# ----- quota -------------------------------------------------------------------------------
# Limits travel as pb.Resources, whose fields have no presence: a resource not given is sent
# as QUOTA_KEEP (the cell keeps its current limit, or leaves it unlimited when there was no
# quota), `unlimited` as UNLIMITED. The merge is the cell's (one deterministic write), never
# a read-modify-write here.
