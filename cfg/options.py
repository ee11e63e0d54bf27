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
