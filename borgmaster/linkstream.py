"""The Borglet link as one long-lived stream per Borglet, served by any replica (link shards).

Why: with the unary Sync every Borglet re-sent its full observed set and re-registered at
every heartbeat, and only the leader answered, so the leader's CPU decided how large a cell
could be (docs/PERFORMANCE.md, "Scale"). On a `Link` stream:

- up, the first message (`hello`) registers the machine and carries its full observed set;
  after that only changed tasks, removals and tiny heartbeats travel. The serving replica
  keeps the machine's full observed set (`LinkSession.observed`), so what the master records
  is still level-triggered: the same pure diff (`link.task_updates`) over the whole set, run
  only when something changed, never for a heartbeat;
- down, the replica pushes only changes of the machine's desired set (upserts and removes
  against what this stream already sent), each job version's spec once per stream, and the
  full set on connect;
- any replica serves: the desired set comes from its own replicated store (woken by its own
  apply through `Waiters`); the writes the reports produce are recorded by the leader — on
  the leader directly, from a follower through one batched `RelayLink` call every
  `RELAY_EVERY_S` (which also carries the machines it heard from: liveness is the union of
  every replica's summaries, so a Borglet moving between replicas is never lost).

Reports are acknowledged (`acked_seq`) only once the leader recorded them: a Borglet forgets
a finished task only after the cell has heard of its end (as after a Sync's reply).

`LinkSession`, `merge_report`, `desired_delta` and `relay_chunks` are pure; `LinkStreams` is
the shell on the replica's event loop (rpc_loop.py).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Callable, Iterable, Mapping
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import grpc

from borgmaster.link import MAX_HEARTBEAT_S, TARGET_SYNCS_PER_S, BorgletLink, NotLeader
from borgmaster.rpc_loop import Waiters
from borgmaster.store import Store
from cfg.grpcauth import secure_channel
from cfg.tls import TlsDir
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borgmaster.link")

Key = tuple[str, int, str]
"""A task copy: job, index, incarnation."""
Signature = tuple[int, tuple[tuple[str, int], ...], tuple[str, ...]]
"""What a Borglet holds of a desired task besides its key: version, ports, GPUs."""

MAX_LINK_TASKS = 10_000
"""Task copies one machine may report (in one message, and held for it): a machine running
more than this is not a machine this cell was built for, and each copy costs master memory."""
MAX_GONE = 10_000
MIN_HEARTBEAT_S = 1.0
RELAY_EVERY_S = 0.05
"""How often a replica hands the reports it gathered to the leader (or records them, on the
leader): a burst of reports from many machines becomes one call and few Raft entries."""
SUMMARY_EVERY_S = 1.0
"""How often a follower tells the leader which machines it heard from (even with nothing to
report): well inside a machine timeout (30 s)."""
SEEN_WITHIN_S = 2 * MAX_HEARTBEAT_S + 1.0
"""A stream counts as live in a summary while its Borglet spoke within this long (two of
its longest heartbeats)."""
RELAY_CHUNK_BYTES = 2 << 20
"""One RelayLink call carries at most about this many bytes of reports (gRPC refuses a
message over 4 MiB)."""
RETRY_S = 0.5


CATCH_UP_S = 5.0
"""How long a Link stream's open waits for its replica to catch up before refusing it."""
CATCH_UP_POLL_S = 0.05


async def wait_serving(
    unserving: Callable[[int], str], machine: str, min_index: int, wait_s: float = CATCH_UP_S
) -> str:
    """Wait (up to `wait_s`) until a replica may serve `machine`'s stream: a leader known
    and applied (a leader's own term fenced), and at least `min_index` applied (the Borglet's
    last desired set came from there). A replica that restarted or lags would otherwise push
    an older desired set, and the Borglet would stop tasks the cell wants. Returns "" to
    serve, else why not (the Borglet tries another replica). A replica caught up with its
    leader but still below `min_index` at the deadline serves anyway: the cell was restored
    from an older backup, and its state is the truth now."""
    deadline = time.monotonic() + wait_s
    while True:
        why = unserving(min_index)
        if not why:
            return ""
        if time.monotonic() >= deadline:
            if unserving(0):
                return why
            log.warning("serving %s although %s (a cell restored from a backup?)", machine, why)
            return ""
        await asyncio.sleep(CATCH_UP_POLL_S)


def key_of(t: pb.ObservedTask | pb.TaskKey) -> Key:
    return (t.job, int(t.index), t.incarnation)


def heartbeat_s(machines: int) -> float:
    """The Borglets' idle heartbeat period: stretched with the cell's size so the cell sees
    about TARGET_SYNCS_PER_S of them (Nomad's rule), between 1 s and MAX_HEARTBEAT_S."""
    return max(MIN_HEARTBEAT_S, min(MAX_HEARTBEAT_S, machines / TARGET_SYNCS_PER_S))


# ----- pure -----------------------------------------------------------------------------------


@dataclass
class LinkSession:
    """One Borglet's stream as its replica sees it."""

    machine: str
    hello: pb.SyncRequest = field(default_factory=pb.SyncRequest)
    """The registration (its `tasks` left empty: `observed` holds them)."""
    observed: dict[Key, pb.ObservedTask] = field(default_factory=dict)
    """The Borglet's full observed set: its hello's tasks with every later change merged."""
    seq: int = 0
    """The last report's number."""
    acked: int = 0
    """Reports up to this seq are recorded in the cell."""
    acked_sent: int = 0
    """The acked seq last told to the Borglet."""
    sent: dict[Key, Signature] = field(default_factory=dict)
    """The desired set as this stream has sent it."""
    specs_sent: set[str] = field(default_factory=set)
    generation: int = -1
    """The generation of the desired set last pushed (-1: nothing pushed yet)."""
    pushed: list[Key] = field(default_factory=list)
    """Copies pushed since the last recorded report (alive to the leader until its next)."""
    want_full_report: bool = False
    last_up: float = 0.0
    """Monotonic time of the last message from the Borglet."""
    closed: bool = False
    error: str = ""

    def report(self) -> pb.SyncRequest:
        """The machine's registration and full observed set, as a Sync would carry them."""
        req = pb.SyncRequest()
        req.CopyFrom(self.hello)
        req.tasks.extend(self.observed.values())
        return req


def merge_report(s: LinkSession, up: pb.LinkUp) -> tuple[bool, str]:
    """Merge one message into the session: (whether it reported anything, error). A
    registration replaces the observed set; changes and removals update it. An error means
    the message breaks the protocol (the stream is refused)."""
    if up.seq and up.seq <= s.seq:
        return False, f"seq: {up.seq} after {s.seq} (reports are numbered upwards)"
    if len(up.changed) > MAX_LINK_TASKS or len(up.gone) > MAX_GONE:
        return False, f"a report may carry at most {MAX_LINK_TASKS} tasks"
    reported = False
    if up.HasField("hello"):
        if up.hello.machine != s.machine:
            return False, f"hello: machine {up.hello.machine!r:.60} on {s.machine!r}'s stream"
        if len(up.hello.tasks) > MAX_LINK_TASKS:
            return False, f"hello: at most {MAX_LINK_TASKS} tasks, not {len(up.hello.tasks)}"
        s.hello = pb.SyncRequest()
        s.hello.CopyFrom(up.hello)
        del s.hello.tasks[:]
        s.observed = {key_of(o): o for o in up.hello.tasks}
        s.want_full_report = False
        reported = True
    for o in up.changed:
        s.observed[key_of(o)] = o
        reported = True
    for g in up.gone:
        if s.observed.pop(key_of(g), None) is None:
            s.want_full_report = True  # our copy of its set differs from the Borglet's
        reported = True
    if len(s.observed) > MAX_LINK_TASKS:
        return False, f"the machine reports more than {MAX_LINK_TASKS} tasks"
    if up.seq:
        s.seq = up.seq
    return reported, ""


def signature(version: int, ports: Mapping[str, int], gpus: Iterable[str]) -> Signature:
    return (version, tuple(sorted(ports.items())), tuple(gpus))


def desired_delta(
    sent: Mapping[Key, Signature], now: Mapping[Key, Signature], full: bool
) -> tuple[list[Key], list[Key]]:
    """(upserts, removes) that bring a Borglet holding `sent` to `now` (everything, with no
    removes, when `full`)."""
    if full:
        return sorted(now), []
    upserts = sorted(k for k, sig in now.items() if sent.get(k) != sig)
    removes = sorted(k for k in sent if k not in now)
    return upserts, removes


def relay_chunks(
    items: list[tuple[pb.SyncRequest, list[Key]]], limit: int = RELAY_CHUNK_BYTES
) -> list[list[tuple[pb.SyncRequest, list[Key]]]]:
    """Split reports into groups of about `limit` bytes each (never an empty group)."""
    out: list[list[tuple[pb.SyncRequest, list[Key]]]] = []
    cur: list[tuple[pb.SyncRequest, list[Key]]] = []
    size = 0
    for item in items:
        n = item[0].ByteSize() + 40 * len(item[1])
        if cur and size + n > limit:
            out.append(cur)
            cur, size = [], 0
        cur.append(item)
        size += n
    if cur:
        out.append(cur)
    return out


# ----- the shell ------------------------------------------------------------------------------


@dataclass
class _Pending:
    session: LinkSession
    seq: int
    report: pb.SyncRequest
    pushed: list[Key]


class LinkStreams:
    """Every Link stream this replica serves, and the relay of their reports to the leader."""

    def __init__(
        self,
        store: Store,
        link: BorgletLink,
        waiters: Waiters,
        pool: Executor,
        is_leader: Callable[[], bool],
        leader_grpc: Callable[[], str],
        own_grpc: str,
        tls: TlsDir | None,
        cell: str,
        unserving: Callable[[int], str] = lambda _min_index: "",
    ) -> None:
        self.store = store
        self.unserving = unserving
        """Why this replica must not serve a Borglet that acted on log index `min_index` yet
        ("" when it may): see `wait_serving`."""
        self.link = link
        self.waiters = waiters
        self.pool = pool
        self.is_leader = is_leader
        self.leader_grpc = leader_grpc
        self.own_grpc = own_grpc
        self.tls = tls
        self.cell = cell
        self.sessions: dict[str, LinkSession] = {}
        self._pending: dict[str, _Pending] = {}
        self._kick: asyncio.Event | None = None
        self._channels: dict[str, grpc.Channel] = {}
        self._task: asyncio.Task[None] | None = None
        self._recorder = ""
        """The replica that records this one's reports (the leader, as last seen)."""
        self.relayed = 0
        """Reports handed to the leader by RelayLink (a follower's count)."""

    # ----- the stream ---------------------------------------------------------------------

    async def wait_serving(self, machine: str, min_index: int) -> str:
        """`wait_serving` with this replica's own judgement."""
        return await wait_serving(self.unserving, machine, min_index)

    def open(self, machine: str) -> LinkSession:
        """A new stream for `machine`; one it had on this replica before is closed."""
        old = self.sessions.get(machine)
        if old is not None:
            old.closed = True
        s = LinkSession(machine=machine, last_up=time.monotonic())
        self.sessions[machine] = s
        self.waiters.notify([machine])
        return s

    def close(self, s: LinkSession) -> None:
        s.closed = True
        if self.sessions.get(s.machine) is s:
            del self.sessions[s.machine]
        self.waiters.notify([s.machine])

    def received(self, s: LinkSession, up: pb.LinkUp) -> None:
        """One message from the Borglet (after the first): merge it, queue what it reports.
        Raises ValueError when it breaks the protocol."""
        s.last_up = time.monotonic()
        if self.is_leader():
            self.link.seen(s.machine)
        reported, err = merge_report(s, up)
        if err:
            raise ValueError(err)
        if reported:
            self.queue(s)

    def queue(self, s: LinkSession) -> None:
        """Record the session's report (its latest state: queued reports of one machine
        merge into one)."""
        self._pending[s.machine] = _Pending(s, s.seq, s.report(), s.pushed)
        s.pushed = []
        if self._kick is not None:
            self._kick.set()

    async def serve(self, first: pb.LinkUp, requests: AsyncIterator[pb.LinkUp]) -> Any:
        """The stream after its first message (checked by the API): yields LinkDowns until
        the Borglet goes or another stream of its machine replaces this one."""
        name = first.hello.machine
        s = self.open(name)
        loop = asyncio.get_running_loop()
        try:
            _, err = merge_report(s, first)
            if err:
                raise ValueError(err)
            if self.is_leader():
                self.link.seen(name)
            self.queue(s)
            reader = asyncio.ensure_future(self._read(s, requests))
            try:
                full = True
                while not s.closed:
                    down = await loop.run_in_executor(self.pool, self.push, s, full)
                    full = False
                    if down is not None:
                        yield down
                    await self.waiters.wait(
                        name, lambda: self._idle(s), heartbeat_s(len(self.store.machines)) * 4
                    )
            finally:
                reader.cancel()
        finally:
            self.close(s)
        if s.error:
            raise ValueError(s.error)

    def _idle(self, s: LinkSession) -> bool:
        """Nothing to send: the desired set is the one pushed, acks are told, no request."""
        return (
            not s.closed
            and s.acked == s.acked_sent
            and not s.want_full_report
            and self.store.machine_generation.get(s.machine, 0) == s.generation
        )

    async def _read(self, s: LinkSession, requests: AsyncIterator[pb.LinkUp]) -> None:
        try:
            async for up in requests:
                if s.closed:
                    return
                try:
                    self.received(s, up)
                except ValueError as e:
                    s.error = str(e)
                    return
        except (grpc.RpcError, asyncio.CancelledError):
            pass
        except Exception as e:  # never let a stream's reader take the server down
            log.warning("link stream of %s: %s", s.machine, e)
        finally:
            s.closed = True
            self.waiters.notify([s.machine])

    def push(self, s: LinkSession, full: bool) -> pb.LinkDown | None:
        """What the Borglet must hear now (blocking: store lock): the desired set's changes
        since the last push (all of it when `full`), the acked seq, a request for a full
        report; None when there is nothing."""
        store = self.store
        name = s.machine
        with store.lock:
            gen = store.machine_generation.get(name, 0)
            down = pb.LinkDown(
                generation=gen, cell=self.cell, acked_seq=s.acked, as_of_index=store.applied_index
            )
            down.heartbeat_ms = int(heartbeat_s(len(store.machines)) * 1000)
            if full or gen != s.generation:
                desired = {(t.job, t.index, t.incarnation): t for t in store.desired_for(name)}
                now = {k: signature(t.version, t.ports, t.gpus) for k, t in desired.items()}
                upserts, removes = desired_delta(s.sent, now, full)
                for k in upserts:
                    t = desired[k]
                    ref = f"{t.job}@{t.version}"
                    if ref not in s.specs_sent:
                        spec = self.link._spec_struct(t.job, t.version, store.task_spec(t))
                        down.specs[ref].CopyFrom(spec)
                        s.specs_sent.add(ref)
                    d = pb.DesiredTask(
                        job=t.job,
                        index=t.index,
                        incarnation=t.incarnation,
                        version=t.version,
                        gpus=t.gpus,
                        spec_ref=ref,
                    )
                    d.ports.update(t.ports)
                    down.upserts.append(d)
                down.removes.extend(
                    pb.TaskKey(job=j, index=i, incarnation=c) for j, i, c in removes
                )
                down.full = full
                s.sent = now
                s.generation = gen
                if upserts:
                    if self.is_leader():
                        self.link.copies.sent(name, upserts)
                    else:
                        s.pushed.extend(upserts)
                changed = full or bool(upserts or removes)
            else:
                changed = False
        if s.want_full_report:
            down.want_full_report = True
            changed = True
        if not changed and s.acked == s.acked_sent:
            return None
        s.acked_sent = down.acked_seq
        return down

    # ----- recording the reports ----------------------------------------------------------

    def start(self) -> None:
        """Start the relay (on the loop)."""
        self._kick = asyncio.Event()
        self._task = asyncio.ensure_future(self._relay_loop())

    def stop(self) -> None:
        """The replica stops (on the loop): every stream ends, the relay stops."""
        if self._task is not None:
            self._task.cancel()
        for s in list(self.sessions.values()):
            s.closed = True
        self.waiters.notify(None)

    async def _relay_loop(self) -> None:
        assert self._kick is not None
        last_summary = 0.0
        loop = asyncio.get_running_loop()
        while True:
            try:
                await asyncio.wait_for(self._kick.wait(), SUMMARY_EVERY_S)
            except TimeoutError:
                pass
            self._kick.clear()
            recorder = self.own_grpc if self.is_leader() else self.leader_grpc()
            if recorder != self._recorder:
                # A new leader knows nothing of these machines' tasks (its live copies are
                # empty): every stream here reports its full set to it once, as every
                # Borglet re-reported with its next Sync before.
                self._recorder = recorder
                for sess in self.sessions.values():
                    if sess.hello.machine:
                        self.queue(sess)
            items = list(self._pending.values())
            self._pending.clear()
            summary_due = loop.time() - last_summary >= SUMMARY_EVERY_S
            if not items and not (summary_due and not self.is_leader()):
                continue
            try:
                failed = await self._record(items, summary_due)
                if summary_due:
                    last_summary = loop.time()
            except Exception as e:  # the leader is away or changing: try again shortly
                log.warning("recording %d reports failed: %s: %s", len(items), type(e).__name__, e)
                failed = items
            retry = {id(p) for p in failed}
            for p in failed:
                self._pending.setdefault(p.session.machine, p)  # unless a newer one waits
            for p in items:
                if id(p) not in retry and p.seq > p.session.acked:
                    p.session.acked = p.seq
            self.waiters.notify([p.session.machine for p in items])
            if failed:
                await asyncio.sleep(RETRY_S)
                self._kick.set()
            else:
                await asyncio.sleep(RELAY_EVERY_S)  # let the next burst gather

    async def _record(self, items: list[_Pending], summary: bool) -> list[_Pending]:
        """Record the reports (leader) or relay them with this replica's summary (follower);
        the ones that could not be recorded."""
        loop = asyncio.get_running_loop()
        by_machine = {p.report.machine: p for p in items}
        if self.is_leader():
            if not items:
                return []
            try:
                names = await loop.run_in_executor(
                    self.pool,
                    self.link.record_many,
                    [p.report for p in items],
                    [p.pushed for p in items],
                )
            except NotLeader:
                return items
            return [by_machine[m] for m in names if m in by_machine]
        addr = self.leader_grpc()
        if not addr or addr == self.own_grpc:
            return items
        now = time.monotonic()
        seen = [m for m, s in self.sessions.items() if now - s.last_up < SEEN_WITHIN_S]
        failed: list[_Pending] = []
        chunks = relay_chunks([(p.report, p.pushed) for p in items]) or [[]]
        for i, chunk in enumerate(chunks):
            req = pb.RelayLinkRequest(
                reports=[r for r, _ in chunk],
                sent=[
                    pb.SentTasks(tasks=[pb.TaskKey(job=j, index=x, incarnation=c) for j, x, c in k])
                    for _, k in chunk
                ],
                seen=seen if i == 0 else [],
            )
            resp = await loop.run_in_executor(self.pool, self._relay_call, addr, req)
            if resp is None:
                failed.extend(by_machine[r.machine] for r, _ in chunk)
                continue
            failed.extend(by_machine[m] for m in resp.failed if m in by_machine)
            self.relayed += len(chunk)
        return failed

    def _relay_call(self, addr: str, req: pb.RelayLinkRequest) -> pb.RelayLinkResponse | None:
        ch = self._channels.get(addr)
        if ch is None:
            ch = self._channels[addr] = secure_channel(addr, self.tls)
        try:
            resp: pb.RelayLinkResponse = borg_pb2_grpc.BorgmasterStub(ch).RelayLink(req, timeout=10)
            return resp
        except grpc.RpcError as e:
            log.info("RelayLink to %s: %s %s", addr, e.code(), e.details())
            return None

    def relayed_in(self, req: pb.RelayLinkRequest) -> list[tuple[pb.SyncRequest, list[Key]]]:
        """A follower's RelayLink on the leader: its machines count as seen; the reports to
        record with what was pushed to each."""
        for m in req.seen:
            self.link.seen(m)
        out = []
        for i, r in enumerate(req.reports):
            pushed = [key_of(k) for k in req.sent[i].tasks] if i < len(req.sent) else []
            out.append((r, pushed))
        return out
