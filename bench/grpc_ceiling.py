"""`python -m bench.grpc_ceiling`: the most SubmitJob calls/s Python gRPC does on this machine.

A server whose SubmitJob does nothing (no validation, no Raft) and the same 16-thread client
`bench/raft.py` uses, both on this machine's cores: the ceiling any replicated master written
on grpcio can approach here. Prints calls/s and CPU per call on each side.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import socket
import threading
import time
import uuid
from concurrent import futures
from typing import Any

import grpc

from bench.raft import spec
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc


class NoopMaster(borg_pb2_grpc.BorgmasterServicer):
    def SubmitJob(self, request: Any, context: Any) -> Any:
        return pb.SubmitJobResponse(name="x", version=1, result="created")


def serve(port: int) -> None:
    server = grpc.server(futures.ThreadPoolExecutor(64))
    borg_pb2_grpc.add_BorgmasterServicer_to_server(NoopMaster(), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    server.start()
    server.wait_for_termination()


def cpu_s(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = multiprocessing.Process(target=serve, args=(port,), daemon=True)
    server.start()
    assert server.pid is not None
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=10)
    stub = borg_pb2_grpc.BorgmasterStub(channel)
    template = pb.SubmitJobRequest(spec=spec("x"), user="bench")
    counts = [0] * a.clients
    stop = time.monotonic() + a.seconds

    def worker(i: int) -> None:
        while time.monotonic() < stop:
            req = pb.SubmitJobRequest()
            req.CopyFrom(template)
            req.options.request_id = uuid.uuid4().hex
            stub.SubmitJob(req, timeout=10)
            counts[i] += 1

    c0, me0, t0 = cpu_s(server.pid), os.times(), time.monotonic()
    threads = [threading.Thread(target=worker, args=(i,)) for i in range(a.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    dt, c1, me1 = time.monotonic() - t0, cpu_s(server.pid), os.times()
    server.kill()
    n = max(1, sum(counts))
    print(
        json.dumps(
            {
                "clients": a.clients,
                "calls_per_s": round(n / dt),
                "server_cpu_ms_per_call": round((c1 - c0) / n * 1000, 3),
                "client_cpu_ms_per_call": round(
                    (me1.user + me1.system - me0.user - me0.system) / n * 1000, 3
                ),
                "cpus": os.cpu_count(),
            }
        )
    )


if __name__ == "__main__":
    main()
