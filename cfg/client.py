"""The gRPC client for borgcfg: one seam for talking to a cell, errors translated here.

Any replica accepts any call (writes are forwarded to the leader), so the client tries the
given addresses in order and sticks with the first that answers; UNAVAILABLE moves on to the
next one. Failures become `CellError` (the cell answered "no": exit 1) or `Unreachable`
(nobody answered: exit 3), each with a one-line message.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}


class CellError(Exception):
    """The cell rejected the request (bad input, unknown job, admission)."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


class Unreachable(Exception):
    """No master answered."""


class Client:
    def __init__(self, masters: list[str], timeout: float = 15.0) -> None:
        if not masters:
            raise Unreachable("no master address given (--master or BORG_MASTER)")
        self.masters = masters
        self.timeout = timeout
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()

    def _stub(self, addr: str) -> borg_pb2_grpc.BorgmasterStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = grpc.insecure_channel(addr)
        return borg_pb2_grpc.BorgmasterStub(ch)

    def _call(self, fn: Callable[[borg_pb2_grpc.BorgmasterStub], T]) -> T:
        errors: list[str] = []
        n = len(self.masters)
        for i in range(n):
            idx = (self._preferred + i) % n
            addr = self.masters[idx]
            try:
                out = fn(self._stub(addr))
                self._preferred = idx
                return out
            except grpc.RpcError as e:
                code = e.code()
                if code in RETRYABLE:
                    errors.append(f"{addr} ({(e.details() or code.name).splitlines()[0]})")
                    continue
                raise CellError(code, e.details() or code.name) from None
        raise Unreachable("cell unreachable; tried " + ", ".join(errors))

    # ----- API ----------------------------------------------------------------------------

    def submit(self, config: dict[str, Any], user: str) -> pb.SubmitJobResponse:
        req = pb.SubmitJobRequest(
            spec=struct_from(config),
            user=user,
            options=pb.WriteOptions(request_id=uuid.uuid4().hex),
        )
        return self._call(lambda s: s.SubmitJob(req, timeout=self.timeout))

    def kill(self, name: str, user: str) -> pb.KillJobResponse:
        req = pb.KillJobRequest(
            name=name, user=user, options=pb.WriteOptions(request_id=uuid.uuid4().hex)
        )
        return self._call(lambda s: s.KillJob(req, timeout=self.timeout))

    def get_job(self, name: str, stale: bool = False) -> pb.Job | None:
        req = pb.GetJobRequest(name=name, options=pb.ReadOptions(stale=stale))
        try:
            return self._call(lambda s: s.GetJob(req, timeout=self.timeout))
        except CellError as e:
            if e.code == grpc.StatusCode.NOT_FOUND:
                return None
            raise

    def list_jobs(self, stale: bool = False) -> list[pb.Job]:
        req = pb.ListJobsRequest(options=pb.ReadOptions(stale=stale))
        return list(self._call(lambda s: s.ListJobs(req, timeout=self.timeout)).jobs)

    def list_machines(self, stale: bool = False) -> list[pb.Machine]:
        req = pb.ListMachinesRequest(options=pb.ReadOptions(stale=stale))
        return list(self._call(lambda s: s.ListMachines(req, timeout=self.timeout)).machines)

    def cell(self) -> list[pb.ReplicaInfo]:
        req = pb.CellStatusRequest()
        return list(self._call(lambda s: s.CellStatus(req, timeout=self.timeout)).replicas)

    def logs(
        self, machine_addr: str, job: str, index: int, stderr: bool, follow: bool
    ) -> Iterator[bytes]:
        ch = grpc.insecure_channel(machine_addr)
        stub = borg_pb2_grpc.BorgletStub(ch)
        req = pb.ReadLogsRequest(job=job, index=index, stderr=stderr, follow=follow)
        try:
            for chunk in stub.ReadLogs(req, timeout=None if follow else self.timeout):
                yield chunk.data
        except grpc.RpcError as e:
            if e.code() in RETRYABLE:
                raise Unreachable(f"machine {machine_addr} unreachable: {e.details()}") from None
            raise CellError(e.code(), e.details() or e.code().name) from None
        finally:
            ch.close()
