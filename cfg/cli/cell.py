"""`cell` (the master replicas, membership changes) and `completion`."""

from __future__ import annotations

from typing import Any

import click

from cfg.cli.base import (
    Ctx,
    emit_json,
    handles_errors,
    output_option,
)
from cfg.cli.output import (
    make_console,
    show,
    styled,
    table,
)
from cfg.cli.term import escape
from cfg.options import host_port
from proto.borg.v1 import borg_pb2 as pb


def replicas_json(reps: list[pb.ReplicaInfo]) -> list[dict[str, Any]]:
    return [
        {
            "id": r.id,
            "raft": r.raft,
            "grpc": r.grpc,
            "role": r.role,
            "term": r.term,
            "commit_index": r.commit_index,
            "leader": r.leader or None,
            "applied_index": r.applied_index,
            "http": r.http,
            "digest_index": r.digest_index,
            "digest": r.digest or None,
            "digest_mismatch": list(r.digest_mismatch),
            "digest_diverged": r.digest_diverged,
        }
        for r in reps
    ]


def print_replicas(reps: list[pb.ReplicaInfo], output: str) -> None:
    if output == "json":
        emit_json(replicas_json(reps))
        return
    t = table("ID", "RAFT", "GRPC", "ROLE", "TERM", "COMMIT", "APPLIED", "LEADER")
    for r in reps:
        t.add_row(
            escape(r.id or "?"),
            escape(r.raft),
            escape(r.grpc or "-"),
            styled(r.role),
            str(r.term),
            str(r.commit_index),
            str(r.applied_index),
            escape(r.leader or "-"),
        )
    show(make_console(), t)


@click.group(invoke_without_command=True)
@output_option
@click.pass_context
def cell(ctx: click.Context, output: str) -> None:
    """Every master replica: id, address, Raft role, term, commit index, leader.

    `cell add HOST:PORT` / `cell remove HOST:PORT` change the Raft membership (by Raft
    address), one replica at a time.
    """
    if ctx.invoked_subcommand is None:
        _cell_show(ctx.obj, output)


@handles_errors
def _cell_show(ctx: Ctx, output: str) -> None:
    print_replicas(ctx.client.cell(), output)


def _membership(ctx: Ctx, raft: str, remove: bool, output: str) -> None:
    try:
        host_port(raft)
    except ValueError as e:
        raise click.BadParameter(str(e), param_hint="RAFT_ADDR") from None
    reps = ctx.client.change_membership(raft, remove)
    if output != "json":
        click.echo(f"{'removed' if remove else 'added'} replica {raft}")
    print_replicas(reps, output)


@cell.command("add")
@click.argument("raft_addr")
@output_option
@click.pass_obj
@handles_errors
def cell_add(ctx: Ctx, raft_addr: str, output: str) -> None:
    """Add the replica whose Raft address is RAFT_ADDR (start it with --peer first)."""
    _membership(ctx, raft_addr, False, output)


@cell.command("remove")
@click.argument("raft_addr")
@output_option
@click.pass_obj
@handles_errors
def cell_remove(ctx: Ctx, raft_addr: str, output: str) -> None:
    """Remove the replica whose Raft address is RAFT_ADDR."""
    _membership(ctx, raft_addr, True, output)


# ----- shell completion --------------------------------------------------------------------


@click.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: `eval "$(borgcfg completion bash)"`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # every choice above is built into click
    root = click.get_current_context().find_root()
    comp = cls(root.command, {}, "borgcfg", "_BORGCFG_COMPLETE")
    click.echo(comp.source())


@click.command()
@output_option
@click.pass_obj
@handles_errors
def ui(ctx: Ctx, output: str) -> None:
    """Print a login link that opens the cell's web UI as you.

    On a cell with TLS the UI needs an identity: this link (valid two minutes) sets a session
    cookie in the browser for 8 hours, so no client certificate has to be imported there."""
    s = ctx.client.ui_session()
    url = f"https://{s.http}/login?token={s.token}" if s.token else f"http://{s.http}/"
    if output == "json":
        emit_json({"url": url, "expires_ms": s.expires_ms or None})
        return
    click.echo(url)
