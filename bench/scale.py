"""`make bench-scale`: a 3-master cell under a fleet of hollow machines (`borglet hollow`).

    python -m bench.scale --machines N --tasks T [--window S] [--json]

Phases, each bounded (the whole run is meant to fit in ~3 minutes on 2 cores):

1. registration: the hollow process starts; time until the leader lists N machines `up`;
2. rollout: one job of T tiny tasks is submitted; time until T are reported `running`
   (tasks/s);
3. steady state for `--window` s: master CPU and RSS, sync messages/s (from the hollow
   process's own counters).

Throughout, a prober runs `borgcfg status` (the CLI, as a user would) and submits a 1-task
job over gRPC every ~2 s: their p50/p99 are the cell's responsiveness while the fleet syncs.
False machine losses are the masters' "machine X lost" log lines: hollow machines never die,
so every one is false. Results go to bench/results/scale.json (one entry per N, merged with
earlier runs of other sizes).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import sys
import threading
import time
from typing import Any

import grpc
import psutil

from bench.busy import raft_counters
from bench.run import RESULTS, machine_info
from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, Proc

STATS_RE = re.compile(
    r"hollow stats: t=([0-9.]+) machines=(\d+) connected=(\d+) tasks=(\d+) syncs=(\d+) "
    r"errors=(\d+) redirects=(\d+) codes=(\S+)"
)
TAG = "stream"
TAGS = {
    "threads": "unary Sync long-poll on the sync gRPC server (64 threads, one held per waiting "
    "Sync), 1 s heartbeats (before issue #15 stage 2)",
    "aio": "unary Sync long-poll on the grpc.aio server (a waiting Sync holds no thread), "
    "heartbeats stretched to machines/50 s (max 8 s)",
    "stream": "one Link stream per machine to any replica (link shards): only changes travel "
    "both ways, heartbeats stretched as in aio, followers relay reports to the leader in batches",
    "stream-100k": "stream, with one 100,000-task job (issue #15's rollout target)",
}
LOST_RE = re.compile(r"machine (\S+) lost: no contact")


def pct(values: list[float], q: float) -> float:
    s = sorted(values)
    return s[min(len(s) - 1, round(q * (len(s) - 1)))] if s else float("nan")


def lat(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"n": 0}
    return {
        "n": len(values),
        "p50_ms": round(statistics.median(values), 1),
        "p99_ms": round(pct(values, 0.99), 1),
        "max_ms": round(max(values), 1),
    }


class Prober(threading.Thread):
    """`borgcfg status` and a 1-task submit, one after the other, until stopped."""

    def __init__(self, cell: Cell, stub: Any) -> None:
        super().__init__(daemon=True)
        self.cell = cell
        self.stub = stub
        self.stop = threading.Event()
        self.status_ms: list[float] = []
        self.status_at: list[float] = []  # when each status probe started (monotonic)
        self.submit_ms: list[float] = []
        self.failures: list[str] = []

    def run(self) -> None:
        i = 0
        while not self.stop.wait(1.0):
            t = time.monotonic()
            r = self.cell.borgcfg("status", timeout=60)
            if r.returncode == 0:
                self.status_ms.append((time.monotonic() - t) * 1000)
                self.status_at.append(t)
            else:
                self.failures.append(f"status: {r.stderr.strip()[:200]}")
            i += 1
            spec = {
                "name": f"probe{i}",
                "replicas": 1,
                "command": "sleep 1000",
                "requirements": {"cpu": 0.01, "ram": "1Mi"},
            }
            t = time.monotonic()
            try:
                self.stub.SubmitJob(
                    pb.SubmitJobRequest(spec=struct_from(spec), user="bench"), timeout=30
                )
                self.submit_ms.append((time.monotonic() - t) * 1000)
            except grpc.RpcError as e:
                self.failures.append(f"submit: {e.code()} {e.details()}")


def leader_stub(cell: Cell) -> Any:
    p = cell.leader()
    return borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(p.info["grpc"]))


def up_machines(stub: Any) -> int:
    ms = stub.ListMachines(pb.ListMachinesRequest(), timeout=30).machines
    return sum(1 for m in ms if m.state == "up")


def running(stub: Any, job: str) -> int:
    """The job's running count from ListJobs: a GetJob of 100,000 tasks is ~8 MB."""
    for j in stub.ListJobs(pb.ListJobsRequest(), timeout=30).jobs:
        if j.name == job:
            return int(j.running)
    return 0


def fleet_stats(p: Proc) -> list[tuple[float, int, int, int, int]]:
    """(t, connected, tasks, syncs, errors) per stats line of the hollow process."""
    return [
        (float(m[1]), int(m[3]), int(m[4]), int(m[5]), int(m[6]))
        for m in STATS_RE.finditer(p.log())
    ]


def codes(p: Proc) -> str:
    """The hollow process's last count of failed syncs by status code."""
    found = STATS_RE.findall(p.log())
    return found[-1][-1] if found else ""


def cpu_s(p: psutil.Process) -> float:
    t = p.cpu_times()
    return t.user + t.system


def link_streams(cell: Cell) -> list[int]:
    """Link streams each replica serves (its /metrics; -1 where it does not answer)."""
    out = []
    for m in cell.masters:
        try:
            _, body = cell.http_get(m.info["http"], "/metrics")
            hit = re.search(r"^borg_link_streams ([0-9.e+]+)$", body, re.M)
            out.append(int(float(hit.group(1))) if hit else -1)
        except OSError:
            out.append(-1)
    return out


def run_once(
    machines: int,
    tasks: int,
    window: float,
    budget: float,
    protocol: str = "stream",
    keep_logs: str = "",
) -> dict[str, Any]:
    cell = Cell()
    hollow: Proc | None = None
    doc: dict[str, Any] = {"machines": machines, "tasks": tasks, "protocol": protocol}
    # The 2 cores may be shared with other work: the load says how much (read it with the
    # figures; a load far above 2 means the run measured contention more than the cell).
    doc["load_avg_1m_at_start"] = round(os.getloadavg()[0], 1)
    deadline = time.monotonic() + budget
    try:
        cell.start(masters=3, borglets=0)
        stub = leader_stub(cell)
        masters = [psutil.Process(m.popen.pid) for m in cell.masters if m.popen]
        cpu0 = [cpu_s(p) for p in masters]
        prober = Prober(cell, stub)
        w0 = time.monotonic()
        hollow = cell.add_hollow(
            machines, extra=["--cpu", "16", "--memory", "64Gi", "--protocol", protocol]
        )
        prober.start()

        # 1. registration
        n = 0
        while time.monotonic() < deadline:
            try:
                n = up_machines(stub)
            except grpc.RpcError:
                pass
            if n >= machines:
                break
            time.sleep(0.5)
        doc["registered"] = n
        doc["registration_s"] = round(time.monotonic() - w0, 1) if n >= machines else None

        # 2. rollout of one T-task job
        if n >= machines and tasks:
            spec = {
                "name": "scale",
                "replicas": tasks,
                "command": "sleep 1000",
                "requirements": {"cpu": 0.01, "ram": "1Mi"},
            }
            t0 = time.monotonic()
            stub.SubmitJob(pb.SubmitJobRequest(spec=struct_from(spec), user="bench"), timeout=60)
            r = 0
            while time.monotonic() < deadline:
                try:
                    r = running(stub, "scale")
                except grpc.RpcError:
                    pass
                if r >= tasks:
                    break
                time.sleep(1.0)
            el = time.monotonic() - t0
            doc["running"] = r
            doc["all_running_s"] = round(el, 1) if r >= tasks else None
            doc["tasks_per_s"] = round(r / el, 1)

        # 3. steady state
        steady_from = time.monotonic()
        s0 = fleet_stats(hollow)
        c0 = [cpu_s(p) for p in masters]
        t0 = time.monotonic()
        end = min(deadline, t0 + window)
        while time.monotonic() < end:
            time.sleep(0.5)
        c1 = [cpu_s(p) for p in masters]
        s1 = fleet_stats(hollow)
        el = time.monotonic() - t0
        prober.stop.set()
        prober.join(60)
        if len(s1) > len(s0) and s0:
            a, b = s0[-1], s1[-1]
            doc["sync_msgs_per_s"] = round((b[3] - a[3]) / (b[0] - a[0]), 1)
            doc["sync_errors_per_s"] = round((b[4] - a[4]) / (b[0] - a[0]), 1)
        if s1:
            doc["fleet_connected_at_end"] = s1[-1][1]
            doc["fleet_sync_errors_total"] = s1[-1][4]
            doc["fleet_sync_errors_by_code"] = codes(hollow)
        per_k = 1000 / machines
        doc["master_cpu_pct_steady"] = [
            round(100 * (b - a) / el, 1) for a, b in zip(c0, c1, strict=True)
        ]
        doc["master_cpu_pct_steady_per_1k_machines"] = round(
            max(100 * (b - a) / el for a, b in zip(c0, c1, strict=True)) * per_k, 1
        )
        doc["master_cpu_s_total"] = [round(b - a, 1) for a, b in zip(cpu0, c1, strict=True)]
        rss = [p.memory_info().rss / 2**20 for p in masters]
        doc["master_rss_mib"] = [round(x) for x in rss]
        doc["master_rss_mib_per_1k_machines"] = round(max(rss) * per_k, 1)
        hp = psutil.Process(hollow.popen.pid) if hollow.popen else None
        if hp is not None:
            doc["hollow_rss_mib"] = round(hp.memory_info().rss / 2**20)
            doc["hollow_cpu_s"] = round(cpu_s(hp), 1)
        doc["link_streams_per_replica"] = link_streams(cell)
        doc["status"] = lat(prober.status_ms)
        # the same probes, split: up to the end of the rollout, and in the steady window
        split = list(zip(prober.status_at, prober.status_ms, strict=True))
        doc["status_until_running"] = lat([ms for t, ms in split if t < steady_from])
        doc["status_steady"] = lat([ms for t, ms in split if t >= steady_from])
        doc["submit"] = lat(prober.submit_ms)
        doc["probe_failures"] = prober.failures[:5]
        doc["probe_failure_count"] = len(prober.failures)
        # Elections over the whole run (the cell's first one included: 1 means none after).
        doc["elections_started"] = sum(
            r.get("elections_started", 0.0) for r in raft_counters(cell).values()
        )
        lost = [mm for m in cell.masters for mm in LOST_RE.findall(m.log())]
        doc["false_losses"] = len(lost)
        doc["wall_s"] = round(time.monotonic() - w0, 1)
        doc["load_avg_1m_at_end"] = round(os.getloadavg()[0], 1)
    except Exception:
        print(cell.dump_logs()[-20000:], file=sys.stderr)
        raise
    finally:
        if keep_logs:
            os.makedirs(keep_logs, exist_ok=True)
            for p in (*cell.masters, *([hollow] if hollow else [])):
                shutil.copy(p.log_path, keep_logs)
        cell.close()
    return doc


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=1000)
    ap.add_argument("--tasks", type=int, default=10000)
    ap.add_argument("--window", type=float, default=20.0, help="steady-state window, s")
    ap.add_argument("--budget", type=float, default=150.0, help="most seconds per run")
    ap.add_argument("--json", action="store_true", help="merge into bench/results/scale.json")
    ap.add_argument(
        "--protocol",
        choices=("stream", "sync"),
        default="stream",
        help="the hollow fleet's protocol: Link streams, or the older unary Sync",
    )
    ap.add_argument(
        "--tag", default="", help="key prefix (default: stream, or aio with --protocol sync)"
    )
    ap.add_argument("--keep-logs", default="", help="copy the cell's logs into this dir")
    a = ap.parse_args(argv)
    a.tag = a.tag or ("stream" if a.protocol == "stream" else "aio")
    doc = run_once(a.machines, a.tasks, a.window, a.budget, a.protocol, a.keep_logs)
    print(json.dumps(doc, indent=2))
    if a.json:
        path = os.path.join(RESULTS, "scale.json")
        try:
            with open(path) as f:
                out = json.load(f)
        except (OSError, ValueError):
            out = {}
        doc["tag"] = a.tag
        out.setdefault("runs", {})[f"{a.tag}/{a.machines}"] = doc
        out["tags"] = TAGS
        out["machine"] = machine_info()
        out["command"] = "make bench-scale  (= python -m bench.scale --machines N --tasks T --json)"
        os.makedirs(RESULTS, exist_ok=True)
        with open(path, "w") as f:
            json.dump(out, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
