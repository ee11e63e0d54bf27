"""Synthetic-cell benchmark for BorgScheduler: one pass over N machines and M pending tasks.

    python -m bench.scheduler --machines 10000 --tasks 100000 [--json] [--no-eqclass]
        [--no-sample] [--no-cache] [--no-incremental] [--policy hybrid] [--seed 1]
        [--out FILE]

The cell mixes machine shapes (8-64 cores, 32-256 GiB), racks and zones, a few GPU machines
tainted `gpu=true:NoSchedule`, 1% draining machines; jobs of 1..400 tasks across all four
priority bands with varied sizes, 10% with constraints, 10% with hard spread over zones, 5%
with distinct machines, 2% GPU jobs that tolerate the taint. Demand is about 75% of the
cell's cpu, so most tasks place and the rest fail with a reason. Only the `schedule()` call
is timed (building the snapshot is not), and the JSON keys match bench/fauxmaster.py.
"""

from __future__ import annotations

import argparse
import itertools
import json
import random
import sys
import time
from typing import Any

from borgmaster.model import (
    MACHINE_DRAINING,
    MACHINE_UP,
    Constraint,
    JobSpec,
    Requirements,
    Resources,
    Taint,
    TaintEffect,
    Toleration,
)
from borgmaster.scheduler.borg import BorgScheduler
from borgmaster.scheduler.core import MachineView, Plan, Snapshot, TaskRequest

GiB = 1 << 30
SHAPES = ((8, 32), (16, 64), (16, 32), (32, 128), (32, 64), (64, 256))


def build_cell(machines: int, tasks: int, seed: int) -> Snapshot:
    """A reproducible synthetic cell: machines and `tasks` pending tasks."""
    rng = random.Random(seed)
    racks = max(1, machines // 40)
    ms: list[MachineView] = []
    for i in range(machines):
        cpu, ram = rng.choice(SHAPES)
        gpu = 4 if rng.random() < 0.05 else 0
        ms.append(
            MachineView(
                name=f"m{i:06d}",
                capacity=Resources(cpu=cpu, ram=ram * GiB, disk=1 << 40, gpu=gpu),
                used=Resources(),
                attrs={"rack": f"r{i % racks}", "zone": f"z{i % 3}"},
                taints=[Taint("gpu", "true", TaintEffect.NO_SCHEDULE)] if gpu else [],
                state=MACHINE_DRAINING if rng.random() < 0.01 else MACHINE_UP,
            )
        )
    budget = sum(m.capacity.cpu for m in ms) * 0.75
    avg_cpu = budget / max(1, tasks)
    pending: list[TaskRequest] = []
    j = 0
    while len(pending) < tasks:
        n = min(tasks - len(pending), rng.randint(1, 400))
        band = rng.random()
        prio = (
            rng.randint(0, 99)
            if band < 0.2
            else rng.randint(100, 199)
            if band < 0.7
            else rng.randint(200, 299)
            if band < 0.95
            else rng.randint(300, 399)
        )
        tcpu = round(max(0.05, rng.lognormvariate(0, 0.8) * avg_cpu * 0.75), 2)
        tram = int(tcpu * rng.uniform(1.5, 5.5) * GiB)
        kind = rng.random()
        constraints: list[Constraint] = []
        tolerations: list[Toleration] = []
        spread = None
        gpu = 0
        if kind < 0.05:
            constraints = [Constraint("rack", "!=", f"r{rng.randrange(racks)}")]
        elif kind < 0.10:
            constraints = [Constraint("zone", "in", ["z0", "z1"])]
        elif kind < 0.20:
            spread = "zone"
        elif kind < 0.22:
            gpu = 1
            tolerations = [Toleration("gpu", "true")]
        spec = JobSpec(
            name=f"job{j:05d}",
            priority=prio,
            replicas=n,
            requirements=Requirements(cpu=tcpu, ram=tram, gpu=gpu),
            constraints=constraints,
            tolerations=tolerations,
            spread=spread,
        )
        if 0.22 <= kind < 0.27:
            spec.distinct_machines = True  # type: ignore[attr-defined]
        pending.extend(TaskRequest(job=spec.name, index=i, version=1, spec=spec) for i in range(n))
        j += 1
    return Snapshot(machines=ms, pending=pending)


def summarise(snap: Snapshot, plan: Plan, wall: float) -> dict[str, Any]:
    """The shared JSON keys (see bench/fauxmaster.py)."""
    caps = {m.name: m.capacity for m in snap.machines}
    specs = {(t.job, t.index): t.spec for t in snap.pending}
    cpu = sum(specs[(p.job, p.index)].requirements.cpu for p in plan.placements)
    ram = sum(specs[(p.job, p.index)].requirements.ram for p in plan.placements)
    used_cpu = sum(m.used.cpu for m in snap.machines) + cpu
    used_ram = sum(m.used.ram for m in snap.machines) + ram
    tot_cpu = sum(c.cpu for c in caps.values()) or 1.0
    tot_ram = sum(c.ram for c in caps.values()) or 1
    return {
        "machines": len(snap.machines),
        "tasks": len(snap.pending),
        "placed": len(plan.placements),
        "pending": len(snap.pending) - len(plan.placements),
        "preempted": len(plan.preemptions),
        "wall_s": round(wall, 3),
        "placements_per_s": round(len(plan.placements) / wall) if wall > 0 else 0,
        "utilization": {"cpu": round(used_cpu / tot_cpu, 4), "ram": round(used_ram / tot_ram, 4)},
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--machines", type=int, default=10_000)
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--policy", default="hybrid", choices=("hybrid", "best", "spread"))
    ap.add_argument("--sample-size", type=int, default=200)
    ap.add_argument("--no-eqclass", action="store_true")
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--out", help="also write the JSON to this file")
    a = ap.parse_args(argv)
    if a.machines < 1 or a.tasks < 0:
        print("error: --machines must be >= 1 and --tasks >= 0", file=sys.stderr)
        return 2
    snap = build_cell(a.machines, a.tasks, a.seed)
    sched = BorgScheduler(
        a.policy,
        seed=a.seed,
        eqclass=not a.no_eqclass,
        sample=not a.no_sample,
        score_cache=not a.no_cache,
        incremental=not a.no_incremental,
        sample_size=a.sample_size,
    )
    counter = itertools.count()
    t0 = time.perf_counter()
    c0 = time.process_time()
    plan = sched.schedule(snap, lambda: f"i{next(counter)}")
    wall = time.perf_counter() - t0
    doc = summarise(snap, plan, wall)
    doc["cpu_s"] = round(time.process_time() - c0, 3)
    doc["options"] = {
        "policy": a.policy,
        "eqclass": not a.no_eqclass,
        "sample": not a.no_sample,
        "score_cache": not a.no_cache,
        "incremental": not a.no_incremental,
        "sample_size": a.sample_size,
        "seed": a.seed,
    }
    line = json.dumps(doc)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    if a.json:
        print(line)
    else:
        print(
            f"{doc['placed']}/{doc['tasks']} placed on {doc['machines']} machines in "
            f"{doc['wall_s']} s ({doc['placements_per_s']}/s), utilization cpu "
            f"{doc['utilization']['cpu']:.1%} ram {doc['utilization']['ram']:.1%}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
