"""A first scheduler: feasibility on cpu, ram, disk and gpu, then best fit.

Best fit packs each task onto the feasible machine it leaves with the least free capacity
(normalised per resource), which keeps large holes open for large tasks. The Borg-grade
scheduler (constraints, spread, preemption, equivalence classes) replaces this behind the
same `Scheduler` interface.
"""

from __future__ import annotations

from collections.abc import Callable

from borgmaster.commands import Placement
from borgmaster.model import MACHINE_UP, JobSpec, Resources
from borgmaster.scheduler.core import MachineView, Plan, Snapshot, TaskRequest

RESOURCES = ("cpu", "ram", "disk", "gpu")


def _free(m: MachineView) -> Resources:
    c, u = m.capacity, m.used
    return Resources(cpu=c.cpu - u.cpu, ram=c.ram - u.ram, disk=c.disk - u.disk, gpu=c.gpu - u.gpu)


def _short(spec: JobSpec, free: Resources) -> list[str]:
    """Resources of which `free` has less than the task asks for."""
    req = spec.requirements
    out = []
    if req.cpu > free.cpu + 1e-9:
        out.append("cpu")
    if req.ram > free.ram:
        out.append("ram")
    if req.disk > free.disk:
        out.append("disk")
    if req.gpu > free.gpu:
        out.append("gpu")
    return out


def _leftover_score(spec: JobSpec, m: MachineView, free: Resources) -> float:
    """Lower is a tighter fit: the normalised capacity left after placing the task."""
    req = spec.requirements
    score = 0.0
    if m.capacity.cpu > 0:
        score += (free.cpu - req.cpu) / m.capacity.cpu
    if m.capacity.ram > 0:
        score += (free.ram - req.ram) / m.capacity.ram
    return score


class BestFitScheduler:
    """Serve tasks from high to low priority; put each where it fits most tightly."""

    def schedule(self, snapshot: Snapshot, new_id: Callable[[], str]) -> Plan:
        plan = Plan()
        machines = [m for m in snapshot.machines if m.state == MACHINE_UP]
        free = {m.name: _free(m) for m in machines}
        order = sorted(snapshot.pending, key=lambda t: (-t.priority, t.job, t.index))
        for t in order:
            best: MachineView | None = None
            best_score = 0.0
            shortage: dict[str, int] = {}
            for m in machines:
                f = free[m.name]
                short = _short(t.spec, f)
                if short:
                    for r in short:
                        shortage[r] = shortage.get(r, 0) + 1
                    continue
                s = _leftover_score(t.spec, m, f)
                if best is None or s < best_score or (s == best_score and m.name < best.name):
                    best, best_score = m, s
            if best is None:
                plan.failures.append((t.job, t.index, _reason(snapshot, machines, shortage)))
                continue
            f = free[best.name]
            req = t.spec.requirements
            f.cpu -= req.cpu
            f.ram -= req.ram
            f.disk -= req.disk
            f.gpu -= req.gpu
            plan.placements.append(
                Placement(
                    job=t.job,
                    index=t.index,
                    machine=best.name,
                    incarnation=new_id(),
                    version=t.version,
                )
            )
        return plan


def _reason(snapshot: Snapshot, up: list[MachineView], shortage: dict[str, int]) -> str:
    if not snapshot.machines:
        return "no-feasible-machine: no machines in the cell"
    if not up:
        return "no-feasible-machine: no machine is up"
    parts = [f"insufficient {r} on {n} of {len(up)} machines" for r, n in sorted(shortage.items())]
    return "no-feasible-machine: " + "; ".join(parts)


def request_of(job: str, index: int, version: int, spec: JobSpec) -> TaskRequest:
    return TaskRequest(job=job, index=index, version=version, spec=spec)
