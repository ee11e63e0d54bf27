"""The Borglet's one clock (the state machine has none: every event comes with the time)."""

from __future__ import annotations

import time


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms: the same clock in every process of one boot, so the times in the
    state file stay meaningful for the next Borglet (until a reboot, see checkpoint.boot_id)."""
    return int(time.monotonic() * 1000)
