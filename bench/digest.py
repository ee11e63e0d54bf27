"""`python -m bench.digest`: what a replica state digest costs with 100,000 tasks.

Builds a store through real commands (100 jobs x 1,000 tasks), then measures the old
`Store.digest()` (snapshot encoding), `Store.state_digest()` in process, and the digest as a
replica takes it (`Digests.after_apply`): the apply thread's pause (the fork) and the child's
time, fork to answer. Writes bench/results/digest.json.
"""

from __future__ import annotations

import json
import os
import platform
import statistics
import time

from borgmaster import commands as C
from borgmaster.digests import Digests
from borgmaster.model import JobSpec, Requirements
from borgmaster.store import Store


def main() -> None:
    store = Store()
    for j in range(100):
        index = j + 1
        spec = JobSpec(
            name=f"j{j}",
            replicas=1000,
            command=["sleep", "100"],
            requirements=Requirements(cpu=0.1),
        )
        store.apply(C.encode(C.SubmitJob(ts_ms=index, spec=spec)), index)
    t = time.perf_counter()
    store.digest()
    old = time.perf_counter() - t
    t = time.perf_counter()
    store.state_digest()
    fast = time.perf_counter() - t
    digests = Digests(store.state_digest, every=1)
    pauses, child = [], []
    for i in range(9):
        t = time.perf_counter()
        digests.after_apply(i, i + 1)
        pauses.append(time.perf_counter() - t)
        deadline = time.monotonic() + 60
        while i + 1 not in digests.snapshot() and time.monotonic() < deadline:
            time.sleep(0.005)  # a benchmark's poll, not synchronisation in a test
        child.append(digests.last_seconds)
    out = {
        "command": "python -m bench.digest",
        "machine": f"{platform.node()} {os.cpu_count()} cpus, Python {platform.python_version()}",
        "tasks": len(store.tasks),
        "snapshot_digest_s": round(old, 3),
        "state_digest_in_process_s": round(fast, 3),
        "apply_thread_pause_ms_median": round(statistics.median(pauses) * 1000, 1),
        "apply_thread_pause_ms_max": round(max(pauses) * 1000, 1),
        "child_s_median": round(statistics.median(child), 3),
    }
    os.makedirs("bench/results", exist_ok=True)
    with open("bench/results/digest.json", "w") as f:
        json.dump(out, f, indent=2)
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
