"""Parsers for command-line option values shared by borgcfg and the Borglet."""

from __future__ import annotations

import click


def key_values(values: tuple[str, ...], flag: str) -> dict[str, str]:
    """`KEY=VALUE` options (--attr, --ext-str, --tla-str) as a dict; errors name the flag."""
    out = {}
    for v in values:
        k, sep, val = v.partition("=")
        if not sep or not k:
            raise click.BadParameter(f"'{v}' is not KEY=VALUE", param_hint=flag)
        out[k] = val
    return out


def host_port(value: str) -> str:
    """Check one `HOST:PORT` address (port 1-65535); return it, or raise ValueError saying what
    is wrong with it. IPv6 hosts are written in brackets: `[::1]:7070`."""
    host, sep, port = value.rpartition(":")
    if not sep or not host:
        raise ValueError(f"'{value}' is not HOST:PORT")
    if not port.isdigit():
        raise ValueError(f"'{value}' is not HOST:PORT (port '{port}' is not a number)")
    if not 1 <= int(port) <= 65535:
        raise ValueError(f"'{value}': port {port} is not in 1-65535")
    return value


def master_addresses(value: str, source: str) -> list[str]:
    """The comma separated `--master` / `$BORG_MASTER` list, every address checked up front so a
    typo is a usage error (exit 2) rather than an unreachable cell (exit 3). `source` names
    where the value came from, for the error message."""
    addrs = [a.strip() for a in value.split(",") if a.strip()]
    if not addrs:
        raise click.UsageError(f"{source}: no master address given")
    for a in addrs:
        try:
            host_port(a)
        except ValueError as e:
            raise click.UsageError(f"{source}: {e}") from None
    return addrs
