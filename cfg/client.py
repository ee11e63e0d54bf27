"""The gRPC client for borgcfg: one seam for talking to a cell, errors translated here.

Any replica accepts any call (writes are forwarded to the leader), so the client tries the
known addresses in turn, starting with the last one that answered (or the leader, once
`discover` has learnt which replica leads). UNAVAILABLE and DEADLINE_EXCEEDED move on to the
next address and, after a round with no answer, the whole round is retried with backoff for
up to `retry_s`: that rides out a leader election. Writes carry one request id chosen before
the first attempt, so a retried write whose first attempt did commit is applied once.

Failures become `CellError` (the cell answered "no": exit 1) or `Unreachable` (no replica
answered, or none could take the request in time: exit 3), each with a one-line message;
`Unreachable` names every address tried and why it failed.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any, TypeVar

import grpc

from cfg import snapshot
from cfg.errors import CellError, Unreachable
from cfg.structs import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

T = TypeVar("T")

RETRYABLE = {grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED}

ChannelFactory = Callable[[str], grpc.Channel]

SNAPSHOT_TIMEOUT_S = 600.0
"""How long one snapshot stream may take (a 100,000-task state is tens of MB)."""


def _not_connected(e: grpc.RpcError) -> bool:
    """True when the request never reached a server (so even a non-idempotent call may retry)."""
    d = (e.details() or "").lower()
    return e.code() == grpc.StatusCode.UNAVAILABLE and (
        "failed to connect" in d or "connection refused" in d or "dns resolution" in d
    )


def _why(e: grpc.RpcError) -> str:
    """A short reason for one failed attempt, for the 'tried ...' list."""
    d = e.details() or ""
    low = d.lower()
    if "connection refused" in low:
        return "connection refused"
    if "dns resolution failed" in low or "name resolution" in low:
        return "unknown host"
    if e.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
        return "timed out"
    if "hostname verification" in low:
        return "TLS: the server's certificate is not a borgcell master's"
    if "handshake" in low or "ssl" in low or "certificate" in low or "tls" in low:
        return "TLS handshake failed (plaintext server, or a certificate of another CA?)"
    first = " ".join(d.split()) or e.code().name
    return first if len(first) <= 100 else first[:97] + "..."


def new_request_id() -> str:
    return uuid.uuid4().hex


class Client:
    """Calls to one cell. `masters` are gRPC HOST:PORT addresses of any of its replicas.

    `retry_s` bounds how long a call keeps retrying when replicas answer UNAVAILABLE (no
    leader yet); when nothing answers at all the call gives up after `connect_rounds` rounds,
    so an unreachable cell is reported in about a second, not after `retry_s`.
    """

    def __init__(
        self,
        masters: list[str],
        timeout: float = 15.0,
        retry_s: float = 10.0,
        connect_rounds: int = 2,
        channel_factory: ChannelFactory = grpc.insecure_channel,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        if not masters:
            raise Unreachable("no master address given (--master or BORG_MASTER)")
        self.masters = list(dict.fromkeys(masters))
        self.timeout = timeout
        self.retry_s = retry_s
        self.connect_rounds = connect_rounds
        self._channel_factory = channel_factory
        self._sleep = sleep
        self._channels: dict[str, grpc.Channel] = {}
        self._preferred = 0
        self._discovered = False

    def close(self) -> None:
        for ch in self._channels.values():
            ch.close()
        self._channels.clear()

    def _stub(self, addr: str) -> borg_pb2_grpc.BorgmasterStub:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = self._channel_factory(addr)
        return borg_pb2_grpc.BorgmasterStub(ch)

    def _order(self) -> list[int]:
        n = len(self.masters)
        return [(self._preferred + i) % n for i in range(n)]

    def _call(self, fn: Callable[[borg_pb2_grpc.BorgmasterStub], T], idempotent: bool = True) -> T:
        """Run `fn` against the first replica that serves it; see the module docstring."""
        deadline = time.monotonic() + self.retry_s
        delay = 0.1
        rounds = 0
        while True:
            rounds += 1
            tried: list[str] = []
            answered = False
            for idx in self._order():
                addr = self.masters[idx]
                try:
                    out = fn(self._stub(addr))
                    self._preferred = idx
                    return out
                except grpc.RpcError as e:
                    code = e.code()
                    if code not in RETRYABLE:
                        raise CellError(code, e.details() or code.name) from None
                    if not idempotent and not _not_connected(e):
                        # it may have been applied: retrying could apply it twice
                        raise Unreachable(f"cell unavailable; {addr}: {_why(e)}") from None
                    tried.append(f"{addr} ({_why(e)})")
                    answered = answered or not _not_connected(e)
            now = time.monotonic()
            if now + delay > deadline or (not answered and rounds >= self.connect_rounds):
                what = "cell unavailable" if answered else "cell unreachable"
                raise Unreachable(f"{what}; tried " + ", ".join(tried))
            self._sleep(delay)
            delay = min(delay * 2, 1.0)

    def discover(self) -> None:
        """Learn every replica's gRPC address (and prefer the leader) from CellStatus.

        Long-running commands call this first, so that losing the one replica named on the
        command line mid-stream fails over to the others. Best effort: errors are ignored.
        """
        if self._discovered:
            return
        self._discovered = True
        try:
            reps = self.cell()
        except (CellError, Unreachable):
            return
        for r in reps:
            if r.grpc and r.grpc not in self.masters:
                self.masters.append(r.grpc)
        for r in reps:
            if r.role == "leader" and r.grpc in self.masters:
                self._preferred = self.masters.index(r.grpc)

    # ----- jobs ---------------------------------------------------------------------------

    def submit(self, config: dict[str, Any], user: str) -> pb.SubmitJobResponse:
        req = pb.SubmitJobRequest(
            spec=struct_from(config),
            user=user,
            options=pb.WriteOptions(request_id=new_request_id()),
        )
        return self._call(lambda s: s.SubmitJob(req, timeout=self.timeout))

    def kill(self, name: str, user: str) -> pb.KillJobResponse:
        req = pb.KillJobRequest(
            name=name, user=user, options=pb.WriteOptions(request_id=new_request_id())
        )
        return self._call(lambda s: s.KillJob(req, timeout=self.timeout))

    def rollback(self, name: str, user: str, to_version: int = 0) -> pb.SubmitJobResponse:
        req = pb.RollbackRequest(
            name=name,
            user=user,
            options=pb.WriteOptions(request_id=new_request_id()),
            to_version=to_version,
        )
        return self._call(lambda s: s.Rollback(req, timeout=self.timeout))

    def get_job(self, name: str, stale: bool = False) -> pb.Job | None:
        """The job, or None when the cell has no job of that name."""
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

    def endpoints(self, job: str, stale: bool = False) -> list[pb.Endpoint]:
        req = pb.ListEndpointsRequest(job=job, options=pb.ReadOptions(stale=stale))
        return list(self._call(lambda s: s.ListEndpoints(req, timeout=self.timeout)).endpoints)

    def explain(self, job: str, index: int) -> pb.ExplainTaskResponse:
        req = pb.ExplainTaskRequest(job=job, index=index)
        return self._call(lambda s: s.ExplainTask(req, timeout=self.timeout))

    # ----- machines -----------------------------------------------------------------------

    def list_machines(self, stale: bool = False) -> list[pb.Machine]:
        req = pb.ListMachinesRequest(options=pb.ReadOptions(stale=stale))
        return list(self._call(lambda s: s.ListMachines(req, timeout=self.timeout)).machines)

    def drain(self, name: str, undrain: bool = False) -> pb.DrainMachineResponse:
        req = pb.DrainMachineRequest(
            name=name, undrain=undrain, options=pb.WriteOptions(request_id=new_request_id())
        )
        return self._call(lambda s: s.DrainMachine(req, timeout=self.timeout))

    # ----- quota --------------------------------------------------------------------------

    def set_quota(self, user: str, band: str, limit: pb.Resources) -> pb.SetQuotaResponse:
        req = pb.SetQuotaRequest(
            quota=pb.Quota(user=user, band=band, limit=limit),
            options=pb.WriteOptions(request_id=new_request_id()),
        )
        return self._call(lambda s: s.SetQuota(req, timeout=self.timeout))

    def list_quotas(self, user: str = "") -> list[pb.Quota]:
        req = pb.ListQuotasRequest(user=user)
        return list(self._call(lambda s: s.ListQuotas(req, timeout=self.timeout)).quotas)

    # ----- the cell -----------------------------------------------------------------------

    def ui_session(self) -> pb.UiSession:
        req = pb.CreateUiSessionRequest()
        return self._call(lambda s: s.CreateUiSession(req, timeout=self.timeout))

    def cell(self) -> list[pb.ReplicaInfo]:
        req = pb.CellStatusRequest()
        return list(self._call(lambda s: s.CellStatus(req, timeout=self.timeout)).replicas)

    def change_membership(self, raft: str, remove: bool) -> list[pb.ReplicaInfo]:
        """Add or remove one replica. Carries no request id, so it is only retried when the
        request provably never reached a server."""
        req = pb.ChangeMembershipRequest(raft=raft, remove=remove)
        res = self._call(lambda s: s.ChangeMembership(req, timeout=self.timeout), idempotent=False)
        return list(res.replicas)

    def watch_events(
        self, job: str = "", follow: bool = False, tail: int = 0, from_index: int = 0
    ) -> Iterator[pb.Event]:
        """The event log (optionally one job's), oldest first; with `follow`, forever.

        A followed stream that breaks (replica killed, leader change) resumes on another
        replica from the event after the last one yielded, so nothing is shown twice.
        """
        next_index = from_index
        first = True
        while True:
            req = pb.WatchEventsRequest(
                from_index=next_index, job=job, follow=follow, tail=tail if first else 0
            )

            def open_stream(
                s: borg_pb2_grpc.BorgmasterStub,
                req: pb.WatchEventsRequest = req,
                timeout: float | None = None if follow else self.timeout,
            ) -> tuple[Any, pb.Event | None]:
                # Streams fail lazily; reading the first event here lets `_call` see (and
                # retry) a replica that is down, just like a unary call.
                st = s.WatchEvents(req, timeout=timeout)
                return st, next(st, None)

            stream, ev = self._call(open_stream)
            try:
                while ev is not None:
                    first = False
                    next_index = ev.index + 1
                    yield ev
                    ev = next(stream, None)
                return
            except grpc.RpcError as e:
                code = e.code()
                if code not in RETRYABLE:
                    raise CellError(code, e.details() or code.name) from None
                if not follow:
                    raise Unreachable(f"event stream broke: {_why(e)}") from None
                # Move off the replica that dropped us; `_call` retries the others.
                self._preferred = (self._preferred + 1) % len(self.masters)
            finally:
                stream.cancel()

    # ----- Borglets -----------------------------------------------------------------------

    def exec_stream(self, requests: Iterator[pb.ExecInput]) -> Any:
        """Open an exec session (ExecTask): `requests` starts with the `start` message; the
        returned call yields ExecOutput and raises grpc.RpcError (see `exec_error`)."""
        return self._call(lambda s: s.ExecTask(requests))

    def logs(
        self,
        job: str,
        index: int,
        stderr: bool,
        follow: bool,
        incarnation: str = "",
    ) -> Iterator[bytes]:
        """A task's output, relayed by a master from its Borglet (which serves logs to
        masters only; the master checks the caller may read them)."""
        req = pb.ReadLogsRequest(
            job=job, index=index, stderr=stderr, follow=follow, incarnation=incarnation
        )
        stream = self._call(lambda s: s.ReadTaskLogs(req, timeout=None if follow else self.timeout))
        try:
            for chunk in stream:
                yield chunk.data
        except grpc.RpcError as e:
            if e.code() in RETRYABLE:
                raise Unreachable(f"log stream broke: {_why(e)}") from None
            raise CellError(e.code(), e.details() or e.code().name) from None
        finally:
            stream.cancel()

    # ----- jobs over time -----------------------------------------------------------------

    def history(self, name: str, stale: bool = False) -> pb.JobHistoryResponse:
        req = pb.JobHistoryRequest(name=name, options=pb.ReadOptions(stale=stale))
        return self._call(lambda s: s.JobHistory(req, timeout=self.timeout))

    def plan(
        self, configs: list[dict[str, Any]], user: str, stale: bool = False
    ) -> list[pb.JobPlan]:
        """What submitting `configs` would do (a read: the leader computes it on a copy)."""
        req = pb.PlanJobsRequest(
            specs=[struct_from(c) for c in configs],
            user=user,
            options=pb.ReadOptions(stale=stale),
        )
        return list(self._call(lambda s: s.PlanJobs(req, timeout=self.timeout)).jobs)

    def promote(self, name: str, user: str) -> pb.SubmitJobResponse:
        req = pb.PromoteJobRequest(
            name=name, user=user, options=pb.WriteOptions(request_id=new_request_id())
        )
        return self._call(lambda s: s.PromoteJob(req, timeout=self.timeout))

    # ----- backups ------------------------------------------------------------------------

    def save_snapshot(
        self, path: str, progress: Callable[[int, int], None] | None = None
    ) -> tuple[snapshot.SnapshotInfo, int]:
        """Stream a snapshot of the cell's state into `path` (atomically: cfg/snapshot.py);
        returns its header and the file's size. `progress(done, total)` sees the bytes."""

        def open_stream(s: borg_pb2_grpc.BorgmasterStub) -> tuple[Any, pb.SnapshotChunk | None]:
            st = s.SaveSnapshot(pb.SaveSnapshotRequest(), timeout=SNAPSHOT_TIMEOUT_S)
            return st, next(st, None)

        stream, first = self._call(open_stream)
        try:
            if first is None or not first.HasField("header"):
                raise CellError(None, "the master sent no snapshot header")
            h = first.header
            info = snapshot.SnapshotInfo(
                cell=h.cell,
                replica=h.replica,
                index=h.index,
                term=h.term,
                taken_ms=h.taken_ms,
                state_format=h.state_format,
                size=h.size,
                sha256=h.sha256,
            )

            def chunks() -> Iterator[bytes]:
                yield first.data
                try:
                    for c in stream:
                        yield c.data
                except grpc.RpcError as e:
                    raise Unreachable(f"snapshot stream broke: {_why(e)}") from None

            size = snapshot.write(
                path, info, chunks(), None if progress is None else lambda n: progress(n, h.size)
            )
            return info, size
        finally:
            stream.cancel()
