"""Helpers for the fault tests: raw gRPC clients that retry one write under one request id,
continuous writers, and replica state read back as comparable rows.

The tests talk gRPC directly (not through borgcfg) so they control the request id of every
write: a write that failed or timed out is retried with the SAME id against other replicas,
which is exactly the case the store's request-id dedupe exists for.
"""

from __future__ import annotations

import threading
import time
import uuid
from dataclasses import dataclass, field

import grpc

from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

USER = "tester"
# Answers that a retry cannot change.
FINAL = frozenset(
    {
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.NOT_FOUND,
        grpc.StatusCode.PERMISSION_DENIED,
        grpc.StatusCode.RESOURCE_EXHAUSTED,
    }
)
# One job row as compared across replicas: (name, version, replicas, state).
Row = tuple[str, int, int, str]


def job_spec(name: str, **extra: object) -> dict[str, object]:
    """A job that never gets placed in a cell without Borglets (it stays pending)."""
    return {"name": name, "command": "sleep 1000", "run_as": "nobody", **extra}


class Stubs:
    """One gRPC channel per replica address, reused across calls."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._channels: dict[str, grpc.Channel] = {}

    def get(self, addr: str) -> borg_pb2_grpc.BorgmasterStub:
        with self._lock:
            ch = self._channels.get(addr)
            if ch is None:
                ch = grpc.insecure_channel(addr)
                self._channels[addr] = ch
        return borg_pb2_grpc.BorgmasterStub(ch)

    def close(self) -> None:
        with self._lock:
            for ch in self._channels.values():
                ch.close()
            self._channels.clear()


def submit(
    stubs: Stubs,
    addr: str,
    name: str,
    request_id: str,
    timeout: float = 5.0,
    spec: dict[str, object] | None = None,
) -> pb.SubmitJobResponse:
    req = pb.SubmitJobRequest(
        spec=struct_from(spec or job_spec(name)),
        user=USER,
        options=pb.WriteOptions(request_id=request_id),
    )
    resp: pb.SubmitJobResponse = stubs.get(addr).SubmitJob(req, timeout=timeout)
    return resp


@dataclass
class Attempt:
    """The outcome of one logical write (possibly several RPCs under one request id)."""

    name: str
    request_id: str
    response: pb.SubmitJobResponse | None = None
    errors: list[str] = field(default_factory=list)


def submit_until_acked(
    stubs: Stubs,
    addrs: list[str],
    name: str,
    request_id: str,
    deadline: float,
    first: int = 0,
    rpc_timeout: float = 5.0,
    spec: dict[str, object] | None = None,
) -> Attempt:
    """Send one write, retrying the same request id on the next replica after any error,
    until a replica acknowledges it or `deadline` (monotonic) passes."""
    a = Attempt(name, request_id)
    i = first
    while time.monotonic() < deadline:
        addr = addrs[i % len(addrs)]
        i += 1
        try:
            left = max(0.5, min(rpc_timeout, deadline - time.monotonic()))
            a.response = submit(stubs, addr, name, request_id, timeout=left, spec=spec)
            return a
        except grpc.RpcError as e:
            a.errors.append(f"{addr}: {e.code().name}: {e.details()}")
            if e.code() in FINAL:
                return a
            if i % len(addrs) == 0:
                time.sleep(0.05)  # pacing between rounds, not synchronisation
    return a


def list_rows(stubs: Stubs, addr: str, stale: bool = False, timeout: float = 5.0) -> list[Row]:
    """Every job on the replica at `addr` as sorted rows (linearizable unless `stale`)."""
    req = pb.ListJobsRequest(options=pb.ReadOptions(stale=stale))
    resp = stubs.get(addr).ListJobs(req, timeout=timeout)
    return sorted((j.name, j.version, j.replicas, j.state) for j in resp.jobs)


class Writers:
    """`n` threads that submit new jobs continuously, each write under its own request id and
    retried with that id until acknowledged; `stop()` lets every in-flight write finish."""

    def __init__(self, stubs: Stubs, addrs: list[str], n: int = 4, write_deadline: float = 25.0):
        self.stubs = stubs
        self.addrs = addrs
        self.n = n
        self.write_deadline = write_deadline
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self.acked: list[Attempt] = []
        self.failed: list[Attempt] = []
        self._threads = [
            threading.Thread(target=self._run, args=(t,), name=f"writer{t}", daemon=True)
            for t in range(n)
        ]

    def start(self) -> Writers:
        for th in self._threads:
            th.start()
        return self

    def acked_count(self) -> int:
        with self._lock:
            return len(self.acked)

    def _run(self, t: int) -> None:
        i = 0
        while not self._stop.is_set():
            name = f"w{t}-{i}"
            a = submit_until_acked(
                self.stubs,
                self.addrs,
                name,
                uuid.uuid4().hex,
                time.monotonic() + self.write_deadline,
                first=t + i,
            )
            with self._lock:
                (self.acked if a.response is not None else self.failed).append(a)
            i += 1

    def stop(self) -> None:
        self._stop.set()
        for th in self._threads:
            th.join(self.write_deadline + 10)
