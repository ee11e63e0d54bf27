"""`borglet hollow`: N simulated machines in one process, speaking the real Sync protocol
(SPEC part 2, "Scale: hollow machines"; Kubernetes' kubemark is the model).

A hollow machine registers, syncs and reports exactly what a Borglet would, but runs nothing:
every task the master wants on it is reported `running` once `start_ms` has passed, and
`killed` (once) when it is no longer wanted. No process, cgroup or port is used, and the
addresses it advertises are loopback ones (`127.x.y.z`, never dialled: the master only dials
a Borglet to read logs or exec, which a hollow machine refuses by having nothing there).

Cost: one asyncio task per machine on one event loop and a few shared grpc.aio channels per
master, so 10,000 machines are one thread and a few dozen MiB, not 10,000 threads. The
protocol is today's unary `Sync` long-poll, called exactly as borglet/link.py calls it
(`known_generation`, `wait_ms`, leader redirects), so what the master sees from a hollow
fleet is what it would see from real Borglets.

`HollowMachine` is the pure part (desired set in, reports out, clock passed in); `Fleet` is
the asyncio shell.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import grpc
import grpc.aio

from borglet.link import FULL_SET_EVERY_S, UpState, shard_of
from cfg.keepalive import link_channel_options
from cfg.tls import Role, TlsDir, role_host
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borglet.hollow")

SYNC_WAIT_MS = 1000
"""As borglet/link.py: the long-poll a connected machine asks for."""
CALL_SLACK_S = 10.0
"""The client deadline beyond wait_ms (as borglet/link.py)."""
MACHINES_PER_CHANNEL = 500
"""Machines sharing one HTTP/2 connection to a master: enough connections that no single
one's stream limit or flow control becomes the bottleneck, few enough to be cheap."""

TaskKey = tuple[str, int, str]

RUNNING, KILLED = "running", "killed"


class _StreamEnded(Exception):
    """The replica closed the stream without an error status."""


def machine_name(prefix: str, i: int) -> str:
    """`PREFIX00000`, `PREFIX00001`, ... (SPEC: five digits)."""
    return f"{prefix}{i:05d}"


def loopback_address(i: int) -> str:
    """A distinct 127.x.y.z for machine i: outside 127.0.0.0/16 (where real test processes
    listen), never a .0 or .255 host."""
    host = 1 + i % 254
    rest = i // 254
    return f"127.{1 + rest // 256}.{rest % 256}.{host}"


@dataclass
class HollowTask:
    job: str
    index: int
    incarnation: str
    ports: dict[str, int]
    due: float
    """Monotonic time at which it is reported running."""
    state: str = ""
    """"" (not started yet: not reported, as a Borglet still launching it), running, killed."""


@dataclass
class HollowMachine:
    """One simulated machine's state: pure, the clock is passed in."""

    name: str
    address: str
    http: str
    cpu: float
    memory: int
    attrs: dict[str, str]
    start_s: float = 0.0
    tasks: dict[TaskKey, HollowTask] = field(default_factory=dict)
    generation: int = -1
    full_at: float = -1e9
    """Monotonic time of the last reply with the full desired set (link.py's rule: idle
    replies are `unchanged`, a full set at least every FULL_SET_EVERY_S)."""
    connected: bool = False
    dirty: bool = True
    """Something to report that the master has not heard yet: sync without waiting."""

    def on_desired(self, desired: Iterable[pb.DesiredTask], now: float) -> None:
        """The master's desired set: new tasks start (running after start_s), tasks no longer
        wanted are killed (reported once, then forgotten)."""
        want: dict[TaskKey, pb.DesiredTask] = {(d.job, d.index, d.incarnation): d for d in desired}
        for key, d in want.items():
            if key not in self.tasks or self.tasks[key].state == KILLED:
                self.tasks[key] = HollowTask(
                    d.job, d.index, d.incarnation, dict(d.ports), due=now + self.start_s
                )
        for key, t in self.tasks.items():
            if key not in want and t.state != KILLED:
                t.state = KILLED
                self.dirty = True
        self.advance(now)

    def advance(self, now: float) -> None:
        """Tasks whose start time has come are running."""
        for t in self.tasks.values():
            if not t.state and t.due <= now:
                t.state = RUNNING
                self.dirty = True

    def next_due(self) -> float | None:
        """When the next task starts (None: none waits)."""
        dues = [t.due for t in self.tasks.values() if not t.state]
        return min(dues) if dues else None

    def reports(self) -> list[pb.ObservedTask]:
        return [
            pb.ObservedTask(
                job=t.job,
                index=t.index,
                incarnation=t.incarnation,
                state=t.state,
                exit_code=-1 if t.state == RUNNING else 0,
                reason="" if t.state == RUNNING else "no longer desired",
                ports=t.ports,
            )
            for t in self.tasks.values()
            if t.state
        ]

    def reported(self, sent: Iterable[pb.ObservedTask]) -> None:
        """A sync carrying `sent` succeeded: killed tasks it carried are forgotten."""
        for o in sent:
            key = (o.job, o.index, o.incarnation)
            t = self.tasks.get(key)
            if t is not None and t.state == KILLED and o.state == KILLED:
                del self.tasks[key]

    def request(self, wait_ms: int, now: float = 0.0) -> pb.SyncRequest:
        return pb.SyncRequest(
            machine=self.name,
            address=self.address,
            http=self.http,
            capacity=pb.Resources(cpu=self.cpu, ram=self.memory, disk=100 << 30, gpu=0),
            attrs=self.attrs,
            task_users=["nobody"],
            tasks=self.reports(),
            known_generation=self.generation,
            wait_ms=wait_ms,
            accepts_unchanged=self.generation >= 0 and now - self.full_at < FULL_SET_EVERY_S,
            shared_specs=True,  # each job version's spec once per reply (unused here anyway)
        )

    def on_reply(self, req: pb.SyncRequest, resp: pb.SyncResponse, now: float) -> None:
        """A successful sync: what it reported is acknowledged, its desired set applied (or
        kept, when the reply is `unchanged` for the generation held)."""
        self.reported(req.tasks)
        if resp.unchanged:
            if req.accepts_unchanged and resp.generation == req.known_generation:
                self.advance(now)
            else:  # not a set this machine holds: ask for the full one
                self.generation = -1
                self.dirty = True
            return
        self.generation = resp.generation
        self.full_at = now
        self.on_desired(resp.tasks, now)

    # ----- the Link stream (the protocol `borglet run` speaks) ---------------------------

    def report_dicts(self) -> list[dict[str, Any]]:
        """Reports as a Borglet's host gives them to its link (borglet/link.py UpState)."""
        return [
            {
                "job": t.job,
                "index": t.index,
                "incarnation": t.incarnation,
                "state": t.state,
                "exit_code": -1 if t.state == RUNNING else 0,
                "reason": "" if t.state == RUNNING else "no longer desired",
                "ports": t.ports,
            }
            for t in self.tasks.values()
            if t.state
        ]

    def hello(self) -> pb.SyncRequest:
        """The registration a stream opens with (its tasks are added by UpState)."""
        return pb.SyncRequest(
            machine=self.name,
            address=self.address,
            http=self.http,
            capacity=pb.Resources(cpu=self.cpu, ram=self.memory, disk=100 << 30, gpu=0),
            attrs=self.attrs,
            task_users=["nobody"],
        )

    def on_down(self, down: pb.LinkDown, held: dict[TaskKey, pb.DesiredTask], now: float) -> None:
        """A push: `held` (the desired set as this stream built it) brought up to date, then
        applied as a Sync's desired set is. Specs are not kept: nothing runs here."""
        if down.full:
            held.clear()
        for k in down.removes:
            held.pop((k.job, k.index, k.incarnation), None)
        for d in down.upserts:
            held[(d.job, d.index, d.incarnation)] = d
        self.generation = down.generation
        self.on_desired(held.values(), now)

    def forget_acked(self, last_state: dict[TaskKey, tuple[int, str]], acked: int) -> None:
        """Killed tasks whose `killed` report the cell recorded are forgotten (the next
        report says they are gone)."""
        for key, t in list(self.tasks.items()):
            rep = last_state.get(key)
            if t.state == KILLED and rep is not None and rep[0] <= acked and rep[1] == KILLED:
                del self.tasks[key]
                self.dirty = True

    def wait_ms(self, now: float) -> int:
        """How long the master may hold the next sync: not at all while a report is pending
        or before the first reply, else until the next task start (at most SYNC_WAIT_MS)."""
        if self.dirty or not self.connected:
            return 0
        due = self.next_due()
        if due is None:
            return SYNC_WAIT_MS
        return max(0, min(SYNC_WAIT_MS, int((due - now) * 1000)))


@dataclass
class FleetStats:
    syncs: int = 0
    errors: int = 0
    redirects: int = 0
    codes: dict[str, int] = field(default_factory=dict)
    """Failed syncs by status code (DEADLINE_EXCEEDED: the master was too busy to answer)."""


class Fleet:
    """N hollow machines on one event loop, sharing a few channels per master."""

    def __init__(
        self,
        machines: list[HollowMachine],
        masters: list[str],
        tls: TlsDir | None = None,
        ramp_s: float = 0.0,
        protocol: str = "stream",
    ) -> None:
        self.protocol = protocol
        """`stream` (one Link stream per machine, as `borglet run`) or `sync` (the older
        unary Sync long-poll, for comparison)."""
        self.machines = machines
        self.masters = list(masters)
        self.tls = tls
        self.ramp_s = ramp_s
        self.leader = 0
        """Index into masters of the replica believed to lead (shared: one redirect teaches
        the whole fleet)."""
        self.stats = FleetStats()
        self._channels: dict[tuple[str, int], grpc.aio.Channel] = {}
        self._stop = asyncio.Event()

    def _stub(self, addr: str, i: int) -> borg_pb2_grpc.BorgmasterStub:
        slot = i // MACHINES_PER_CHANNEL
        ch = self._channels.get((addr, slot))
        if ch is None:
            # A local subchannel pool: each slot gets its own TCP connection.
            opts: list[tuple[str, Any]] = [
                ("grpc.use_local_subchannel_pool", 1),
                *link_channel_options(),
            ]
            if self.tls is None:
                ch = grpc.aio.insecure_channel(addr, options=opts)
            else:
                opts.append(("grpc.ssl_target_name_override", role_host(Role.MASTER)))
                creds = grpc.ssl_channel_credentials(self.tls.ca, self.tls.key, self.tls.cert)
                ch = grpc.aio.secure_channel(addr, creds, options=opts)
            self._channels[(addr, slot)] = ch
        return borg_pb2_grpc.BorgmasterStub(ch)

    def stop(self) -> None:
        self._stop.set()

    async def run(self, stats_every_s: float = 5.0) -> None:
        body = self._stream if self.protocol == "stream" else self._machine
        tasks = [asyncio.create_task(body(i, m)) for i, m in enumerate(self.machines)]
        tasks.append(asyncio.create_task(self._log_stats(stats_every_s)))
        await self._stop.wait()
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        for ch in self._channels.values():
            await ch.close()

    async def _log_stats(self, every_s: float) -> None:
        """One line every few seconds (bench/scale.py reads the sync rate from it)."""
        while True:
            await asyncio.sleep(every_s)
            st = self.stats
            log.info(
                "hollow stats: t=%.3f machines=%d connected=%d tasks=%d syncs=%d errors=%d "
                "redirects=%d codes=%s",
                time.monotonic(),
                len(self.machines),
                sum(1 for m in self.machines if m.connected),
                sum(len(m.tasks) for m in self.machines),
                st.syncs,
                st.errors,
                st.redirects,
                ",".join(f"{k}:{v}" for k, v in sorted(st.codes.items())) or "-",
            )

    async def _stream(self, i: int, m: HollowMachine) -> None:
        """One machine on a Link stream, as borglet/link.py StreamLink: to the replica its
        name hashes to, and on to the next one when that one dies or refuses."""
        rnd = random.Random(m.name)
        if self.ramp_s > 0:
            await asyncio.sleep(rnd.uniform(0, self.ramp_s))
        offset = shard_of(m.name, self.masters)
        failures = 0
        while not self._stop.is_set():
            addr = self.masters[offset % len(self.masters)]
            up = UpState()
            held: dict[TaskKey, pb.DesiredTask] = {}
            acked = 0
            call = self._stub(addr, i).Link()
            read: asyncio.Future[Any] | None = None
            try:
                now = time.monotonic()
                m.advance(now)
                await call.write(up.delta(m.report_dicts(), m.hello(), now, True))
                m.dirty = False
                self.stats.syncs += 1
                read = asyncio.ensure_future(call.read())
                beat = 1.0
                next_beat = now + beat
                while True:
                    due = m.next_due()
                    wake = next_beat if due is None else min(next_beat, due)
                    await asyncio.wait({read}, timeout=max(0.0, wake - time.monotonic()))
                    now = time.monotonic()
                    if read.done():
                        down = read.result()
                        if down is grpc.aio.EOF:
                            raise _StreamEnded()
                        if not m.connected:
                            log.debug("%s linked to %s", m.name, addr)
                        m.connected = True
                        failures = 0
                        if down.heartbeat_ms > 0:
                            beat = down.heartbeat_ms / 1000.0
                        acked = max(acked, down.acked_seq)
                        m.on_down(down, held, now)
                        full = down.want_full_report
                        read = asyncio.ensure_future(call.read())
                    else:
                        full = False
                    m.advance(now)
                    m.forget_acked(up.last_state, acked)
                    if m.dirty or full or now >= next_beat:
                        msg = up.delta(m.report_dicts(), m.hello(), now, full)
                        m.dirty = False
                        await call.write(msg)
                        self.stats.syncs += 1
                        next_beat = now + beat
            except (grpc.aio.AioRpcError, _StreamEnded, grpc.aio.UsageError) as e:
                m.connected = False
                m.dirty = True
                failures += 1
                self.stats.errors += 1
                code = (
                    e.code().name
                    if isinstance(e, grpc.aio.AioRpcError) and e.code() is not None
                    else "ENDED"
                )
                self.stats.codes[code] = self.stats.codes.get(code, 0) + 1
                offset += 1  # that replica died or refused: the next one serves as well
                self.stats.redirects += 1
                await asyncio.sleep(min(2.0, 0.05 * failures) * rnd.uniform(0.5, 1.5))
            finally:
                if read is not None:
                    read.cancel()
                call.cancel()

    async def _machine(self, i: int, m: HollowMachine) -> None:
        rnd = random.Random(m.name)
        if self.ramp_s > 0:
            await asyncio.sleep(rnd.uniform(0, self.ramp_s))  # spread the first registrations
        failures = 0
        while not self._stop.is_set():
            now = time.monotonic()
            m.advance(now)
            leader = self.leader
            addr = self.masters[leader % len(self.masters)]
            wait_ms = m.wait_ms(now)
            req = m.request(wait_ms, now)
            m.dirty = False
            try:
                resp = await self._stub(addr, i).Sync(req, timeout=wait_ms / 1000 + CALL_SLACK_S)
            except grpc.aio.AioRpcError as e:
                m.dirty = True
                m.connected = False
                failures += 1
                self.stats.errors += 1
                code = e.code().name if e.code() is not None else "UNKNOWN"
                self.stats.codes[code] = self.stats.codes.get(code, 0) + 1
                self._on_error(e, leader)
                await asyncio.sleep(min(2.0, 0.05 * failures) * rnd.uniform(0.5, 1.5))
                continue
            self.stats.syncs += 1
            failures = 0
            if not m.connected:
                log.debug("%s connected to %s", m.name, addr)
            m.connected = True
            m.on_reply(req, resp, time.monotonic())

    def _on_error(self, e: grpc.aio.AioRpcError, leader: int) -> None:
        """A not-leader reply names the leader: the whole fleet moves there (as link.py)."""
        detail = e.details() or ""
        if e.code() == grpc.StatusCode.FAILED_PRECONDITION and "leader:" in detail:
            target = detail.rsplit("leader:", 1)[1].strip()
            if target in self.masters:
                self.leader = self.masters.index(target)
                self.stats.redirects += 1
                return
            if target and target != "unknown":
                self.masters.append(target)
                self.leader = len(self.masters) - 1
                return
        log.debug("sync failed: %s %s", e.code(), detail)
        if self.leader == leader:
            self.leader = leader + 1


def make_machines(
    count: int,
    prefix: str,
    cpu: float,
    memory: int,
    attrs: dict[str, str],
    start_ms: int,
    first: int = 0,
) -> list[HollowMachine]:
    out = []
    for i in range(first, first + count):
        addr = loopback_address(i)
        out.append(
            HollowMachine(
                name=machine_name(prefix, i),
                address=f"{addr}:1",
                http=f"{addr}:2",
                cpu=cpu,
                memory=memory,
                attrs=dict(attrs),
                start_s=start_ms / 1000.0,
            )
        )
    return out
