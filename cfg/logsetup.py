"""One-line logs for every component: plain text, logfmt (key=value) or JSON.

Shared by `borgmaster` and `borglet` so every process of a cell logs the same way
(`--log-format text|logfmt|json`, `--log-level debug|info|warning|error`).
"""

from __future__ import annotations

import json
import logging
import sys
import time

import click

FORMATS = ("text", "logfmt", "json")
LEVELS = ("debug", "info", "warning", "error")


def _ts(record: logging.LogRecord) -> str:
    t = time.gmtime(record.created)
    return time.strftime("%Y-%m-%dT%H:%M:%S", t) + f".{int(record.msecs):03d}Z"


class LogfmtFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        if record.exc_info:
            msg += " " + self.formatException(record.exc_info).replace("\n", " | ")
        fields = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": msg,
        }
        return " ".join(f"{k}={_quote(v)}" for k, v in fields.items())


def _quote(v: str) -> str:
    if v and not any(c in v for c in ' "=\n\t'):
        return v
    return json.dumps(v)


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "ts": _ts(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            doc["exc"] = self.formatException(record.exc_info)
        return json.dumps(doc)


def setup_logging(level: str = "info", fmt: str = "text") -> None:
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    elif fmt == "logfmt":
        handler.setFormatter(LogfmtFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(getattr(logging, level.upper()))
    # PySyncObj is chatty at INFO about connections; keep its warnings.
    logging.getLogger("pysyncobj").setLevel(max(logging.WARNING, root.level))


def log_options(fn: click.decorators.FC) -> click.decorators.FC:
    """--log-level and --log-format for a click command."""
    fn = click.option(
        "--log-format", type=click.Choice(FORMATS), default="text", show_default=True
    )(fn)
    fn = click.option("--log-level", type=click.Choice(LEVELS), default="info", show_default=True)(
        fn
    )
    return fn
