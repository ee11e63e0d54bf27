"""Data the scheduler reads (Snapshot) and writes (Plan), and the interface it implements."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol

from borgmaster.commands import Placement
from borgmaster.model import MACHINE_UP, JobSpec, Requirements, Resources, Taint
from borgmaster.scheduler.table import CellTable


@dataclass
class MachineView:
    """One machine as the scheduler sees it: capacity and what is already held there."""

    name: str
    capacity: Resources
    used: Resources
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[Taint] = field(default_factory=list)
    state: str = MACHINE_UP


@dataclass
class TaskRequest:
    """A task waiting for a machine."""

    job: str
    index: int
    version: int
    spec: JobSpec

    @property
    def priority(self) -> int:
        return self.spec.priority


@dataclass
class PlacedTask:
    """A task holding resources on a machine (a preemption candidate if its priority is lower)."""

    job: str
    index: int
    machine: str
    priority: int
    requirements: Requirements
    incarnation: str = ""


@dataclass
class Snapshot:
    machines: list[MachineView]
    pending: list[TaskRequest]
    # Tasks already placed (assigned or running); needed for preemption and spread.
    running: list[PlacedTask] = field(default_factory=list)
    # The same cell in columns, kept up to date by a caller between passes (the Fauxmaster);
    # when set, `machines` and `running` are not read.
    table: CellTable | None = None


@dataclass
class Preemption:
    """Evict a placed task so a higher-priority one fits; it goes back to pending."""

    job: str
    index: int
    incarnation: str
    machine: str
    reason: str = "preempted"


@dataclass
class Plan:
    """Placements to commit, and for each task left waiting, the reason (for `why pending`)."""

    placements: list[Placement] = field(default_factory=list)
    failures: list[tuple[str, int, str]] = field(default_factory=list)
    preemptions: list[Preemption] = field(default_factory=list)


class Scheduler(Protocol):
    def schedule(self, snapshot: Snapshot, new_id: Callable[[], str]) -> Plan:
        """Place what can be placed; `new_id` names each new incarnation."""
        ...
