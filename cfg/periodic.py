"""Periodic jobs' schedules: `schedule: "CRON"` (5 fields, or `@hourly`, `@daily`, ... as
croniter reads them) or `@every 30s`, in a time zone. Pure: the caller passes every time.

The master's controller asks `due` which fire time to launch next; the store records the
launched one in the replicated state (`Job.last_scheduled_ms`), so a new leader goes on from
the same point: no run is doubled, and runs missed while no leader acted (a failover) are
launched late, each under its own scheduled time, up to MAX_CATCH_UP of them.

croniter is imported lazily: only a periodic job pays for it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cfg.units import parse_duration_ms

MAX_SCHEDULE_CHARS = 200
MIN_EVERY_MS = 1000
"""`@every` shorter than this is refused (a child job per fire time)."""
MAX_CATCH_UP = 5
"""Missed fire times launched late after an outage; beyond that only the latest one is."""
_EVERY = re.compile(r"@every\s+(\S+)")


@dataclass(frozen=True)
class Schedule:
    """A parsed schedule: `every_ms` for `@every`, else a croniter expression."""

    text: str
    every_ms: int = 0
    cron: str = ""
    time_zone: str = "UTC"


def parse(text: str, time_zone: str = "UTC") -> Schedule:
    """The schedule, or ValueError saying what is wrong (one line, for the field's error)."""
    if not isinstance(text, str) or not text.strip():
        raise ValueError("expected a cron expression or '@every DURATION'")
    if len(text) > MAX_SCHEDULE_CHARS:
        raise ValueError(f"longer than {MAX_SCHEDULE_CHARS} characters")
    zone(time_zone)
    t = text.strip()
    m = _EVERY.fullmatch(t)
    if m:
        try:
            ms = parse_duration_ms(m.group(1))
        except ValueError as e:
            raise ValueError(f"@every: {e}") from None
        if ms < MIN_EVERY_MS:
            raise ValueError(f"@every must be at least {MIN_EVERY_MS // 1000}s")
        return Schedule(text=t, every_ms=ms, time_zone=time_zone)
    if t.startswith("@every"):
        raise ValueError("expected '@every DURATION', e.g. '@every 30s'")
    if not t.startswith("@") and len(t.split()) != 5:
        raise ValueError(f"expected 5 cron fields (minute hour day month weekday), got {t!r:.60}")
    from croniter import croniter

    if not croniter.is_valid(t):
        raise ValueError(f"not a valid cron expression: {t!r:.60}")
    return Schedule(text=t, cron=t, time_zone=time_zone)


@lru_cache(maxsize=4096)
def parsed(text: str, time_zone: str) -> Schedule | None:
    """`parse`, remembered (the leader looks at every periodic job every second); None for a
    schedule that does not parse (only a spec from an older, laxer master could hold one)."""
    try:
        return parse(text, time_zone)
    except ValueError:
        return None


def zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        raise ValueError(f"unknown time zone {name!r:.60} (an IANA name such as UTC)") from None


def _cron(s: Schedule, at_ms: int) -> Any:
    from croniter import croniter

    return croniter(s.cron, datetime.fromtimestamp(at_ms / 1000, zone(s.time_zone)))


def next_after(s: Schedule, after_ms: int, anchor_ms: int) -> int:
    """The first fire time strictly after `after_ms`; `@every` counts from `anchor_ms`
    (when the job was created)."""
    if s.every_ms:
        if after_ms < anchor_ms:
            return anchor_ms + s.every_ms
        n = (after_ms - anchor_ms) // s.every_ms + 1
        return anchor_ms + n * s.every_ms
    return int(_cron(s, after_ms).get_next(float) * 1000)


def latest_until(s: Schedule, now_ms: int, anchor_ms: int) -> int:
    """The last fire time at or before `now_ms` (0 when there is none after `anchor_ms`)."""
    if s.every_ms:
        if now_ms < anchor_ms + s.every_ms:
            return 0
        return anchor_ms + (now_ms - anchor_ms) // s.every_ms * s.every_ms
    t = int(_cron(s, now_ms + 1).get_prev(float) * 1000)
    return t if t > anchor_ms else 0


def due(s: Schedule, last_ms: int, created_ms: int, now_ms: int) -> int:
    """The fire time to launch now, or 0: the first one after the last launched (or after
    the job's creation), unless more than MAX_CATCH_UP were missed, then the latest."""
    base = max(last_ms, created_ms)
    first = next_after(s, base, created_ms)
    if first > now_ms:
        return 0
    t = first
    for _ in range(MAX_CATCH_UP):
        t = next_after(s, t, created_ms)
        if t > now_ms:
            return first
    return latest_until(s, now_ms, created_ms)
