"""The scheduler: a pure function from a snapshot of the cell to a Plan.

No I/O, no Raft and no clock in here: `Scheduler.schedule` reads a `Snapshot` and returns a
`Plan` that the leader commits as one Raft command (`plan_apply`). Keeping it pure is what
lets the same code run in unit tests, in the trace-replay benchmark and on the leader.
"""

from __future__ import annotations

from borgmaster.scheduler.borg import BorgScheduler, explain, format_reason
from borgmaster.scheduler.core import (
    MachineView,
    PlacedTask,
    Plan,
    Preemption,
    Scheduler,
    Snapshot,
    TaskRequest,
)

__all__ = [
    "BorgScheduler",
    "MachineView",
    "PlacedTask",
    "Plan",
    "Preemption",
    "Scheduler",
    "Snapshot",
    "TaskRequest",
    "explain",
    "format_reason",
]
