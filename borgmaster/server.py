"""Composition root of a Borgmaster replica: Raft, the store, the API, HTTP and leader loops.

The leader-only loops (scheduler, machine liveness) run on every replica's threads but act
only while this replica is the Raft leader; they read the store, decide, and propose commands
like any client. Followers serve reads and forward writes (PySyncObj sends a command proposed
on a follower to the leader and calls back once the follower itself has applied it).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from concurrent import futures
from dataclasses import dataclass, field
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from borgmaster import commands as C
from borgmaster import controllers
from borgmaster.copies import LiveCopies
from borgmaster.fsm import (
    BorgFSM,
    DataDirError,
    RaftTuning,
    check_data_dir,
    fail_reason_name,
    own_raft_secret,
    probe_bind,
)
from borgmaster.metrics import placement_latencies, waiting_since_ms
from borgmaster.model import MACHINE_LOST, Replica
from borgmaster.proposer import Proposer
from borgmaster.scheduler import (
    BorgScheduler,
    MachineView,
    PlacedTask,
    Scheduler,
    Snapshot,
    TaskRequest,
)
from borgmaster.store import ACTIVE_STATES, Store
from proto.borg.v1 import borg_pb2, borg_pb2_grpc

log = logging.getLogger("borgmaster")

ROLE_NAMES = {0: "follower", 1: "candidate", 2: "leader"}
# Leader loops wait this long after a change before a pass, so bursts share one pass.
LOOP_MIN_INTERVAL_S = 0.005
# How often a follower's idle leader loops check whether it has become the leader.
FOLLOWER_POLL_S = 0.05


class ProposeError(Exception):
    """A write that did not commit: no leader, timeout, or rejected by the state machine."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_ms() -> int:
    return int(time.time() * 1000)


NO_LEADER_WAIT_S = 2.0
"""How long a write or consistent read waits for a leader to be elected before UNAVAILABLE."""


@dataclass
class MasterConfig:
    id: str
    raft: str
    grpc: str
    http: str
    data_dir: str
    peers: list[str] = field(default_factory=list)
    raft_secret: str | None = None
    cell: str = "borgcell"
    machine_timeout_s: float = 30.0
    tuning: RaftTuning = field(default_factory=RaftTuning)
    write_timeout_s: float = 10.0
    job_retention_s: float = 3600.0
    fsync: bool = False
    scheduler_policy: str = "hybrid"
    join: bool = False
    """Joining an existing cell: do not campaign until a leader has contacted this replica
    (once it has, recorded in the data dir, the flag has no effect)."""


class Master:
    """One Borgmaster replica."""

    def __init__(self, cfg: MasterConfig, scheduler: Scheduler | None = None) -> None:
        self.cfg = cfg
        self.store = Store()
        self.scheduler: Scheduler = scheduler or BorgScheduler(policy=cfg.scheduler_policy)
        self._stop = threading.Event()
        self._leader_since: float | None = None
        self.last_seen: dict[str, float] = {}  # machine -> monotonic time of its last Sync
        # Last usage report per task from its Borglet (leader memory; not replicated).
        self.usage: dict[tuple[str, int], Any] = {}
        self._fenced_term = 0  # the term whose LeaderElected this replica has committed
        self._sched_capacity = -1  # store.capacity_generation at the last scheduler pass
        # Copies the Borglets report alive, and pending tasks held back because another
        # incarnation of their index still runs somewhere (see copies.py).
        self.copies = LiveCopies()
        self._held: set[tuple[str, int]] = set()
        self._threads: list[threading.Thread] = []
        check_data_dir(cfg.data_dir, cfg.cell, cfg.id)
        if cfg.raft_secret is None:
            # No Raft without authentication (PySyncObj unpickles what reaches its port).
            if cfg.peers:
                raise DataDirError("a replica with peers needs a Raft secret")
            cfg.raft_secret = own_raft_secret(cfg.data_dir)
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
        )
        self.proposer = Proposer(self.fsm)
        self.grpc_server: grpc.Server | None = None
        self.http_server: Any = None
        self.metrics: Any = None

    # ----- Raft helpers ---------------------------------------------------------------------

    def _on_raft_state(self, old: int, new: int) -> None:
        if new == 2:
            self._leader_since = time.monotonic()
            self.last_seen.clear()
            # A new term's first pass looks at every pending task: what an earlier term of
            # this replica held back or found no room for is not in `new_pending` any more.
            self._sched_capacity = -1
            log.info("became leader (term %s)", self.fsm.raftCurrentTerm)
        elif new == 1:
            log.info("campaigning for leadership after term %s", self.fsm.raftCurrentTerm)
        if old == 2 and new != 2:
            self._leader_since = None
            self.copies.clear()
            with self.store.lock:  # should it lead again, its first pass looks at them
                self.store.new_pending |= self._held & self.store.pending
            self._held = set()
            proposer = getattr(self, "proposer", None)  # None while __init__ still runs
            if proposer is not None:
                n = proposer.abandon_in_flight()
                if n:
                    log.warning("answered %d in-flight writes as unavailable: leadership lost", n)
            log.info("lost leadership, now %s", ROLE_NAMES.get(new, new))

    def is_leader(self) -> bool:
        return bool(self.fsm._isLeader())

    def fenced_term(self) -> int:
        """The term to stamp on leader-loop commands, or 0 when this replica must not act.

        A new leader first commits LeaderElected(term); the store then rejects any fenced
        command from an older term, so a deposed leader's in-flight decisions are void."""
        if not self.is_leader():
            return 0
        term = int(self.fsm.raftCurrentTerm)
        if self._fenced_term == term:
            return term
        try:
            self.propose(C.LeaderElected(term=term, replica=self.cfg.id), timeout=5)
        except ProposeError as e:
            log.warning("could not fence term %d: %s", term, e.message)
            return 0
        self._fenced_term = term
        log.info("leader loops fenced at term %d", term)
        return term

    def leader_raft(self) -> str:
        leader = self.fsm._getLeader()
        return leader.address if leader is not None else ""

    def leader_grpc(self) -> str:
        addr = self.leader_raft()
        with self.store.lock:
            for r in self.store.replicas.values():
                if r.raft == addr:
                    return r.grpc
        return ""

    def ready(self) -> bool:
        """A leader is known and this replica has applied what it knows to be committed."""
        st = self.fsm.getStatus()
        return st["leader"] is not None and st["last_applied"] >= st["leader_commit_idx"]

    def propose(self, cmd: C.Command, timeout: float | None = None) -> dict[str, Any]:
        """Commit a command through Raft (group-committed with concurrent writes) and return
        the state machine's result."""
        if not cmd.ts_ms:
            cmd.ts_ms = now_ms()
        self._wait_for_a_leader()
        fut = self.proposer.submit(C.encode(cmd))
        return self._await(fut, timeout)

    def _wait_for_a_leader(self) -> None:
        """With no leader known, wait out one election (typically well under a second), then
        refuse: a replica cut off from the majority would otherwise hold the write until the
        write timeout (PySyncObj queues commands while there is no leader)."""
        deadline = time.monotonic() + NO_LEADER_WAIT_S
        while self.fsm._getLeader() is None:
            if time.monotonic() >= deadline or self._stop.is_set():
                raise ProposeError(
                    "unavailable", f"no leader elected within {NO_LEADER_WAIT_S:.0f} s"
                )
            time.sleep(0.01)

    def _await(self, fut: Any, timeout: float | None) -> dict[str, Any]:
        try:
            res, reason = fut.result(timeout or self.cfg.write_timeout_s)
        except TimeoutError:
            raise ProposeError("unavailable", "timed out waiting for the write to commit")
        if reason != 0 or res is None:
            name = fail_reason_name(reason) if isinstance(reason, int) else str(reason)
            leader = self.leader_grpc()
            hint = f" (leader: {leader})" if leader else " (no leader elected)"
            raise ProposeError("unavailable", f"write not committed: {name}{hint}")
        if "error" in res:
            raise ProposeError(res["error"], res["message"])
        return dict(res)

    def stopping(self) -> bool:
        return self._stop.is_set()

    def change_membership(self, raft: str, remove: bool) -> None:
        """Add or remove one replica (leader only); waits until the change commits."""
        done = threading.Event()
        result: list[Any] = []

        def cb(res: Any, err: int) -> None:
            result.append(err)
            done.set()

        if remove:
            if raft == self.cfg.raft:
                raise ProposeError("invalid", "a leader cannot remove itself; stop it instead")
            self.fsm.removeNodeFromCluster(raft, callback=cb)
        else:
            self.fsm.addNodeToCluster(raft, callback=cb)
        if not done.wait(self.cfg.write_timeout_s):
            raise ProposeError("unavailable", "membership change timed out")
        if result[0] != 0:
            raise ProposeError(
                "unavailable", f"membership change failed: {fail_reason_name(result[0])}"
            )
        log.info("membership: %s %s", "removed" if remove else "added", raft)

    def barrier(self, timeout: float = 5.0) -> None:
        """Linearizable read: wait for a (shared) no-op to commit, so this replica has applied
        every write acknowledged before the read began."""
        self._wait_for_a_leader()
        self._await(self.proposer.barrier(), timeout)

    def role(self) -> str:
        return ROLE_NAMES.get(self.fsm.getStatus()["state"], "unknown")

    def replica_info(self) -> borg_pb2.ReplicaInfo:
        st = self.fsm.getStatus()
        leader = st["leader"]
        return borg_pb2.ReplicaInfo(
            id=self.cfg.id,
            raft=self.cfg.raft,
            grpc=self.cfg.grpc,
            http=self.cfg.http,
            role=ROLE_NAMES.get(st["state"], "unknown"),
            term=st["raft_term"],
            commit_index=st["commit_idx"],
            applied_index=st["last_applied"],
            leader=leader.address if leader is not None else "",
        )

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        from borgmaster.api import MasterServicer
        from borgmaster.http import start_http
        from borgmaster.metrics import MasterMetrics

        self.metrics = MasterMetrics(self)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=64, thread_name_prefix="grpc"),
            options=[("grpc.so_reuseport", 0)],
        )
        borg_pb2_grpc.add_BorgmasterServicer_to_server(MasterServicer(self), server)
        health_servicer = health.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        health_servicer.set("borg.v1.Borgmaster", health_pb2.HealthCheckResponse.SERVING)
        names = (
            borg_pb2.DESCRIPTOR.services_by_name["Borgmaster"].full_name,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        )
        reflection.enable_server_reflection(names, server)
        try:
            # A port in use is a clear one-line start-up failure (and Raft, already bound, is
            # released), not a RuntimeError traceback from grpcio.
            probe_bind(self.cfg.grpc, "grpc")
            probe_bind(self.cfg.http, "http")
            try:
                bound = server.add_insecure_port(self.cfg.grpc)
            except RuntimeError:
                bound = 0
            if bound == 0:
                probe_bind(self.cfg.grpc, "grpc")
                raise OSError(f"grpc address {self.cfg.grpc}: cannot bind")
            server.start()
            self.grpc_server = server
            try:
                self.http_server = start_http(self)
            except OSError:
                probe_bind(self.cfg.http, "http")
                raise
        except OSError:
            self._abort_start(server)
            raise
        for fn, name in (
            (self._scheduler_loop, "scheduler"),
            (self._controller_loop, "controllers"),
            (self._liveness_loop, "liveness"),
            (self._announce_loop, "announce"),
        ):
            th = threading.Thread(target=self._guard(fn), name=name, daemon=True)
            th.start()
            self._threads.append(th)
        log.info(
            "master %s up: raft %s grpc %s http %s peers %s",
            self.cfg.id,
            self.cfg.raft,
            self.cfg.grpc,
            self.cfg.http,
            ",".join(self.cfg.peers) or "-",
        )

    def _abort_start(self, server: grpc.Server) -> None:
        """Undo a start that failed half-way, so the process can exit at once and a caller
        that retries in the same process finds the Raft port and journal released."""
        self._stop.set()
        server.stop(grace=None)
        self.grpc_server = None
        self.proposer.stop()
        try:
            self.fsm.destroy_synchronous()
        except Exception as e:  # best effort: the start already failed with its reason
            log.debug("raft shutdown after a failed start: %s", e)

    def _guard(self, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            while not self._stop.is_set():
                try:
                    fn()
                    return
                except Exception:
                    log.exception("%s loop crashed; restarting it", fn.__name__)
                    self._stop.wait(1.0)

        return run

    def stop(self) -> None:
        """Graceful stop: stop taking requests, hand leadership to an up-to-date follower if
        we hold it (so the cell does not wait out an election), then close Raft's files."""
        self._stop.set()
        with self.store.changed:
            self.store.changed.notify_all()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5).wait(2)
        self.proposer.stop()
        if self.is_leader() and self.fsm.otherNodes:
            self._hand_over_leadership(deadline_s=2.0)
        if self.http_server is not None:
            self.http_server.shutdown()
        self.fsm.destroy()
        log.info("master %s stopped", self.cfg.id)

    def _hand_over_leadership(self, deadline_s: float) -> None:
        """PySyncObj refuses a transfer while the target lags by even one entry: retry until
        leadership has moved or the deadline passes."""
        deadline = time.monotonic() + deadline_s
        while self.is_leader() and time.monotonic() < deadline:
            try:
                self.fsm.transferLeadership(callback=lambda res, err: None)
            except Exception as e:
                log.warning("leadership transfer failed: %s", e)
                return
            until = time.monotonic() + 0.1
            while self.is_leader() and time.monotonic() < until:
                time.sleep(0.01)
        if self.is_leader():
            log.warning("leadership not handed over within %.1f s; exiting anyway", deadline_s)
            return
        # Stepping down only means a candidate with a higher term exists: wait (within the
        # same deadline) until this replica sees the new leader, so the log says who took
        # over and the election is not left to run while nobody serves.
        while time.monotonic() < deadline:
            new = self.leader_raft()
            if new and new != self.cfg.raft:
                log.info("leadership handed over to %s", new)
                return
            time.sleep(0.01)
        log.warning("stepped down, but no new leader was seen within %.1f s", deadline_s)

    # ----- leader loops -------------------------------------------------------------------

    def _announce_loop(self) -> None:
        """Make this replica's addresses known cell-wide so any replica can list all."""
        me = Replica(id=self.cfg.id, raft=self.cfg.raft, grpc=self.cfg.grpc, http=self.cfg.http)
        while not self._stop.wait(0.2):
            with self.store.lock:
                known = self.store.replicas.get(me.id)
            if known == me:
                self._stop.wait(5.0)
                continue
            if self.fsm._getLeader() is None:
                continue
            try:
                self.propose(C.RegisterReplica(replica=me.to_dict()), timeout=5)
            except ProposeError as e:
                log.debug("announce failed: %s", e)

    def _scheduler_loop(self) -> None:
        seen = -1
        while not self._stop.is_set():
            if not self.is_leader():
                self._stop.wait(FOLLOWER_POLL_S)  # followers only watch for promotion
                continue
            gen = self.store.wait_changed(seen, timeout=1.0)
            if gen == seen:
                continue
            self._stop.wait(LOOP_MIN_INTERVAL_S)  # let a burst of writes land in one pass
            gen = self.store.generation
            term = self.fenced_term()
            if not term:
                continue
            seen = gen
            try:
                self.schedule_once(term, retry_all=False)
            except ProposeError as e:
                log.warning("plan not committed: %s", e.message)

    def _controller_loop(self) -> None:
        """Rolling updates and drains (replace tasks within max_unavailable), and job GC."""
        seen = -1
        last_gc = 0.0
        while not self._stop.is_set():
            if not self.is_leader():
                self._stop.wait(FOLLOWER_POLL_S)
                continue
            gen = self.store.wait_changed(seen, timeout=1.0)
            self._stop.wait(LOOP_MIN_INTERVAL_S)
            gen = self.store.generation
            term = self.fenced_term()
            if not term:
                continue
            seen = gen
            with self.store.lock:
                actions = controllers.plan_all(self.store, now_ms())
            for a in actions:
                try:
                    if a.rollout_status is not None:
                        self.propose(
                            C.SetRollout(
                                job=a.job, version=a.version, status=a.rollout_status, term=term
                            )
                        )
                        log.warning("job %s: rollout %s", a.job, a.rollout_status)
                    if a.replace_drain:
                        self.propose(
                            C.ReplaceTasks(
                                job=a.job, tasks=a.replace_drain, reason="drained", term=term
                            )
                        )
                    if a.replace_update:
                        self.propose(
                            C.ReplaceTasks(
                                job=a.job, tasks=a.replace_update, reason="updated", term=term
                            )
                        )
                        log.info(
                            "job %s: rolling %d task(s) to version %d",
                            a.job,
                            len(a.replace_update),
                            a.version,
                        )
                except ProposeError as e:
                    log.warning("controller write for %s not committed: %s", a.job, e.message)
            if time.monotonic() - last_gc > 10:
                last_gc = time.monotonic()
                with self.store.lock:
                    names = controllers.gc_candidates(
                        self.store, now_ms(), int(self.cfg.job_retention_s * 1000)
                    )
                if names:
                    try:
                        self.propose(C.GcJobs(names=names, term=term))
                        log.info("garbage-collected jobs: %s", ", ".join(names))
                    except ProposeError as e:
                        log.warning("gc not committed: %s", e.message)

    def snapshot(
        self, only: set[tuple[str, int]] | None = None
    ) -> tuple[Snapshot, dict[tuple[str, int], str]]:
        """What the scheduler sees (caller holds the store lock), and current pending reasons.
        `only` limits the pending tasks to those keys."""
        store = self.store
        keys = store.pending if only is None else (store.pending & only)
        pending = []
        reasons = {}
        for key in sorted(keys):
            t = store.tasks[key]
            j = store.jobs[t.job]
            pending.append(TaskRequest(job=t.job, index=t.index, version=j.version, spec=j.spec))
            reasons[key] = t.reason
        running = [
            PlacedTask(
                job=t.job,
                index=t.index,
                machine=t.machine,
                priority=store.jobs[t.job].spec.priority,
                requirements=store.task_spec(t).requirements,
                incarnation=t.incarnation,
            )
            for keys_on in store.tasks_by_machine.values()
            for k in keys_on
            if (t := store.tasks[k]).state in ACTIVE_STATES
        ]
        machines = [
            MachineView(
                name=m.name,
                capacity=m.capacity,
                used=store.used(m.name),
                attrs=dict(m.attrs),
                taints=list(m.taints),
                state=m.state,
            )
            for m in store.machines.values()
        ]
        return Snapshot(machines=machines, pending=pending, running=running), reasons

    def schedule_once(self, term: int = 0, retry_all: bool = True) -> int:
        """One scheduler pass: snapshot, plan, commit. Returns how many tasks it placed.

        Tasks that found no machine are retried only when capacity may have appeared
        (`store.capacity_generation` moved); otherwise a pass looks only at tasks that
        (re)entered the queue since the last one (`store.take_new_pending`), so a steady
        stream of submissions neither re-scores a large unplaceable backlog nor pays
        O(pending) set arithmetic per pass, and a pass with nothing new writes nothing."""
        store = self.store
        with store.lock:
            if not store.pending:
                store.take_new_pending()
                return 0
            if self._sched_capacity != store.capacity_generation:
                retry_all = True
            self._sched_capacity = store.capacity_generation
            only = store.take_new_pending()
            if retry_all:
                snap, reasons = self.snapshot(None)
            elif not only:
                return 0
            else:
                snap, reasons = self.snapshot(only)
            snap, held = self._hold_back(snap, reasons)
            waiting = {
                (t.job, t.index): waiting_since_ms(store.tasks[(t.job, t.index)])
                for t in snap.pending
            }
        if not snap.pending and not held:
            return 0
        t0 = time.monotonic()
        try:
            plan = self.scheduler.schedule(snap, _new_id)
        except Exception:
            self._requeue(snap)
            raise
        elapsed = time.monotonic() - t0
        failed = {(j, i) for j, i, _ in plan.failures}
        failures = [[j, i, r] for j, i, r in plan.failures if reasons.get((j, i)) != r]
        failures += held
        if not plan.placements and not failures and not plan.preemptions:
            self._requeue(snap, failed)
            return 0
        cmd = C.ApplyPlan(
            placements=[p.__dict__ for p in plan.placements],
            failures=failures,
            preemptions=[p.__dict__ for p in plan.preemptions],
            term=term,
        )
        try:
            res = self.propose(cmd)  # stamps cmd.ts_ms
        except ProposeError:
            self._requeue(snap)  # nothing committed: look at all of them again next pass
            raise
        # Tasks that found no machine wait for capacity; the rest (placements the store
        # rejected, tasks the pass left alone) are looked at again next pass.
        self._requeue(snap, failed)
        if self.metrics is not None:
            self.metrics.on_plan(len(plan.placements), res.get("placed", 0), elapsed)
            self.metrics.on_preempted(int(res.get("preempted", 0)))
            with self.store.lock:
                lat = placement_latencies(self.store, plan.placements, waiting, cmd.ts_ms)
            self.metrics.on_placed(lat)
        if plan.placements:
            log.info(
                "scheduler placed %d of %d pending tasks in %.1f ms",
                res.get("placed", 0),
                len(snap.pending),
                elapsed * 1000,
            )
        return int(res.get("placed", 0))

    def _hold_back(
        self, snap: Snapshot, reasons: dict[tuple[str, int], str]
    ) -> tuple[Snapshot, list[list[Any]]]:
        """Take out of the pass every pending task whose index still has a live copy on a
        machine that is not lost; they wait in `_held` until a Sync shows that copy gone.
        Returns the rest, and the pending reasons to record for the held ones."""
        if not snap.pending:
            return snap, []
        lost = {m.name for m in snap.machines if m.state == MACHINE_LOST}
        since = self._leader_since
        learning = (
            since is not None
            and time.monotonic() - since < self.cfg.machine_timeout_s
            and not self.copies.heard_from(m.name for m in snap.machines if m.state != MACHINE_LOST)
        )
        keep: list[TaskRequest] = []
        held: list[list[Any]] = []
        for tr in snap.pending:
            key = (tr.job, tr.index)
            where = self.copies.elsewhere(key, lost)
            if not where and learning and _may_have_a_copy(reasons.get(key, "")):
                where = "an unreported machine"
            if not where:
                keep.append(tr)
                continue
            self._held.add(key)
            why = f"waiting for its previous copy on {where} to stop"
            if reasons.get(key) != why:
                held.append([tr.job, tr.index, why])
        if len(keep) == len(snap.pending):
            return snap, held
        return Snapshot(machines=snap.machines, pending=keep, running=snap.running), held

    def release_held(self) -> None:
        """A copy went away (or its machine was lost): let the scheduler look again at the
        tasks it held back, now rather than at the next unrelated change."""
        store = self.store
        with store.changed:
            if not self._held:
                return
            store.new_pending |= self._held & store.pending
            self._held = set()
            store.generation += 1  # local wake-up counter, not replicated state
            store.changed.notify_all()

    def _requeue(self, snap: Snapshot, failed: Iterable[tuple[str, int]] = ()) -> None:
        """Put a pass's tasks that are still pending, except `failed`, back among the new
        ones, so the next pass tries them again. O(tasks in the pass)."""
        store = self.store
        keys = {(t.job, t.index) for t in snap.pending}
        keys.difference_update(failed)
        if not keys:
            return
        with store.lock:
            store.new_pending |= keys & store.pending

    def _liveness_loop(self) -> None:
        """Mark machines lost after `machine_timeout_s` without a Sync (leader only)."""
        timeout = self.cfg.machine_timeout_s
        while not self._stop.wait(min(1.0, timeout / 4)):
            since = self._leader_since
            if since is None or not self.is_leader():
                continue
            now = time.monotonic()
            if now - since < timeout:
                continue  # a new leader first gives every Borglet one timeout to find it
            with self.store.lock:
                candidates = [m.name for m in self.store.machines.values() if m.state != "lost"]
            for name in candidates:
                seen = self.last_seen.get(name, since)
                if now - seen > timeout:
                    term = self.fenced_term()
                    if not term:
                        break
                    log.warning("machine %s lost: no contact for %.0f s", name, now - seen)
                    try:
                        self.propose(C.MachineLost(name=name, term=term))
                    except ProposeError as e:
                        log.warning("could not mark %s lost: %s", name, e.message)
                        continue
                    self.copies.forget(name)
                    self.release_held()


def _may_have_a_copy(reason: str) -> bool:
    """A pending task whose last copy may still run: replaced (rollout, drain), preempted, or
    already held back for its previous copy (reasons the store and the scheduler record)."""
    return (
        reason in ("updated", "drained")
        or reason.startswith("preempted")
        or reason.startswith("waiting for its previous copy")
    )


def _call(obj: Any, method: str, *args: Any) -> None:
    fn = getattr(obj, method, None)
    if fn is not None:
        fn(*args)


def _new_id() -> str:
    return uuid.uuid4().hex[:12]
