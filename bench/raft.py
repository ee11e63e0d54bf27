"""`make bench-raft`: the replicated master's latency, throughput, failover and recovery.

A real 3-replica cell on loopback (tests/cluster.py), driven over gRPC:
- single SubmitJob latency through the leader and through a follower (p50, p99);
- throughput with 16 concurrent clients (jobs committed per second);
- failover: SIGKILL the leader, time until the first write succeeds (N trials);
- recovery: a follower restarted with ~100k tasks of state, time until /readyz;
- idle stability: Raft term changes over an idle period (no spurious elections).
Results go to bench/results/raft.json.
"""

from __future__ import annotations

import argparse
import json
import os
import threading
import time
import uuid
from typing import Any

import grpc

from bench.run import write
from borgmaster.convert import struct_from
from cfg.grpcauth import secure_channel
from cfg.tls import TlsDir
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, wait_for


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    k = max(0, min(len(xs) - 1, round(p / 100 * (len(xs) - 1))))
    return round(xs[k] * 1000, 2)


def spec(name: str, replicas: int = 1) -> Any:
    return struct_from(
        {
            "name": name,
            "replicas": replicas,
            "command": "sleep 1000",
            "requirements": {"cpu": 0.01, "ram": "8Mi"},
        }
    )


# The request every submit sends, built once: the client shares the CPUs with the cell, and
# building a Struct through json_format cost ~35 us per request; copying this template and
# setting the name, replicas and request id costs ~5 us.
_TEMPLATE = pb.SubmitJobRequest(spec=spec("template"), user="bench")


def request(name: str, replicas: int = 1) -> pb.SubmitJobRequest:
    req = pb.SubmitJobRequest()
    req.CopyFrom(_TEMPLATE)
    req.spec.fields["name"].string_value = name
    req.spec.fields["replicas"].number_value = replicas
    req.options.request_id = uuid.uuid4().hex
    return req


def submit(stub: Any, name: str, replicas: int = 1, timeout: float = 10) -> None:
    stub.SubmitJob(request(name, replicas), timeout=timeout)


CLIENT_TLS: TlsDir | None = None
"""With --compare-tls, the TLS half runs as an admin named like the requests' user."""


def stub_for(addr: str) -> Any:
    return borg_pb2_grpc.BorgmasterStub(secure_channel(addr, CLIENT_TLS))


def term_of(cell: Cell) -> int:
    return max(r["term"] for r in cell.cell_json())


def bench_latency(cell: Cell, n: int) -> dict[str, Any]:
    leader = cell.leader()
    follower = next(m for m in cell.masters if m is not leader)
    out: dict[str, Any] = {}
    for where, m in (("leader", leader), ("follower", follower)):
        s = stub_for(m.info["grpc"])
        submit(s, f"warm-{where}")
        lat = []
        for i in range(n):
            t0 = time.perf_counter()
            submit(s, f"lat-{where}-{i}")
            lat.append(time.perf_counter() - t0)
        out[where] = {"p50_ms": pct(lat, 50), "p99_ms": pct(lat, 99), "n": n}
    return out


def bench_throughput(
    cell: Cell, clients: int, seconds: float, leader_only: bool = False
) -> dict[str, Any]:
    """Jobs committed per second with `clients` concurrent submitters, spread round-robin over
    all replicas (followers forward to the leader) or, with `leader_only`, all sent to the
    leader (what borgcfg does: it finds the leader first)."""
    masters = [cell.leader()] if leader_only else cell.masters
    addrs = [m.info["grpc"] for m in masters]
    counts = [0] * clients
    errors = [0] * clients
    stop = time.monotonic() + seconds

    def worker(i: int) -> None:
        s = stub_for(addrs[i % len(addrs)])
        k = 0
        while time.monotonic() < stop:
            try:
                submit(s, f"tp-{i}-{k}")
                counts[i] += 1
            except grpc.RpcError:
                errors[i] += 1
            k += 1

    leader = cell.leader()
    procs = [leader] + [m for m in cell.masters if m is not leader]
    cpu0 = [proc_cpu_s(m) for m in procs]
    me0 = os.times()
    t0 = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt = time.monotonic() - t0
    me1 = os.times()
    cpu1 = [proc_cpu_s(m) for m in procs]
    jobs = max(1, sum(counts))
    per_job = [round((b - a) / jobs * 1000, 3) for a, b in zip(cpu0, cpu1, strict=True)]
    client = (me1.user + me1.system - me0.user - me0.system) / jobs * 1000
    return {
        "clients": clients,
        "seconds": round(dt, 2),
        "jobs": sum(counts),
        "jobs_per_s": round(sum(counts) / dt),
        "errors": sum(errors),
        "spread": "all clients on the leader"
        if leader_only
        else f"clients spread over all {len(addrs)} replicas",
        # Where the CPU goes (everything shares this machine's cores): process CPU time
        # over the run divided by the jobs committed.
        "cpu_ms_per_job": {
            "leader": per_job[0],
            "followers": per_job[1:],
            "client": round(client, 3),
            "total": round(sum(per_job) + client, 3),
        },
    }


def proc_cpu_s(m: Any) -> float:
    """User + system CPU seconds of a replica's process so far (from /proc)."""
    with open(f"/proc/{m.popen.pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def bench_failover(cell: Cell, trials: int) -> dict[str, Any]:
    times = []
    for trial in range(trials):
        old = cell.leader()
        rest = [m for m in cell.masters if m is not old]
        stubs = [stub_for(m.info["grpc"]) for m in rest]
        old.kill()
        t0 = time.perf_counter()
        done = False
        k = 0
        while not done:
            for s in stubs:
                try:
                    submit(s, f"fo-{trial}-{k}", timeout=0.3)
                    done = True
                    break
                except grpc.RpcError:
                    k += 1
            if time.perf_counter() - t0 > 30:
                raise RuntimeError("no write succeeded within 30 s of the leader's death")
        times.append(time.perf_counter() - t0)
        old.start()
        wait_for(lambda o=old: cell.http_get(o.info["http"], "/readyz")[0] == 200, 30)
    return {
        "trials": trials,
        "p50_ms": pct(times, 50),
        "p99_ms": pct(times, 99),
        "max_ms": round(max(times) * 1000, 1),
    }


def bench_recovery(cell: Cell, tasks: int) -> dict[str, Any]:
    leader = cell.leader()
    s = stub_for(leader.info["grpc"])
    per_job = 1000
    for j in range(tasks // per_job):
        submit(s, f"big-{j}", replicas=per_job, timeout=60)
    follower = next(m for m in cell.masters if m is not leader)
    follower.stop()
    t0 = time.perf_counter()
    follower.start()
    wait_for(lambda: cell.http_get(follower.info["http"], "/readyz")[0] == 200, 300)
    dt = time.perf_counter() - t0
    return {"tasks": tasks, "restart_to_ready_s": round(dt, 2)}


def bench_idle(cell: Cell, seconds: float) -> dict[str, Any]:
    t0 = term_of(cell)
    time.sleep(seconds)  # the idle period is the measurement
    return {"idle_s": seconds, "term_changes": term_of(cell) - t0}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--latency-n", type=int, default=200)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=10)
    ap.add_argument("--failover-trials", type=int, default=20)
    ap.add_argument("--recovery-tasks", type=int, default=100_000)
    ap.add_argument("--idle", type=float, default=60)
    ap.add_argument(
        "--compare-tls",
        action="store_true",
        help="only latency and throughput, on a plaintext cell and on a TLS cell "
        "(bench/results/raft-tls.json)",
    )
    args = ap.parse_args()
    if args.compare_tls:
        compare_tls(args)
        return
    cell = Cell()
    try:
        cell.start(masters=3, borglets=0)
        doc: dict[str, Any] = {"cell": "3 replicas on loopback, no Borglets"}
        doc["latency"] = bench_latency(cell, args.latency_n)
        print(json.dumps(doc["latency"]))
        # Two figures: clients spread over every replica (followers forward their writes),
        # and all clients on the leader (how borgcfg writes: it looks the leader up first).
        doc["throughput_spread"] = bench_throughput(cell, args.clients, args.seconds)
        print(json.dumps(doc["throughput_spread"]))
        doc["throughput_leader"] = bench_throughput(
            cell, args.clients, args.seconds, leader_only=True
        )
        print(json.dumps(doc["throughput_leader"]))
        doc["idle"] = bench_idle(cell, args.idle)
        print(json.dumps(doc["idle"]))
        doc["failover"] = bench_failover(cell, args.failover_trials)
        print(json.dumps(doc["failover"]))
        doc["recovery"] = bench_recovery(cell, args.recovery_tasks)
        print(json.dumps(doc["recovery"]))
        write("raft", doc)
    finally:
        cell.close()


def compare_tls(args: argparse.Namespace) -> None:
    """The cost of mutual TLS and the authorization interceptor on the write path."""
    global CLIENT_TLS
    doc: dict[str, Any] = {"cell": "3 replicas on loopback, no Borglets"}
    for mode in ("plaintext", "tls"):
        cell = Cell(tls=mode == "tls")
        try:
            cell.start(masters=3, borglets=0)
            CLIENT_TLS = TlsDir.load(cell.cert("admin", "bench")) if cell.tls else None
            out = {
                "latency": bench_latency(cell, args.latency_n),
                "throughput_leader": bench_throughput(
                    cell, args.clients, args.seconds, leader_only=True
                ),
            }
            print(mode, json.dumps(out))
            doc[mode] = out
        finally:
            CLIENT_TLS = None
            cell.close()
    write("raft-tls", doc)


if __name__ == "__main__":
    main()
