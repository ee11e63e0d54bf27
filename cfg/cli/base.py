"""What every borgcfg command shares without loading rich or gRPC: the invocation context,
one-line failures with SPEC's exit codes, and JSON output."""

from __future__ import annotations

import getpass
import json
import os
import sys
from collections.abc import Callable
from functools import wraps
from typing import TYPE_CHECKING, Any, NoReturn, TypeVar

import click

from cfg.cli.group import UsageLine
from cfg.errors import CellError, ConfigError, Unreachable
from cfg.options import master_addresses

if TYPE_CHECKING:
    from cfg.client import Client

F = TypeVar("F", bound=Callable[..., Any])


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"borgcfg: {message}", err=True)
    sys.exit(code)


def cell_error_message(e: CellError) -> str:
    """`rejected: ...` for a refused request; an unknown name is reported as just that."""
    code = getattr(e.code, "name", "")  # a grpc.StatusCode (not imported: see cfg.errors)
    if code == "NOT_FOUND":
        return e.message
    if code == "UNIMPLEMENTED":
        return f"the cell does not support this command yet ({e.message})"
    return f"rejected: {e.message}"


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


def emit_json(obj: Any) -> None:
    click.echo(json.dumps(obj, indent=2))


output_option = click.option(
    "-o", "--output", type=click.Choice(["table", "json"]), default="table", show_default=True
)


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
            from cfg.client import Client  # gRPC is loaded only by commands that call a cell

            self._client = Client(masters)
        return self._client


def resources_json(r: Any) -> dict[str, Any]:
    """A pb.Resources as JSON keys (machines, quota)."""
    return {"cpu": r.cpu, "ram": r.ram, "disk": r.disk, "gpu": r.gpu}
