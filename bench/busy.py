"""`python -m bench.busy --tasks N`: does the cell keep its leader while its own machine is
saturated? 3 masters and a real Borglet on this machine start an N-task job of real
processes (a start storm: a supervisor and a task per replica), then stop it; the figure is
the number of Raft term changes meanwhile (target: none), next to the load it caused.
Results: bench/results/busy.json.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from typing import Any

from bench.run import write
from tests.cluster import Cell, wait_for


def terms(cell: Cell) -> dict[str, int]:
    return {r["id"]: int(r["term"]) for r in cell.cell_json()}


def raft_counters(cell: Cell) -> dict[str, dict[str, float]]:
    """Per replica: elections it started and Raft-thread stalls (from its /metrics)."""
    out: dict[str, dict[str, float]] = {}
    for m in cell.masters:
        code, body = cell.http_get(m.info["http"], "/metrics")
        if code != 200:
            continue
        got: dict[str, float] = {}
        for line in body.splitlines():
            for name in ("borg_raft_elections_started_total", "borg_raft_tick_stalls_total"):
                if line.startswith(name + " "):
                    got[name.removeprefix("borg_raft_").removesuffix("_total")] = float(
                        line.split()[1]
                    )
        out[m.name] = got
    return out


def live_tasks(argv: bytes) -> int:
    """Processes on this host whose command line is `argv` (NUL-separated): the tasks that
    really started, whatever the master was told (a task counts as running from the moment
    its machine accepted it)."""
    n = 0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                n += f.read() == argv
        except OSError:
            continue
    return n


TASK_ARGV = b"sleep\x003600\x00"


def raft_lines(cell: Cell) -> list[str]:
    words = ("campaigning for term", "slow Raft tick", "slow apply", "lock held", "lost: no")
    return [
        line for m in cell.masters for line in m.log().splitlines() if any(w in line for w in words)
    ][-60:]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300)
    ap.add_argument("--keep-logs", default="", help="copy the cell's logs into this dir")
    args = ap.parse_args()
    cell = Cell()
    doc: dict[str, Any] = {"tasks": args.tasks, "cell": "3 masters + 1 Borglet, one machine"}
    ok = False
    try:
        # Room for every task as declared (0.001 cpu, 4 MiB each): the machine itself has
        # 2 cores and the tasks sleep; the load is their start and stop.
        cell.start(
            masters=3,
            borglets=1,
            borglet_cpu=max(2.0, args.tasks * 0.001 + 1),
            borglet_memory=f"{max(16, args.tasks * 4 // 1024 + 1)}Gi",
        )
        before = terms(cell)
        path = os.path.join(cell.base, "busy.yaml")  # removed with the cell
        with open(path, "w") as f:
            f.write(
                f"name: busy\nreplicas: {args.tasks}\ncommand: exec sleep 3600\n"
                "requirements: {cpu: 0.001, ram: 4Mi}\n"
            )
        t0 = time.monotonic()
        r = cell.borgcfg("up", path, timeout=args.timeout)
        assert r.returncode == 0, r.stderr
        peak_load = 0.0
        seen_terms: set[int] = set(before.values())
        doc["failed_probes"] = 0

        def watch() -> None:
            """Peak load and every term seen; a probe that fails (no leader) is counted."""
            nonlocal peak_load
            peak_load = max(peak_load, os.getloadavg()[0])
            try:
                seen_terms.update(terms(cell).values())
            except AssertionError:
                doc["failed_probes"] += 1

        def all_running() -> bool:
            watch()
            try:
                if "running_s" not in doc and cell.job("busy")["running"] >= args.tasks:
                    doc["running_s"] = round(time.monotonic() - t0, 1)  # as the master says
            except AssertionError:
                doc["failed_probes"] += 1
            return "running_s" in doc and live_tasks(TASK_ARGV) >= args.tasks

        wait_for(all_running, args.timeout, interval=1.0, what="every task's process started")
        doc["start_s"] = round(time.monotonic() - t0, 1)
        doc["term_changes_start"] = max(seen_terms) - max(before.values())
        t1 = time.monotonic()
        r = cell.borgcfg("down", "busy", timeout=args.timeout)
        assert r.returncode == 0, r.stderr

        def all_gone() -> bool:
            """No task process, no task cgroup, and the master told of every stop."""
            watch()
            if live_tasks(TASK_ARGV) or cell.task_cgroups():
                return False
            try:
                return cell.job("busy")["running"] == 0
            except AssertionError:
                doc["failed_probes"] += 1
                return False

        wait_for(all_gone, args.timeout, interval=1.0, what="every task gone")
        doc["stop_s"] = round(time.monotonic() - t1, 1)
        watch()
        doc["peak_load_1m"] = round(peak_load, 1)
        doc["term_changes"] = max(seen_terms) - max(before.values())
        doc["replicas"] = raft_counters(cell)
        ok = True
    finally:
        try:
            doc["machines_lost"] = sum(
                ("lost: no contact" in line) for m in cell.masters for line in m.log().splitlines()
            )
            doc["raft_log_lines"] = raft_lines(cell)
            if args.keep_logs:
                os.makedirs(args.keep_logs, exist_ok=True)
                for p in (*cell.masters, *cell.borglets):
                    shutil.copy(p.log_path, args.keep_logs)
        finally:
            cell.close()
    if ok:
        write("busy", doc)
    else:
        print(json.dumps(doc, indent=1))


if __name__ == "__main__":
    main()
