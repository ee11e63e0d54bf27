"""`python -m bench.dns`: what one replica's DNS server answers, and what a flood costs the API.

1. capacity: a store holding 100,000 running tasks (1,000 jobs x 100 on 5,000 machines, built
   through real commands), served by the real `DnsServer` in its own process; a load
   generator in another process keeps `--inflight` queries outstanding over UDP (task, job
   and SRV names, mixed) for `--seconds` and measures answered queries/s and latency.
2. flood: a real `borgmaster run --dns` replica; GetJob latency through gRPC measured idle
   and again while another process floods its DNS port from one address as fast as it can
   (open loop; the replica's per-source limit answers 1,000/s of it and drops the rest).

Traffic goes to 127.0.0.1 only, bounded in time; writes bench/results/dns.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

import dns.message
import grpc

from borgmaster import commands as C
from borgmaster.cli import tune_gc
from borgmaster.dns import DnsServer
from borgmaster.model import JobSpec, Machine, Requirements, Resources
from borgmaster.naming import Zone
from borgmaster.store import Store
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

RESULTS = os.path.join(os.path.dirname(__file__), "results", "dns.json")
CELL = "bench"
GiB = 1 << 30


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def build_store(jobs: int, per_job: int, machines: int) -> Store:
    store = Store()
    index = 0

    def apply(cmd: C.Command) -> None:
        nonlocal index
        index += 1
        store.apply(C.encode(cmd), index)

    for m in range(machines):
        addr = f"127.{1 + m // 65536}.{(m // 256) % 256}.{m % 256}:7071"
        machine = Machine(
            name=f"m{m:05d}", address=addr, capacity=Resources(cpu=64, ram=256 * GiB, disk=GiB)
        )
        apply(C.RegisterMachine(ts_ms=1, machine=machine))
    reqs = Requirements(cpu=0.01, ram=1 << 20, ports=["http"])
    for j in range(jobs):
        name = f"job{j:04d}"
        apply(
            C.SubmitJob(
                ts_ms=2, spec=JobSpec(name=name, user="bench", replicas=per_job, requirements=reqs)
            )
        )
        placements = [
            C.Placement(name, i, f"m{(j * per_job + i) % machines:05d}", f"{name}-{i}", 1)
            for i in range(per_job)
        ]
        apply(C.ApplyPlan(ts_ms=3, placements=placements))
        by_machine: dict[str, list[C.TaskUpdate]] = {}
        for p in placements:
            by_machine.setdefault(p.machine, []).append(
                C.TaskUpdate(
                    name, p.index, p.incarnation, "running", ports={"http": 20000 + p.index}
                )
            )
        for m, ups in by_machine.items():
            apply(C.TaskUpdates(ts_ms=4, machine=m, updates=ups))
    return store


def serve(port: int, jobs: int, per_job: int, machines: int, ready: Any) -> None:
    store = build_store(jobs, per_job, machines)
    running = sum(1 for t in store.tasks.values() if t.state == "running")
    tune_gc()  # as `borgmaster run` does once started
    zone = Zone(CELL, store)
    # The load comes from one address: lift the per-source limit to measure the server.
    server = DnsServer(f"127.0.0.1:{port}", lambda: zone, per_source_qps=1e9)
    server.start()
    ready.put(running)
    time.sleep(3600)


def queries(jobs: int, per_job: int, n: int = 5000) -> list[bytes]:
    rnd = random.Random(1)
    out = []
    for i in range(n):
        j = rnd.randrange(jobs)
        kind = i % 3
        if kind == 0:
            name, rtype = f"{rnd.randrange(per_job)}.job{j:04d}.bench.{CELL}.borg.", "A"
        elif kind == 1:
            name, rtype = f"job{j:04d}.bench.{CELL}.borg.", "A"
        else:
            name, rtype = f"_http._tcp.job{j:04d}.bench.{CELL}.borg.", "SRV"
        out.append(dns.message.make_query(name, rtype).to_wire())
    return out


def load(port: int, wires: list[bytes], seconds: float, inflight: int, out: Any) -> None:
    """Keep `inflight` queries outstanding; ids make each reply match its query."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    s.settimeout(0.5)
    sent: dict[int, float] = {}
    lat: list[float] = []
    next_id = 0
    i = 0
    lost = 0
    end = time.monotonic() + seconds

    def send() -> None:
        nonlocal next_id, i
        qid = next_id = (next_id + 1) % 65536
        w = bytearray(wires[i % len(wires)])
        i += 1
        w[0:2] = qid.to_bytes(2, "big")
        sent[qid] = time.perf_counter()
        s.sendto(bytes(w), ("127.0.0.1", port))

    for _ in range(inflight):
        send()
    while time.monotonic() < end:
        try:
            data = s.recv(4096)
        except TimeoutError:
            lost += len(sent)
            sent.clear()
            for _ in range(inflight):
                send()
            continue
        t0 = sent.pop(int.from_bytes(data[0:2], "big"), None)
        if t0 is not None:
            lat.append(time.perf_counter() - t0)
        send()
    out.put({"answered": len(lat), "lost": lost, "latencies": lat})


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))] if xs else 0.0


def capacity(args: argparse.Namespace) -> dict[str, Any]:
    port = free_port()
    ctx = mp.get_context("fork")
    ready: Any = ctx.Queue()
    t0 = time.monotonic()
    server = ctx.Process(
        target=serve, args=(port, args.jobs, args.per_job, args.machines, ready), daemon=True
    )
    server.start()
    running = ready.get(timeout=600)
    built = time.monotonic() - t0
    out: Any = ctx.Queue()
    gen = ctx.Process(
        target=load, args=(port, queries(args.jobs, args.per_job), args.seconds, args.inflight, out)
    )
    gen.start()
    res = out.get(timeout=args.seconds + 60)
    gen.join()
    server.kill()
    lat = res["latencies"]
    return {
        "tasks_running": running,
        "store_build_s": round(built, 1),
        "seconds": args.seconds,
        "inflight": args.inflight,
        "queries_per_s": round(res["answered"] / args.seconds),
        "lost": res["lost"],
        "latency_ms": {
            "p50": round(pct(lat, 50) * 1000, 2),
            "p99": round(pct(lat, 99) * 1000, 2),
            "max": round(max(lat) * 1000, 2) if lat else 0,
        },
    }


def blast(port: int, wires: list[bytes], seconds: float, out: Any) -> None:
    """An open-loop flood: send as fast as one process can, never wait for answers."""
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    end = time.monotonic() + seconds
    sent = 0
    while time.monotonic() < end:
        for w in wires:
            try:
                s.sendto(w, ("127.0.0.1", port))
                sent += 1
            except OSError:
                pass
    out.put({"sent": sent})


def getjob_latencies(addr: str, n: int) -> list[float]:
    with grpc.insecure_channel(addr) as ch:
        stub = borg_pb2_grpc.BorgmasterStub(ch)
        out = []
        for _ in range(n):
            t0 = time.perf_counter()
            stub.GetJob(pb.GetJobRequest(name="probe"), timeout=5)
            out.append(time.perf_counter() - t0)
        return out


def flood(args: argparse.Namespace) -> dict[str, Any]:
    base = tempfile.mkdtemp(prefix="borgcell-dnsbench-")
    grpc_addr, dns_port = f"127.0.0.1:{free_port()}", free_port()
    argv = [sys.executable, "-m", "borgmaster.cli", "run", "--id", "m0"]
    argv += ["--raft", f"127.0.0.1:{free_port()}", "--grpc", grpc_addr]
    argv += ["--http", f"127.0.0.1:{free_port()}", "--dns", f"127.0.0.1:{dns_port}"]
    argv += ["--data-dir", os.path.join(base, "m0")]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        with grpc.insecure_channel(grpc_addr) as ch:
            stub = borg_pb2_grpc.BorgmasterStub(ch)
            spec = {"name": "probe", "user": "bench", "replicas": 10, "command": ["true"]}
            from cfg.structs import struct_from

            deadline = time.monotonic() + 30
            while True:
                try:
                    stub.SubmitJob(
                        pb.SubmitJobRequest(spec=struct_from(spec), user="bench"), timeout=5
                    )
                    break
                except grpc.RpcError:
                    if time.monotonic() > deadline:
                        raise
                    time.sleep(0.2)
        getjob_latencies(grpc_addr, 50)  # warm up
        idle = getjob_latencies(grpc_addr, args.calls)
        ctx = mp.get_context("fork")
        out: Any = ctx.Queue()
        wires = [
            dns.message.make_query(f"{i % 10}.probe.bench.borgcell.borg.", "A").to_wire()
            for i in range(100)
        ]

        def under_blast(port: int) -> tuple[list[float], int]:
            gen = ctx.Process(target=blast, args=(port, wires, args.flood_seconds, out))
            gen.start()
            time.sleep(0.5)
            lat = getjob_latencies(grpc_addr, args.calls)
            sent = int(out.get(timeout=args.flood_seconds + 60)["sent"])
            gen.join()
            return lat, sent

        # The same blast at a port nobody listens on: what the flooding process alone costs
        # the replica on two shared cores, as opposed to what answering or dropping costs.
        elsewhere, _ = under_blast(free_port())
        busy, sent = under_blast(dns_port)
    finally:
        proc.terminate()
        proc.wait(10)
        shutil.rmtree(base, ignore_errors=True)
    ms = lambda xs, p: round(pct(xs, p) * 1000, 2)  # noqa: E731
    return {
        "getjob_idle_ms": {"p50": ms(idle, 50), "p99": ms(idle, 99)},
        "getjob_while_flooding_a_closed_port_ms": {
            "p50": ms(elsewhere, 50),
            "p99": ms(elsewhere, 99),
        },
        "getjob_under_flood_ms": {"p50": ms(busy, 50), "p99": ms(busy, 99)},
        "flood_packets_per_s": round(sent / args.flood_seconds),
        "calls": args.calls,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--jobs", type=int, default=1000)
    ap.add_argument("--per-job", type=int, default=100)
    ap.add_argument("--machines", type=int, default=5000)
    ap.add_argument("--seconds", type=float, default=10.0)
    ap.add_argument("--inflight", type=int, default=32)
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--flood-seconds", type=float, default=8.0)
    ap.add_argument("--json", action="store_true", help="print the results as JSON")
    args = ap.parse_args()
    result = {
        "machine": f"{os.cpu_count()} cores",
        "command": "python -m bench.dns " + " ".join(sys.argv[1:]),
        "capacity": capacity(args),
        "flood": flood(args),
    }
    os.makedirs(os.path.dirname(RESULTS), exist_ok=True)
    with open(RESULTS, "w") as f:
        json.dump(result, f, indent=2)
    print(json.dumps(result, indent=2) if args.json else json.dumps(result))


if __name__ == "__main__":
    main()
