"""The one exception the config layer raises for bad config content.

Every failure a user can cause with a config file (syntax, evaluation, schema) surfaces as a
`ConfigError`, so the CLI can print `str(err)` as one line and exit 1 without a traceback.
"""

from __future__ import annotations


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
