"""`python -m bench.busy --tasks N`: does the cell keep its leader while its own machine is
saturated? 3 masters and a real Borglet on this machine start an N-task job of real
processes (a start storm: a supervisor and a task per replica), then stop it; the figure is
the number of Raft term changes meanwhile (target: none), next to the load it caused.
Results: bench/results/busy.json.
"""

from __future__ import annotations

import argparse
import os
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


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tasks", type=int, default=1000)
    ap.add_argument("--timeout", type=float, default=300)
    args = ap.parse_args()
    cell = Cell()
    doc: dict[str, Any] = {"tasks": args.tasks, "cell": "3 masters + 1 Borglet, one machine"}
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

        def all_running() -> bool:
            nonlocal peak_load
            peak_load = max(peak_load, os.getloadavg()[0])
            seen_terms.update(terms(cell).values())
            return bool(cell.job("busy")["running"] >= args.tasks)

        wait_for(all_running, args.timeout, interval=1.0, what="every task running")
        doc["start_s"] = round(time.monotonic() - t0, 1)
        doc["term_changes_start"] = max(seen_terms) - max(before.values())
        t1 = time.monotonic()
        r = cell.borgcfg(
            "down", "busy", "--wait", "--timeout", str(args.timeout), timeout=args.timeout + 30
        )
        assert r.returncode == 0, r.stderr
        doc["stop_s"] = round(time.monotonic() - t1, 1)
        seen_terms.update(terms(cell).values())
        doc["peak_load_1m"] = round(peak_load, 1)
        doc["term_changes"] = max(seen_terms) - max(before.values())
        doc["replicas"] = raft_counters(cell)
        doc["raft_log_lines"] = [
            line
            for m in cell.masters
            for line in m.log().splitlines()
            if any(w in line for w in ("campaigning for term", "slow Raft tick", "slow apply"))
        ][-40:]
    finally:
        cell.close()
    write("busy", doc)


if __name__ == "__main__":
    main()
