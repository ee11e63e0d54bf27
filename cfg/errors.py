"""The errors borgcfg's layers raise, so the CLI maps each to one line and an exit code.

Every failure a user can cause with a config file (syntax, evaluation, schema) surfaces as a
`ConfigError` (exit 1); a request the cell refused is a `CellError` (exit 1); no master
answering is `Unreachable` (exit 3). They live here, not beside the gRPC client, so commands
that never talk to a cell (`validate`, `--help`) do not load gRPC.
"""

from __future__ import annotations

from typing import Any


class ConfigError(Exception):
    """A config problem, located as precisely as the source format allows.

    `file`, `line` and `col` are None when unknown (a dict handed in over the API has no file;
    Jsonnet evaluation results have no line for schema errors). `line` and `col` are 1-based.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        line: int | None = None,
        col: int | None = None,
    ) -> None:
        # Messages may come from Jsonnet or YAML with embedded newlines; the CLI contract is one
        # line per error, so fold them here once instead of in every caller.
        self.message = " ".join(part.strip() for part in message.splitlines() if part.strip())
        self.file = file
        self.line = line
        self.col = col
        super().__init__(self.message)

    def __str__(self) -> str:
        loc = ""
        if self.file is not None:
            loc = self.file
            if self.line is not None:
                loc += f":{self.line}"
                if self.col is not None:
                    loc += f":{self.col}"
        elif self.line is not None:
            loc = f"line {self.line}"
        return f"{loc}: {self.message}" if loc else self.message

    def __reduce__(self) -> tuple[object, ...]:
        # Keep the location when the error crosses a process boundary (pickle).
        return (_rebuild, (self.message, self.file, self.line, self.col))


def _rebuild(message: str, file: str | None, line: int | None, col: int | None) -> ConfigError:
    return ConfigError(message, file=file, line=line, col=col)


class CellError(Exception):
    """The cell rejected the request (bad input, unknown job, admission, quota). `code` is the
    grpc.StatusCode it answered with."""

    def __init__(self, code: Any, message: str) -> None:
        message = " ".join(message.split()) or code.name
        super().__init__(message)
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No master answered (or none could serve the request before the retry deadline)."""
