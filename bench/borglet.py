"""`make bench-borglet`: Borglet CPU use with 100 running tasks, and task start latency.

A real master and a real Borglet (processes, real cgroups, tasks as `nobody`):

- start latency: from the desired state reaching the Borglet (the Sync reply that first names
  the task) to the task's process running (its shim reports the exec). The Borglet logs the
  figure for every start; measured (a) one task at a time (jobs submitted one after another,
  the usual case) and (b) as a burst of 100 tasks arriving in one desired set.
- steady-state CPU: with 100 tasks running, the Borglet's own CPU time over a window,
  as % of one core (psutil), plus the shims' (the per-task supervisors) for completeness.

Writes bench/results/borglet.json. Needs root and a writable cgroup hierarchy.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from typing import Any

import grpc
import psutil

from bench.run import RESULTS, machine_info
from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, Proc, wait_for

LATENCY_RE = re.compile(r"task (\S+)/(\d+) started \(.*, ([0-9.]+) ms after desired\)")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))]


def summary(values: list[float]) -> dict[str, float]:
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p90_ms": round(pct(values, 0.90), 1),
        "p99_ms": round(pct(values, 0.99), 1),
        "max_ms": round(max(values), 1),
    }


def latencies(log: str, prefix: str) -> list[float]:
    """Start latencies the Borglet logged for tasks whose "job/index" starts with prefix."""
    return [
        float(m.group(3))
        for m in LATENCY_RE.finditer(log)
        if f"{m.group(1)}/{m.group(2)}".startswith(prefix)
    ]


def running_count(cell: Cell, job: str) -> int:
    return sum(1 for t in cell.job(job)["tasks"] if t["state"] == "running")


def shim_processes(borglet_pid: int) -> list[psutil.Process]:
    out = []
    for p in psutil.Process(borglet_pid).children():
        try:
            if "shim.py" in " ".join(p.cmdline()):
                out.append(p)
        except psutil.Error:
            continue
    return out


def cpu_s(procs: list[psutil.Process]) -> float:
    total = 0.0
    for p in procs:
        try:
            t = p.cpu_times()
            total += t.user + t.system
        except psutil.Error:
            continue
    return total


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tasks", type=int, default=100)
    ap.add_argument("--sequential", type=int, default=30, help="tasks started one at a time")
    ap.add_argument("--window", type=float, default=30.0, help="CPU measurement window, s")
    a = ap.parse_args(argv)
    if os.geteuid() != 0:
        print("bench-borglet: needs root (tasks run in cgroups as nobody)", file=sys.stderr)
        return 1
    cell = Cell()
    b: Proc | None = None
    try:
        cell.start(masters=1, borglets=0)
        b = cell.add_borglet(cpu=64, memory="64Gi", extra=["--kill-tasks-on-exit"])
        cell.wait_machines(1)
        assert b.popen is not None

        stub = borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(cell.masters[0].info["grpc"]))

        def submit(job: str, replicas: int) -> None:
            spec = {
                "name": job,
                "replicas": replicas,
                "run_as": "nobody",
                "command": "exec sleep 100000",
                "requirements": {"cpu": 0.01, "ram": "16Mi"},
            }
            req = pb.SubmitJobRequest(spec=struct_from(spec), user="bench")
            stub.SubmitJob(req, timeout=30)

        def started(prefix: str) -> int:
            return len(latencies(b.log(), prefix))

        # (a) one task at a time. Waiting reads the Borglet's log (cheap): polling with
        # borgcfg processes would load the 2 cores and distort what is measured.
        for i in range(a.sequential):
            submit(f"seq{i}", 1)
            wait_for(lambda i=i: started(f"seq{i}/") == 1, 30, interval=0.02, what="started")
        seq = latencies(b.log(), "seq")
        for i in range(a.sequential):
            stub.KillJob(pb.KillJobRequest(name=f"seq{i}"), timeout=30)
        wait_for(lambda: not cell.task_cgroups(), 60, interval=0.5, what="seq tasks gone")

        # (b) a burst: all tasks of one job in one desired set; they keep running for (c).
        t0 = time.monotonic()
        submit("burst", a.tasks)
        wait_for(lambda: started("burst/") == a.tasks, 120, interval=0.1, what="all started")
        all_running_s = time.monotonic() - t0
        wait_for(lambda: running_count(cell, "burst") == a.tasks, 60, what="all running")
        burst = latencies(b.log(), "burst")

        # (c) steady state with all tasks running: Borglet CPU over a window.
        borglet = psutil.Process(b.popen.pid)
        time.sleep(5.0)  # let the start-up work settle; the window below is the measurement
        shims = shim_processes(b.popen.pid)
        c0, s0, w0 = cpu_s([borglet]), cpu_s(shims), time.monotonic()
        time.sleep(a.window)
        c1, s1, w1 = cpu_s([borglet]), cpu_s(shims), time.monotonic()
        borglet_pct = 100 * (c1 - c0) / (w1 - w0)
        shims_pct = 100 * (s1 - s0) / (w1 - w0)
        rss = borglet.memory_info().rss
        shim_uss = [p.memory_full_info().uss for p in shims]
        doc: dict[str, Any] = {
            "tasks": a.tasks,
            "start_latency_sequential": summary(seq),
            "start_latency_burst": summary(burst),
            "burst_all_running_s": round(all_running_s, 2),
            "steady_cpu_pct_of_one_core": round(borglet_pct, 3),
            "steady_cpu_window_s": a.window,
            "shims_cpu_pct_of_one_core_total": round(shims_pct, 3),
            "borglet_rss_mib": round(rss / 2**20, 1),
            "shim_uss_mib_mean": round(statistics.mean(shim_uss) / 2**20, 2) if shim_uss else 0,
            "shims": len(shims),
            "targets": {"steady_cpu_pct": 2.0, "start_latency_p99_ms": 100},
        }
        doc["machine"] = machine_info()
        doc["command"] = "make bench-borglet  (= .venv/bin/python -m bench.borglet)"
        os.makedirs(RESULTS, exist_ok=True)
        with open(os.path.join(RESULTS, "borglet.json"), "w") as f:
            json.dump(doc, f, indent=2)
        print(json.dumps(doc, indent=2))
        stub.KillJob(pb.KillJobRequest(name="burst"), timeout=30)
    except Exception:
        print(cell.dump_logs(), file=sys.stderr)
        raise
    finally:
        cell.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
