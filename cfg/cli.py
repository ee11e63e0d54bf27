"""borgcfg: submit and inspect jobs. Tables for people, `-o json` for scripts.

Exit codes (SPEC.md): 0 ok, 1 user error (bad config, unknown job, rejected), 2 usage,
3 cell unreachable. Every failure is one line on stderr, never a traceback. docs/cli.md is the
user's guide to every command.
"""

from __future__ import annotations

import getpass
import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import wraps
from typing import Any, NoReturn, TypeVar

import click
import grpc
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from cfg.client import CellError, Client, Unreachable
from cfg.errors import ConfigError
from cfg.loader import load_file
from cfg.model import (
    BANDS,
    QUOTA_KEEP,
    RUNNING,
    TERMINAL_TASK_STATES,
    UNLIMITED,
    JobSpec,
)
from cfg.options import host_port, key_values, master_addresses
from cfg.schema import spec_to_config, validate_job
from cfg.structs import dict_from
from cfg.units import human_size, parse_size
from proto.borg.v1 import borg_pb2 as pb

F = TypeVar("F", bound=Callable[..., Any])

STATE_STYLE = {
    "running": "green",
    "up": "green",
    "succeeded": "green",
    "healthy": "green",
    "leader": "bold green",
    "follower": "cyan",
    "pending": "yellow",
    "assigned": "yellow",
    "draining": "yellow",
    "candidate": "yellow",
    "failed": "red",
    "lost": "red",
    "unhealthy": "red",
    "unreachable": "red",
    "killed": "dim",
}

BAND_NAMES = [b[0] for b in BANDS]


# ----- output helpers ----------------------------------------------------------------------


def make_console(stderr: bool = False) -> Console:
    """A console for tables: the terminal's width on a TTY; otherwise wide enough that no
    column is truncated or wrapped (pipes, `watch`, CI logs), without colour codes."""
    stream = sys.stderr if stderr else sys.stdout
    if stream.isatty():
        return Console(stderr=stderr, highlight=False)
    return Console(
        file=stream, width=500, no_color=True, highlight=False, soft_wrap=True, emoji=False
    )


PLAIN_TABLE_ROWS = 200
"""Tables longer than this are laid out by `plain_table` (rich takes ~1.3 ms a row)."""


def plain_table(t: Table) -> str:
    """A big table as plain columns, two spaces apart, like rich's layout without styles:
    `status` of a 5,000-task job in milliseconds instead of seconds."""
    cols = [[Text.from_markup(str(c)).plain for c in col._cells] for col in t.columns]
    heads = [str(col.header) for col in t.columns]
    widths = [max([len(h), *(len(v) for v in col)]) for h, col in zip(heads, cols, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(heads, widths, strict=True)).rstrip()]
    for row in zip(*cols, strict=True):
        lines.append("  ".join(v.ljust(w) for v, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines) + "\n"


def show(console: Console, renderable: Any) -> None:
    """Print a table; off a terminal, without the padding rich leaves at line ends (so `diff`
    and golden files see clean lines)."""
    if isinstance(renderable, Table) and renderable.row_count > PLAIN_TABLE_ROWS:
        console.file.write(plain_table(renderable))
        return
    if console.is_terminal:
        console.print(renderable)
        return
    with console.capture() as cap:
        console.print(renderable)
    text = "\n".join(line.rstrip() for line in cap.get().splitlines())
    console.file.write(text + "\n")


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"borgcfg: {message}", err=True)
    sys.exit(code)


def cell_error_message(e: CellError) -> str:
    """`rejected: ...` for a refused request; an unknown name is reported as just that."""
    if e.code == grpc.StatusCode.NOT_FOUND:
        return e.message
    if e.code == grpc.StatusCode.UNIMPLEMENTED:
        return f"the cell does not support this command yet ({e.message})"
    return f"rejected: {e.message}"


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


def handles_errors(fn: F) -> F:
    """Map every expected failure to its exit code and one line on stderr."""

    @wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except ConfigError as e:
            fail(str(e), 1)
        except CellError as e:
            fail(cell_error_message(e), 1)
        except Unreachable as e:
            fail(str(e), 3)
        except KeyboardInterrupt:
            fail("interrupted", 130)
        except BrokenPipeError:
            # `borgcfg events -f | head`: the reader left; that is not an error.
            sys.stderr.close()
            sys.exit(0)

    return wrapper  # type: ignore[return-value]


def styled(state: str) -> str:
    style = STATE_STYLE.get(state)
    return f"[{style}]{escape(state)}[/]" if style else escape(state)


def age(ms: int, now: float | None = None) -> str:
    """How long ago `ms` (epoch milliseconds) was, like kubectl: 45s, 12m, 5h, 3d."""
    if not ms:
        return "-"
    s = max(0, int((time.time() if now is None else now) - ms / 1000))
    if s < 120:
        return f"{s}s"
    if s < 7200:
        return f"{s // 60}m"
    if s < 172800:
        return f"{s // 3600}h"
    return f"{s // 86400}d"


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


def table(*cols: str) -> Table:
    t = Table(box=None, header_style="bold", pad_edge=False)
    for c in cols:
        t.add_column(c, no_wrap=True, overflow="fold")
    return t


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


# ----- the group ---------------------------------------------------------------------------


def login_name() -> str:
    try:
        return getpass.getuser()
    except Exception:  # no login name in some containers
        return os.environ.get("USER", "") or "unknown"


class Ctx:
    """Per-invocation state: where the cell is and who is asking."""

    def __init__(self, masters: str, user: str, masters_from: str = "--master") -> None:
        self.master_arg = masters
        self.masters_from = masters_from
        self.user = user
        self._client: Client | None = None

    @property
    def client(self) -> Client:
        """Checked when first needed (so `validate` and `completion` work whatever
        $BORG_MASTER holds), but before any connection: a malformed address is exit 2."""
        if self._client is None:
            try:
                masters = master_addresses(self.master_arg, self.masters_from)
            except click.UsageError as e:
                raise UsageLine(e.message) from None  # about the global option, not the command
            self._client = Client(masters)
        return self._client


@click.group(cls=Borgcfg, context_settings={"help_option_names": ["-h", "--help"]})
@click.option(
    "--master",
    envvar="BORG_MASTER",
    default="127.0.0.1:7070",
    show_default="$BORG_MASTER or 127.0.0.1:7070",
    help="Master address(es), comma separated; any replica will do.",
)
@click.option("--user", default=login_name, show_default="login name", help="Acting user.")
@click.option("--tls-dir", type=click.Path(file_okay=False), default=None, hidden=True)
@click.pass_context
def main(ctx: click.Context, master: str, user: str, tls_dir: str | None) -> None:
    """borgcfg: run jobs on a borgcell cell."""
    from_env = ctx.get_parameter_source("master") == click.core.ParameterSource.ENVIRONMENT
    ctx.obj = Ctx(master, user, "BORG_MASTER" if from_env else "--master")


# ----- config commands ---------------------------------------------------------------------


def _load(ctx: Ctx, file: str, ext_str: tuple[str, ...], tla_str: tuple[str, ...]) -> list[JobSpec]:
    return load_file(
        file,
        ext_str=key_values(ext_str, "--ext-str"),
        tla_str=key_values(tla_str, "--tla-str"),
        default_user=ctx.user,
    )


def with_jsonnet_opts(fn: F) -> F:
    fn = click.option("--tla-str", multiple=True, help="Jsonnet top-level argument KEY=VALUE.")(fn)
    return click.option("--ext-str", multiple=True, help="Jsonnet external variable KEY=VALUE.")(fn)


@main.command()
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
    specs = _load(ctx, file, ext_str, tla_str)
    if output == "json":
        emit_json([spec_to_config(s) for s in specs])
        return
    for s in specs:
        click.echo(
            f"{file}: job {s.name}: ok ({s.kind}, {s.replicas} replicas, priority {s.priority})"
        )


@main.command()
@click.argument("file")
@click.option("--wait", is_flag=True, help="Wait until tasks run (service) or finish (batch).")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to --wait.")
@with_jsonnet_opts
@click.pass_obj
@handles_errors
def up(
    ctx: Ctx,
    file: str,
    wait: bool,
    timeout: float,
    ext_str: tuple[str, ...],
    tla_str: tuple[str, ...],
) -> None:
    """Create or update every job in FILE, in file order; stops at the first rejection."""
    specs = _load(ctx, file, ext_str, tla_str)
    names: list[str] = []
    for i, s in enumerate(specs):
        try:
            res = ctx.client.submit(spec_to_config(s), ctx.user)
        except (CellError, Unreachable) as e:
            if len(specs) == 1:
                raise
            why = cell_error_message(e) if isinstance(e, CellError) else str(e)
            fail(
                f"job '{s.name}': {why}; {partly_applied(names, [x.name for x in specs[i:]])}",
                1 if isinstance(e, CellError) else 3,
            )
        click.echo(f"job {res.name}: {res.result} (version {res.version})")
        names.append(res.name)
    if wait and names:
        wait_jobs(ctx, names, timeout, until="up")


def partly_applied(applied: list[str], rest: list[str]) -> str:
    """What a multi-job `up` that stopped part way left behind (jobs are not rolled back)."""
    done = f"already applied: {', '.join(applied)}" if applied else "nothing was applied"
    return f"{done}; not applied: {', '.join(rest)}"


@main.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until every task has stopped.")
@click.option("--timeout", default=120.0, show_default=True, help="Seconds to --wait.")
@click.pass_obj
@handles_errors
def down(ctx: Ctx, job: str, wait: bool, timeout: float) -> None:
    """Kill JOB's tasks and mark it killed."""
    res = ctx.client.kill(job, ctx.user)
    how = "already killed" if res.already else "killed"
    click.echo(f"job {res.name}: {how} ({res.tasks_to_stop} tasks to stop)")
    if wait:
        wait_jobs(ctx, [job], timeout, until="down")


@main.command()
@click.argument("job")
@click.option("--wait", is_flag=True, help="Wait until the previous version runs everywhere.")
@click.option("--timeout", default=300.0, show_default=True, help="Seconds to --wait.")
@click.pass_obj
@handles_errors
def rollback(ctx: Ctx, job: str, wait: bool, timeout: float) -> None:
    """Return JOB to its previous version (rolled out like any update)."""
    res = ctx.client.rollback(job, ctx.user)
    click.echo(f"job {res.name}: {res.result or 'rolled back'} (version {res.version})")
    if wait:
        wait_jobs(ctx, [job], timeout, until="up")


# ----- waiting with a progress bar ---------------------------------------------------------


@dataclass
class JobProgress:
    """Where one job stands while `--wait` watches it (pure: computed from a `pb.Job`)."""

    name: str
    done: int = 0
    total: int = 1
    counts: dict[str, int] = field(default_factory=dict)
    finished: bool = False
    failed: str = ""
    # tasks of the current version that keep restarting: "web/0 (3 restarts, last: exit: 1)"
    crash_looping: list[str] = field(default_factory=list)

    def detail(self) -> str:
        order = ["running", "pending", "assigned", "succeeded", "failed", "killed", "lost"]
        keys = [k for k in order if k in self.counts] + sorted(set(self.counts) - set(order))
        parts = [f"{self.counts[k]} {k}" for k in keys]
        if self.crash_looping:
            parts.append(f"{len(self.crash_looping)} crash-looping")
        return ", ".join(parts) or "no tasks"


def last_exit(t: pb.Task) -> str:
    if t.reason:
        return t.reason
    return f"exit {t.exit_code}" if t.exit_code >= 0 else "unknown"


def job_progress(job: pb.Job | None, name: str, until: str) -> JobProgress:
    """`until` is "up" (running on the job's version / finished) or "down" (all stopped).

    Readiness is the master's verdict (`Job.ready`, `Task.ready`, judged with its clock):
    borgcfg only counts, so a client clock that is off changes nothing."""
    p = JobProgress(name)
    if job is None:
        p.finished = until == "down"
        p.failed = "" if until == "down" else "job does not exist"
        return p
    for t in job.tasks:
        p.counts[t.state] = p.counts.get(t.state, 0) + 1
    p.total = max(1, len(job.tasks) if until == "down" else int(job.replicas))
    if until == "down":
        p.done = sum(1 for t in job.tasks if t.state in TERMINAL_TASK_STATES)
        p.finished = p.done >= len(job.tasks)
        if p.finished:
            p.done = p.total
        return p
    if job.kind == "batch":
        p.done = p.counts.get("succeeded", 0)
        p.finished = job.state in ("succeeded", "failed", "killed")
        if job.state in ("failed", "killed"):
            p.failed = f"job {job.state}"
        return p
    p.done = int(job.ready)
    p.crash_looping = [
        f"{job.name}/{t.index} ({t.restarts} restart{'s' if t.restarts != 1 else ''}, "
        f"last: {last_exit(t)})"
        for t in job.tasks
        if t.version == job.version and t.restarts > 0 and t.state == RUNNING and not t.ready
    ]
    if job.rollout.startswith("halted"):
        p.finished, p.failed = True, job.rollout
    elif job.state in ("failed", "killed"):
        p.finished, p.failed = True, f"job {job.state}"
    elif job.state == "succeeded":
        p.finished = True  # a service whose tasks all exited 0 and are not restarted
        p.done = p.total
    else:
        p.finished = p.done >= job.replicas and not job.rollout.startswith("rolling")
    return p


def wait_jobs(ctx: Ctx, names: list[str], timeout: float, until: str) -> None:
    """A live bar per job with its task counts, then one summary line per job.

    Exit 1 when a job fails or the timeout passes (the summary says where each job stood).
    """
    ctx.client.discover()
    start = time.monotonic()
    deadline = start + timeout
    latest: dict[str, JobProgress] = {}
    err = make_console(stderr=True)
    with Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TextColumn("{task.fields[detail]}"),
        TimeElapsedColumn(),
        console=err,
        transient=True,
        disable=not sys.stderr.isatty(),
    ) as progress:
        bars = {n: progress.add_task(n, total=1, detail="") for n in names}
        pending = list(names)
        while pending:
            for n in list(pending):
                p = job_progress(ctx.client.get_job(n), n, until)
                latest[n] = p
                progress.update(bars[n], completed=p.done, total=p.total, detail=p.detail())
                if p.finished:
                    pending.remove(n)
            if not pending or time.monotonic() > deadline:
                break
            time.sleep(0.25)
    took = time.monotonic() - start
    failed: list[str] = []
    for n in names:
        p = latest[n]
        verb = "stopped" if until == "down" else "ready"
        if p.failed:
            mark, failed = "[red]✗[/]", [*failed, n]
            what = p.failed
        elif p.finished:
            mark, what = "[green]✓[/]", verb
        else:
            mark, what = "[yellow]…[/]", "timed out"
        err.print(f"{mark} {escape(n)}: {escape(what)} ({p.done}/{p.total}; {escape(p.detail())})")
    stuck = [n for n in names if not latest[n].finished]
    if stuck:
        looping = [t for n in stuck for t in latest[n].crash_looping]
        why = f"; crash-looping: {', '.join(looping)}" if looping else ""
        fail(f"timed out after {timeout:g}s waiting for {', '.join(stuck)}{why}", 1)
    if failed:
        fail(f"job(s) failed: {', '.join(failed)} (see borgcfg status, borgcfg why)", 1)
    err.print(f"done in {took:.1f}s")


# ----- diff --------------------------------------------------------------------------------


@dataclass
class JobDiff:
    """What `up` would do to one job (pure: computed from the current and the new spec)."""

    name: str
    action: str  # create | update | unchanged
    changes: list[tuple[str, Any, Any]] = field(default_factory=list)  # (path, old, new)
    old_version: int = 0
    new_version: int = 0
    start: int = 0
    stop: int = 0
    replace: int = 0
    max_unavailable: int = 1

    def plan(self) -> str:
        parts = []
        if self.start:
            parts.append(f"{self.start} task{'s' if self.start != 1 else ''} would start")
        if self.stop:
            parts.append(f"{self.stop} task{'s' if self.stop != 1 else ''} would stop")
        if self.replace:
            parts.append(
                f"{self.replace} task{'s' if self.replace != 1 else ''} would be replaced, "
                f"{self.max_unavailable} at a time"
            )
        return "; ".join(parts) or "no task changes"

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "action": self.action,
            "version": {"old": self.old_version or None, "new": self.new_version},
            "changes": [{"path": p, "old": o, "new": n} for p, o, n in self.changes],
            "plan": {"start": self.start, "stop": self.stop, "replace": self.replace},
        }


_MISSING = object()


def diff_values(old: Any, new: Any, path: str = "") -> list[tuple[str, Any, Any]]:
    """Leaf-level differences between two config trees; a missing side is `None`."""
    if isinstance(old, dict) and isinstance(new, dict):
        out = []
        for k in sorted(set(old) | set(new)):
            p = f"{path}.{k}" if path else k
            out.extend(diff_values(old.get(k, _MISSING), new.get(k, _MISSING), p))
        return out
    if old is _MISSING or new is _MISSING:
        return [(path, None if old is _MISSING else old, None if new is _MISSING else new)]
    if _norm(old) != _norm(new):
        return [(path, _norm(old), _norm(new))]
    return []


def _norm(v: Any) -> Any:
    """Struct numbers are doubles: 3.0 and 3 are the same replicas count."""
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, list):
        return [_norm(x) for x in v]
    if isinstance(v, dict):
        return {k: _norm(x) for k, x in v.items()}
    return v


def plan_job(new: JobSpec, current: pb.Job | None) -> JobDiff:
    """The same decision the master makes on SubmitJob (borgmaster/store.py): a changed task
    template is a new version rolled over the existing replicas; replicas, priority, update
    policy or owner changes alone apply in place."""
    new_cfg = spec_to_config(new)
    if current is None or current.state == "killed":
        d = JobDiff(new.name, "create", new_version=(current.version + 1) if current else 1)
        d.start = new.replicas
        d.changes = diff_values({}, new_cfg)
        return d
    old_cfg = dict_from(current.spec)
    d = JobDiff(new.name, "update", old_version=current.version, new_version=current.version)
    d.changes = diff_values(old_cfg, new_cfg)
    if not d.changes:
        d.action = "unchanged"
        return d
    try:
        old = validate_job(old_cfg, default_user=current.user)
        template_changed = old.task_template() != new.task_template()
    except ConfigError:  # a spec from an older schema: assume the worst
        template_changed = True
    old_n = int(current.replicas)
    d.start = max(0, new.replicas - old_n)
    d.stop = max(0, old_n - new.replicas)
    d.max_unavailable = new.update.max_unavailable
    if template_changed:
        d.new_version = current.version + 1
        d.replace = min(old_n, new.replicas)
    return d


def _fmt(v: Any) -> str:
    return json.dumps(v) if not isinstance(v, str) else v


@main.command()
@click.argument("file")
@click.option(
    "--exit-code", is_flag=True, help="Exit 4 when there are differences (like git diff)."
)
@with_jsonnet_opts
@output_option
@click.pass_obj
@handles_errors
def diff(
    ctx: Ctx,
    file: str,
    exit_code: bool,
    ext_str: tuple[str, ...],
    tla_str: tuple[str, ...],
    output: str,
) -> None:
    """What `up` would change, per job and field, and the tasks it would start or stop."""
    specs = _load(ctx, file, ext_str, tla_str)
    diffs = [plan_job(s, ctx.client.get_job(s.name)) for s in specs]
    if output == "json":
        emit_json([d.to_json() for d in diffs])
    else:
        console = make_console()
        for d in diffs:
            if d.action == "unchanged":
                console.print(f"  job {escape(d.name)}: unchanged (version {d.old_version})")
                continue
            if d.action == "create":
                head = f"[green]+ job {escape(d.name)}[/]: new, version {d.new_version}"
            elif d.new_version != d.old_version:
                head = (
                    f"[yellow]~ job {escape(d.name)}[/]: version {d.old_version} -> {d.new_version}"
                )
            else:
                head = f"[yellow]~ job {escape(d.name)}[/]: version {d.old_version} (in place)"
            console.print(head)
            if d.action == "update":
                for path, old, new in d.changes:
                    if old is not None:
                        console.print(f"[red]-   {escape(path)}: {escape(_fmt(old))}[/]")
                    if new is not None:
                        console.print(f"[green]+   {escape(path)}: {escape(_fmt(new))}[/]")
            console.print(f"    plan: {d.plan()}")
    if exit_code and any(d.action != "unchanged" for d in diffs):
        sys.exit(4)


# ----- status ------------------------------------------------------------------------------


def job_json(job: pb.Job) -> dict[str, Any]:
    return {
        "name": job.name,
        "user": job.user,
        "priority": job.priority,
        "kind": job.kind,
        "replicas": job.replicas,
        "state": job.state,
        "version": job.version,
        "running": job.running,
        "rollout": job.rollout,
        "tasks": [
            {
                "index": t.index,
                "state": t.state,
                "machine": t.machine or None,
                "version": t.version,
                "restarts": t.restarts,
                "exit_code": None if t.exit_code == -1 else t.exit_code,
                "reason": t.reason,
                "health": t.health or None,
                "cpu_seconds": t.cpu_seconds,
                "memory_bytes": t.memory_bytes,
                "ports": dict(t.ports),
            }
            for t in job.tasks
        ],
    }


def jobs_json(jobs: list[pb.Job]) -> list[dict[str, Any]]:
    return [
        {
            "name": j.name,
            "user": j.user,
            "priority": j.priority,
            "state": j.state,
            "running": j.running,
            "replicas": j.replicas,
            "kind": j.kind,
            "version": j.version,
        }
        for j in jobs
    ]


def job_table(j: pb.Job) -> tuple[str, Table]:
    """The header line and task table of `status JOB`; health and usage columns appear only
    when some task reports them."""
    head = (
        f"[bold]{escape(j.name)}[/]  {styled(j.state)}  user {escape(j.user)}  "
        f"priority {j.priority}  {j.kind}  version {j.version}  "
        f"{j.running}/{j.replicas} running  age {age(j.created_ms)}"
    )
    if j.rollout:
        head += f"\n[yellow]{escape(j.rollout)}[/]"
    health = any(t.health for t in j.tasks)
    usage = any(t.cpu_seconds or t.memory_bytes for t in j.tasks)
    cols = ["INDEX", "STATE"] + (["HEALTH"] if health else []) + ["MACHINE", "VERSION"]
    cols += ["RESTARTS", "EXIT"] + (["CPU", "MEM"] if usage else []) + ["AGE", "REASON"]
    t = table(*cols)
    for task in j.tasks:
        row = [str(task.index), styled(task.state)]
        if health:
            row.append(styled(task.health) if task.health else "-")
        row += [escape(task.machine or "-"), str(task.version), str(task.restarts)]
        row.append("-" if task.exit_code == -1 else str(task.exit_code))
        if usage:
            row += [f"{task.cpu_seconds:.1f}s", human_size(task.memory_bytes)]
        row += [age(task.updated_ms), escape(task.reason or "")]
        t.add_row(*row)
    return head, t


@main.command()
@click.argument("job", required=False)
@output_option
@click.option("--stale", is_flag=True, help="Read this replica's state without a barrier.")
@click.pass_obj
@handles_errors
def status(ctx: Ctx, job: str | None, output: str, stale: bool) -> None:
    """Table of jobs, or one JOB with its tasks."""
    console = make_console()
    if job:
        j = ctx.client.get_job(job, stale=stale)
        if j is None:
            fail(f"job '{job}' does not exist", 1)
        if output == "json":
            emit_json(job_json(j))
            return
        head, t = job_table(j)
        console.print(head)
        show(console, t)
        return
    jobs = ctx.client.list_jobs(stale=stale)
    if output == "json":
        emit_json(jobs_json(jobs))
        return
    if not jobs:
        click.echo("no jobs", err=True)
        return
    t = table("NAME", "USER", "PRIORITY", "KIND", "STATE", "RUNNING", "VERSION", "AGE")
    for j in jobs:
        t.add_row(
            escape(j.name),
            escape(j.user),
            str(j.priority),
            j.kind,
            styled(j.state),
            f"{j.running}/{j.replicas}",
            str(j.version),
            age(j.created_ms),
        )
    show(console, t)


# ----- machines ----------------------------------------------------------------------------


def _res_json(r: pb.Resources) -> dict[str, Any]:
    return {"cpu": r.cpu, "ram": r.ram, "disk": r.disk, "gpu": r.gpu}


def machines_json(ms: list[pb.Machine]) -> list[dict[str, Any]]:
    return [
        {
            "name": m.name,
            "state": m.state,
            "capacity": _res_json(m.capacity),
            "used": _res_json(m.used),
            "usage": _res_json(m.usage),
            "attrs": dict(m.attrs),
            "taints": [{"key": t.key, "value": t.value, "effect": t.effect} for t in m.taints],
            "tasks": m.tasks,
            "address": m.address,
        }
        for m in ms
    ]


@main.command()
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
            f"{m.used.gpu}/{m.capacity.gpu}",
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


@main.command()
@click.argument("machine")
@output_option
@click.pass_obj
@handles_errors
def drain(ctx: Ctx, machine: str, output: str) -> None:
    """Stop scheduling on MACHINE and move its tasks elsewhere."""
    _drain(ctx, machine, False, output)


@main.command()
@click.argument("machine")
@output_option
@click.pass_obj
@handles_errors
def undrain(ctx: Ctx, machine: str, output: str) -> None:
    """Allow scheduling on MACHINE again."""
    _drain(ctx, machine, True, output)


# ----- tasks: logs and why -----------------------------------------------------------------


def parse_task_ref(ref: str) -> tuple[str, int]:
    name, sep, idx = ref.partition("/")
    if not sep or not name or not idx.isdigit():
        raise click.UsageError(f"TASK must be JOB/INDEX (e.g. web/0), got '{ref}'")
    return name, int(idx)


@main.command()
@click.argument("task")
@click.option("--stderr", is_flag=True, help="Show stderr instead of stdout.")
@click.option("-f", "--follow", is_flag=True, help="Keep streaming new output.")
@click.pass_obj
@handles_errors
def logs(ctx: Ctx, task: str, stderr: bool, follow: bool) -> None:
    """A task's output: TASK is JOB/INDEX (e.g. web/0)."""
    name, idx = parse_task_ref(task)
    job = ctx.client.get_job(name)
    if job is None:
        fail(f"job '{name}' does not exist", 1)
    matches = [t for t in job.tasks if t.index == idx]
    if not matches:
        fail(f"job '{name}' has no task {idx} (it has {job.replicas})", 1)
    if not matches[0].machine:
        fail(f"task {task} has not been placed on a machine (see borgcfg why {task})", 1)
    machine = matches[0].machine
    addr = next((m.address for m in ctx.client.list_machines() if m.name == machine), "")
    if not addr:
        fail(f"machine {machine} of task {task} is unknown", 1)
    out = sys.stdout.buffer
    for chunk in ctx.client.logs(addr, name, idx, stderr, follow, matches[0].incarnation):
        out.write(chunk)
        out.flush()


@main.command()
@click.argument("task")
@output_option
@click.pass_obj
@handles_errors
def why(ctx: Ctx, task: str, output: str) -> None:
    """Why TASK (JOB/INDEX) is where it is, or pending: machines rejected per filter."""
    name, idx = parse_task_ref(task)
    res = ctx.client.explain(name, idx)
    rejected = sorted(res.rejected.items(), key=lambda kv: (-kv[1], kv[0]))
    if output == "json":
        emit_json(
            {
                "task": f"{name}/{idx}",
                "state": res.state,
                "machine": res.machine or None,
                "reason": res.reason,
                "machines": res.machines,
                "feasible": res.feasible,
                "rejected": dict(rejected),
            }
        )
        return
    console = make_console()
    where = f" on {escape(res.machine)}" if res.machine else ""
    console.print(f"[bold]{escape(name)}/{idx}[/]: {styled(res.state)}{where}")
    if res.reason:
        console.print(f"reason: {escape(res.reason)}")
    console.print(f"{res.feasible} of {res.machines} machines feasible now")
    if rejected:
        t = table("FILTER", "MACHINES REJECTED")
        for k, v in rejected:
            t.add_row(escape(k), str(v))
        show(console, t)


# ----- events ------------------------------------------------------------------------------


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


@main.command()
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
    if amount < 0:
        return "unlimited"
    if resource in ("ram", "disk"):
        return human_size(int(amount))
    return f"{amount:g}"


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
        "used": _res_json(q.used),
    }


@main.group()
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


# ----- cell --------------------------------------------------------------------------------


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


@main.group(invoke_without_command=True)
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


@main.command()
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion(shell: str) -> None:
    """Print the shell completion script: `eval "$(borgcfg completion bash)"`."""
    from click.shell_completion import get_completion_class

    cls = get_completion_class(shell)
    assert cls is not None  # every choice above is built into click
    root = click.get_current_context().find_root()
    comp = cls(root.command, {}, "borgcfg", "_BORGCFG_COMPLETE")
    click.echo(comp.source())


if __name__ == "__main__":
    main()
