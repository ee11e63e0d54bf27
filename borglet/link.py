"""The Borglet's link to the master: the Sync long-poll.

Each call reports every local task's observed state and gets back the full desired set for
this machine (level-triggered, so a lost reply or a restarted master costs nothing but a
round). A local event (`poke`: a task exiting, a kill finishing) cancels the call in flight so
the master hears about it at once instead of at the next heartbeat. Nothing is reported while
the host's state file cannot be written (`ready_to_report`): the master must never hear of a
task that a restarted Borglet could not find again.

The link only converts: protobuf in and out, specs validated (once per incarnation and
version), leader redirects followed. What the desired set means is the state machine's call.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Protocol

import grpc

from borglet.config import BorgletConfig
from borglet.state import Desired, TaskKey
from cfg.errors import ConfigError
from cfg.grpcauth import secure_channel
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

    def ready_to_report(self) -> bool:
        """Whether the state file is written (a report may go out)."""
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


class Link(Protocol):
    """The link as the Borglet uses it (MasterLink, or a test's fake)."""

    connected: bool

    def start(self) -> None: ...

    def stop(self) -> None: ...

    def poke(self) -> None: ...


class MasterLink:
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

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="sync", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def poke(self) -> None:
        """Something happened here: report it now."""
        self._wake.set()

    def request(self, wait_ms: int) -> tuple[pb.SyncRequest, frozenset[TaskKey]]:
        reports = self.host.reports()
        keys = frozenset((r["job"], r["index"], r["incarnation"]) for r in reports)
        cfg = self.cfg
        gpus = self.host.offered_gpus()
        req = pb.SyncRequest(
            machine=cfg.name,
            address=cfg.grpc,
            http=cfg.http,
            capacity=pb.Resources(
                cpu=cfg.offered_cpu, ram=cfg.offered_memory, disk=cfg.disk, gpu=len(gpus)
            ),
            gpus=gpus,
            attrs=cfg.attrs,
            taints=[pb.Taint(**t.to_dict()) for t in cfg.taints],
            task_users=self.task_users,
            tasks=[pb.ObservedTask(**r) for r in reports],
            known_generation=self._known_generation,
            wait_ms=wait_ms,
            shared_specs=True,
            accepts_unchanged=self._desired is not None
            and time.monotonic() - self._full_at < FULL_SET_EVERY_S,
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
            if not self.host.ready_to_report():
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
