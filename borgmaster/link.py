"""The Borglet link: the master's side of the Sync protocol.

A Borglet syncs every second (a long poll: the reply comes early when its machine's desired
set changes). Each Sync carries its registration (address, capacity, attributes, taints,
accounts) and the full list of task copies it observes; the reply is the desired set.

Heartbeats are not writes: `last_seen` and the last usage report per task are leader-local
memory kept here, never in the store. Only changes become commands, decided by the pure
functions below (`registration`, `task_updates`) from the store and the request: a changed
registration, and one `TaskUpdates` per Sync that changed something. `BorgletLink.sync` is
the shell that proposes them and waits for the desired set.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

from borgmaster import commands as C
from borgmaster.convert import resources_from, struct_from
from borgmaster.copies import LiveCopies
from borgmaster.facade import ProposeError
from borgmaster.model import (
    ASSIGNED,
    MACHINE_LOST,
    RUNNING,
    TERMINAL_TASK_STATES,
    Machine,
    Resources,
    Taint,
    TaintEffect,
)
from borgmaster.rpc_loop import Waiters
from borgmaster.store import ACTIVE_STATES, Store
from cfg.schema import spec_to_config
from proto.borg.v1 import borg_pb2 as pb

log = logging.getLogger("borgmaster.link")

MAX_SYNC_WAIT_S = 5.0
"""The longest a Sync waits for the machine's desired set to change before replying, when
the Borglet asks for it (`wait_ms`)."""
TARGET_SYNCS_PER_S = 50.0
"""Idle heartbeats the leader aims at, cell-wide (Nomad keeps its servers under 50/s): a
waiting Sync is held up to machines / 50 s, so 10,000 idle machines cost ~1,250 Syncs/s at
the cap below instead of 10,000."""
MAX_HEARTBEAT_S = 8.0
"""The stretch's cap: under the Borglets' client deadline (their wait + 10 s) and well under
a machine timeout (30 s), so contact is seen at least every 8 s."""

TaskIndex = tuple[str, int]
SPEC_CACHE_MAX = 20_000
RECORD_BATCH = 256
"""Commands per Raft entry when a Link replica records many machines' reports at once (a
TaskUpdates of a busy machine is a few KiB: well under the 16 MiB an entry may be)."""


@dataclass(frozen=True)
class Observed:
    """One task copy as its Borglet reports it."""

    job: str
    index: int
    incarnation: str
    state: str
    restarts: int = 0
    exit_code: int | None = None
    reason: str = ""
    health: str = ""
    ports: Mapping[str, int] = field(default_factory=dict)

    @classmethod
    def from_pb(cls, o: pb.ObservedTask) -> Observed:
        return cls(
            job=o.job,
            index=int(o.index),
            incarnation=o.incarnation,
            state=o.state,
            restarts=o.restarts,
            exit_code=None if o.exit_code == -1 else o.exit_code,
            reason=o.reason,
            health=o.health,
            ports=dict(o.ports),
        )


class NotLeader(Exception):
    """This replica stopped leading while a Sync waited for the link's threads."""


# ----- pure: what a Sync changes ------------------------------------------------------------


MAX_GPUS = 64


def gpus_problem(request: pb.SyncRequest) -> str | None:
    """What is wrong with the GPU devices a Sync offers (None: nothing). They are device
    indices, distinct, as many as capacity.gpu: the master hands them to tasks and shows
    them, so a Borglet cannot slip anything else in."""
    gpus = list(request.gpus)
    if not gpus:
        return None  # an older Borglet names none: its count stands for 0..gpu-1
    if len(gpus) > MAX_GPUS:
        return f"gpus: at most {MAX_GPUS} devices, not {len(gpus)}"
    for g in gpus:
        if not (g.isascii() and g.isdigit() and len(g) <= 4):
            return f"gpus: {g!r:.20} is not a device index"
    if len(set(gpus)) != len(gpus):
        return "gpus: a device is listed twice"
    if request.capacity.gpu != len(gpus):
        return f"gpus: {len(gpus)} devices named but capacity.gpu is {request.capacity.gpu}"
    return None


def machine_from_sync(request: pb.SyncRequest) -> Machine:
    """The machine as its Borglet describes itself in a Sync (the API has checked each taint's
    effect; an unknown one raises ValueError)."""
    return Machine(
        name=request.machine,
        address=request.address,
        http=request.http,
        capacity=resources_from(request.capacity),
        attrs=dict(request.attrs),
        taints=[Taint(t.key, t.value, TaintEffect(t.effect)) for t in request.taints],
        task_users=list(request.task_users),
        gpus=list(request.gpus),
    )


def sync_wait_s(wait_ms: int, machines: int) -> float:
    """How long a Sync may wait for its machine's desired set to change: what the Borglet
    asks (a Borglet with something to report asks for 0: no wait), stretched with the cell's
    size. A change still answers at once, and a Borglet with news cancels its call, so the
    stretch costs no latency: it only thins out idle heartbeats."""
    if wait_ms <= 0:
        return 0.0
    asked = min(wait_ms / 1000.0, MAX_SYNC_WAIT_S)
    return max(asked, min(MAX_HEARTBEAT_S, machines / TARGET_SYNCS_PER_S))


def registration(store: Store, machine: Machine) -> C.RegisterMachine | None:
    """A RegisterMachine when the machine is new, lost, or describes itself differently than
    the store records; None otherwise. Caller holds the store lock."""
    old = store.machines.get(machine.name)
    same = (
        old is not None
        and old.state != MACHINE_LOST
        and (
            old.address,
            old.http,
            old.capacity,
            old.attrs,
            old.taints,
            old.task_users,
            old.gpus,
        )
        == (
            machine.address,
            machine.http,
            machine.capacity,
            machine.attrs,
            machine.taints,
            machine.task_users,
            machine.gpus,
        )
    )
    return None if same else C.RegisterMachine(machine=machine)


def task_updates(store: Store, machine: str, observed: Iterable[Observed]) -> C.TaskUpdates | None:
    """The diff of what a Borglet observes against the stored tasks of its machine, as one
    TaskUpdates (None when nothing changed). A task of a killed job that the Borglet no
    longer reports is killed. Copies the store does not assign to this machine (another
    incarnation, a forgotten task) are ignored: the desired set makes the Borglet kill
    them. Caller holds the store lock; `ts_ms` is left for the proposer to stamp."""
    seen = {(o.job, o.index, o.incarnation): o for o in observed}
    updates: list[C.TaskUpdate] = []
    for key in sorted(store.tasks_by_machine.get(machine, ())):
        t = store.tasks[key]
        if t.state in TERMINAL_TASK_STATES:
            continue
        o = seen.get((t.job, t.index, t.incarnation))
        if o is None:
            if store.jobs[t.job].killed and t.state in (ASSIGNED, RUNNING):
                updates.append(
                    C.TaskUpdate(t.job, t.index, t.incarnation, "killed", None, "", 0, "")
                )
            continue
        ports = dict(o.ports)
        if (o.state, o.restarts, o.exit_code, o.reason, o.health, ports) != (
            t.state,
            t.restarts,
            t.exit_code,
            t.reason,
            t.health,
            t.ports,
        ):
            updates.append(
                C.TaskUpdate(
                    t.job,
                    t.index,
                    t.incarnation,
                    o.state,
                    o.exit_code,
                    o.reason,
                    restarts=o.restarts,
                    health=o.health,
                    ports=ports,
                )
            )
    if not updates:
        return None
    return C.TaskUpdates(machine=machine, updates=updates)


# ----- the shell ----------------------------------------------------------------------------


class BorgletLink:
    """The leader's side of every Borglet's Sync, and its memory of them (not replicated)."""

    def __init__(
        self,
        store: Store,
        copies: LiveCopies,
        propose: Callable[[C.Command], dict[str, Any]],
        is_leader: Callable[[], bool],
        release_held: Callable[[], None],
        cell: str,
    ) -> None:
        self.store = store
        self.copies = copies
        self.propose = propose
        self.is_leader = is_leader
        self.release_held = release_held
        self.cell = cell
        self._lock = threading.Lock()
        self.last_seen: dict[str, float] = {}
        """machine -> monotonic time of its last Sync (leader memory)."""
        self.usage: dict[TaskIndex, Any] = {}
        """(job, index) -> the last ObservedTask its Borglet reported (usage, leader memory)."""
        self._specs: dict[tuple[str, int], tuple[Any, Any]] = {}
        """(job, version) -> (the JobSpec, its Struct): specs converted once per version."""

    def forget(self) -> None:
        """A new leader gives every Borglet one machine timeout to find it, from now."""
        with self._lock:
            self.last_seen.clear()

    def seen(self, machine: str) -> None:
        with self._lock:
            self.last_seen[machine] = time.monotonic()

    def last_seen_at(self, machine: str) -> float | None:
        with self._lock:
            return self.last_seen.get(machine)

    def sync(self, request: pb.SyncRequest) -> pb.SyncResponse:
        """Record what the Borglet sees, then reply with what it should run (after waiting,
        up to `wait_ms`, for its desired set to change). Raises ProposeError when a change
        could not be committed. The caller checks leadership and the machine name. (The
        blocking form: the server uses `sync_async`, which waits without a thread.)"""
        name = request.machine
        self.record(request)
        store = self.store
        wait_s = sync_wait_s(request.wait_ms, len(store.machines))
        deadline = time.monotonic() + wait_s
        with store.changed:
            while True:
                gen = store.machine_generation.get(name, 0)
                left = deadline - time.monotonic()
                if gen != request.known_generation or left <= 0 or not self.is_leader():
                    break
                store.changed.wait(min(left, 0.5))
        return self.reply(name, self._known(request), request.shared_specs)

    async def sync_async(
        self, request: pb.SyncRequest, pool: Executor, waiters: Waiters
    ) -> pb.SyncResponse:
        """`sync` on the aio server: recording and replying (store lock, proposals) run in
        `pool`; the wait for a change is a suspended coroutine woken by `waiters`, so a
        thousand waiting Borglets hold no thread."""
        loop = asyncio.get_running_loop()
        arrived = loop.time()
        name = request.machine
        self.seen(name)  # contact counts from arrival, however busy the pool is
        await loop.run_in_executor(pool, self.record, request)
        # The wait counts from arrival: time queued for the pool is not added to the hold
        # (the Borglet's deadline is its wait + 10 s).
        wait_s = sync_wait_s(request.wait_ms, len(self.store.machines))
        wait_s -= loop.time() - arrived
        if wait_s > 0:
            known = request.known_generation
            gens = self.store.machine_generation
            await waiters.wait(
                name, lambda: gens.get(name, 0) == known and self.is_leader(), wait_s
            )
        return await loop.run_in_executor(
            pool, self.reply, name, self._known(request), request.shared_specs
        )

    @staticmethod
    def _known(request: pb.SyncRequest) -> int | None:
        """The generation whose desired set the Borglet holds and may keep (None: it wants
        the full set)."""
        return request.known_generation if request.accepts_unchanged else None

    def record(self, request: pb.SyncRequest) -> None:
        """The Sync's registration and reports: commands for what changed (blocking).
        Raises NotLeader when this replica no longer leads: Syncs queued for the link's
        threads when the lead moved are redirected at once, instead of each blocking a
        thread on a proposal that cannot commit here (which made every queued Syncs miss its
        deadline after a leader change)."""
        if not self.is_leader():
            raise NotLeader()
        name = request.machine
        self.seen(name)
        store = self.store
        machine = machine_from_sync(request)
        with store.lock:
            reg = registration(store, machine)
        if reg is not None:
            self.propose(reg)
            log.info("machine %s registered from %s", machine.name, machine.address)
        observed = [Observed.from_pb(o) for o in request.tasks]
        for ob in request.tasks:
            self.usage[(ob.job, ob.index)] = ob
        if self.copies.observe(name, [(o.job, o.index, o.incarnation, o.state) for o in observed]):
            self.release_held()
        with store.lock:
            cmd = task_updates(store, name, observed)
        if cmd is not None:
            self.propose(cmd)

    def record_many(
        self, reports: list[pb.SyncRequest], pushed: list[list[tuple[str, int, str]]]
    ) -> list[str]:
        """Record many machines' reports (a Link replica's batch, blocking): their changes
        become one Batch Raft entry per MAX_BATCH commands instead of one entry per machine.
        `pushed[i]` are copies just pushed to machine i (alive until its next report).
        Returns the machines whose changes did not commit (to be sent again); a change the
        store refuses is logged, not retried (it would be refused again). Raises NotLeader."""
        if not self.is_leader():
            raise NotLeader()
        store = self.store
        cmds: list[C.Command] = []
        owners: list[str] = []
        release = False
        stamp = int(time.time() * 1000)
        with store.lock:
            for req in reports:
                name = req.machine
                self.seen(name)
                try:
                    machine = machine_from_sync(req)
                except ValueError as e:  # one machine's bad report must not hold up the rest
                    log.warning("report of %s not recorded: %s", name, e)
                    continue
                reg = registration(store, machine)
                if reg is not None:
                    cmds.append(reg)
                    owners.append(name)
                    log.info("machine %s registered from %s", name, req.address)
                observed = [Observed.from_pb(o) for o in req.tasks]
                for ob in req.tasks:
                    self.usage[(ob.job, ob.index)] = ob
                alive = [(o.job, o.index, o.incarnation, o.state) for o in observed]
                release |= self.copies.observe(name, alive)
                upd = task_updates(store, name, observed)
                if upd is not None:
                    cmds.append(upd)
                    owners.append(name)
        for req, keys in zip(reports, pushed, strict=True):
            if keys:
                self.copies.sent(req.machine, keys)
        if release:
            self.release_held()
        failed: set[str] = set()
        for at in range(0, len(cmds), RECORD_BATCH):
            part = cmds[at : at + RECORD_BATCH]
            who = owners[at : at + RECORD_BATCH]
            for c in part:
                c.ts_ms = stamp
            try:
                if len(part) == 1:
                    results: list[Any] = [self.propose(part[0])]
                else:
                    res = self.propose(C.Batch(entries=[C.encode(c) for c in part]))
                    results = list(res.get("results") or [])
            except ProposeError as e:
                log.debug("reports of %d machines not committed: %s", len(set(who)), e.message)
                failed.update(who)
                continue
            for name, r in zip(who, results, strict=False):
                if isinstance(r, dict) and "error" in r:
                    log.warning("report of %s refused: %s", name, r.get("message"))
        return sorted(failed)

    def reply(
        self, name: str, known: int | None = None, shared_specs: bool = False
    ) -> pb.SyncResponse:
        """The machine's desired set now, with the generation it stands for; just
        `unchanged` when that is the generation `known` the Borglet holds (an idle
        heartbeat: no task list built, encoded or decoded). With `shared_specs` each job
        version's spec goes once per reply (`specs`, referenced by `spec_ref`), not once per
        task: 100 tasks of a 1 MiB spec were a 100 MiB reply, over gRPC's 4 MiB default."""
        store = self.store
        with store.lock:
            gen = store.machine_generation.get(name, 0)
            if known is not None and known == gen:
                self.seen(name)
                return pb.SyncResponse(generation=gen, cell=self.cell, unchanged=True)
            desired = store.desired_for(name)
            self.copies.sent(name, [(t.job, t.index, t.incarnation) for t in desired])
            shared: dict[str, Any] = {}
            out = []
            for t in desired:
                # The spec of the task's own version: a task a rollout has not replaced yet
                # runs its old spec (a restarted Borglet must not start it with the new one).
                ref = f"{t.job}@{t.version}"
                spec = shared.get(ref)
                if spec is None:
                    spec = shared[ref] = self._spec_struct(t.job, t.version, store.task_spec(t))
                d = pb.DesiredTask(
                    job=t.job,
                    index=t.index,
                    incarnation=t.incarnation,
                    version=t.version,
                    gpus=t.gpus,
                )
                d.ports.update(t.ports)
                if shared_specs:
                    d.spec_ref = ref
                else:
                    d.spec.CopyFrom(spec)
                out.append(d)
        self.seen(name)
        resp = pb.SyncResponse(tasks=out, generation=gen, cell=self.cell)
        if shared_specs:
            for ref, spec in shared.items():
                resp.specs[ref].CopyFrom(spec)
        return resp

    def _spec_struct(self, job: str, version: int, spec: Any) -> Any:
        """The spec as a Struct, converted once per job version (and again only when the
        version's spec object is replaced in place): a reply of 10 tasks of one job cost
        10 conversions per Sync before, most of a busy master's CPU at 1,000 machines."""
        key = (job, version)
        hit = self._specs.get(key)
        if hit is not None and hit[0] is spec:
            return hit[1]
        if len(self._specs) > SPEC_CACHE_MAX:
            self._specs.clear()
        struct = struct_from(spec_to_config(spec))
        self._specs[key] = (spec, struct)
        return struct

    # ----- reads for the API ---------------------------------------------------------------

    def last_seen_ms(self, machine: str) -> int:
        """Wall-clock ms of the machine's last Sync to this leader, 0 when never."""
        seen = self.last_seen_at(machine)
        if seen is None:
            return 0
        return int(time.time() * 1000 - (time.monotonic() - seen) * 1000)

    def machine_usage(self, machine: str) -> Resources:
        """Live usage its Borglet reports for the tasks the store runs there (caller holds
        the store lock)."""
        r = Resources()
        for k in self.store.tasks_by_machine.get(machine, ()):
            t = self.store.tasks[k]
            u = self.usage.get(k)
            if u is None or t.state not in ACTIVE_STATES or u.incarnation != t.incarnation:
                continue
            r.cpu += u.cpu_seconds
            r.ram += u.memory_bytes
        return r
