"""Composition root of a Borgmaster replica: it builds the pieces and wires them together.

- `fsm.py`: Raft (the only module touching PySyncObj) applying commands to the `Store`;
- `proposer.py`: group commit of writes and shared read barriers, under `writer.py` (a
  command in, a result or a `ProposeError` out);
- `leader_loop.py`: the skeleton (wait, debounce, term fence) of the three leader loops,
  whose bodies are `scheduling.py` (over the pure `planner.py`), `controller_shell.py` (over
  the pure `controllers.py`) and `liveness.py`;
- `link.py`: the Borglets' Sync protocol; `api.py`, `http.py`, `metrics.py`: the ports,
  which see this replica only through the interfaces in `facade.py`; `dns.py` serves
  `naming.py`'s zone from this replica's store.

Followers serve reads and forward writes (PySyncObj sends a command proposed on a follower
to the leader and calls back once the follower itself has applied it); the leader loops run
on every replica's threads but act only while it leads.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent import futures
from typing import Any

import grpc
import grpc.aio
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from borgmaster import commands as C
from borgmaster.api import MasterServicer
from borgmaster.auth import RULES
from borgmaster.config import MasterConfig
from borgmaster.controller_shell import ControllerShell
from borgmaster.copies import LiveCopies
from borgmaster.digests import DigestChecker, Digests
from borgmaster.diskspace import DataDirSpace
from borgmaster.dns import DnsServer
from borgmaster.facade import ProposalCounts, ProposeError, RequestCounter, now_ms
from borgmaster.fsm import (
    BorgFSM,
    DataDirError,
    RaftStatus,
    Role,
    check_data_dir,
    own_raft_secret,
    probe_bind,
)
from borgmaster.http import start_http
from borgmaster.leader_loop import (
    FOLLOWER_POLL_S,
    LOOP_MIN_INTERVAL_S,
    Cadence,
    LeaderLoop,
    TermFence,
)
from borgmaster.link import BorgletLink
from borgmaster.linkstream import LinkStreams
from borgmaster.liveness import Liveness
from borgmaster.metrics import MasterMetrics
from borgmaster.model import Replica
from borgmaster.naming import Zone
from borgmaster.planner import build_snapshot
from borgmaster.proposer import Proposer
from borgmaster.rpc_loop import RpcLoop, Waiters
from borgmaster.scheduler import BorgScheduler, Scheduler, Snapshot
from borgmaster.scheduling import SchedulingShell
from borgmaster.store import Store
from borgmaster.writer import Writer
from cfg.grpcauth import (
    AioAuthInterceptor,
    AuditLog,
    AuthInterceptor,
    secure_channel,
    server_credentials,
)
from cfg.keepalive import master_server_options
from cfg.tls import Identity
from proto.borg.v1 import borg_pb2, borg_pb2_grpc

__all__ = [
    "FOLLOWER_POLL_S",
    "LOOP_MIN_INTERVAL_S",
    "Master",
    "MasterConfig",
    "ProposeError",
    "now_ms",
]

LINK_THREADS = 4
"""Threads for the Borglet link's blocking work (`Master.link_pool`)."""

log = logging.getLogger("borgmaster")


class Master:
    """One Borgmaster replica."""

    def __init__(self, cfg: MasterConfig, scheduler: Scheduler | None = None) -> None:
        self.cfg = cfg
        self.store = Store()
        self.scheduler: Scheduler = scheduler or BorgScheduler(policy=cfg.scheduler_policy)
        self._stop = threading.Event()
        # Copies the Borglets report alive (leader memory, see copies.py).
        self.copies = LiveCopies()
        self.placer = SchedulingShell(
            self.store,
            self.scheduler,
            self.copies,
            self.propose,
            cfg.machine_timeout_s,
            metrics=lambda: self.metrics,
        )
        self.link = BorgletLink(
            self.store,
            self.copies,
            self.propose,
            self.is_leader,
            self.placer.release_held,
            cfg.cell,
        )
        self.liveness = Liveness(
            self.store,
            self.copies,
            self.link.last_seen,
            self.propose,
            self.placer.release_held,
            cfg.machine_timeout_s,
        )
        self.controllers = ControllerShell(self.store, self.propose, cfg.job_retention_s)
        check_data_dir(cfg.data_dir, cfg.cell, cfg.id)
        if cfg.raft_secret is None:
            # No Raft without authentication (PySyncObj unpickles what reaches its port).
            if cfg.peers:
                raise DataDirError("a replica with peers needs a Raft secret")
            cfg.raft_secret = own_raft_secret(cfg.data_dir)
        self.proposer: Proposer | None = None  # set below; Raft may call back before
        self.digests = Digests(self.store.state_digest, every=cfg.digest_every)
        self.digest_check = DigestChecker(
            self.digests,
            self._peer_digests,
            lambda: len(self.fsm.members()) + 1,
            self._stop,
            cfg.digest_check_s,
        )
        self._peer_channels: dict[str, grpc.Channel] = {}
        self.writer: Writer | None = None
        self.fsm = BorgFSM(
            cfg.raft,
            cfg.peers,
            cfg.data_dir,
            self.store,
            password=cfg.raft_secret,
            tuning=cfg.tuning,
            on_state_changed=self._on_raft_state,
            fsync=cfg.fsync,
            join=cfg.join,
            digests=self.digests,
        )
        self.proposer = Proposer(self.fsm)
        self.space = DataDirSpace(cfg.data_dir, cfg.id, cfg.min_free_bytes)
        self.writer = Writer(
            self.fsm, self.proposer, self._stop, cfg.write_timeout_s, self.leader_grpc, self.space
        )
        self.fence = TermFence(cfg.id, self.is_leader, self.fsm.term, self.propose)
        # Scheduler: on every change (never idle-periodic); controllers: on changes and every
        # second (rollout health, GC); liveness: on its period only.
        liveness_period = min(1.0, cfg.machine_timeout_s / 4)
        self.loops = [
            self._loop("scheduler", self._schedule, Cadence(period_s=1.0, on_period=False)),
            self._loop("controllers", self.controllers.run, Cadence(period_s=1.0)),
            self._loop(
                "liveness",
                lambda term: self.liveness.check(term, time.monotonic()),
                Cadence(period_s=liveness_period, on_change=False, debounce_s=0),
            ),
        ]
        self.placer.wake = self.loops[0].wake
        self.zone = Zone(cfg.cell, self.store)
        self.dns_server: DnsServer | None = None
        self.grpc_server: grpc.aio.Server | None = None
        self.rpc_pool: futures.Executor = futures.ThreadPoolExecutor(
            max_workers=64, thread_name_prefix="grpc"
        )
        """The sync handlers' threads (every method but the Borglet link's waits)."""
        self.link_pool: futures.Executor = futures.ThreadPoolExecutor(
            max_workers=LINK_THREADS, thread_name_prefix="link"
        )
        """The Borglet link's blocking steps (record a Sync, build its reply): a few threads.
        They are CPU under the GIL, so more would add no throughput, and a thousand Syncs
        arriving at once in 64 runnable threads starved the Raft thread of the GIL long
        enough (64 x 5 ms switch interval > the 300 ms election timeout) to lose the lead."""
        self.sync_waiters = Waiters()
        self.link_streams = LinkStreams(
            self.store,
            self.link,
            self.sync_waiters,
            self.link_pool,
            self.is_leader,
            self.leader_grpc,
            cfg.grpc,
            cfg.tls,
            cfg.cell,
            self.link_unserving,
        )
        self.rpc_loop: RpcLoop
        self.http_server: Any = None
        self.metrics: Any = None
        self.audit: AuditLog | None = None

    def _loop(self, name: str, body: Any, cadence: Cadence) -> LeaderLoop:
        return LeaderLoop(
            name,
            body,
            cadence,
            is_leader=self.is_leader,
            fence=self.fence,
            stop=self._stop,
            changed=self.store.changed,
            generation=lambda: self.store.generation,
        )

    def _schedule(self, term: int) -> None:
        try:
            self.placer.schedule_once(term, retry_all=False)
        except ProposeError as e:
            log.warning("plan not committed: %s", e.message)

    # ----- Raft helpers ---------------------------------------------------------------------

    def _on_raft_state(self, old: Role, new: Role) -> None:
        if new == Role.LEADER:
            since = time.monotonic()
            self.link.forget()
            self.liveness.leader_since = since
            self.placer.became_leader(since)
            log.info("became leader (term %s)", self.fsm.term())
        elif new == Role.CANDIDATE:
            log.info("campaigning for leadership after term %s", self.fsm.term())
        if old == Role.LEADER and new != Role.LEADER:
            self.liveness.leader_since = None
            self.copies.clear()
            self.placer.lost_leadership()
            if self.proposer is not None:
                n = self.proposer.abandon_in_flight()
                if n:
                    log.warning("answered %d in-flight writes as unavailable: leadership lost", n)
            log.info("lost leadership, now %s", new.label)

    def is_leader(self) -> bool:
        return self.fsm.is_leader()

    def fenced_term(self) -> int:
        """The term to stamp on leader-loop commands, or 0 when this replica must not act."""
        return self.fence()

    def raft_status(self) -> RaftStatus:
        return self.fsm.status()

    def raft_members(self) -> list[str]:
        return self.fsm.members()

    def leader_raft(self) -> str:
        return self.fsm.leader()

    def leader_grpc(self) -> str:
        addr = self.leader_raft()
        with self.store.lock:
            for r in self.store.replicas.values():
                if r.raft == addr:
                    return r.grpc
        return ""

    def ready(self) -> bool:
        """A leader is known, this replica has applied what it knows to be committed, and its
        state is not the odd one out among the replicas' digests."""
        return not self.unready_reason()

    def link_unserving(self, min_index: int) -> str:
        """Why this replica must not serve a Borglet's Link yet ("" when it may): its store
        must be the cell's state as of at least `min_index` (linkstream.wait_serving)."""
        st = self.fsm.status()
        if not st.caught_up:
            return "no leader known or log not applied"
        applied = self.store.applied_index
        if st.is_leader and self.store.fence_term < st.term:
            return f"a new leader (term {st.term}) still applying earlier terms' entries"
        if applied < min_index:
            return f"applied log index {applied} is behind the Borglet's {min_index}"
        return ""

    def unready_reason(self) -> str:
        """Why /readyz fails, "" when it does not."""
        if not self.fsm.status().caught_up:
            return "no leader known or log not applied"
        v = self.digest_check.verdict
        if v.odd_one_out:
            return (
                f"state digest at log index {v.index} differs from the one a majority of "
                f"replicas holds ({v.majority_digest}): this replica diverged"
            )
        return ""

    def propose(self, cmd: C.Command, timeout: float | None = None) -> dict[str, Any]:
        """Commit a command through Raft and return the state machine's result (writer.py)."""
        if self.writer is None:
            raise ProposeError("unavailable", "the replica is still starting")
        return self.writer.propose(cmd, timeout)

    def stopping(self) -> bool:
        return self._stop.is_set()

    def audit_record(
        self, ident: Identity, method: str, target: str, request_id: str, result: str
    ) -> None:
        """Write one audit line (`--audit-log`) for an action a handler judged itself."""
        if self.audit is not None:
            try:
                self.audit.record(ident, method, target, request_id, result)
            except OSError as e:
                log.error("audit log: %s", e)

    def change_membership(self, raft: str, remove: bool) -> None:
        """Add or remove one replica (leader only); waits until the change commits."""
        assert self.writer is not None
        self.writer.change_membership(raft, remove, self.cfg.raft)

    def barrier(self, timeout: float = 5.0) -> None:
        """Linearizable read: every write acknowledged before it began is applied here."""
        assert self.writer is not None
        self.writer.barrier(timeout)

    def role(self) -> str:
        return self.fsm.status().role.label

    def replica_info(self) -> borg_pb2.ReplicaInfo:
        st = self.fsm.status()
        digest_index, digest = self.digests.latest()
        v = self.digest_check.verdict
        return borg_pb2.ReplicaInfo(
            id=self.cfg.id,
            raft=self.cfg.raft,
            grpc=self.cfg.grpc,
            http=self.cfg.http,
            role=st.role.label,
            term=st.term,
            commit_index=st.commit_index,
            applied_index=st.applied_index,
            leader=st.leader,
            digest_index=digest_index,
            digest=digest,
            recent_digests=self.digests.snapshot(),
            digest_mismatch=list(v.mismatched),
            digest_diverged=v.odd_one_out,
        )

    def _peer_digests(self) -> dict[str, dict[int, str]]:
        """The recent digests of every other member that answers (id -> index -> digest)."""
        with self.store.lock:
            known = {r.raft: r for r in self.store.replicas.values()}
        out: dict[str, dict[int, str]] = {}
        for raft in self.fsm.members():
            r = known.get(raft)
            if r is None or not r.grpc:
                continue
            ch = self._peer_channels.get(r.grpc)
            if ch is None:
                ch = self._peer_channels[r.grpc] = secure_channel(r.grpc, self.cfg.tls)
            try:
                info = borg_pb2_grpc.BorgmasterStub(ch).ReplicaStatus(
                    borg_pb2.ReplicaStatusRequest(), timeout=1.0
                )
            except grpc.RpcError:
                continue
            out[r.id] = dict(info.recent_digests)
        return out

    # ----- what the ports see (facade.py) ------------------------------------------------

    def proposal_counts(self) -> ProposalCounts | None:
        return self.proposer

    def request_counter(self) -> RequestCounter | None:
        return self.metrics  # type: ignore[no-any-return]

    def metrics_registry(self) -> Any:
        return self.metrics.registry

    def scheduler_snapshot(self) -> Snapshot:
        """What the scheduler would see now (caller holds the store lock): for `why`."""
        return build_snapshot(self.store)[0]

    def schedule_once(self, term: int = 0, retry_all: bool = True) -> int:
        """One scheduler pass now (tests and tools; the scheduler loop calls it too)."""
        return self.placer.schedule_once(term, retry_all)

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        self.metrics = MasterMetrics(self)
        self.audit = AuditLog(self.cfg.audit_log) if self.cfg.audit_log else None
        # One aio server on its own loop thread (rpc_loop.py): the Borglet link's Syncs wait
        # as coroutines; every other method runs in `rpc_pool` as the sync code it is, behind
        # the one authorization interceptor (auth.py's table).
        auth = AuthInterceptor(
            RULES,
            tls=self.cfg.tls is not None,
            audit=self.audit,
            closed_services=("borg.v1.Borgmaster",),
            denied=self.metrics.on_denied,
        )
        self.rpc_loop = RpcLoop()
        self.store.on_machines_changed = lambda names: self.rpc_loop.soon(
            self.sync_waiters.notify, names
        )

        async def build() -> grpc.aio.Server:
            server = grpc.aio.server(
                migration_thread_pool=self.rpc_pool,
                interceptors=[AioAuthInterceptor(auth, self.rpc_pool)],
                # A request over 4 MiB is refused by gRPC itself (RESOURCE_EXHAUSTED) before any
                # of it reaches a handler (SPEC part 2, Limits; a spec alone may be 1 MiB).
                options=[
                    ("grpc.so_reuseport", 0),
                    ("grpc.max_receive_message_length", 4 << 20),
                    *master_server_options(),  # the Link's keepalive (cfg/keepalive.py)
                ],
            )
            borg_pb2_grpc.add_BorgmasterServicer_to_server(MasterServicer(self), server)
            health_servicer = health.aio.HealthServicer()
            health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
            await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
            await health_servicer.set("borg.v1.Borgmaster", health_pb2.HealthCheckResponse.SERVING)
            names = (
                borg_pb2.DESCRIPTOR.services_by_name["Borgmaster"].full_name,
                health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
                reflection.SERVICE_NAME,
            )
            reflection.enable_server_reflection(names, server)
            return server

        server = self.rpc_loop.call(build())
        try:
            # A port in use is a clear one-line start-up failure (and Raft, already bound, is
            # released), not a RuntimeError traceback from grpcio.
            probe_bind(self.cfg.grpc, "grpc")
            probe_bind(self.cfg.http, "http")
            if self.cfg.dns:
                self.dns_server = DnsServer(self.cfg.dns, lambda: self.zone)
            try:
                if self.cfg.tls is not None:
                    bound = server.add_secure_port(self.cfg.grpc, server_credentials(self.cfg.tls))
                else:
                    bound = server.add_insecure_port(self.cfg.grpc)
            except RuntimeError:
                bound = 0
            if bound == 0:
                probe_bind(self.cfg.grpc, "grpc")
                raise OSError(f"grpc address {self.cfg.grpc}: cannot bind")
            self.rpc_loop.call(server.start())
            self.grpc_server = server
            self.rpc_loop.soon(self.link_streams.start)
            try:
                self.http_server = start_http(self)
            except OSError:
                probe_bind(self.cfg.http, "http")
                raise
        except OSError:
            self._abort_start(server)
            raise
        if self.dns_server is not None:
            self.dns_server.start()
        for loop in self.loops:
            loop.start()
        threading.Thread(target=self._announce_loop, name="announce", daemon=True).start()
        self.digest_check.start()
        log.info(
            "master %s up: raft %s grpc %s http %s dns %s peers %s",
            self.cfg.id,
            self.cfg.raft,
            self.cfg.grpc,
            self.cfg.http,
            self.cfg.dns or "-",
            ",".join(self.cfg.peers) or "-",
        )

    def _abort_start(self, server: grpc.aio.Server) -> None:
        """Undo a start that failed half-way, so the process can exit at once and a caller
        that retries in the same process finds the Raft port and journal released."""
        self._stop.set()
        try:
            self.rpc_loop.call(server.stop(None), timeout=5)
        except Exception as e:  # best effort: the start already failed with its reason
            log.debug("grpc stop after a failed start: %s", e)
        self.rpc_loop.close()
        self.rpc_pool.shutdown(wait=False, cancel_futures=True)
        self.link_pool.shutdown(wait=False, cancel_futures=True)
        self.grpc_server = None
        if self.dns_server is not None:
            self.dns_server.stop()
        if self.proposer is not None:
            self.proposer.stop()
        try:
            self.fsm.destroy_synchronous()
        except Exception as e:  # best effort: the start already failed with its reason
            log.debug("raft shutdown after a failed start: %s", e)

    def stop(self) -> None:
        """Graceful stop: stop taking requests, hand leadership to an up-to-date follower if
        we hold it (so the cell does not wait out an election), then close Raft's files."""
        self._stop.set()
        for loop in self.loops:
            loop.wake()
        with self.store.changed:  # event followers and long polls see `stopping` at once
            self.store.changed.notify_all()
        if self.grpc_server is not None:
            self.rpc_loop.soon(self.link_streams.stop)
            self.rpc_loop.soon(self.sync_waiters.notify, None)
            try:
                self.rpc_loop.call(self.grpc_server.stop(grace=0.5), timeout=3)
            except Exception as e:
                log.debug("grpc stop: %s", e)
            self.rpc_loop.close()
        # Idle handler threads go now (a process that starts replicas again, as the fault
        # tests do, would otherwise keep every stopped replica's threads).
        self.rpc_pool.shutdown(wait=False, cancel_futures=True)
        self.link_pool.shutdown(wait=False, cancel_futures=True)
        if self.proposer is not None:
            self.proposer.stop()
        if self.is_leader() and self.fsm.members():
            self.fsm.hand_over_leadership(deadline_s=2.0)
        if self.http_server is not None:
            self.http_server.shutdown()
        if self.dns_server is not None:
            self.dns_server.stop()
        self.fsm.destroy()
        log.info("master %s stopped", self.cfg.id)

    # ----- every replica -------------------------------------------------------------------

    def _announce_loop(self) -> None:
        """Make this replica's addresses known cell-wide so any replica can list all (every
        replica, not only the leader: it is not a leader loop)."""
        me = Replica(id=self.cfg.id, raft=self.cfg.raft, grpc=self.cfg.grpc, http=self.cfg.http)
        while not self._stop.wait(0.2):
            with self.store.lock:
                known = self.store.replicas.get(me.id)
            if known == me:
                self._stop.wait(5.0)
                continue
            if not self.fsm.leader():
                continue
            try:
                self.propose(C.RegisterReplica(replica=me), timeout=5)
            except ProposeError as e:
                log.debug("announce failed: %s", e)
