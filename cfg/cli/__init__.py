"""borgcfg: submit and inspect jobs. Tables for people, `-o json` for scripts.

Exit codes (SPEC.md): 0 ok, 1 user error (bad config, unknown job, rejected), 2 usage,
3 cell unreachable. Every failure is one line on stderr, never a traceback. docs/cli.md is the
user's guide to every command.

The commands live in modules by group (configs, jobs, machines, events, quota, cell) and are
loaded only when run: `borgcfg --help` loads none of them, `validate` never loads gRPC, and no
command loads what another needs (rich tables, Jsonnet, gRPC), so a read answers quickly.
"""

from __future__ import annotations

import importlib

import click
from click.formatting import HelpFormatter

from cfg.cli.base import Ctx, login_name
from cfg.cli.group import Borgcfg

COMMANDS: dict[str, tuple[str, str]] = {
    "cell": (
        "cfg.cli.cell",
        "Every master replica: id, address, Raft role, term, commit index, leader.",
    ),
    "completion": (
        "cfg.cli.cell",
        'Print the shell completion script: `eval "$(borgcfg completion bash)"`.',
    ),
    "diff": (
        "cfg.cli.changes",
        "What `up` would change, per job and field, and the tasks it would start or stop.",
    ),
    "down": ("cfg.cli.changes", "Kill JOB's tasks and mark it killed."),
    "drain": ("cfg.cli.machines", "Stop scheduling on MACHINE and move its tasks elsewhere."),
    "endpoints": (
        "cfg.cli.jobs",
        "JOB's running tasks: BNS name, machine, host and ports (what its DNS names serve).",
    ),
    "events": (
        "cfg.cli.events",
        "The cell's event stream (submitted, scheduled, started, died, preempted...).",
    ),
    "exec": (
        "cfg.cli.execs",
        "Run COMMAND beside TASK (JOB/INDEX): `borgcfg exec web/0 -- ps aux`.",
    ),
    "history": (
        "cfg.cli.versions",
        "JOB's remembered versions: when, by whom, and which fields each one changed.",
    ),
    "logs": ("cfg.cli.jobs", "A task's output: TASK is JOB/INDEX (e.g. web/0)."),
    "machines": (
        "cfg.cli.machines",
        "Machines with capacity, reserved and measured usage, state and attributes.",
    ),
    "plan": (
        "cfg.cli.plan",
        "What `up` would do, placements included, without changing anything.",
    ),
    "promote": (
        "cfg.cli.changes",
        "End JOB's canary stage: the rest of its tasks move to the new version.",
    ),
    "quota": (
        "cfg.cli.quota",
        "Quota per user and priority band (admin). The free band has no limit.",
    ),
    "rollback": (
        "cfg.cli.changes",
        "Return JOB to its previous version, or --to-version N (rolled out like any update).",
    ),
    "snapshot": ("cfg.cli.snapshot", "Back up the cell's state: `snapshot save FILE` (admin)."),
    "status": ("cfg.cli.jobs", "Table of jobs, or one JOB with its tasks."),
    "ui": ("cfg.cli.cell", "Print a login link that opens the cell's web UI as you."),
    "undrain": ("cfg.cli.machines", "Allow scheduling on MACHINE again."),
    "up": (
        "cfg.cli.changes",
        "Create or update every job in FILE, in file order; stops at the first rejection.",
    ),
    "validate": ("cfg.cli.validate", "Evaluate and validate FILE locally (no master needed)."),
    "why": (
        "cfg.cli.jobs",
        "Why TASK (JOB/INDEX) is where it is, or pending: machines rejected per filter.",
    ),
}
"""Each command: the module defining it (under the command's name) and its one-line help
(the first paragraph of its docstring; tests/unit/test_cli.py checks they agree)."""


class LazyBorgcfg(Borgcfg):
    """The root group, loading a command's module only when that command runs."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        entry = COMMANDS.get(cmd_name)
        if entry is None:
            return None
        cmd = getattr(importlib.import_module(entry[0]), cmd_name)
        assert isinstance(cmd, click.Command)
        return cmd

    def format_commands(self, ctx: click.Context, formatter: HelpFormatter) -> None:
        """The command list from COMMANDS, without importing a single command module."""
        width = formatter.width or 80
        limit = width - 6 - max(len(n) for n in COMMANDS)
        rows = [
            (n, click.Command(n, help=COMMANDS[n][1]).get_short_help_str(limit))
            for n in self.list_commands(ctx)
        ]
        with formatter.section("Commands"):
            formatter.write_dl(rows)


@click.group(cls=LazyBorgcfg, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--master",
    envvar="BORG_MASTER",
    default="127.0.0.1:7070",
    show_default="$BORG_MASTER or 127.0.0.1:7070",
    help="Master address(es), comma separated; any replica will do.",
)
@click.option(
    "--user",
    default=login_name,
    show_default="login name; with TLS the certificate's name",
    help="Acting user (with TLS: absent, or the certificate's name).",
)
@click.option(
    "--tls-dir",
    envvar="BORG_TLS_DIR",
    type=click.Path(file_okay=False),
    default=None,
    show_default="$BORG_TLS_DIR; the dev cell's own for its address",
    help="Directory with ca.crt, tls.crt, tls.key (`borgmaster ca issue`): mTLS to the cell.",
)
@click.pass_context
def main(ctx: click.Context, master: str, user: str, tls_dir: str | None) -> None:
    """borgcfg: run jobs on a borgcell cell."""
    from_env = ctx.get_parameter_source("master") == click.core.ParameterSource.ENVIRONMENT
    user_given = ctx.get_parameter_source("user") != click.core.ParameterSource.DEFAULT
    ctx.obj = Ctx(
        master,
        user,
        "BORG_MASTER" if from_env else "--master",
        tls_dir=tls_dir,
        user_given=user_given,
    )
