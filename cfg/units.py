"""Sizes and durations as users write them in configs ("64Mi", "1m30s") and back.

Parsing is exact (Decimal arithmetic, no float rounding surprises) so that
`parse_size(format_size(n)) == n` and `parse_duration_ms(format_duration(ms)) == ms` for every
non-negative int; `cfg.schema.spec_to_config` relies on that for its round trip.
"""

from __future__ import annotations

import math
import re
from decimal import ROUND_CEILING, ROUND_HALF_UP, Decimal, InvalidOperation

_SIZE_UNITS: dict[str, int] = {"": 1, "Ki": 1 << 10, "Mi": 1 << 20, "Gi": 1 << 30, "Ti": 1 << 40}
_SIZE_RE = re.compile(r"(\d+(?:\.\d*)?|\.\d+)(Ki|Mi|Gi|Ti)?")

_DURATION_UNITS: dict[str, int] = {"ms": 1, "s": 1000, "m": 60_000, "h": 3_600_000}
_NUMBER = r"(?:\d+(?:\.\d*)?|\.\d+)"
_DURATION_PART_RE = re.compile(rf"({_NUMBER})(ms|s|m|h)")
_DURATION_RE = re.compile(rf"(?:{_NUMBER}(?:ms|s|m|h))+")
_BARE_NUMBER_RE = re.compile(_NUMBER)


def _number(v: object, what: str) -> Decimal | None:
    """`v` as a Decimal if it is a plain JSON number (not a bool), else None."""
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return Decimal(v)
    if isinstance(v, float):
        if not math.isfinite(v):
            raise ValueError(f"{v!r} is not {what}")
        return Decimal(v)
    return None


def parse_size(v: object) -> int:
    """Bytes from an int, an integral float (protobuf Struct numbers), or a string such as
    "64Mi", "1.5Gi" or "4096". Fractional byte counts round up: a request is never shrunk."""
    num = _number(v, "a size")
    if num is None:
        if not isinstance(v, str):
            raise ValueError(f"expected a size like '64Mi', got {type(v).__name__}")
        m = _SIZE_RE.fullmatch(v.strip())
        if m is None:
            raise ValueError(f"{v!r} is not a size")
        try:
            num = Decimal(m.group(1)) * _SIZE_UNITS[m.group(2) or ""]
        except InvalidOperation:  # pragma: no cover - the regex admits only decimals
            raise ValueError(f"{v!r} is not a size")
    if num < 0:
        raise ValueError(f"{v!r} is not a size")
    return int(num.to_integral_value(rounding=ROUND_CEILING))


def parse_duration_ms(v: object) -> int:
    """Milliseconds from "500ms", "1s", "1m30s", "2h" or a bare number of seconds (int, float
    or numeric string), the way Go and Kubernetes users expect to write them."""
    num = _number(v, "a duration")
    if num is not None:
        total = num * 1000
    elif isinstance(v, str):
        s = v.strip()
        if _BARE_NUMBER_RE.fullmatch(s):
            total = Decimal(s) * 1000
        elif _DURATION_RE.fullmatch(s):
            total = sum(
                (Decimal(n) * _DURATION_UNITS[u] for n, u in _DURATION_PART_RE.findall(s)),
                Decimal(0),
            )
        else:
            raise ValueError(f"{v!r} is not a duration")
    else:
        raise ValueError(f"expected a duration like '10s', got {type(v).__name__}")
    if total < 0:
        raise ValueError(f"{v!r} is not a duration")
    return int(total.to_integral_value(rounding=ROUND_HALF_UP))


def format_size(n: int) -> str:
    """The shortest exact spelling of `n` bytes: 67108864 -> "64Mi", 1000 -> "1000"."""
    if n < 0:
        raise ValueError(f"{n} is not a size")
    if n == 0:
        return "0"
    for suffix in ("Ti", "Gi", "Mi", "Ki"):
        unit = _SIZE_UNITS[suffix]
        if n % unit == 0:
            return f"{n // unit}{suffix}"
    return str(n)


def format_duration(ms: int) -> str:
    """`ms` as h/m/s/ms parts: 90000 -> "1m30s", 1500 -> "1s500ms", 0 -> "0s"."""
    if ms < 0:
        raise ValueError(f"{ms} is not a duration")
    if ms == 0:
        return "0s"
    parts = []
    for suffix in ("h", "m", "s", "ms"):
        unit = _DURATION_UNITS[suffix]
        count, ms = divmod(ms, unit)
        if count:
            parts.append(f"{count}{suffix}")
    return "".join(parts)


def human_size(n: int | float) -> str:
    """`n` bytes for a table, to 3 significant figures: 20186000000 -> "18.8Gi", 0 -> "0".

    Unlike `format_size` this rounds (it is for people reading `status`, not for configs).
    """
    n = max(0, int(n))
    if n < 1024:
        return str(n)
    value = float(n)
    for suffix in ("Ki", "Mi", "Gi", "Ti", "Pi"):
        value /= 1024
        if value < 1024 or suffix == "Pi":
            if value >= 100:
                return f"{value:.0f}{suffix}"
            text = f"{value:.1f}" if value >= 10 else f"{value:.2f}"
            return text.rstrip("0").rstrip(".") + suffix
    raise AssertionError("unreachable")


def format_amount(resource: str, amount: float) -> str:
    """One resource amount or limit for people: "unlimited" below 0 (`UNLIMITED`), ram and
    disk as `human_size`, cpu and gpu as plain numbers. borgcfg's quota tables and the
    master's quota messages both use it, so they read the same."""
    if amount < 0:
        return "unlimited"
    if resource in ("ram", "disk"):
        return human_size(amount)
    return f"{amount:g}"
