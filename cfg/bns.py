"""BNS names (SPEC part 2, "Naming"): part of the contract, since the masters serve them as
DNS and the Borglet hands each task its own (`BORG_NAME`)."""

from __future__ import annotations

SUFFIX = "borg"
"""The top of every cell's zone: CELL.borg."""


def zone(cell: str) -> str:
    return f"{cell.lower()}.{SUFFIX}."


def task_name(index: int, job: str, user: str, cell: str) -> str:
    """A task's own A name: INDEX.JOB.USER.CELL.borg."""
    return f"{index}.{job}.{user.lower()}.{zone(cell)}"
