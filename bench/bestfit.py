"""BestFitScheduler: the first scheduler, kept as a baseline and test oracle, not in the product.

The master runs `BorgScheduler`. This one (feasibility on cpu, ram, disk and gpu of up
machines, then best fit: the machine left with the least normalised free cpu + ram) stays for
`make bench`'s `scheduler_bestfit` figure, which has been measured since the first release,
and for tests/unit/test_scheduler.py, which pins the simplest placement rule down.
"""

from __future__ import annotations

from collections.abc import Callable

from borgmaster.commands import Placement
from borgmaster.model import MACHINE_UP, JobSpec, Resources
from borgmaster.scheduler import MachineView, Plan, Snapshot

RESOURCES = ("cpu", "ram", "disk", "gpu")


def _request(spec: JobSpec) -> Resources:
    r = spec.requirements
    return Resources(cpu=r.cpu, ram=r.ram, disk=r.disk, gpu=r.gpu)


def _short(req: Resources, free: Resources) -> list[str]:
    """Resources of which `free` has less than `req` (the reason's counts; `Resources.fits`
    decides)."""
    return [
        r
        for r in RESOURCES
        if not Resources(**{r: getattr(req, r)}).fits(Resources(**{r: getattr(free, r)}))
    ]


def _leftover_score(req: Resources, m: MachineView, free: Resources) -> float:
    """Lower is a tighter fit: the normalised capacity left after placing the task."""
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
        free = {m.name: m.capacity.add(m.used, -1) for m in machines}
        order = sorted(snapshot.pending, key=lambda t: (-t.priority, t.job, t.index))
        for t in order:
            req = _request(t.spec)
            best: MachineView | None = None
            best_score = 0.0
            for m in machines:
                f = free[m.name]
                if not req.fits(f):
                    continue
                s = _leftover_score(req, m, f)
                if best is None or s < best_score or (s == best_score and m.name < best.name):
                    best, best_score = m, s
            if best is None:
                # Counted only for a task that fits nowhere (the reason), not on every miss.
                shortage: dict[str, int] = {}
                for m in machines:
                    for r in _short(req, free[m.name]):
                        shortage[r] = shortage.get(r, 0) + 1
                plan.failures.append((t.job, t.index, _reason(snapshot, machines, shortage)))
                continue
            free[best.name] = free[best.name].add(req, -1)
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
