"""The Borglet's link to the master: the Sync long-poll.

Each call reports every local task's observed state and gets back the full desired set for
this machine (level-triggered, so a lost reply or a restarted master costs nothing but a
round). A local event (`poke`: a task exiting, a kill finishing) cancels the call in flight so
the master hears about it at once instead of at the next heartbeat. Nothing is reported while
the host's state file is not written (`state_written`): the master must never hear of a
task that a restarted Borglet could not find again.

The link only converts: protobuf in and out, specs validated (once per incarnation and
version), leader redirects followed. What the desired set means is the state machine's call.
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import grpc

from borglet.checkpoint import Written
from borglet.config import BorgletConfig
from borglet.state import Desired, TaskKey
from cfg.errors import ConfigError
from cfg.grpcauth import secure_channel
from cfg.keepalive import link_channel_options
from cfg.model import JobSpec
from cfg.schema import validate_job
from cfg.structs import dict_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borglet")

SYNC_WAIT_MS = 1000
REPORT_DEBOUNCE_S = 0.01
"""After a local event, wait this long before reporting, so a burst (100 tasks starting)
becomes one report instead of a hundred."""
STATE_RETRY_S = 1.0
FULL_SET_EVERY_S = 30.0
"""An idle heartbeat's reply is just `unchanged` (the desired set of the generation held);
at least this often the link asks for the full set anyway, so a change the master failed to
count in the generation still reaches this machine (the level-triggered guarantee)."""


class LinkHost(Protocol):
    """What the link needs of the Borglet."""

    def state_written(self, wait_s: float) -> Written:
        """Whether the state file is written (a report may go out), waiting at most
        `wait_s` for a write under way."""
        ...

    def reports(self) -> list[dict[str, Any]]:
        """Every local task, as ObservedTask fields."""
        ...

    def offered_gpus(self) -> list[str]:
        """The GPU devices offered now (healthy ones), by id."""
        ...

    def on_desired(self, desired: list[Desired], reported: frozenset[TaskKey], cell: str) -> None:
        """The master's desired set, and the tasks the call that brought it had reported."""
        ...


def registration_of_machine(
    cfg: BorgletConfig, host: LinkHost, task_users: list[str]
) -> pb.SyncRequest:
    """What registers this machine (both protocols): addresses, what it offers, its taints."""
    gpus = host.offered_gpus()
    return pb.SyncRequest(
        machine=cfg.name,
        address=cfg.grpc,
        http=cfg.http,
        capacity=pb.Resources(
            cpu=cfg.offered_cpu, ram=cfg.offered_memory, disk=cfg.disk, gpu=len(gpus)
        ),
        gpus=gpus,
        attrs=cfg.attrs,
        taints=[pb.Taint(**t.to_dict()) for t in cfg.taints],
        task_users=task_users,
    )


class Link(Protocol):
    """The link as the Borglet uses it (MasterLink, or a test's fake)."""

    connected: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poke(self) -> None: ...


class _LinkThread:
    """The thread, wake-up and stop shared by both links (each defines `_loop`)."""

    THREAD_NAME = "link"
    _wake: threading.Event
    _stop: threading.Event
    _thread: threading.Thread | None

    def _loop(self) -> None:
        raise NotImplementedError

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name=self.THREAD_NAME, daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poke(self) -> None:
        """Something happened here: report it now."""
        self._wake.set()


class MasterLink(_LinkThread):
    THREAD_NAME = "sync"

    def __init__(self, cfg: BorgletConfig, host: LinkHost, task_users: list[str]) -> None:
        self.cfg = cfg
        self.host = host
        self.task_users = task_users
        self.connected = False
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._master_idx = 0
        self._known_generation = -1
        self._desired: list[Desired] | None = None
        """The desired set of `_known_generation` (kept across `unchanged` replies)."""
        self._full_at = 0.0
        """Monotonic time of the last reply that carried the full set."""
        self._spec_cache: dict[tuple[str, int, str, int], JobSpec] = {}
        self._thread: threading.Thread | None = None

    def request(self, wait_ms: int) -> tuple[pb.SyncRequest, frozenset[TaskKey]]:
        reports = self.host.reports()
        keys = frozenset((r["job"], r["index"], r["incarnation"]) for r in reports)
        req = registration_of_machine(self.cfg, self.host, self.task_users)
        req.tasks.extend(pb.ObservedTask(**r) for r in reports)
        req.known_generation = self._known_generation
        req.wait_ms = wait_ms
        req.shared_specs = True
        req.accepts_unchanged = (
            self._desired is not None and time.monotonic() - self._full_at < FULL_SET_EVERY_S
        )
        return req, keys

    def _loop(self) -> None:
        channels: dict[str, grpc.Channel] = {}
        failures = 0
        while not self._stop.is_set():
            addr = self.cfg.masters[self._master_idx % len(self.cfg.masters)]
            ch = channels.get(addr)
            if ch is None:
                # A reply holds each spec once (up to 1 MiB each): more than gRPC's 4 MiB
                # default on a machine running several jobs with large specs.
                ch = channels[addr] = secure_channel(
                    addr, self.cfg.tls, options=[("grpc.max_receive_message_length", 64 << 20)]
                )
            stub = borg_pb2_grpc.BorgmasterStub(ch)
            self._wake.clear()
            if self.host.state_written(STATE_RETRY_S) is not Written.YES:
                self._stop.wait(STATE_RETRY_S)
                continue
            req, reported = self.request(SYNC_WAIT_MS if self.connected else 0)
            fut = stub.Sync.future(req, timeout=SYNC_WAIT_MS / 1000 + 10)
            # The reply and local events both set `_wake`: one wait, no polling.
            fut.add_done_callback(lambda _f: self._wake.set())
            self._wake.wait()
            if self._stop.is_set():
                fut.cancel()
                break
            if not fut.done():
                fut.cancel()  # a local event: report it now
                self._stop.wait(REPORT_DEBOUNCE_S)
                continue
            try:
                resp = fut.result()
            except grpc.FutureCancelledError:
                continue
            except grpc.RpcError as e:
                self.connected = False
                failures += 1
                self._on_error(e, addr)
                self._stop.wait(min(2.0, 0.05 * failures))
                continue
            failures = 0
            if not self.connected:
                log.info("connected to master %s", addr)
            self.connected = True
            desired = self.desired_set(req, resp)
            if desired is None:  # `unchanged` for a set this link does not hold: ask again
                self._known_generation = -1
                continue
            self._known_generation = resp.generation
            self.host.on_desired(desired, reported, resp.cell)

    def desired_set(self, req: pb.SyncRequest, resp: pb.SyncResponse) -> list[Desired] | None:
        """The desired set a reply stands for: the one held when it says `unchanged` (only
        if this request allowed that, for the generation held), else its tasks."""
        if resp.unchanged:
            if (
                not req.accepts_unchanged
                or self._desired is None
                or resp.generation != req.known_generation
            ):
                self._desired = None
                return None
            return self._desired
        self._desired = self.desired_of(resp)
        self._full_at = time.monotonic()
        return self._desired

    def _on_error(self, e: grpc.RpcError, addr: str) -> None:
        code = e.code()
        detail = e.details() or ""
        if code == grpc.StatusCode.FAILED_PRECONDITION and "leader:" in detail:
            leader = detail.rsplit("leader:", 1)[1].strip()
            if leader in self.cfg.masters:
                self._master_idx = self.cfg.masters.index(leader)
                return
            if leader and leader != "unknown":
                self.cfg.masters.append(leader)
                self._master_idx = len(self.cfg.masters) - 1
                return
        log.debug("sync with %s failed: %s %s", addr, code, detail)
        self._master_idx += 1

    def desired_of(self, resp: pb.SyncResponse) -> list[Desired]:
        """The reply's tasks with validated specs. The spec of one incarnation at one version
        never changes: validated once, not at every sync (100 tasks x 1 sync/s would be most
        of the Borglet's CPU)."""
        out: list[Desired] = []
        specs: dict[tuple[str, int, str, int], JobSpec] = {}
        for d in resp.tasks:
            ck = (d.job, d.index, d.incarnation, d.version)
            spec = self._spec_cache.get(ck)
            if spec is None:
                try:
                    if d.spec_ref and d.spec_ref not in resp.specs:
                        raise ConfigError(f"the reply has no spec {d.spec_ref!r}")
                    spec = validate_job(dict_from(resp.specs[d.spec_ref] if d.spec_ref else d.spec))
                except ConfigError as e:
                    log.error("master sent an invalid spec for %s/%d: %s", d.job, d.index, e)
                    continue
            specs[ck] = spec
            out.append(
                Desired(d.job, d.index, d.incarnation, d.version, spec, dict(d.ports), list(d.gpus))
            )
        self._spec_cache = specs
        return out


# ----- the Link stream ------------------------------------------------------------------------

USAGE_FIELDS = ("cpu_seconds", "memory_bytes", "memory_peak_bytes")
"""Usage changes all the time: it is not a change worth a report on its own; it travels with
reports, a task's first measurement goes up at once, and every USAGE_EVERY_S the tasks whose
usage moved are reported again."""
USAGE_EVERY_S = 30.0
TERMINAL_STATES = frozenset({"succeeded", "failed", "killed", "lost"})
STREAM_RECEIVE_BYTES = 64 << 20
"""A push holds each spec once (up to 1 MiB each): several jobs' specs in one message."""


def stable_hash(name: str) -> int:
    """The same number for a name in every process (Python's hash() is salted per run)."""
    return int.from_bytes(hashlib.blake2b(name.encode(), digest_size=8).digest(), "big")


def shard_of(name: str, masters: list[str]) -> int:
    """The replica (index into `masters`) a machine links to first: Borglets spread over
    every replica (Borg's link shards), the same one each time while it stays up."""
    return stable_hash(name) % max(1, len(masters))


def observed_fields(r: dict[str, Any]) -> tuple[Any, ...]:
    """What of a report makes it a change worth sending (everything but usage)."""
    return tuple(
        sorted(
            (k, v if not isinstance(v, dict) else tuple(sorted(v.items())))
            for k, v in r.items()
            if k not in USAGE_FIELDS
        )
    )


def usage_of(r: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(r.get(k) for k in USAGE_FIELDS)


def _known(usage: tuple[Any, ...] | None) -> bool:
    """Whether usage was measured at all: a task's first measurement goes up at once (what
    `borgcfg status` shows of a task that just started), later moves every USAGE_EVERY_S."""
    return usage is not None and any(usage)


@dataclass
class UpState:
    """What the Borglet has told the replica on the current stream (pure bookkeeping)."""

    seq: int = 0
    sent: dict[TaskKey, tuple[Any, ...]] = field(default_factory=dict)
    """Each reported task's fields as last sent."""
    last_state: dict[TaskKey, tuple[int, str]] = field(default_factory=dict)
    """Each task's last report: its seq and the state it reported."""
    hello: tuple[Any, ...] | None = None
    """The registration last sent."""
    usage: dict[TaskKey, tuple[Any, ...]] = field(default_factory=dict)
    """Each reported task's usage as last sent."""
    usage_at: float = 0.0

    def delta(
        self, reports: list[dict[str, Any]], hello: pb.SyncRequest, now: float, full: bool
    ) -> pb.LinkUp:
        """The next message: a hello with everything when `full` or the registration
        changed; else the changed and gone tasks, with those whose usage moved once
        USAGE_EVERY_S passed (nothing: a heartbeat). The caller sends it."""
        reg = registration_of(hello)
        self.seq += 1
        up = pb.LinkUp(seq=self.seq)
        by_key = {(r["job"], r["index"], r["incarnation"]): r for r in reports}
        refresh = now - self.usage_at >= USAGE_EVERY_S
        if refresh:
            self.usage_at = now
        if full or reg != self.hello:
            up.hello.CopyFrom(hello)
            up.hello.tasks.extend(pb.ObservedTask(**r) for r in reports)
            self.hello = reg
            self.sent = {k: observed_fields(r) for k, r in by_key.items()}
            self.usage = {k: usage_of(r) for k, r in by_key.items()}
            for k, r in by_key.items():
                self.last_state[k] = (self.seq, r["state"])
        else:
            for k, r in by_key.items():
                f = observed_fields(r)
                u = usage_of(r)
                moved = self.usage.get(k) != u and (refresh or not _known(self.usage.get(k)))
                if self.sent.get(k) != f or moved:
                    up.changed.append(pb.ObservedTask(**r))
                    self.sent[k] = f
                    self.usage[k] = u
                    self.last_state[k] = (self.seq, r["state"])
            for k in [k for k in self.sent if k not in by_key]:
                up.gone.append(pb.TaskKey(job=k[0], index=k[1], incarnation=k[2]))
                del self.sent[k]
                self.usage.pop(k, None)
        for k in [k for k in self.last_state if k not in by_key]:
            del self.last_state[k]
        if not (up.HasField("hello") or up.changed or up.gone):
            self.seq -= 1
            return pb.LinkUp()  # a heartbeat: no seq, nothing to acknowledge
        return up

    def finished_and_acked(self, acked: int) -> frozenset[TaskKey]:
        """Tasks whose end the cell has recorded: may be forgotten when no longer desired."""
        return frozenset(
            k
            for k, (seq, state) in self.last_state.items()
            if seq <= acked and state in TERMINAL_STATES
        )


def registration_of(req: pb.SyncRequest) -> tuple[Any, ...]:
    return (
        req.address,
        req.http,
        req.capacity.SerializeToString(deterministic=True),
        tuple(req.gpus),
        tuple(sorted(req.attrs.items())),
        tuple(t.SerializeToString(deterministic=True) for t in req.taints),
        tuple(req.task_users),
    )


class DownState:
    """The desired set as the pushes on the current stream built it (pure bookkeeping):
    specs by reference, validated once per stream."""

    def __init__(self) -> None:
        self.desired: dict[TaskKey, Desired] = {}
        self.specs: dict[str, JobSpec | None] = {}
        self.generation = -1
        self.acked = 0

    def apply(self, down: pb.LinkDown) -> None:
        for ref, struct in down.specs.items():
            try:
                self.specs[ref] = validate_job(dict_from(struct))
            except ConfigError as e:
                log.error("master sent an invalid spec %s: %s", ref, e)
                self.specs[ref] = None
        if down.full:
            self.desired = {}
        for k in down.removes:
            self.desired.pop((k.job, k.index, k.incarnation), None)
        for d in down.upserts:
            key = (d.job, d.index, d.incarnation)
            spec = self.specs.get(d.spec_ref)
            if spec is None:
                log.error("master sent %s/%d without a valid spec %r", d.job, d.index, d.spec_ref)
                self.desired.pop(key, None)
                continue
            self.desired[key] = Desired(
                d.job, d.index, d.incarnation, d.version, spec, dict(d.ports), list(d.gpus)
            )
        self.generation = down.generation
        self.acked = max(self.acked, down.acked_seq)


class StreamLink(_LinkThread):
    """The Borglet's Link stream to one replica (any: followers serve too). The stream is
    read on the link's thread; what goes up is produced by the request generator gRPC pulls
    from on its own thread: a report at each local event (`poke`), a heartbeat otherwise."""

    def __init__(self, cfg: BorgletConfig, host: LinkHost, task_users: list[str]) -> None:
        self.cfg = cfg
        self.host = host
        self.task_users = task_users
        self.connected = False
        self.replica = ""
        """The replica this link streams to now."""
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._offset = shard_of(cfg.name, cfg.masters)
        self._heartbeat_s = 1.0
        self._want_full = False
        self._as_of = 0
        """The highest log index a desired set this link acted on was built at (the next
        stream's hello asks its replica to have applied that far)."""
        self._thread: threading.Thread | None = None

    def hello(self) -> pb.SyncRequest:
        req = registration_of_machine(self.cfg, self.host, self.task_users)
        req.min_index = self._as_of
        return req

    def _ups(self, up_state: UpState, over: threading.Event) -> Iterator[pb.LinkUp]:
        """What goes up on one stream: the hello, then reports and heartbeats."""
        first = True
        writing = False  # a report waits for the state file: no wait for an event first
        while not self._stop.is_set() and not over.is_set():
            if not first and not writing:
                poked = self._wake.wait(self._heartbeat_s)
                if self._stop.is_set() or over.is_set():
                    return
                if poked:
                    self._stop.wait(REPORT_DEBOUNCE_S)  # a burst of events: one report
                self._wake.clear()
            state = self.host.state_written(self._heartbeat_s)
            if state is not Written.YES:
                if not first:
                    yield pb.LinkUp()  # contact, but no report while the state is unwritten
                writing = state is Written.WRITING
                if not writing:
                    self._stop.wait(STATE_RETRY_S)
                continue
            writing = False
            with self._lock:
                full, self._want_full = first or self._want_full, False
                up = up_state.delta(self.host.reports(), self.hello(), time.monotonic(), full)
            first = False
            yield up

    def _loop(self) -> None:
        failures = 0
        while not self._stop.is_set():
            masters = self.cfg.masters
            addr = masters[self._offset % len(masters)]
            if self.host.state_written(STATE_RETRY_S) is Written.FAILED:
                self._stop.wait(STATE_RETRY_S)
                continue
            ch = secure_channel(
                addr,
                self.cfg.tls,
                options=[
                    ("grpc.max_receive_message_length", STREAM_RECEIVE_BYTES),
                    *link_channel_options(),  # a replica that hangs is left within seconds
                ],
            )
            up_state, down_state, over = UpState(), DownState(), threading.Event()
            call = borg_pb2_grpc.BorgmasterStub(ch).Link(self._ups(up_state, over))
            stopper = threading.Thread(target=self._cancel_on_stop, args=(call, over), daemon=True)
            stopper.start()
            try:
                for down in call:
                    if not self.connected:
                        log.info("linked to master %s", addr)
                    self.connected, self.replica, failures = True, addr, 0
                    self._on_down(down, up_state, down_state)
                code, detail = grpc.StatusCode.OK, "the replica ended the stream"
            except grpc.RpcError as e:
                code, detail = e.code(), e.details() or ""
            finally:
                over.set()
                self._wake.set()
                call.cancel()
                ch.close()
            self.connected = False
            if self._stop.is_set():
                break
            failures += 1
            log.info("link to %s ended (%s %s): trying the next replica", addr, code, detail)
            self._offset += 1  # this replica died or refused: another serves as well
            self._stop.wait(min(2.0, 0.05 * failures))

    def _cancel_on_stop(self, call: Any, over: threading.Event) -> None:
        while not over.is_set():
            if self._stop.wait(0.5):
                call.cancel()
                return

    def _on_down(self, down: pb.LinkDown, up_state: UpState, down_state: DownState) -> None:
        if down.heartbeat_ms > 0:
            self._heartbeat_s = down.heartbeat_ms / 1000.0
        with self._lock:
            down_state.apply(down)
            self._as_of = max(self._as_of, down.as_of_index)
            done = up_state.finished_and_acked(down_state.acked)
            if down.want_full_report:
                self._want_full = True
        if down.want_full_report:
            self._wake.set()
        self.host.on_desired(list(down_state.desired.values()), done, down.cell)
