"""Write tests/data/commands-v1.{msgpack,json}: Raft entries as the untyped commands made them.

This script ran ONCE against the code from before typed nested commands (commit edef253), from
a worktree of that commit, so the fixture holds real bytes of the v1 wire format:

    git worktree add /tmp/oldborg edef2539a4c27776db1a38178df6138104e9d5d3
    cd /tmp/oldborg && PYTHONPATH=/tmp/oldborg /work/main/.venv/bin/python \\
        /work/main/tests/data/make_commands_v1.py /work/main/tests/data

It builds every command the way that code's producers built it (the API's task-update dicts,
the scheduler's `Placement.__dict__`, the controllers' `[index, incarnation]` pairs, quota
limits holding only the given resources, ...), applies each to a fresh Store and records the
results, the final digest and snapshot. tests/unit/test_commands_compat.py replays the entries
with today's code. It is kept for the record: with today's typed commands it no longer runs
(the nested parts it passes as dicts are dataclasses now), and the fixture must not be remade.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path
from typing import Any

import msgpack

from borgmaster import commands as C
from borgmaster.model import Machine, Replica, Resources
from borgmaster.store import Store
from cfg.schema import validate_job

GiB = 1 << 30


def main(out: Path) -> None:
    store = Store()
    entries: list[bytes] = []
    results: list[Any] = []

    def put(cmd: Any) -> dict[str, Any]:
        entry = C.encode(cmd)
        entries.append(entry)
        r = store.apply(entry, len(entries))
        results.append(r)
        return r

    def update(
        job: str, index: int, state: str, ec: int | None, reason: str, **kw: Any
    ) -> dict[str, Any]:
        """As borgmaster/api.py's `_update` (+ restarts/health/ports for an observed copy)."""
        t = store.tasks[(job, index)]
        u = {
            "job": job,
            "index": index,
            "incarnation": t.incarnation,
            "state": state,
            "exit_code": ec,
            "reason": reason,
            "restarts": 0,
            "health": "",
        }
        u.update(kw)
        return u

    def place(job: str, index: int, machine: str, inc: str, version: int) -> dict[str, Any]:
        return {
            "job": job,
            "index": index,
            "machine": machine,
            "incarnation": inc,
            "version": version,
        }

    put(
        C.RegisterReplica(
            ts_ms=1000,
            replica=Replica(id="r1", raft="h1:7000", grpc="h1:7001", http="h1:7002").to_dict(),
        )
    )
    put(C.LeaderElected(ts_ms=1001, term=1, replica="r1"))
    for i, (cpu, ram, gpu) in enumerate([(4.0, 8 * GiB, 0), (8.0, 16 * GiB, 2), (2.0, 4 * GiB, 0)]):
        m = Machine(
            name=f"m{i + 1}",
            address=f"10.0.0.{i + 1}:7100",
            http=f"10.0.0.{i + 1}:7101",
            capacity=Resources(cpu=cpu, ram=ram, disk=100 * GiB, gpu=gpu),
            attrs={"rack": f"r{i % 2}", "zone": "a"},
            taints=[{"key": "gpu", "value": "yes", "effect": "NoSchedule"}] if gpu else [],
            task_users=["nobody", "alice"],
        )
        put(C.RegisterMachine(ts_ms=1002 + i, machine=m.to_dict()))
    # Quota as the API builds it: all four given, then only some (the rest kept), unlimited.
    put(
        C.SetQuota(
            ts_ms=1010,
            request_id="q1",
            user="alice",
            band="production",
            limit={"cpu": 10.0, "ram": 32 * GiB, "disk": 500 * GiB, "gpu": 2},
        )
    )
    put(
        C.SetQuota(
            ts_ms=1011,
            request_id="q2",
            user="alice",
            band="production",
            limit={"cpu": 12.0, "gpu": -1},
        )
    )
    put(C.SetQuota(ts_ms=1012, request_id="q3", user="bob", band="batch", limit={"ram": 8 * GiB}))

    web = validate_job(
        {
            "name": "web",
            "kind": "service",
            "priority": 200,
            "replicas": 3,
            "run_as": "nobody",
            "command": "exec python3 -m http.server $BORG_PORT",
            "env": {"A": "1", "B": "two"},
            "requirements": {"cpu": 0.5, "ram": "256Mi", "ports": ["http"]},
            "restart": {"policy": "always", "backoff": "1s"},
            "health": {"http": {"port": "http", "path": "/"}, "interval": "5s"},
            "constraints": [
                {"attr": "zone", "op": "==", "value": "a"},
                {"attr": "rack", "op": "in", "value": ["r0", "r1"]},
            ],
            "tolerations": [{"key": "gpu"}],
            "spread": "rack",
            "update": {"max_unavailable": 1},
        },
        default_user="alice",
    )
    put(C.SubmitJob(ts_ms=1020, request_id="s1", spec=web.to_dict(), user="alice"))
    crunch = validate_job(
        {
            "name": "crunch",
            "kind": "batch",
            "priority": 100,
            "replicas": 2,
            "user": "bob",
            "run_as": "nobody",
            "command": ["sh", "-c", "exit 0"],
            "requirements": {"cpu": 1, "ram": "1Gi"},
            "restart": {"policy": "never"},
            "distinct_machines": True,
        },
    )
    put(C.SubmitJob(ts_ms=1021, request_id="s2", spec=crunch.to_dict(), user="bob"))
    filler = validate_job(
        {
            "name": "filler",
            "kind": "batch",
            "priority": 0,
            "replicas": 1,
            "user": "bob",
            "run_as": "nobody",
            "command": "sleep 1000",
            "requirements": {"cpu": 2},
        },
    )
    put(C.SubmitJob(ts_ms=1022, request_id="s3", spec=filler.to_dict(), user="bob"))

    # A pass: placements (the scheduler's Placement.__dict__), failures as [job, index, why].
    put(
        C.ApplyPlan(
            ts_ms=1030,
            term=1,
            placements=[
                place("web", 0, "m1", "w0a", 1),
                place("web", 1, "m2", "w1a", 1),
                place("crunch", 0, "m2", "c0a", 1),
                place("filler", 0, "m3", "f0a", 1),
                place("web", 2, "m9", "lost", 1),  # rejected by the store: no such machine
            ],
            failures=[
                ["web", 2, "no-feasible-machine: 3 machines: 3 too full"],
                ["crunch", 1, "no-feasible-machine: distinct_machines"],
            ],
        )
    )
    # Observed states from one Borglet per machine (the API's TaskUpdates).
    put(
        C.TaskUpdates(
            ts_ms=1040,
            machine="m1",
            updates=[
                update("web", 0, "running", None, "", health="healthy", ports={"http": 31000})
            ],
        )
    )
    put(
        C.TaskUpdates(
            ts_ms=1041,
            machine="m2",
            updates=[
                update(
                    "web",
                    1,
                    "running",
                    None,
                    "",
                    restarts=1,
                    health="unhealthy",
                    ports={"http": 31001},
                ),
                update("crunch", 0, "running", None, "", ports={}),
            ],
        )
    )
    put(C.TaskUpdates(ts_ms=1042, machine="m3", updates=[update("filler", 0, "running", None, "")]))
    # Preemption: web/2 evicts filler/0 on m3 (the scheduler's Preemption.__dict__).
    put(
        C.ApplyPlan(
            ts_ms=1050,
            term=1,
            placements=[place("web", 2, "m3", "w2a", 1)],
            preemptions=[
                {
                    "job": "filler",
                    "index": 0,
                    "incarnation": "f0a",
                    "machine": "m3",
                    "reason": "preempted by web/2 (priority 200)",
                }
            ],
        )
    )
    put(
        C.TaskUpdates(
            ts_ms=1051,
            machine="m3",
            updates=[
                update("filler", 0, "killed", None, ""),  # the killed copy has no task any more
                update("web", 2, "running", None, "", health="healthy", ports={"http": 31002}),
            ],
        )
    )
    put(
        C.TaskUpdates(
            ts_ms=1052, machine="m2", updates=[update("crunch", 0, "succeeded", 0, "", ports={})]
        )
    )
    # A retry of a submission: answered from memory (duplicate), nothing applied twice.
    put(C.SubmitJob(ts_ms=1053, request_id="s1", spec=web.to_dict(), user="alice"))

    # A rolling update (new template: version 2), replaced by the controllers' [index, inc].
    web2 = validate_job(
        {**_src(web), "command": "exec python3 -m http.server $BORG_PORT -d /"},
        default_user="alice",
    )
    put(
        C.SubmitJob(ts_ms=1060, request_id="s4", spec=web2.to_dict(), must_exist=True, user="alice")
    )
    put(C.ReplaceTasks(ts_ms=1061, term=1, job="web", tasks=[[0, "w0a"]], reason="updated"))
    put(C.ApplyPlan(ts_ms=1062, term=1, placements=[place("web", 0, "m1", "w0b", 2)]))
    put(
        C.TaskUpdates(
            ts_ms=1063,
            machine="m1",
            updates=[
                update(
                    "web", 0, "running", 1, "exit 1", restarts=3, health="", ports={"http": 31003}
                )
            ],
        )
    )
    put(
        C.SetRollout(
            ts_ms=1064, term=1, job="web", version=2, status="halted: task 0 restarted 3 times"
        )
    )
    put(C.Rollback(ts_ms=1065, request_id="rb1", name="web", user="alice"))

    # A new leader; a deposed leader's plan is fenced off.
    put(C.LeaderElected(ts_ms=1070, term=2, replica="r1"))
    put(C.ApplyPlan(ts_ms=1071, term=1, placements=[place("crunch", 1, "m1", "stale", 1)]))
    # Drain m2 and move its tasks; lose m3.
    put(C.SetMachineState(ts_ms=1080, request_id="d1", name="m2", state="draining"))
    put(
        C.ReplaceTasks(
            ts_ms=1081, term=2, job="web", tasks=[[1, "w1a"], [1, "not-current"]], reason="drained"
        )
    )
    put(
        C.ApplyPlan(
            ts_ms=1082,
            term=2,
            placements=[place("web", 1, "m1", "w1b", 3)],
            failures=[["crunch", 1, "no-feasible-machine: 1 machine draining"]],
        )
    )
    put(C.MachineLost(ts_ms=1090, term=2, name="m3"))
    put(
        C.TaskUpdates(
            ts_ms=1091,
            machine="m1",
            updates=[
                update("web", 1, "failed", 137, "oom-killed", restarts=0, ports={"http": 31004})
            ],
        )
    )
    put(C.SetMachineState(ts_ms=1092, request_id="d2", name="m2", state="up"))

    # Client writes coalesced into one Batch (the proposer's group commit).
    put(
        C.Batch(
            ts_ms=0,
            entries=[
                C.encode(C.KillJob(ts_ms=1100, request_id="k1", name="crunch", user="bob")),
                C.encode(C.KillJob(ts_ms=1100, request_id="k2", name="nope", user="bob")),
                C.encode(
                    C.SetQuota(ts_ms=1100, request_id="q4", user="carol", band="free", limit={})
                ),
            ],
        )
    )
    put(C.KillJob(ts_ms=1110, request_id="k3", name="filler", user="bob"))
    put(C.GcJobs(ts_ms=1120, term=2, names=["crunch", "filler", "ghost"]))
    put(C.Noop(ts_ms=1130, request_id="n1"))

    snapshot = store.snapshot_bytes(include_index=False)
    out.mkdir(parents=True, exist_ok=True)
    (out / "commands-v1.msgpack").write_bytes(msgpack.packb(entries, use_bin_type=True))
    (out / "commands-v1.snapshot.msgpack").write_bytes(snapshot)
    doc = {
        "made_with": "borgmaster/commands.py of commit edef2539a4c27776db1a38178df6138104e9d5d3",
        "entries": len(entries),
        "digest": store.digest(),
        "snapshot_sha256": hashlib.sha256(snapshot).hexdigest(),
        "results": results,
        "tasks": {
            f"{j}/{i}": [t.state, t.machine, t.incarnation, t.version, t.reason]
            for (j, i), t in sorted(store.tasks.items())
        },
        "jobs": {
            n: [j.state, j.version, j.rollout, j.killed] for n, j in sorted(store.jobs.items())
        },
        "machines": {n: m.state for n, m in sorted(store.machines.items())},
        "quotas": {f"{u}/{b}": q.to_dict() for (u, b), q in sorted(store.quotas.items())},
        "fence_term": store.fence_term,
        "events": len(store.events),
    }
    (out / "commands-v1.json").write_text(json.dumps(doc, indent=1, sort_keys=True) + "\n")
    print(f"{len(entries)} entries, digest {doc['digest']}")


def _src(spec: Any) -> dict[str, Any]:
    """The web job's config again (a second validate_job with one change)."""
    return {
        "name": spec.name,
        "kind": "service",
        "priority": 200,
        "replicas": 3,
        "run_as": "nobody",
        "env": {"A": "1", "B": "two"},
        "requirements": {"cpu": 0.5, "ram": "256Mi", "ports": ["http"]},
        "restart": {"policy": "always", "backoff": "1s"},
        "health": {"http": {"port": "http", "path": "/"}, "interval": "5s"},
        "constraints": [
            {"attr": "zone", "op": "==", "value": "a"},
            {"attr": "rack", "op": "in", "value": ["r0", "r1"]},
        ],
        "tolerations": [{"key": "gpu"}],
        "spread": "rack",
        "update": {"max_unavailable": 1},
    }


if __name__ == "__main__":
    main(Path(sys.argv[1]))
