"""`snapshot save`: back up the cell's state (admin); `borgmaster restore` reads the file."""

from __future__ import annotations

import os
import sys

import click

from cfg.cli.base import Ctx, emit_json, fail, handles_errors, output_option


@click.group()
def snapshot() -> None:
    """Back up the cell's state: `snapshot save FILE` (admin).

    The file holds every job, task, quota, machine and event at one applied Raft index, with
    a checksum. `borgmaster restore --snapshot FILE --data-dir DIR` turns it into a new cell
    (docs/operations.md)."""


@snapshot.command("save")
@click.argument("file", type=click.Path(dir_okay=False, writable=True))
@output_option
@click.pass_obj
@handles_errors
def snapshot_save(ctx: Ctx, file: str, output: str) -> None:
    """Write a consistent snapshot of the cell's state to FILE (replaced atomically).

    Any replica serves it after a read barrier: the state holds every write acknowledged
    before the command started. FILE is 0600: it holds every job's environment."""
    from cfg.snapshot import SnapshotFileError

    folder = os.path.dirname(os.path.abspath(file))
    if not os.path.isdir(folder):
        fail(f"{file}: directory {folder} does not exist")
    show = sys.stderr.isatty() and output != "json"

    def progress(done: int, total: int) -> None:
        if show and total > (8 << 20):
            click.echo(f"\r{done >> 20}/{total >> 20} MiB", err=True, nl=False)

    try:
        info, size = ctx.client.save_snapshot(file, progress)
    except SnapshotFileError as e:
        fail(str(e))
    except OSError as e:
        fail(f"{file}: {e.strerror or e}")
    if show and info.size > (8 << 20):
        click.echo("", err=True)
    if output == "json":
        emit_json(
            {
                "file": file,
                "cell": info.cell,
                "replica": info.replica,
                "index": info.index,
                "term": info.term,
                "taken_ms": info.taken_ms,
                "bytes": size,
                "sha256": info.sha256,
            }
        )
        return
    click.echo(
        f"snapshot of cell {info.cell} at index {info.index} (term {info.term}, from replica "
        f"{info.replica}): {file}, {size} bytes"
    )
