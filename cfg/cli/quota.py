"""`quota set` and `quota list`."""

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
    BAND_NAMES,
    make_console,
    show,
    table,
)
from cfg.cli.term import escape
from cfg.model import (
    QUOTA_KEEP,
    UNLIMITED,
)
from cfg.units import format_amount, human_size, parse_size
from proto.borg.v1 import borg_pb2 as pb


def parse_quota_limits(items: tuple[str, ...]) -> pb.Resources:
    """`cpu=8 ram=16Gi gpu=2 disk=unlimited` -> Resources; usage errors name the bad item."""
    r = pb.Resources(cpu=QUOTA_KEEP, ram=QUOTA_KEEP, disk=QUOTA_KEEP, gpu=QUOTA_KEEP)
    seen = set()
    for item in items:
        k, sep, v = item.partition("=")
        if not sep or k not in ("cpu", "ram", "disk", "gpu"):
            raise click.BadParameter(
                f"'{item}' is not cpu=CORES, ram=SIZE, disk=SIZE or gpu=N", param_hint="LIMITS"
            )
        if k in seen:
            raise click.BadParameter(f"'{k}' given twice", param_hint="LIMITS")
        seen.add(k)
        if v == "unlimited":
            setattr(r, k, UNLIMITED)
            continue
        try:
            if k == "cpu":
                cpu = float(v)
                if not cpu >= 0 or cpu == float("inf"):
                    raise ValueError
                r.cpu = cpu
            elif k == "gpu":
                if not v.isdigit():
                    raise ValueError
                r.gpu = int(v)
            else:
                setattr(r, k, parse_size(v))
        except ValueError:
            want = "a number of cores" if k == "cpu" else "a count" if k == "gpu" else "a size"
            raise click.BadParameter(
                f"{k}: '{v}' is not {want} or 'unlimited'", param_hint="LIMITS"
            ) from None
    if not seen:
        raise click.BadParameter(
            "give at least one of cpu=, ram=, disk=, gpu=", param_hint="LIMITS"
        )
    return r


def _limit_text(resource: str, amount: float) -> str:
    """One limit for people: `unlimited`, cores, a human size or a count."""
    return format_amount(resource, amount)


def _limit_json(r: pb.Resources) -> dict[str, Any]:
    """Like `_res_json`, with the string "unlimited" for a resource that has no limit."""
    return {
        k: ("unlimited" if v < 0 else v)
        for k, v in (("cpu", r.cpu), ("ram", r.ram), ("disk", r.disk), ("gpu", r.gpu))
    }


def quota_json(q: pb.Quota) -> dict[str, Any]:
    return {
        "user": q.user,
        "band": q.band,
        "limit": _limit_json(q.limit),
        "used": resources_json(q.used),
    }


@click.group()
def quota() -> None:
    """Quota per user and priority band (admin). The free band has no limit."""


@quota.command("set")
@click.argument("user")
@click.argument("band", type=click.Choice(BAND_NAMES[1:]))
@click.argument("limits", nargs=-1, required=True)
@output_option
@click.pass_obj
@handles_errors
def quota_set(ctx: Ctx, user: str, band: str, limits: tuple[str, ...], output: str) -> None:
    """Set USER's limits in BAND: LIMITS are cpu=CORES ram=SIZE disk=SIZE gpu=N (or
    RESOURCE=unlimited). A resource left out keeps its current limit (unlimited if USER had
    no quota in BAND)."""
    res = ctx.client.set_quota(user, band, parse_quota_limits(limits))
    if output == "json":
        emit_json(quota_json(res.quota))
        return
    q = res.quota
    click.echo(
        f"quota {q.user}/{q.band}: "
        + ", ".join(
            f"{k} {_limit_text(k, getattr(q.limit, k))}" for k in ("cpu", "ram", "disk", "gpu")
        )
    )


@quota.command("list")
@click.argument("user", required=False, default="")
@output_option
@click.pass_obj
@handles_errors
def quota_list(ctx: Ctx, user: str, output: str) -> None:
    """Every quota (or USER's) with what live jobs use of it."""
    qs = ctx.client.list_quotas(user)
    if output == "json":
        emit_json([quota_json(q) for q in qs])
        return
    if not qs:
        click.echo("no quotas", err=True)
        return
    t = table("USER", "BAND", "CPU", "RAM", "DISK", "GPU")
    for q in qs:
        u, lim = q.used, q.limit
        t.add_row(
            escape(q.user),
            escape(q.band),
            f"{u.cpu:g}/{_limit_text('cpu', lim.cpu)}",
            f"{human_size(u.ram)}/{_limit_text('ram', lim.ram)}",
            f"{human_size(u.disk)}/{_limit_text('disk', lim.disk)}",
            f"{u.gpu}/{_limit_text('gpu', lim.gpu)}",
        )
    show(make_console(), t)
