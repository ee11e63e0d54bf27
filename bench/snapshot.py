"""`python -m bench.snapshot`: how long each step of docs/operations.md's restore runbook takes
on a 100,000-task state. Results go to bench/results/snapshot.json.

The state (machines, jobs, every task placed with an incarnation) is built in process with
the store's own commands, the way a cell's log would build it, and saved as a snapshot file
(what `borgcfg snapshot save` writes). Then, with real processes:
1. `borgmaster restore` into three empty data dirs (one per replica), each timed;
2. a 3-master cell started on them: time until every replica answers /readyz;
3. `borgcfg snapshot save` from that cell: the real RPC (read barrier, encoding under the
   store lock, 1 MiB chunks) and the atomic file write, timed;
4. the encoding alone (`Store.snapshot_bytes`, the time writes wait on the store lock).
No Borglets (the machines are in the state only): `--machine-timeout` is raised so the new
leader does not declare them lost during the measurement.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import subprocess
import sys
import time
from typing import Any

from bench.run import RESULTS, machine_info
from borgmaster import commands as C
from borgmaster.model import JobSpec, Machine, Requirements, Resources
from borgmaster.store import SNAPSHOT_FORMAT, Store
from cfg import snapshot
from tests.cluster import REPO, Cell, add_master_with_args, free_port

GiB = 1 << 30


def build_state(tasks: int, per_job: int, machines: int) -> Store:
    """`tasks` tasks in jobs of `per_job`, all placed (round robin) on `machines` machines."""
    store = Store()
    index = 0

    def apply(cmd: C.Command) -> None:
        nonlocal index
        index += 1
        res = store.apply(C.encode(cmd), index)
        assert "error" not in res, res

    for m in range(machines):
        cap = Resources(cpu=256, ram=1024 * GiB, disk=4096 * GiB)
        apply(C.RegisterMachine(ts_ms=1, machine=Machine(name=f"m{m}", capacity=cap)))
    n = 0
    for j in range(tasks // per_job):
        spec = JobSpec(
            name=f"job-{j}",
            replicas=per_job,
            user=f"user{j % 10}",
            command=["/usr/bin/server", "--port", "8080", f"--shard={j}"],
            env={"COLOR": "blue", "SHARD": str(j)},
            requirements=Requirements(cpu=0.1, ram=64 << 20),
        )
        apply(C.SubmitJob(ts_ms=2, spec=spec, request_id=f"req-{j}"))
        placements = []
        for i in range(per_job):
            machine = f"m{n % machines}"
            placements.append(C.Placement(f"job-{j}", i, machine, f"inc-{j}-{i}", 1))
            n += 1
        apply(C.ApplyPlan(ts_ms=3, placements=placements))
    return store


def timed(argv: list[str]) -> tuple[float, str]:
    t0 = time.perf_counter()
    r = subprocess.run(argv, capture_output=True, text=True, cwd=REPO, timeout=600)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)}: {r.stderr}")
    return dt, r.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tasks", type=int, default=100_000)
    ap.add_argument("--per-job", type=int, default=1000)
    ap.add_argument("--machines", type=int, default=1000)
    args = ap.parse_args()

    t0 = time.perf_counter()
    store = build_state(args.tasks, args.per_job, args.machines)
    build_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    data = store.snapshot_bytes()
    encode_s = time.perf_counter() - t0

    cell = Cell()
    try:
        first = os.path.join(cell.base, "first.snap")
        info = snapshot.SnapshotInfo(
            cell="borgcell",
            replica="bench",
            index=store.applied_index,
            term=1,
            taken_ms=int(time.time() * 1000),
            state_format=SNAPSHOT_FORMAT,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        snapshot.write(first, info, [data])
        del data, store

        restore_s = []
        for i in range(3):
            dt, _ = timed(
                [
                    sys.executable,
                    "-m",
                    "borgmaster.cli",
                    "restore",
                    "--snapshot",
                    first,
                    "--data-dir",
                    os.path.join(cell.base, f"m{i}"),
                ]
            )
            restore_s.append(round(dt, 2))

        rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        t0 = time.perf_counter()
        for i in range(3):
            peers = [r for r in rafts if r != rafts[i]]
            add_master_with_args(cell, i, rafts[i], peers, machine_timeout=3600)
        cell.wait_ready(timeout=600)
        ready_s = time.perf_counter() - t0

        second = os.path.join(cell.base, "second.snap")
        argv = [sys.executable, "-m", "cfg.cli", "--master", cell.master_addrs]
        save_s, out = timed([*argv, "snapshot", "save", second, "-o", "json"])
        saved = json.loads(out)
        doc: dict[str, Any] = {
            "tasks": args.tasks,
            "jobs": args.tasks // args.per_job,
            "machines": args.machines,
            "snapshot_bytes": os.path.getsize(second),
            "snapshot_index": saved["index"],
            "build_state_in_process_s": round(build_s, 2),
            "encode_under_store_lock_s": round(encode_s, 2),
            "snapshot_save_s": round(save_s, 2),
            "restore_per_data_dir_s": restore_s,
            "start_3_masters_to_ready_s": round(ready_s, 2),
            "note": "shared 2-core VM (other work running); no TLS; borgcfg and masters are "
            "fresh processes (times include Python start-up, ~0.5 s each)",
        }
    except Exception:
        print(cell.dump_logs())
        raise
    finally:
        cell.close()
    doc["machine"] = machine_info()
    doc["command"] = "python -m bench.snapshot"
    os.makedirs(RESULTS, exist_ok=True)
    path = os.path.join(RESULTS, "snapshot.json")
    with open(path, "w") as f:
        json.dump(doc, f, indent=2)
    print(f"wrote {path}: {json.dumps({k: v for k, v in doc.items() if k != 'machine'})}")


if __name__ == "__main__":
    main()
