"""The Borgmaster gRPC service: validate, then propose a command or read the store.

Errors are mapped to gRPC status codes in one place (`_abort`): invalid input is
INVALID_ARGUMENT with the validator's one-line message, a write that cannot commit is
UNAVAILABLE naming the leader when one is known, unknown jobs are NOT_FOUND.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import socket
import threading
import time
import uuid
from typing import Any, NoReturn

import grpc

from borgmaster import commands as C
from borgmaster.auth import (
    Denied,
    acting_user,
    caller,
    check_machine,
    check_owner_for,
    may_see_secrets,
)
from borgmaster.convert import (
    dict_from,
    event_pb,
    job_pb,
    machine_pb,
    resources_pb,
)
from borgmaster.explain import explain_task
from borgmaster.facade import ApiHost, ProposeError, now_ms
from borgmaster.link import NotLeader, gpus_problem
from borgmaster.model import (
    MACHINE_DRAINING,
    MACHINE_UP,
    Resources,
    TaintEffect,
)
from borgmaster.preview import MAX_PLAN_JOBS, PLAN_LOCK, preview
from borgmaster.preview import copy_of as preview_copy
from borgmaster.sessions import LOGIN_TTL_S, make_token, session_key
from borgmaster.store import ACTIVE_STATES, SNAPSHOT_FORMAT
from cfg.bns import task_name
from cfg.errors import ConfigError
from cfg.grpcauth import on_behalf, secure_channel
from cfg.model import band_of
from cfg.schema import spec_to_config, validate_job
from cfg.tls import INSECURE, Identity, Role
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borgmaster.api")

CODES = {
    "invalid": grpc.StatusCode.INVALID_ARGUMENT,
    "not-found": grpc.StatusCode.NOT_FOUND,
    "permission-denied": grpc.StatusCode.PERMISSION_DENIED,
    "unavailable": grpc.StatusCode.UNAVAILABLE,
    "not-leader": grpc.StatusCode.FAILED_PRECONDITION,
    "internal": grpc.StatusCode.INTERNAL,
    "quota": grpc.StatusCode.RESOURCE_EXHAUSTED,
    "too-large": grpc.StatusCode.RESOURCE_EXHAUSTED,
}

FORWARDED_HEADER = "borg-forwarded"
"""Metadata on a read a follower forwards to the leader (see `_from_leader`)."""


# A Sync's taint effects must be ones the contract knows: the store's Raft entries are checked
# against the enum, so an unknown effect is refused here, at the edge, with a clear message.
TAINT_EFFECTS = frozenset(e.value for e in TaintEffect)


def _abort(context: grpc.ServicerContext, code: str, message: str) -> NoReturn:
    context.abort(CODES.get(code, grpc.StatusCode.UNKNOWN), message)
    raise AssertionError("unreachable")  # context.abort raises


MAX_SPEC_BYTES = 1 << 20
"""A job spec larger than this (as sent) is refused before it is decoded (SPEC part 2, Limits):
every replica keeps it in memory, in the journal and in snapshots."""


def _denied(context: grpc.ServicerContext, e: Denied) -> NoReturn:
    _abort(context, "permission-denied", str(e))


QUOTA_BANDS = frozenset({"production", "monitoring"})
"""Bands a user may use only with quota an admin granted (SPEC part 2, Authorization): without
it, anyone could claim priority 399 and preempt the cell."""

MAX_LOG_TAIL_BYTES = 16 << 20
MAX_EXEC_ARGS = 4096
MAX_EXEC_BYTES = 64 << 10

MAX_RELAY_REPORTS = 20_000
MAX_RELAY_SEEN = 200_000
"""A RelayLink's limits (a replica sends its reports in chunks of ~2 MiB; a cell serves at
most this many machines per replica)."""

SNAPSHOT_CHUNK = 1 << 20
"""SaveSnapshot's chunk size: well under gRPC's 4 MiB message cap."""


def _answers(addr: str, timeout: float = 1.0) -> bool:
    """Whether something accepts TCP connections at the Raft address HOST:PORT."""
    host, _, port = addr.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            return True
    except (OSError, ValueError):
        return False


class MasterServicer(borg_pb2_grpc.BorgmasterServicer):
    def __init__(self, master: ApiHost) -> None:
        self.m = master
        self._leader_channels: dict[str, grpc.Channel] = {}
        self._channels_lock = threading.Lock()

    # ----- helpers ------------------------------------------------------------------------

    def _count(self, method: str, code: str, started: float) -> None:
        counter = self.m.request_counter()
        if counter is not None:
            counter.on_request(method, code, time.monotonic() - started)

    def _write(self, cmd: C.Command, context: grpc.ServicerContext, method: str) -> dict[str, Any]:
        started = time.monotonic()
        try:
            res = self.m.propose(cmd)
        except ProposeError as e:
            self._count(method, e.code, started)
            _abort(context, e.code, e.message)
        self._count(method, "ok", started)
        return res

    def _read_barrier(self, opts: pb.ReadOptions, context: grpc.ServicerContext) -> None:
        if opts.stale:
            return
        try:
            self.m.barrier()
        except ProposeError as e:
            _abort(context, e.code, f"consistent read failed: {e.message} (use --stale)")

    # ----- jobs ---------------------------------------------------------------------------

    def SubmitJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        return self._submit(request, context, must_exist=False, method="SubmitJob")

    def UpdateJob(self, request: pb.SubmitJobRequest, context: grpc.ServicerContext) -> Any:
        return self._submit(request, context, must_exist=True, method="UpdateJob")

    def _submit(
        self,
        request: pb.SubmitJobRequest,
        context: grpc.ServicerContext,
        must_exist: bool,
        method: str,
    ) -> pb.SubmitJobResponse:
        size = request.spec.ByteSize()
        if size > MAX_SPEC_BYTES:
            self._count(method, "invalid", time.monotonic())
            _abort(
                context,
                "invalid",
                f"spec: {size} bytes encoded, over the {MAX_SPEC_BYTES >> 20} MiB a job may be",
            )
        ident = caller(context)
        try:
            user = acting_user(ident, request.user)
        except Denied as e:
            _denied(context, e)
        try:
            spec = validate_job(
                dict_from(request.spec), default_user=request.user or user or ident.name
            )
        except ConfigError as e:
            self._count(method, "invalid", time.monotonic())
            _abort(context, "invalid", str(e))
        except ValueError as e:  # NaN or Infinity in a number: not a value a config can hold
            self._count(method, "invalid", time.monotonic())
            _abort(context, "invalid", f"spec: {e}")
        if not spec.user:
            _abort(context, "invalid", "user: the job has no owner (set user or pass --user)")
        self._check_submitter(ident, spec.user, spec.name, spec.priority, context)
        cmd = C.SubmitJob(
            spec=spec,
            must_exist=must_exist,
            user=user,
            request_id=request.options.request_id or uuid.uuid4().hex,
        )
        res = self._write(cmd, context, method)
        log.info("job %s %s (version %s)", res["name"], res["result"], res["version"])
        return pb.SubmitJobResponse(name=res["name"], version=res["version"], result=res["result"])

    def _check_submitter(
        self,
        ident: Identity,
        owner: str,
        job: str,
        priority: int,
        context: grpc.ServicerContext,
    ) -> None:
        """A user submits only its own jobs, and uses the production and monitoring bands
        only with quota granted there; admins (and insecure cells) are not limited."""
        if ident is INSECURE or ident.is_admin:
            return
        if owner != ident.name:
            _denied(context, Denied(f"{ident.name} may not submit job '{job}' as user '{owner}'"))
        band = band_of(priority)
        if band in QUOTA_BANDS:
            with self.m.store.lock:
                has = (owner, band) in self.m.store.quotas
            if not has:
                _denied(
                    context,
                    Denied(
                        f"{ident.name} has no quota in the {band} band (priority {priority}); "
                        f"an admin grants it with `borgcfg quota set {owner} {band} ...`"
                    ),
                )

    def _acting(self, context: grpc.ServicerContext, claimed: str) -> str:
        try:
            return acting_user(caller(context), claimed)
        except Denied as e:
            _denied(context, e)

    def KillJob(self, request: pb.KillJobRequest, context: grpc.ServicerContext) -> Any:
        if not request.name:
            _abort(context, "invalid", "name: required")
        user = self._acting(context, request.user)
        cmd = C.KillJob(name=request.name, user=user, request_id=request.options.request_id)
        res = self._write(cmd, context, "KillJob")
        how = "was already killed" if res.get("already") else "killed"
        log.info("job %s %s (%s tasks to stop)", res["name"], how, res["tasks_to_stop"])
        return pb.KillJobResponse(
            name=res["name"], tasks_to_stop=res["tasks_to_stop"], already=bool(res.get("already"))
        )

    def _from_leader(self, method: str, request: Any, context: grpc.ServicerContext) -> Any:
        """A follower answers reads that show live usage and last contact by asking the leader.

        Borglets report usage only to the leader (every Sync), and it is not replicated (it
        changes every few seconds per task), so a follower's own copy would show zeros or go
        stale after a failover. Consistent (non --stale) reads of jobs and machines are
        therefore forwarded; the leader applies its own barrier. None when this replica is
        the leader, no leader is known or it cannot be reached: the caller then reads its
        local state behind a barrier as before (everything but usage is still exact)."""
        if request.options.stale or self.m.is_leader():
            return None
        if any(k == FORWARDED_HEADER for k, _ in context.invocation_metadata() or ()):
            return None  # one hop only: two replicas with stale views never ping-pong
        addr = self.m.leader_grpc()
        if not addr or addr == self.m.cfg.grpc:
            return None
        ch = self._channel(addr)
        left = context.time_remaining()
        timeout = min(5.0, left) if left is not None else 5.0
        metadata = ((FORWARDED_HEADER, "1"), *on_behalf(caller(context)))
        try:
            call = getattr(borg_pb2_grpc.BorgmasterStub(ch), method)
            return call(request, timeout=timeout, metadata=metadata)
        except grpc.RpcError as e:
            if e.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                context.abort(e.code(), e.details() or "")
            log.debug("forwarding %s to the leader %s failed: %s", method, addr, e.code())
            return None

    def _channel(self, addr: str) -> grpc.Channel:
        """A cached channel to another replica (mTLS with this replica's certificate)."""
        with self._channels_lock:
            ch = self._leader_channels.get(addr)
            if ch is None:
                ch = self._leader_channels[addr] = secure_channel(addr, self.m.cfg.tls)
            return ch

    def GetJob(self, request: pb.GetJobRequest, context: grpc.ServicerContext) -> Any:
        forwarded = self._from_leader("GetJob", request, context)
        if forwarded is None:
            self._read_barrier(request.options, context)
            with self.m.store.lock:
                job = self.m.store.jobs.get(request.name)
                if job is None:
                    _abort(context, "not-found", f"job '{request.name}' does not exist")
                tasks = [self.m.store.tasks[k] for k in self._task_keys(job.name)]
                forwarded = job_pb(job, tasks, spec_to_config(job.spec), self.m.link.usage)
        if not may_see_secrets(caller(context), forwarded.user) and "env" in forwarded.spec:
            # Env often holds credentials: only the owner and admins read it (SPEC part 2).
            del forwarded.spec["env"]
        return forwarded

    def _task_keys(self, name: str) -> list[tuple[str, int]]:
        return [t.key for t in self.m.store.job_tasks(name)]

    def ListJobs(self, request: pb.ListJobsRequest, context: grpc.ServicerContext) -> Any:
        self._read_barrier(request.options, context)
        with self.m.store.lock:
            out = []
            for name in sorted(self.m.store.jobs):
                job = self.m.store.jobs[name]
                out.append(job_pb(job, self.m.store.job_tasks(name), None, with_tasks=False))
            return pb.ListJobsResponse(jobs=out)

    def ListMachines(self, request: pb.ListMachinesRequest, context: grpc.ServicerContext) -> Any:
        forwarded = self._from_leader("ListMachines", request, context)
        if forwarded is not None:
            return forwarded
        self._read_barrier(request.options, context)
        with self.m.store.lock:
            out = []
            for name in sorted(self.m.store.machines):
                m = self.m.store.machines[name]
                n = sum(
                    1
                    for k in self.m.store.tasks_by_machine.get(name, ())
                    if self.m.store.tasks[k].state in ACTIVE_STATES
                )
                out.append(
                    machine_pb(
                        m,
                        self.m.store.used(name),
                        n,
                        self.m.link.machine_usage(name),
                        self.m.link.last_seen_ms(name),
                        sorted(self.m.store.gpus_held(name)),
                    )
                )
            return pb.ListMachinesResponse(machines=out)

    def ListEndpoints(self, request: pb.ListEndpointsRequest, context: grpc.ServicerContext) -> Any:
        """What the job's BNS names serve, from this replica's store (as DNS answers)."""
        self._read_barrier(request.options, context)
        with self.m.store.lock:
            job = self.m.store.jobs.get(request.job)
            if job is None or job.killed:
                _abort(context, "not-found", f"job '{request.job}' does not exist")
            user, cell = job.spec.user, self.m.cfg.cell
            eps = self.m.zone.endpoints(request.job)
        return pb.ListEndpointsResponse(
            endpoints=[
                pb.Endpoint(
                    index=e.index,
                    machine=e.machine,
                    host=e.host,
                    ports=e.ports,
                    healthy=e.healthy,
                    name=task_name(e.index, request.job, user, cell),
                )
                for e in eps
            ]
        )

    # ----- the cell -----------------------------------------------------------------------

    def ReplicaStatus(self, request: pb.ReplicaStatusRequest, context: grpc.ServicerContext) -> Any:
        return self.m.replica_info()

    def CellStatus(self, request: pb.CellStatusRequest, context: grpc.ServicerContext) -> Any:
        me = self.m.replica_info()
        with self.m.store.lock:
            known = {r.raft: r for r in self.m.store.replicas.values()}
        # The live Raft membership (it changes with `cell add/remove`); the store's replica
        # table only maps those addresses to ids and gRPC addresses.
        rafts = sorted({self.m.cfg.raft, *self.m.raft_members()})
        out = []
        for raft in rafts:
            if raft == self.m.cfg.raft:
                out.append(me)
                continue
            r = known.get(raft)
            if r is None:
                out.append(pb.ReplicaInfo(raft=raft, role="unknown"))
                continue
            try:
                info = borg_pb2_grpc.BorgmasterStub(self._channel(r.grpc)).ReplicaStatus(
                    pb.ReplicaStatusRequest(), timeout=1.0
                )
                out.append(info)
            except grpc.RpcError:
                out.append(pb.ReplicaInfo(id=r.id, raft=r.raft, grpc=r.grpc, role="unreachable"))
        return pb.CellStatusResponse(replicas=out)

    # ----- Borglets -----------------------------------------------------------------------

    async def Sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> Any:
        """Level-triggered: record what the Borglet sees, reply with what it should run
        (the protocol and the diff live in link.py). Async: a Sync waiting for its machine's
        desired set to change holds no thread (rpc_loop.py); `context` is a CallContext,
        whose `abort` raises (no await)."""
        self._check_sync(request, context)
        try:
            return await self.m.link.sync_async(request, self.m.link_pool, self.m.sync_waiters)
        except NotLeader:
            leader = self.m.leader_grpc()
            _abort(context, "not-leader", f"not the leader; leader: {leader or 'unknown'}")
        except ProposeError as e:
            _abort(context, e.code, e.message)

    async def Link(self, requests: Any, context: grpc.ServicerContext) -> Any:
        """One Borglet's long-lived stream, served by any replica (linkstream.py): the first
        message registers the machine (checked as a Sync: this certificate's own machine),
        every later one is bound to it. A message that breaks the protocol ends the stream
        with INVALID_ARGUMENT; the server goes on."""
        it = requests.__aiter__()
        try:
            first = await it.__anext__()
        except StopAsyncIteration:
            return
        if not first.HasField("hello"):
            _abort(context, "invalid", "link: the first message must be a hello")
        self._check_machine_request(first.hello, context)
        hello = first.hello
        why = await self.m.link_streams.wait_serving(hello.machine, max(0, hello.min_index))
        if why:
            _abort(context, "unavailable", f"link: this replica is not serving yet: {why}")
        try:
            async for down in self.m.link_streams.serve(first, it):
                yield down
        except ValueError as e:
            _abort(context, "invalid", f"link: {e}")

    async def RelayLink(self, request: pb.RelayLinkRequest, context: grpc.ServicerContext) -> Any:
        """Another replica's batch of its Borglets' reports and the machines it heard from
        (leader only): recorded as this leader's own streams' reports are."""
        if not self.m.is_leader():
            leader = self.m.leader_grpc()
            _abort(context, "not-leader", f"not the leader; leader: {leader or 'unknown'}")
        if len(request.reports) > MAX_RELAY_REPORTS or len(request.seen) > MAX_RELAY_SEEN:
            _abort(
                context,
                "invalid",
                f"relay: at most {MAX_RELAY_REPORTS} reports and {MAX_RELAY_SEEN} machines",
            )
        items = self.m.link_streams.relayed_in(request)
        loop = asyncio.get_running_loop()
        try:
            failed = await loop.run_in_executor(
                self.m.link_pool,
                self.m.link.record_many,
                [r for r, _ in items],
                [k for _, k in items],
            )
        except NotLeader:
            leader = self.m.leader_grpc()
            _abort(context, "not-leader", f"not the leader; leader: {leader or 'unknown'}")
        except ValueError as e:
            _abort(context, "invalid", f"relay: {e}")
        return pb.RelayLinkResponse(failed=failed)

    def _check_sync(self, request: pb.SyncRequest, context: grpc.ServicerContext) -> None:
        if not self.m.is_leader():
            leader = self.m.leader_grpc()
            _abort(context, "not-leader", f"not the leader; leader: {leader or 'unknown'}")
        self._check_machine_request(request, context)

    def _check_machine_request(
        self, request: pb.SyncRequest, context: grpc.ServicerContext
    ) -> None:
        """A machine's registration: named, this caller's own, taints and GPUs it may offer."""
        if not request.machine:
            _abort(context, "invalid", "machine: required")
        try:
            check_machine(caller(context), request.machine)
        except Denied as e:
            _denied(context, e)
        for t in request.taints:
            if t.effect not in TAINT_EFFECTS:
                _abort(
                    context, "invalid", f"taints: unknown effect {t.effect!r:.40} of {t.key!r:.40}"
                )
        bad_gpus = gpus_problem(request)
        if bad_gpus:
            _abort(context, "invalid", bad_gpus)

    # ----- rollouts, drains, events, quota, membership ------------------------------------

    def Rollback(self, request: pb.RollbackRequest, context: grpc.ServicerContext) -> Any:
        cmd = C.Rollback(
            name=request.name,
            user=self._acting(context, request.user),
            version=max(0, request.to_version),
            request_id=request.options.request_id or uuid.uuid4().hex,
        )
        res = self._write(cmd, context, "Rollback")
        log.info("job %s rolled back (now version %s)", res["name"], res["version"])
        return pb.SubmitJobResponse(name=res["name"], version=res["version"], result=res["result"])

    def DrainMachine(self, request: pb.DrainMachineRequest, context: grpc.ServicerContext) -> Any:
        state = MACHINE_UP if request.undrain else MACHINE_DRAINING
        cmd = C.SetMachineState(
            name=request.name, state=state, request_id=request.options.request_id
        )
        res = self._write(cmd, context, "DrainMachine")
        log.info("machine %s %s", request.name, "undrained" if request.undrain else "draining")
        return pb.DrainMachineResponse(
            name=request.name, state=res["state"], tasks_to_move=res["tasks_to_move"]
        )

    def WatchEvents(self, request: pb.WatchEventsRequest, context: grpc.ServicerContext) -> Any:
        store = self.m.store
        with store.lock:
            if request.tail > 0:
                evs = store.events_since(0, request.job)[-request.tail :]
            else:
                evs = store.events_since(request.from_index, request.job)
            nxt = store.next_event
        for e in evs:
            yield event_pb(e)
        while request.follow and context.is_active() and not self.m.stopping():
            with store.changed:
                since = nxt

                def moved(since: int = since) -> bool:
                    return store.next_event != since or self.m.stopping()

                store.changed.wait_for(moved, timeout=1.0)
                evs = store.events_since(since, request.job)
                nxt = store.next_event
            for e in evs:
                yield event_pb(e)

    def ExplainTask(self, request: pb.ExplainTaskRequest, context: grpc.ServicerContext) -> Any:
        with self.m.store.lock:
            t = self.m.store.tasks.get((request.job, request.index))
            if t is None:
                _abort(context, "not-found", f"task {request.job}/{request.index} does not exist")
            snap = self.m.scheduler_snapshot()
            job = self.m.store.jobs[t.job]
            rejected, feasible = explain_task(self.m.scheduler, snap, job.spec, t.job, t.index)
            return pb.ExplainTaskResponse(
                state=t.state,
                machine=t.machine,
                reason=t.reason,
                rejected=rejected,
                feasible=feasible,
                machines=len(snap.machines),
            )

    def SetQuota(self, request: pb.SetQuotaRequest, context: grpc.ServicerContext) -> Any:
        """Set the limits given; each limit field is an amount (>= 0), -1 (UNLIMITED) or
        -2 (QUOTA_KEEP: not given, keep the current limit; unlimited when there is none).
        The merge is the store's, so the reply shows the quota as it now stands."""
        q = request.quota
        if not q.user or not q.band:
            _abort(context, "invalid", "quota: user and band are required")
        limit: dict[str, Any] = {}
        for k in ("cpu", "ram", "disk", "gpu"):
            v = getattr(q.limit, k)
            if v == C.QUOTA_KEEP:
                continue
            if v < 0 and v != C.UNLIMITED:
                _abort(
                    context,
                    "invalid",
                    f"quota: {k} must be >= 0, -1 (unlimited) or -2 (keep), not {v:g}",
                )
            limit[k] = float(v) if k == "cpu" else int(v)
        cmd = C.SetQuota(
            user=q.user,
            band=q.band,
            limit=C.QuotaLimit(**limit),
            request_id=request.options.request_id,
        )
        res = self._write(cmd, context, "SetQuota")
        with self.m.store.lock:
            used = self.m.store.quota_used(q.user, q.band)
            now = self.m.store.quotas.get((q.user, q.band))
        merged = res.get("limit") or (now.to_dict() if now is not None else {})
        return pb.SetQuotaResponse(
            quota=pb.Quota(
                user=q.user,
                band=q.band,
                limit=resources_pb(Resources.from_dict(merged)),
                used=resources_pb(used),
            )
        )

    def ListQuotas(self, request: pb.ListQuotasRequest, context: grpc.ServicerContext) -> Any:
        with self.m.store.lock:
            out = [
                pb.Quota(
                    user=u,
                    band=b,
                    limit=resources_pb(lim),
                    used=resources_pb(self.m.store.quota_used(u, b)),
                )
                for (u, b), lim in sorted(self.m.store.quotas.items())
                if not request.user or u == request.user
            ]
        return pb.ListQuotasResponse(quotas=out)

    def ChangeMembership(
        self, request: pb.ChangeMembershipRequest, context: grpc.ServicerContext
    ) -> Any:
        if not request.raft or ":" not in request.raft:
            _abort(context, "invalid", "raft: HOST:PORT required")
        if not self.m.is_leader():
            leader = self.m.leader_grpc()
            if not leader:
                _abort(context, "unavailable", "no leader elected")
            try:
                return borg_pb2_grpc.BorgmasterStub(self._channel(leader)).ChangeMembership(
                    request, timeout=15, metadata=on_behalf(caller(context))
                )
            except grpc.RpcError as e:
                context.abort(e.code(), e.details() or "")
        if not request.remove and not _answers(request.raft):
            # PySyncObj applies a membership change when it is appended: adding an address
            # where nothing runs would leave the cell needing a vote it can never get.
            _abort(
                context,
                "invalid",
                f"cell add: nothing answers at {request.raft} (start the replica there with "
                "--join first)",
            )
        try:
            self.m.change_membership(request.raft, remove=request.remove)
        except ProposeError as e:
            _abort(context, e.code, e.message)
        cell = self.CellStatus(pb.CellStatusRequest(), context)
        return pb.ChangeMembershipResponse(replicas=cell.replicas)

    # ----- logs and the web UI ------------------------------------------------------------

    def ReadTaskLogs(self, request: pb.ReadLogsRequest, context: grpc.ServicerContext) -> Any:
        """Relay a task's output from its Borglet, which serves logs to masters only: the
        owner check happens here, on the caller's verified identity."""
        if request.tail_bytes < 0 or request.tail_bytes > MAX_LOG_TAIL_BYTES:
            _abort(context, "invalid", f"tail_bytes: 0..{MAX_LOG_TAIL_BYTES}")
        with self.m.store.lock:
            job = self.m.store.jobs.get(request.job)
            t = self.m.store.tasks.get((request.job, request.index))
            if job is None or t is None:
                _abort(context, "not-found", f"task {request.job}/{request.index} does not exist")
            owner = job.spec.user
            machine = t.machine
            mach = self.m.store.machines.get(machine) if machine else None
            address = mach.address if mach is not None else ""
        try:
            check_owner_for(caller(context), owner, "read the logs", request.job)
        except Denied as e:
            _denied(context, e)
        if not address:
            _abort(
                context,
                "not-found",
                f"task {request.job}/{request.index} has no machine (state {t.state}): no logs",
            )
        ch = secure_channel(address, self.m.cfg.tls, Role.BORGLET, machine=machine)
        left = context.time_remaining()
        try:
            stream = borg_pb2_grpc.BorgletStub(ch).ReadLogs(
                request, timeout=None if request.follow else min(left or 15.0, 15.0)
            )
            context.add_callback(stream.cancel)
            yield from stream
        except grpc.RpcError as e:
            if e.code() == grpc.StatusCode.CANCELLED and not context.is_active():
                return
            code = e.code()
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                _abort(context, "unavailable", f"machine {machine} unreachable: {e.details()}")
            context.abort(code, e.details() or code.name)
        finally:
            ch.close()

    def CreateUiSession(
        self, request: pb.CreateUiSessionRequest, context: grpc.ServicerContext
    ) -> Any:
        """A login link for the web UI, valid LOGIN_TTL_S (see sessions.py)."""
        ident = caller(context)
        if self.m.cfg.tls is None or not self.m.cfg.raft_secret:
            return pb.UiSession(http=self.m.cfg.http)  # a plaintext cell's UI is open
        now = now_ms()
        token = make_token(session_key(self.m.cfg.raft_secret), ident, "login", now, LOGIN_TTL_S)
        return pb.UiSession(token=token, expires_ms=now + LOGIN_TTL_S * 1000, http=self.m.cfg.http)

    # ----- exec ---------------------------------------------------------------------------

    def ExecTask(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """Relay an exec session to the task's Borglet (which serves masters only): the owner
        check and the audit record happen here, on the caller's verified identity."""
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "start":
            _abort(context, "invalid", "exec: the first message must be start")
        st = first.start
        argv = list(st.argv)
        if not argv or len(argv) > MAX_EXEC_ARGS or sum(len(a) for a in argv) > MAX_EXEC_BYTES:
            _abort(context, "invalid", f"argv: 1..{MAX_EXEC_ARGS} words, {MAX_EXEC_BYTES} bytes")
        ident = caller(context)
        target = f"{st.job}/{st.index}"
        with self.m.store.lock:
            job = self.m.store.jobs.get(st.job)
            t = self.m.store.tasks.get((st.job, st.index))
            if job is None or t is None:
                _abort(context, "not-found", f"task {target} does not exist")
            owner, state, machine, incarnation = job.spec.user, t.state, t.machine, t.incarnation
            mach = self.m.store.machines.get(machine) if machine else None
            address = mach.address if mach is not None else ""
        try:
            check_owner_for(ident, owner, "exec into tasks", st.job)
        except Denied as e:
            self.m.audit_record(ident, "ExecTask", target, "", f"PERMISSION_DENIED: {e}")
            _denied(context, e)
        if state != "running" or not address:
            _abort(context, "invalid", f"task {target} is {state}: exec needs a running task")
        self.m.audit_record(ident, "ExecTask", f"{target} {' '.join(argv)[:200]}", "", "ok")
        log.info("exec into %s by %s: %s", target, ident.name or "-", argv[0][:80])
        start = pb.ExecInput(
            start=pb.ExecStart(
                job=st.job,
                index=st.index,
                argv=argv,
                tty=st.tty,
                rows=st.rows,
                cols=st.cols,
                incarnation=incarnation,
            )
        )

        def upstream() -> Any:
            yield start
            yield from request_iterator

        ch = secure_channel(address, self.m.cfg.tls, Role.BORGLET, machine=machine)
        try:
            call = borg_pb2_grpc.BorgletStub(ch).Exec(upstream())
            context.add_callback(call.cancel)
            yield from call
        except grpc.RpcError as e:
            code = e.code()
            if code == grpc.StatusCode.CANCELLED and not context.is_active():
                return
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                _abort(context, "unavailable", f"machine {machine} unreachable: {e.details()}")
            context.abort(code, e.details() or code.name)
        finally:
            ch.close()

    # ----- jobs over time -----------------------------------------------------------------

    def JobHistory(self, request: pb.JobHistoryRequest, context: grpc.ServicerContext) -> Any:
        """A job's remembered versions, oldest first (a read, from this replica's store)."""
        self._read_barrier(request.options, context)
        with self.m.store.lock:
            job = self.m.store.jobs.get(request.name)
            if job is None:
                _abort(context, "not-found", f"job '{request.name}' does not exist")
            versions = [
                pb.JobVersion(
                    version=r.version,
                    submitted_ms=r.submitted_ms,
                    user=r.user,
                    changed=r.changed,
                )
                for r in job.versions
            ]
            return pb.JobHistoryResponse(versions=versions, current=job.version)

    def PlanJobs(self, request: pb.PlanJobsRequest, context: grpc.ServicerContext) -> Any:
        """What `up` of these specs would do, placements included (a read: the leader runs
        its scheduler on a private copy of its state; borgmaster/preview.py)."""
        if len(request.specs) > MAX_PLAN_JOBS:
            _abort(context, "invalid", f"specs: {len(request.specs)}, over {MAX_PLAN_JOBS}")
        ident = caller(context)
        acting = self._acting(context, request.user)
        specs = []
        for i, st in enumerate(request.specs):
            size = st.ByteSize()
            if size > MAX_SPEC_BYTES:
                _abort(context, "invalid", f"specs[{i}]: {size} bytes, over {MAX_SPEC_BYTES}")
            try:
                spec = validate_job(
                    dict_from(st), default_user=request.user or acting or ident.name
                )
            except ConfigError as e:
                _abort(context, "invalid", f"specs[{i}]: {e}")
            except ValueError as e:
                _abort(context, "invalid", f"specs[{i}]: {e}")
            if not spec.user:
                _abort(context, "invalid", f"specs[{i}]: user: the job has no owner")
            specs.append(spec)
        forwarded = self._from_leader("PlanJobs", request, context)
        if forwarded is not None:
            return forwarded
        self._read_barrier(request.options, context)
        with PLAN_LOCK:
            copy = preview_copy(self.m.store)
            out = preview(
                copy,
                specs,
                acting,
                self.m.scheduler,
                int(time.time() * 1000),
                lambda: uuid.uuid4().hex[:12],
            )
        return pb.PlanJobsResponse(
            jobs=[
                pb.JobPlan(
                    job=p.job,
                    change=p.change,
                    version=p.version,
                    placements=p.placements,
                    unplaceable=p.unplaceable,
                    preemptions=p.preemptions,
                    reasons=p.reasons,
                    error=p.error,
                )
                for p in out
            ]
        )

    def PromoteJob(self, request: pb.PromoteJobRequest, context: grpc.ServicerContext) -> Any:
        """End a canary stage (a write: the job's owner)."""
        if not request.name:
            _abort(context, "invalid", "name: required")
        cmd = C.Promote(
            name=request.name,
            user=self._acting(context, request.user),
            request_id=request.options.request_id or uuid.uuid4().hex,
        )
        res = self._write(cmd, context, "PromoteJob")
        log.info("job %s promoted (version %s)", res["name"], res["version"])
        return pb.SubmitJobResponse(name=res["name"], version=res["version"], result=res["result"])

    # ----- backups ------------------------------------------------------------------------

    def SaveSnapshot(self, request: pb.SaveSnapshotRequest, context: grpc.ServicerContext) -> Any:
        """The whole state at one applied index, streamed in chunks (admin; see auth.py).

        After a read barrier this replica has applied every write acknowledged before the
        call, so any replica will do. The state is encoded under the store lock, which
        applies also take: the bytes are exactly the state at `index`, never half of a
        command. Chunked because a 100,000-task state is far above gRPC's message cap."""
        self._read_barrier(pb.ReadOptions(), context)
        store = self.m.store
        with store.lock:
            data = store.snapshot_bytes()
            index = store.applied_index
            term = self.m.replica_info().term
        header = pb.SnapshotHeader(
            cell=self.m.cfg.cell,
            replica=self.m.cfg.id,
            index=index,
            term=term,
            taken_ms=now_ms(),
            state_format=SNAPSHOT_FORMAT,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        log.info("snapshot at index %d (term %d): %d bytes", index, term, len(data))
        view = memoryview(data)
        yield pb.SnapshotChunk(header=header, data=bytes(view[:SNAPSHOT_CHUNK]))
        for off in range(SNAPSHOT_CHUNK, len(data), SNAPSHOT_CHUNK):
            if not context.is_active():
                return
            yield pb.SnapshotChunk(data=bytes(view[off : off + SNAPSHOT_CHUNK]))
