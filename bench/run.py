"""`make bench`: headline figures, written to bench/results/*.json.

- scheduler: one BestFitScheduler pass (bench/bestfit.py: the first scheduler, kept as a
  baseline, not in the product) over synthetic machines and tasks (pure, no I/O).
- master_pass: the master's own scheduler (BorgScheduler, default options) on the kind of
  snapshot the leader builds (lists of machines and placed tasks), so a change to the
  scheduler shows whether a real cell's pass got slower.
- submit: a real 3-master + 1-Borglet cell on loopback; time from `SubmitJob` until every
  task of a job is running (as reported through the Borglet), median and max over runs, and
  the latency of a single committed write through the leader and through a follower.
"""

from __future__ import annotations

import json
import os
import platform
import random
import statistics
import sys
import time
import uuid
from typing import Any

import grpc

from bench.bestfit import BestFitScheduler
from borgmaster.model import JobSpec, Requirements, Resources
from borgmaster.scheduler import (
    BorgScheduler,
    MachineView,
    PlacedTask,
    Snapshot,
    TaskRequest,
)

RESULTS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "results")


def machine_info() -> dict[str, Any]:
    return {
        "cpus": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def write(name: str, doc: dict[str, Any]) -> None:
    os.makedirs(RESULTS, exist_ok=True)
    doc["machine"] = machine_info()
    doc["command"] = "make bench"
    path = os.path.join(RESULTS, f"{name}.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {path}: {json.dumps({k: v for k, v in doc.items() if k != 'machine'})}")


def bench_scheduler(machines: int = 500, tasks: int = 5000) -> None:
    rng = random.Random(1)
    ms = [
        MachineView(
            name=f"m{i}",
            capacity=Resources(cpu=32, ram=128 << 30, disk=1 << 40),
            used=Resources(cpu=rng.uniform(0, 16), ram=rng.randint(0, 64) << 30),
        )
        for i in range(machines)
    ]
    specs = [
        JobSpec(
            name=f"j{j}",
            command=["x"],
            requirements=Requirements(
                cpu=rng.choice([0.25, 0.5, 1, 2]), ram=rng.randint(1, 8) << 30
            ),
        )
        for j in range(50)
    ]
    pending = [
        TaskRequest(job=specs[i % 50].name, index=i, version=1, spec=specs[i % 50])
        for i in range(tasks)
    ]
    t0 = time.perf_counter()
    plan = BestFitScheduler().schedule(Snapshot(machines=ms, pending=pending), lambda: "x")
    dt = time.perf_counter() - t0
    write(
        "scheduler_bestfit",
        {
            "machines": machines,
            "tasks": tasks,
            "placed": len(plan.placements),
            "seconds": round(dt, 3),
            "tasks_per_second": round(tasks / dt),
        },
    )


def master_snapshot(machines: int = 1000, per_machine: int = 40, pending: int = 1000) -> Snapshot:
    """A busy cell as the leader sees it: racks, machines ~97% full of tasks of every band,
    and new work arriving (production, batch and free jobs), some of it needing preemption."""
    rng = random.Random(7)
    ms: list[MachineView] = []
    running: list[PlacedTask] = []
    sizes = [Requirements(cpu=c, ram=r << 30) for c, r in ((0.5, 2), (1, 4), (1, 2), (2, 8))]
    for i in range(machines):
        name = f"m{i:05d}"
        used_cpu, used_ram = 0.0, 0
        for k in range(per_machine):
            req = rng.choice(sizes)
            if used_cpu + req.cpu > 31 or used_ram + req.ram > (124 << 30):
                break
            prio = rng.choice([0, 50, 100, 120, 200, 200, 250])
            running.append(
                PlacedTask(f"r{prio}-{i % 97}", i * 100 + k, name, prio, req, f"x{i}-{k}")
            )
            used_cpu += req.cpu
            used_ram += req.ram
        ms.append(
            MachineView(
                name=name,
                capacity=Resources(cpu=32, ram=128 << 30, disk=1 << 40),
                used=Resources(cpu=used_cpu, ram=used_ram),
                attrs={"rack": f"r{i // 40}"},
            )
        )
    reqs: list[TaskRequest] = []
    for j, prio in enumerate([200, 200, 120, 100, 0]):
        spec = JobSpec(
            name=f"new{j}",
            command=["x"],
            priority=prio,
            replicas=pending // 5,
            requirements=Requirements(cpu=rng.choice([2, 4]), ram=rng.choice([8, 16]) << 30),
        )
        reqs += [TaskRequest(spec.name, i, 1, spec) for i in range(spec.replicas)]
    return Snapshot(machines=ms, pending=reqs, running=running)


def time_passes(sched: Any, snap: Snapshot, passes: int) -> dict[str, Any]:
    times = []
    plan = None
    for _ in range(passes):
        t0 = time.perf_counter()
        plan = sched.schedule(snap, lambda: "x")
        times.append(time.perf_counter() - t0)
    assert plan is not None
    times.sort()
    return {
        "placements": len(plan.placements),
        "preemptions": len(plan.preemptions),
        "pass_ms_median": round(1000 * statistics.median(times), 1),
        "pass_ms_min": round(1000 * times[0], 1),
        "pass_ms_max": round(1000 * times[-1], 1),
    }


def bench_master_pass(passes: int = 11) -> dict[str, Any]:
    """The master's scheduler (default options) on a list snapshot, the same with no
    per-pass preemption budget (the plan the scheduler made before the budget existed), and
    a roomier cell where no task needs a victim."""
    snap = master_snapshot()
    doc: dict[str, Any] = {
        "machines": len(snap.machines),
        "placed_tasks": len(snap.running),
        "pending": len(snap.pending),
        "passes": passes,
        "default": time_passes(BorgScheduler(), snap, passes),
    }
    try:
        unlimited = BorgScheduler(nonprod_preempt_rate=None)
    except TypeError:  # code from before the budget: the same as its default
        unlimited = BorgScheduler()
    doc["no_preemption_budget"] = time_passes(unlimited, snap, passes)
    # The same cell two-thirds full: everything fits, no victims (20,000 placed tasks).
    roomy = master_snapshot(per_machine=20)
    doc["no_victims"] = {"placed_tasks": len(roomy.running)}
    doc["no_victims"].update(time_passes(BorgScheduler(), roomy, passes))
    write("scheduler_master_pass", doc)
    return doc


def bench_submit(runs: int = 5, replicas: int = 10) -> None:
    from proto.borg.v1 import borg_pb2 as pb
    from proto.borg.v1 import borg_pb2_grpc
    from tests.cluster import Cell
    from tests.conftest import cgroups_usable

    why = cgroups_usable()
    if why:
        print(f"skipping submit benchmark: {why}")
        return
    from borgmaster.convert import struct_from

    cell = Cell()
    try:
        cell.start(masters=3, borglets=1, borglet_cpu=8, borglet_memory="8Gi")
        leader = cell.leader()
        follower = next(m for m in cell.masters if m is not leader)
        ch = grpc.insecure_channel(leader.info["grpc"])
        stub = borg_pb2_grpc.BorgmasterStub(ch)
        fch = grpc.insecure_channel(follower.info["grpc"])
        fstub = borg_pb2_grpc.BorgmasterStub(fch)

        def submit(s: Any, name: str, n: int) -> None:
            spec = {
                "name": name,
                "replicas": n,
                "run_as": "nobody",
                "command": "sleep 1000",
                "requirements": {"cpu": 0.01, "ram": "8Mi"},
            }
            s.SubmitJob(
                pb.SubmitJobRequest(
                    spec=struct_from(spec),
                    user="bench",
                    options=pb.WriteOptions(request_id=uuid.uuid4().hex),
                ),
                timeout=30,
            )

        def kill(name: str) -> None:
            stub.KillJob(pb.KillJobRequest(name=name), timeout=30)

        # Single committed writes: the SubmitJob RPC returns once the command is committed
        # and applied on the replica that took the call.
        write_lat: dict[str, list[float]] = {"leader": [], "follower": []}
        for i in range(20):
            for where, s in (("leader", stub), ("follower", fstub)):
                t0 = time.perf_counter()
                submit(s, f"w-{where}-{i}", 1)
                write_lat[where].append(time.perf_counter() - t0)
        for i in range(20):
            for where in ("leader", "follower"):
                kill(f"w-{where}-{i}")

        e2e = []
        for r in range(runs):
            name = f"bench-{r}"
            t0 = time.perf_counter()
            submit(stub, name, replicas)
            while True:
                j = stub.GetJob(
                    pb.GetJobRequest(name=name, options=pb.ReadOptions(stale=True)), timeout=10
                )
                if sum(1 for t in j.tasks if t.state == "running") == replicas:
                    break
                time.sleep(0.005)
            e2e.append(time.perf_counter() - t0)
            kill(name)
        ms = lambda xs: round(statistics.median(xs) * 1000, 1)  # noqa: E731
        write(
            "submit_latency",
            {
                "cell": "3 masters + 1 Borglet, loopback, real cgroups",
                "write_commit_ms_median": {k: ms(v) for k, v in write_lat.items()},
                "write_commit_ms_max": {k: round(max(v) * 1000, 1) for k, v in write_lat.items()},
                "submit_to_all_running_ms_median": ms(e2e),
                "submit_to_all_running_ms_max": round(max(e2e) * 1000, 1),
                "replicas": replicas,
                "runs": runs,
            },
        )
        ch.close()
        fch.close()
    finally:
        cell.close()


def main() -> None:
    sys.setrecursionlimit(10000)
    bench_scheduler()
    bench_master_pass()
    bench_submit()


if __name__ == "__main__":
    main()
