"""`validate`: evaluate and check a config locally. Loads no rich, protobuf or gRPC, so it
answers as fast as Jsonnet evaluates."""

from __future__ import annotations

import click

from cfg.cli.base import Ctx, F, emit_json, handles_errors, output_option
from cfg.loader import load_file
from cfg.model import JobSpec
from cfg.options import key_values
from cfg.schema import spec_to_config


def load(ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...]) -> list[JobSpec]:
    return load_file(
        file,
        ext_str=key_values(ext_str, "--ext-str"),
        tla_str=key_values(tla_str, "--tla-str"),
        default_user=ctx.user,
    )


def with_jsonnet_opts(fn: F) -> F:
    fn = click.option("--tla-str", multiple=True, help="Jsonnet top-level argument KEY=VALUE.")(fn)
    return click.option("--ext-str", multiple=True, help="Jsonnet external variable KEY=VALUE.")(fn)


@click.command()
@click.argument("file")
@with_jsonnet_opts
@output_option
@click.pass_obj
@handles_errors
def validate(
    ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...], output: str
) -> None:
    """Evaluate and validate FILE locally (no master needed).

    With -o json, prints the normalised jobs exactly as `up` would send them.
    """
    specs = load(ctx, file, ext_str, tla_str)
    if output == "json":
        emit_json([spec_to_config(s) for s in specs])
        return
    for s in specs:
        click.echo(
            f"{file}: job {s.name}: ok ({s.kind}, {s.replicas} replicas, priority {s.priority})"
        )
