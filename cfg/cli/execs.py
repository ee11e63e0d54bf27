"""`exec`: run a command beside a task (its cgroup, user, sandbox and environment), with
stdin/stdout/stderr relayed through a master to the task's Borglet, or a terminal with `-t`."""

from __future__ import annotations

import contextlib
import os
import queue
import shutil
import signal
import sys
import threading
from collections.abc import Iterator
from typing import Any

import click

from cfg.cli.base import Ctx, handles_errors
from cfg.cli.jobs import parse_task_ref
from cfg.errors import CellError, Unreachable

STDIN_CHUNK = 16 << 10


@click.command(context_settings={"allow_interspersed_args": False})
@click.argument("task")
@click.option("-t", "--tty", is_flag=True, help="A terminal (stdout and stderr merged).")
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@click.pass_obj
@handles_errors
def exec(ctx: Ctx, task: str, tty: bool, command: tuple[str, ...]) -> None:
    """Run COMMAND beside TASK (JOB/INDEX): `borgcfg exec web/0 -- ps aux`.

    The command runs in the task's cgroup (it counts against the task's limits), as its user,
    in its sandbox, with its environment; exits with the command's exit code."""
    from proto.borg.v1 import borg_pb2 as pb

    name, idx = parse_task_ref(task)
    if command[:1] == ("--",):
        command = command[1:]
    if not command:
        raise click.UsageError("COMMAND is required: borgcfg exec JOB/INDEX -- CMD [ARG]...")
    size = _term_size() if tty else os.terminal_size((0, 0))
    start = pb.ExecInput(
        start=pb.ExecStart(
            job=name, index=idx, argv=list(command), tty=tty, rows=size.lines, cols=size.columns
        )
    )
    inbox: queue.Queue[Any] = queue.Queue()
    done = threading.Event()

    def requests() -> Iterator[Any]:
        yield start
        while True:
            item = inbox.get()
            if item is None or done.is_set():
                return
            yield item

    def pump_stdin() -> None:
        fd = sys.stdin.fileno()
        while not done.is_set():
            try:
                data = os.read(fd, STDIN_CHUNK)
            except OSError:
                data = b""
            if not data:
                inbox.put(pb.ExecInput(stdin_eof=True))
                return
            inbox.put(pb.ExecInput(stdin=data))

    raw = _RawTerminal() if tty and sys.stdin.isatty() else None
    if tty:
        signal.signal(
            signal.SIGWINCH,
            lambda *_: inbox.put(pb.ExecInput(resize=_resize(pb))),
        )
    else:
        # Ctrl-C interrupts the command, not the relay (a second one ends borgcfg too).
        def on_sigint(signum: int, frame: object) -> None:
            inbox.put(pb.ExecInput(signal=int(signal.SIGINT)))
            signal.signal(signal.SIGINT, signal.default_int_handler)

        signal.signal(signal.SIGINT, on_sigint)
    threading.Thread(target=pump_stdin, name="stdin", daemon=True).start()
    code = 1
    call = ctx.client.exec_stream(requests())
    try:
        if raw is not None:
            raw.enter()
        out, err = sys.stdout.buffer, sys.stderr.buffer
        for msg in call:
            kind = msg.WhichOneof("msg")
            if kind == "stdout":
                out.write(msg.stdout)
                out.flush()
            elif kind == "stderr":
                err.write(msg.stderr)
                err.flush()
            elif kind == "exit_code":
                code = msg.exit_code
    except Exception as e:
        _raise_cell_error(e)
    finally:
        if raw is not None:
            raw.leave()
        done.set()
        inbox.put(None)
        call.cancel()
    sys.exit(code)


def _term_size() -> os.terminal_size:
    """The size of the terminal we run in (not $COLUMNS/$LINES, which may be stale)."""
    for f in (sys.stdout, sys.stdin, sys.stderr):
        try:
            return os.get_terminal_size(f.fileno())
        except (OSError, ValueError):
            continue
    return shutil.get_terminal_size((80, 24))


def _resize(pb: Any) -> Any:
    size = _term_size()
    return pb.ExecResize(rows=size.lines, cols=size.columns)


def _raise_cell_error(e: Exception) -> None:
    import grpc

    from cfg.client import RETRYABLE, _why

    if isinstance(e, grpc.RpcError):
        if e.code() in RETRYABLE:
            raise Unreachable(f"exec: {_why(e)}") from None
        raise CellError(e.code(), e.details() or e.code().name) from None
    raise e


class _RawTerminal:
    """Our terminal in raw mode while a `-t` session runs (keys go to the remote terminal,
    which does the echo and Ctrl-C); restored on the way out whatever happens."""

    def __init__(self) -> None:
        self.fd = sys.stdin.fileno()
        self.saved: Any = None

    def enter(self) -> None:
        import termios
        import tty

        self.saved = termios.tcgetattr(self.fd)
        tty.setraw(self.fd)

    def leave(self) -> None:
        import termios

        if self.saved is not None:
            with contextlib.suppress(termios.error):
                termios.tcsetattr(self.fd, termios.TCSADRAIN, self.saved)
