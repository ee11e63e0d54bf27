"""Machine commands: `machines`, `drain`, `undrain`."""

from __future__ import annotations

from typing import Any

import click

from cfg.cli.base import (
    Ctx,
    emit_json,
    handles_errors,
    output_option,
    resources_json,
)
from cfg.cli.output import (
    age,
    make_console,
    show,
    styled,
    table,
)
from cfg.cli.term import escape
from cfg.units import human_size
from proto.borg.v1 import borg_pb2 as pb


def gpu_cell(m: pb.Machine) -> str:
    """`used/capacity`, and the devices held when the machine names its devices
    (`1/2 [0]`)."""
    cell = f"{m.used.gpu}/{m.capacity.gpu}"
    if m.gpus_used:
        cell += f" [{','.join(m.gpus_used)}]"
    return escape(cell)


def machines_json(ms: list[pb.Machine]) -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "state": m.state,
            "capacity": resources_json(m.capacity),
            "used": resources_json(m.used),
            "usage": resources_json(m.usage),
            "attrs": dict(m.attrs),
            "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in m.taints],
            "tasks": m.tasks,
            "address": m.address,
            # GPU devices offered (healthy ones) and those tasks hold.
            "gpus": list(m.gpus),
            "gpus_used": list(m.gpus_used),
        }
        for m in ms
    ]


@click.command()
@output_option
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def machines(ctx: Ctx, output: str, stale: bool) -> None:
    """Machines with capacity, reserved and measured usage, state and attributes."""
    ms = ctx.client.list_machines(stale=stale)
    if output == "json":
        emit_json(machines_json(ms))
        return
    if not ms:
        click.echo("no machines", err=True)
        return
    measured = any(m.usage.cpu or m.usage.ram for m in ms)
    cols = ["NAME", "STATE", "CPU", "RAM", "GPU", "TASKS"]
    cols += (["CPU-TIME", "RAM-USED"] if measured else []) + ["SEEN", "ATTRS"]
    t = table(*cols)
    for m in ms:
        row = [
            escape(m.name),
            styled(m.state),
            f"{m.used.cpu:g}/{m.capacity.cpu:g}",
            f"{human_size(m.used.ram)}/{human_size(m.capacity.ram)}",
            gpu_cell(m),
            str(m.tasks),
        ]
        if measured:
            row += [f"{m.usage.cpu:.1f}s", human_size(m.usage.ram)]
        row += [
            age(m.last_seen_ms),
            escape(",".join(f"{k}={v}" for k, v in sorted(m.attrs.items()))),
        ]
        t.add_row(*row)
    show(make_console(), t)


def _drain(ctx: Ctx, machine: str, undrain: bool, output: str) -> None:
    res = ctx.client.drain(machine, undrain=undrain)
    if output == "json":
        emit_json({"name": res.name, "state": res.state, "tasks_to_move": res.tasks_to_move})
    elif undrain:
        click.echo(f"machine {res.name}: {res.state} (scheduling allowed again)")
    else:
        click.echo(f"machine {res.name}: {res.state} ({res.tasks_to_move} tasks to move)")


@click.command()
@click.argument("machine")
@output_option
@click.pass_obj
@handles_errors
def drain(ctx: Ctx, machine: str, output: str) -> None:
    """Stop scheduling on MACHINE and move its tasks elsewhere."""
    _drain(ctx, machine, False, output)


@click.command()
@click.argument("machine")
@output_option
@click.pass_obj
@handles_errors
def undrain(ctx: Ctx, machine: str, output: str) -> None:
    """Allow scheduling on MACHINE again."""
    _drain(ctx, machine, True, output)
