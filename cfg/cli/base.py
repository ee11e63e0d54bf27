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
from cfg.tls import TlsDir, cert_identity, dev_tls_dir, tls_dir_arg

if TYPE_CHECKING:
    from cfg.client import Client

F = TypeVar("F", bound=Callable[..., Any])

MAX_REPLY_BYTES = 256 << 20
"""The largest reply borgcfg accepts (a job's tasks: ~80 bytes each)."""


def fail(message: str, code: int = 1) -> NoReturn:
    click.echo(f"borgcfg: {message}", err=True)
    sys.exit(code)


def interrupted() -> NoReturn:
    """Ctrl-C: say so and leave now (exit 130).

    `os._exit`, not `sys.exit`: interpreter teardown would wait on gRPC's channel threads and
    the stream being cancelled, and a user who pressed Ctrl-C expects the prompt back at once.
    """
    click.echo("borgcfg: interrupted", err=True)
    for f in (sys.stdout, sys.stderr):
        try:
            f.flush()
        except (OSError, ValueError):
            pass
    os._exit(130)


def cell_error_message(e: CellError) -> str:
    """`rejected: ...` for a refused request; an unknown name is reported as just that."""
    code = getattr(e.code, "name", "")  # a grpc.StatusCode (not imported: see cfg.errors)
    if code == "NOT_FOUND":
        return e.message
    if code == "PERMISSION_DENIED":
        return f"permission denied: {e.message}"
    if code == "UNAUTHENTICATED":
        return f"not authenticated: {e.message}"
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
            interrupted()
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
    """Per-invocation state: where the cell is and who is asking.

    With a TLS dir (`--tls-dir`, `$BORG_TLS_DIR`, or the one `borgmaster dev` recorded for
    its address) every call uses mTLS and the caller is the certificate's holder: `user` is
    then what `--user` said explicitly (checked by the cell against the certificate) or the
    certificate's name."""

    def __init__(
        self,
        masters: str,
        user: str,
        masters_from: str = "--master",
        tls_dir: str | None = None,
        user_given: bool = True,
    ) -> None:
        self.master_arg = masters
        self.masters_from = masters_from
        self._user = user
        self.user_given = user_given
        self.tls_arg = tls_dir
        self._tls_resolved = False
        self._tls: TlsDir | None = None
        self._client: Client | None = None

    def _masters(self) -> list[str]:
        try:
            return master_addresses(self.master_arg, self.masters_from)
        except click.UsageError as e:
            raise UsageLine(e.message) from None  # about the global option, not the command

    @property
    def tls(self) -> TlsDir | None:
        """The certificate this invocation presents (None: plaintext)."""
        if not self._tls_resolved:
            self._tls_resolved = True
            path = tls_dir_arg(self.tls_arg) or dev_tls_dir(self._masters())
            self._tls = TlsDir.load(path) if path else None
        return self._tls

    @property
    def user(self) -> str:
        if self.user_given:
            return self._user
        try:
            tls = self.tls
        except UsageLine:  # a bad $BORG_MASTER is reported by commands that dial it
            return self._user
        if tls is not None:
            ident = cert_identity(tls.cert_file)
            return ident.name if ident is not None else ""
        return self._user

    @property
    def client(self) -> Client:
        """Checked when first needed (so `validate` and `completion` work whatever
        $BORG_MASTER holds), but before any connection: a malformed address is exit 2."""
        if self._client is None:
            masters = self._masters()
            tls = self.tls
            from cfg.client import Client  # gRPC is loaded only by commands that call a cell
            from cfg.grpcauth import secure_channel

            # gRPC refuses replies over 4 MiB by default: a 100,000-task job is ~8 MB.
            opts = [("grpc.max_receive_message_length", MAX_REPLY_BYTES)]
            self._client = Client(
                masters, channel_factory=lambda a: secure_channel(a, tls, options=opts)
            )
        return self._client


def resources_json(r: Any) -> dict[str, Any]:
    """A pb.Resources as JSON keys (machines, quota)."""
    return {"cpu": r.cpu, "ram": r.ram, "disk": r.disk, "gpu": r.gpu}
