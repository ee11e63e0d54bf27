"""The root group's machinery: one-line usage errors for every subcommand."""

from __future__ import annotations

from typing import Any

import click


class UsageLine(click.UsageError):
    """A usage error shown as the one line every borgcfg error is (`borgcfg: MESSAGE`, exit
    2) instead of click's usage block, "Try --help" hint and "Error:" line."""

    def show(self, file: Any = None) -> None:
        click.echo(f"borgcfg: {self.message}", err=True)


def one_line_usage(e: click.UsageError) -> click.UsageError:
    """`e` as a `UsageLine`: click's message flattened to one line, prefixed with the
    subcommand it is about (`logs: ...`, `quota set: ...`). Help shown for a bare group
    (`borgcfg`, `borgcfg quota`) is left as it is."""
    if isinstance(e, (UsageLine, click.exceptions.NoArgsIsHelpError)):
        return e
    if (
        isinstance(e, click.BadParameter)
        and e.param_hint is None
        and isinstance(e.param, click.Argument)
        and e.param.name
    ):
        # click names an argument with choices by its metavar ('{a|b|c}'); say BAND instead
        e.param_hint = e.param.name.upper()
    msg = " ".join(e.format_message().split()).rstrip(".")
    if msg[:2].istitle():  # "Invalid value ...", "No such option ..." -> lower case
        msg = msg[0].lower() + msg[1:]
    path = e.ctx.command_path.split()[1:] if e.ctx is not None else []
    if path:
        msg = f"{' '.join(path)}: {msg}"
    return UsageLine(msg, e.ctx)


class Borgcfg(click.Group):
    """The root group: every usage error, from any subcommand, becomes one line.

    Parsing the root's own options happens in `make_context`; subcommands (and nested groups)
    are parsed and run inside `invoke`. Shell completion runs before either, so it is
    unaffected, and `--help` is not an error."""

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        try:
            return super().make_context(info_name, args, parent, **extra)
        except click.UsageError as e:
            raise one_line_usage(e) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            raise one_line_usage(e) from None
