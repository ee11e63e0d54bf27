"""The Borglet's I/O shell: sync with the master, carry out the task state machine's actions.

The sync loop is a long-poll: each call reports every local task's observed state and gets
back the full desired set for this machine (level-triggered, so a lost reply or a restarted
master costs nothing but a round). A local event - a task exiting, a kill finishing - cancels
the call in flight so the master hears about it at once instead of at the next heartbeat.

Nothing here polls processes: each task's shim (borglet/shim.py) is watched through a pidfd,
so an exit wakes one thread at once and a steady state costs (almost) no CPU. What the Borglet
knows about its tasks is written to ``<data-dir>/state.json`` before the master hears of it,
so a Borglet that crashed or was stopped re-adopts its running tasks when it comes back
(state file + shim pid and start time + the task's cgroup).
"""

from __future__ import annotations

import contextlib
import glob
import json
import logging
import os
import re
import select
import shutil
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Histogram, generate_latest

from borglet.accounts import TaskAccounts, lookup_quiet
from borglet.health import (
    EXEC,
    HTTP,
    HealthCheck,
    HealthTracker,
    probe_exec,
    probe_http,
    probe_tcp,
)
from borglet.metrics import BorgletCollector
from borglet.peers import task_account_caller
from borglet.ports import PortAllocator
from borglet.runtime.cgroups import CgroupDriver, CgroupError, CgroupStats, Limits, detect
from borglet.runtime.process import (
    DEFAULT_PATH,
    ExecError,
    ExitStatus,
    ProcessRuntime,
    SpawnSpec,
    TaskProcess,
    UserError,
)
from borglet.state import (
    ACTIVE,
    DONE,
    LAUNCHING,
    STOPPING,
    Desired,
    Kill,
    LocalTask,
    Start,
    TaskKey,
    TaskStates,
)
from cfg.errors import ConfigError
from cfg.model import JobSpec
from cfg.schema import JOB_NAME_RE, MAX_REPLICAS, validate_job
from cfg.structs import dict_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borglet")

SYNC_WAIT_MS = 1000
WARM_SHIMS = 2
"""Shims started ahead of need: a start then costs a fork and an exec, not an interpreter
start-up (~20 ms, far more on a busy machine)."""
STATE_FILE = "state.json"
STATE_VERSION = 1
REPORT_DEBOUNCE_S = 0.01
"""After a local event, wait this long before reporting, so a burst (100 tasks starting)
becomes one report instead of a hundred."""
LOST_SHIM_REASON = "supervisor-lost"


def now_ms() -> int:
    """CLOCK_MONOTONIC in ms: the same clock in every process of one boot, so the times in the
    state file stay meaningful for the next Borglet (until a reboot, see boot_id)."""
    return int(time.monotonic() * 1000)


def boot_id() -> str:
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            return f.read().strip()
    except OSError:
        return ""


@dataclass
class BorgletConfig:
    name: str
    masters: list[str]
    grpc: str
    http: str
    data_dir: str
    cpu: float
    memory: int
    disk: int = 0
    gpu: int = 0
    attrs: dict[str, str] = field(default_factory=dict)
    taints: list[dict[str, str]] = field(default_factory=list)
    task_user: str = "nobody"
    task_users: list[str] = field(default_factory=list)  # more accounts run_as may name
    allow_root: bool = False
    kill_tasks_on_exit: bool = False
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = ""
    reserve_cpu: float = 0.0
    reserve_memory: int = 0
    port_range: tuple[int, int] = (20000, 32000)
    log_max_size: int = 10 << 20
    log_keep: int = 3
    task_pids_max: int = 4096
    usage_interval_s: float = 5.0

    @property
    def offered_cpu(self) -> float:
        """Cores offered to the cell: the machine's minus what is reserved for the system."""
        return max(0.0, self.cpu - self.reserve_cpu)

    @property
    def offered_memory(self) -> int:
        return max(0, self.memory - self.reserve_memory)


def task_id_of(key: TaskKey) -> str:
    job, index, inc = key
    return f"{job}.{index}.{inc}"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


class Borglet:
    def __init__(self, cfg: BorgletConfig, driver: CgroupDriver | None = None) -> None:
        self.cfg = cfg
        parent = cfg.cgroup_parent or f"borgcell/{cfg.name}"
        self.driver = driver if driver is not None else detect(cfg.cgroup_root, parent)
        self.runtime = ProcessRuntime(
            self.driver,
            allow_root=cfg.allow_root,
            control_root=os.path.join(cfg.data_dir, "run"),
            log_max_size=cfg.log_max_size,
            log_keep=cfg.log_keep,
            warm_shims=WARM_SHIMS,
        )
        self.accounts = TaskAccounts.of(cfg.task_user, cfg.task_users, cfg.allow_root)
        # Local callers running as these accounts are tasks: no logs for them (peers.py).
        self.task_uids = frozenset(
            a.uid for a in (lookup_quiet(n) for n in self.accounts.allowed) if a is not None
        )
        self.states = TaskStates()
        self.procs: dict[TaskKey, TaskProcess] = {}
        self.desired: dict[TaskKey, Desired] = {}
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._timer_wake = threading.Event()
        self._health_wake = threading.Event()
        self._master_idx = 0
        self._known_generation = -1
        self.connected = False
        self.unreachable_dir = ""
        self.cell = "borgcell"  # the cell's name, as the master reports it
        self.ports = PortAllocator(*cfg.port_range)
        self.usage: dict[TaskKey, CgroupStats] = {}
        self.health: dict[TaskKey, HealthTracker] = {}
        self.first_seen: dict[TaskKey, float] = {}
        self._spec_cache: dict[tuple[str, int, str, int], JobSpec] = {}
        # Counters for /metrics that outlive one incarnation of a task (monotonic per job/index).
        self.oom_kills: dict[tuple[str, int], int] = {}
        self.restarts_total: dict[tuple[str, int], int] = {}
        # When the last copy of a task index was forgotten: its counters are dropped from
        # /metrics COUNTER_RETENTION_S later (see prune_counters).
        self._forgotten_at: dict[tuple[str, int], float] = {}
        self.state_error = ""  # why the state file cannot be written ("" when it can)
        self._dirty = False
        self._state_lock = threading.Lock()
        self._watch_lock = threading.Lock()
        self._watch_new: list[tuple[int, TaskKey]] = []
        self._watch_r, self._watch_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        self.grpc_server: grpc.Server | None = None
        self.http_server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.registry = CollectorRegistry()
        self.registry.register(BorgletCollector(self))
        self.start_latency = Histogram(
            "borg_task_start_latency_seconds",
            "From the desired state reaching the Borglet to the task's process running.",
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )

    @property
    def state_path(self) -> str:
        return os.path.join(self.cfg.data_dir, STATE_FILE)

    def sandbox_of(self, job: str, index: int, incarnation: str) -> str:
        """One sandbox per incarnation: restarts of a task keep it (and its logs), while a new
        placement, or a new job that reuses the name, starts empty and cannot read what an
        earlier one left (see `gc_sandboxes` for how old ones go).

        ValueError for a name that is not a job's, an index or an incarnation id: the result
        is always one directory directly under data_dir/tasks, whoever asks."""
        if (
            not JOB_NAME_RE.fullmatch(job)
            or not 0 <= index < MAX_REPLICAS
            or not INCARNATION_RE.fullmatch(incarnation)
        ):
            raise ValueError(f"no sandbox for {job[:80]!r}/{index}/{incarnation[:80]!r}")
        return os.path.join(self.cfg.data_dir, "tasks", f"{job}.{index}.{incarnation}")

    def prune_counters(self, now: float | None = None) -> int:
        """Drop the restart and OOM counters of task indices gone for COUNTER_RETENTION_S, so
        /metrics does not keep series of jobs long gone (they would grow without bound with
        array jobs) while a just-finished task's figures can still be scraped."""
        now = time.monotonic() if now is None else now
        with self.lock:
            live = {k[:2] for k in self.states.tasks}
            old = [
                ji
                for ji, at in self._forgotten_at.items()
                if ji in live or now - at >= COUNTER_RETENTION_S
            ]
            for ji in old:
                del self._forgotten_at[ji]
                if ji not in live:
                    self.restarts_total.pop(ji, None)
                    self.oom_kills.pop(ji, None)
        return len(old)

    def gc_sandboxes(self, now: float | None = None) -> int:
        """Delete sandboxes of tasks this Borglet no longer knows, once untouched for
        SANDBOX_RETENTION_S: finished tasks' logs stay readable for a while, and disk does not
        fill with sandboxes of jobs long gone. Returns how many were removed."""
        tasks_dir = os.path.join(self.cfg.data_dir, "tasks")
        now = time.time() if now is None else now
        with self.lock:
            keep = {f"{j}.{i}.{inc}" for j, i, inc in self.states.tasks}
        removed = 0
        try:
            entries = list(os.scandir(tasks_dir))
        except OSError:
            return 0
        for e in entries:
            if e.name in keep or not e.is_dir(follow_symlinks=False):
                continue
            try:
                # The task owns its sandbox and may set its mtime into the future (to keep
                # it forever); ctime it cannot forge, and it caps the mtime.
                st = e.stat(follow_symlinks=False)
                if now - min(st.st_mtime, st.st_ctime) < SANDBOX_RETENTION_S:
                    continue
            except OSError:
                continue
            remove_tree(e.path)
            removed += 1
        if removed:
            log.info("removed %d sandbox(es) of tasks gone for an hour or more", removed)
        return removed

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        tasks_dir = os.path.join(self.cfg.data_dir, "tasks")
        os.makedirs(tasks_dir, exist_ok=True)
        os.chmod(tasks_dir, 0o711)
        run_dir = os.path.join(self.cfg.data_dir, "run")
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)  # shims' specs (task env) and exit statuses: root only
        self.unreachable_dir = _first_closed_dir(tasks_dir)
        if self.unreachable_dir:
            log.error(
                "%s is not searchable by other users: tasks running as unprivileged accounts "
                "cannot reach their sandboxes under %s (use a data dir on a world-searchable "
                "path)",
                self.unreachable_dir,
                tasks_dir,
            )
        if self.driver is not None:
            self.driver.setup()
        self._recover()
        self.runtime.prefill()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        borg_pb2_grpc.add_BorgletServicer_to_server(_LogsServicer(self), server)
        if server.add_insecure_port(self.cfg.grpc) == 0:
            raise OSError(f"cannot bind gRPC to {self.cfg.grpc}")
        server.start()
        self.grpc_server = server
        self.http_server = self._start_http()
        for fn, name in (
            (self._sync_loop, "sync"),
            (self._timer_loop, "timer"),
            (self._watch_loop, "watch"),
            (self._usage_loop, "usage"),
            (self._health_loop, "health"),
        ):
            th = threading.Thread(target=fn, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        log.info(
            "borglet %s up: cpu %g (reserved %g), memory %d MiB (reserved %d MiB), cgroups %s, "
            "masters %s",
            self.cfg.name,
            self.cfg.offered_cpu,
            self.cfg.reserve_cpu,
            self.cfg.offered_memory // 2**20,
            self.cfg.reserve_memory // 2**20,
            f"v{self.driver.version}" if self.driver else "none",
            ",".join(self.cfg.masters),
        )

    def stop(self) -> None:
        """Stop the agent. Tasks keep running (a new Borglet re-adopts them) unless the
        Borglet was started with --kill-tasks-on-exit (the dev cell)."""
        self._stop.set()
        for ev in (self.wake, self._timer_wake, self._health_wake):
            ev.set()
        with contextlib.suppress(OSError):
            os.write(self._watch_w, b"x")
        # Sync, timers, watcher and health checks end before anything is killed: the master
        # must not hear of tasks the shutdown kills, and nothing may restart them meanwhile.
        for th in self._threads:
            th.join(timeout=5)
        if self.cfg.kill_tasks_on_exit:
            self._kill_all_for_exit()
        self._flush_state(force=True)
        self.runtime.close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5).wait(2)
        if self.http_server is not None:
            self.http_server.shutdown()
        log.info("borglet %s stopped", self.cfg.name)

    def _kill_all_for_exit(self) -> None:
        """--kill-tasks-on-exit: stop every task and forget the ones that were running.

        Like a machine going down, not like a kill the master asked for: those tasks are
        neither reported nor recorded as finished (a `killed` in the state file would reach
        the master from the next Borglet on this data dir and end tasks of a live service
        job). The next Borglet knows nothing of them and starts them again when the master
        still wants them. Tasks the master was already stopping, and finished ones not yet
        reported, keep their records so their results still reach the master."""
        with self.lock:
            keys = list(self.procs)
            for_exit = set()
            for k in keys:
                t = self.states.tasks.get(k)
                if t is not None and t.phase == ACTIVE:
                    t.phase = STOPPING
                    for_exit.add(k)
        threads = [threading.Thread(target=self._kill_task, args=(k,), daemon=True) for k in keys]
        for th in threads:
            th.start()
        for th in threads:
            th.join(timeout=30)
        if self.driver is not None:
            # Whatever is left (a start that raced the shutdown) goes with the machine.
            for name in self.driver.list():
                self.runtime.stop(name, None, grace_s=0)
            with contextlib.suppress(Exception):
                self.driver.remove_parent()
            if not self.cfg.cgroup_parent:
                # The shared top `borgcell/` goes too once the last Borglet here leaves.
                root = self.cfg.cgroup_root
                tops = [os.path.join(root, "borgcell")]
                tops += glob.glob(os.path.join(root, "*", "borgcell"))
                for top in tops:
                    with contextlib.suppress(OSError):
                        os.rmdir(top)
        with self.lock:
            for k, t in list(self.states.tasks.items()):
                if k in for_exit or t.phase in (ACTIVE, LAUNCHING):
                    del self.states.tasks[k]
                    self.procs.pop(k, None)
                    self.health.pop(k, None)
                    self.usage.pop(k, None)
            self._mark_dirty()
        if for_exit:
            log.info("stopped %d task(s) for the exit; the master still wants them", len(for_exit))

    # ----- state file and re-adoption -------------------------------------------------------

    def _mark_dirty(self) -> None:
        self._dirty = True

    def _flush_state(self, force: bool = False) -> bool:
        """Write the task table atomically (temp file + rename) when it changed. False when
        it cannot be written (then `state_error` says why; /healthz reports it)."""
        if not (self._dirty or force):
            return not self.state_error
        with self._state_lock:
            with self.lock:
                self._dirty = False
                doc = {
                    "version": STATE_VERSION,
                    "boot_id": boot_id(),
                    "tasks": [t.to_dict() for t in self.states.tasks.values()],
                }
            tmp = self.state_path + ".tmp"
            try:
                # 0600 whatever the umask or the data dir's mode (0711 for tasks to reach
                # their sandboxes): the file holds every task's spec, env included.
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(tmp)
                flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
                with os.fdopen(os.open(tmp, flags, 0o600), "w") as f:
                    os.fchmod(f.fileno(), 0o600)
                    json.dump(doc, f, separators=(",", ":"))
                os.replace(tmp, self.state_path)
            except OSError as e:
                self._dirty = True
                if not self.state_error:
                    log.error("cannot write %s: %s", self.state_path, e)
                self.state_error = f"cannot write {self.state_path}: {e.strerror or e}"
                return False
            if self.state_error:
                log.info("state file %s written again", self.state_path)
            self.state_error = ""
            return True

    def _load_state(self) -> list[LocalTask]:
        try:
            with open(self.state_path) as f:
                doc = json.load(f)
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as e:
            log.error("ignoring unreadable state file %s: %s", self.state_path, e)
            return []
        same_boot = doc.get("boot_id") == boot_id()
        out = []
        for d in doc.get("tasks", []):
            try:
                t = LocalTask.from_dict(d)
            except (KeyError, TypeError, ValueError) as e:
                log.error("ignoring unreadable task in state file: %s", e)
                continue
            if not same_boot:  # monotonic times are from another boot
                t.next_start_ms = t.started_ms = 0
            out.append(t)
        return out

    def _recover(self) -> None:
        """Re-adopt the tasks of an earlier run of this Borglet; clean up what is not ours.

        A task whose shim still runs is adopted as it is (same pids); one whose shim finished
        while we were away is reported with the exit status its shim recorded; one whose shim
        vanished without a status is reported failed (`supervisor-lost`). Cgroups of tasks the
        state file does not know are removed when empty and stopped otherwise (nobody could
        report on them).
        """
        known: set[str] = set()
        adopted: list[TaskKey] = []
        finished: list[TaskKey] = []
        restop: list[TaskKey] = []
        for t in self._load_state():
            self.states.tasks[t.key] = t
            tid = task_id_of(t.key)
            known.add(tid)
            if t.phase not in (ACTIVE, STOPPING):
                continue
            control = self.runtime.control_dir(tid)
            proc = self.runtime.adopt(tid, control)
            if proc is None:
                self.procs[t.key] = TaskProcess(tid, control, 0, "", t.pid)
                finished.append(t.key)
                continue
            self.procs[t.key] = proc
            t.pid = proc.pid
            self._track_health(t)
            adopted.append(t.key)
            if t.phase == STOPPING:
                restop.append(t.key)
            log.info("re-adopted task %s/%d (pid %d)", t.job, t.index, proc.pid)
        if self.driver is not None:
            for name in self.driver.list():
                if name in known and any(task_id_of(k) == name for k in adopted):
                    continue
                if name in known and any(task_id_of(k) == name for k in finished):
                    continue  # handled below, with its exit status
                if self.driver.pids(name):
                    log.warning("stopping processes of unknown task cgroup %s", name)
                    self.runtime.stop(name, None, grace_s=2.0)
                else:
                    with contextlib.suppress(CgroupError):
                        self.driver.remove(name)
        run_dir = os.path.join(self.cfg.data_dir, "run")
        with contextlib.suppress(OSError):
            for name in os.listdir(run_dir):
                if name not in known:
                    self.runtime.forget(TaskProcess(name, os.path.join(run_dir, name), 0, "", 0))
        for key in adopted:
            self._watch(key, self.procs[key])
        for key in finished:
            self._handle_exit(key)
        for key in restop:
            threading.Thread(target=self._kill_task, args=(key,), daemon=True).start()
        self._mark_dirty()
        self._flush_state()

    # ----- talking to the master ----------------------------------------------------------

    def _request(self, wait_ms: int) -> tuple[pb.SyncRequest, set[TaskKey]]:
        with self.lock:
            reports = []
            for key, t in self.states.tasks.items():
                r = t.report()
                u = self.usage.get(key)
                if u is not None and t.phase in (ACTIVE, STOPPING):
                    r["cpu_seconds"] = u.cpu_seconds
                    r["memory_bytes"] = u.memory_bytes
                    r["memory_peak_bytes"] = u.memory_peak_bytes
                reports.append(r)
        keys = {(r["job"], r["index"], r["incarnation"]) for r in reports}
        req = pb.SyncRequest(
            machine=self.cfg.name,
            address=self.cfg.grpc,
            http=self.cfg.http,
            capacity=pb.Resources(
                cpu=self.cfg.offered_cpu,
                ram=self.cfg.offered_memory,
                disk=self.cfg.disk,
                gpu=self.cfg.gpu,
            ),
            attrs=self.cfg.attrs,
            taints=[pb.Taint(**t) for t in self.cfg.taints],
            task_users=list(self.accounts.allowed),
            tasks=[pb.ObservedTask(**r) for r in reports],
            known_generation=self._known_generation,
            wait_ms=wait_ms,
        )
        return req, keys

    def _sync_loop(self) -> None:
        channels: dict[str, grpc.Channel] = {}
        failures = 0
        while not self._stop.is_set():
            addr = self.cfg.masters[self._master_idx % len(self.cfg.masters)]
            ch = channels.get(addr)
            if ch is None:
                ch = channels[addr] = grpc.insecure_channel(addr)
            stub = borg_pb2_grpc.BorgmasterStub(ch)
            self.wake.clear()
            if not self._flush_state():
                # The master never hears of a task the state file does not know: without it
                # a restarted Borglet could not re-adopt what it reported. Retry shortly.
                self._stop.wait(1.0)
                continue
            req, reported = self._request(SYNC_WAIT_MS if self.connected else 0)
            fut = stub.Sync.future(req, timeout=SYNC_WAIT_MS / 1000 + 10)
            # The reply and local events both set `wake`: one wait, no polling.
            fut.add_done_callback(lambda _f: self.wake.set())
            self.wake.wait()
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
                self._on_sync_error(e, addr)
                self._stop.wait(min(2.0, 0.05 * failures))
                continue
            failures = 0
            if not self.connected:
                log.info("connected to master %s", addr)
            self.connected = True
            self._apply_desired(resp, reported)

    def _on_sync_error(self, e: grpc.RpcError, addr: str) -> None:
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

    def _apply_desired(self, resp: pb.SyncResponse, reported: set[TaskKey]) -> None:
        received = time.monotonic()
        desired: dict[TaskKey, Desired] = {}
        specs: dict[tuple[str, int, str, int], JobSpec] = {}
        for d in resp.tasks:
            # The spec of one incarnation at one version never changes: validate it once,
            # not at every sync (100 tasks x 1 sync/s would be most of the Borglet's CPU).
            ck = (d.job, d.index, d.incarnation, d.version)
            spec_or_none = self._spec_cache.get(ck)
            if spec_or_none is None:
                try:
                    spec_or_none = validate_job(dict_from(d.spec))
                except ConfigError as e:
                    log.error("master sent an invalid spec for %s/%d: %s", d.job, d.index, e)
                    continue
            spec = specs[ck] = spec_or_none
            des = Desired(
                job=d.job,
                index=d.index,
                incarnation=d.incarnation,
                version=d.version,
                spec=spec,
                ports=dict(d.ports),
            )
            desired[des.key] = des
        self._spec_cache = specs
        with self.lock:
            self.desired = desired
            self.cell = resp.cell or self.cell
            self._known_generation = resp.generation
            for key in desired:
                if key not in self.states.tasks:
                    self.first_seen.setdefault(key, received)
            for key in [k for k in self.first_seen if k not in desired]:
                del self.first_seen[key]
            gone = self.states.forget_reported(reported, set(desired))
            for key in gone:
                self.usage.pop(key, None)
                self.health.pop(key, None)
            live = {k[:2] for k in self.states.tasks}
            for key in gone:
                if key[:2] not in live:
                    self._forgotten_at[key[:2]] = time.monotonic()
            if gone:
                self._mark_dirty()
        self.converge()

    # ----- carrying out the state machine ---------------------------------------------------

    def converge(self) -> None:
        with self.lock:
            actions = self.states.reconcile(list(self.desired.values()), now_ms())
            if actions:
                self._mark_dirty()
        for a in actions:
            if isinstance(a, Start):
                threading.Thread(target=self._start_task, args=(a.key,), daemon=True).start()
            elif isinstance(a, Kill):
                threading.Thread(target=self._kill_task, args=(a.key,), daemon=True).start()

    def _ports_for(self, key: TaskKey, names: list[str], given: dict[str, int]) -> dict[str, int]:
        """The task's ports: the master's, else the ones it had (restarts keep their ports),
        unless another live task holds one or something else on the host bound it meanwhile;
        new ones from --port-range otherwise (free on the host too, see borglet/ports.py)."""
        with self.lock:
            t = self.states.tasks[key]
            in_use = {
                p
                for k, o in self.states.tasks.items()
                if k != key and o.phase != DONE
                for p in o.ports.values()
            }
            ports = self.ports.assign(names, [given, t.ports], in_use)
            before = {**t.ports, **given}
            for n, p in ports.items():
                if n in before and before[n] != p:
                    log.warning(
                        "task %s/%d: its port %s %d is taken now, it gets %d",
                        key[0],
                        key[1],
                        n,
                        before[n],
                        p,
                    )
            t.ports = ports
            return dict(ports)

    def _start_task(self, key: TaskKey) -> None:
        with self.lock:
            d = self.desired.get(key)
            if d is None:  # no longer wanted: let the next reconcile retire it
                self.states.launch_aborted(key)
                return
        spec = d.spec
        task_id = task_id_of(key)
        user = spec.run_as or self.cfg.task_user
        try:
            self.accounts.resolve(spec.run_as)
            if self.unreachable_dir and user != "root":
                raise UserError(
                    f"sandbox not reachable by {user}: {self.unreachable_dir} is not searchable"
                )
            ports = self._ports_for(key, list(spec.requirements.ports), d.ports)
        except UserError as e:
            self._permanent_failure(key, f"run_as: {e}")
            return
        except ValueError as e:
            self._permanent_failure(key, f"ports: {e}")
            return
        env = dict(spec.env)
        env.update(
            {
                "BORG_CELL": self.cell,
                "BORG_JOB": d.job,
                "BORG_TASK_INDEX": str(d.index),
                "BORG_MACHINE": self.cfg.name,
                "BORG_TASK_VERSION": str(d.version),
            }
        )
        for i, p in enumerate(spec.requirements.ports):
            env[f"BORG_PORT_{p.upper().replace('-', '_')}"] = str(ports[p])
            if i == 0:
                env["BORG_PORT"] = str(ports[p])
        try:
            proc = self.runtime.start(
                SpawnSpec(
                    task_id=task_id,
                    argv=list(spec.command),
                    env=env,
                    sandbox=self.sandbox_of(d.job, d.index, d.incarnation),
                    user=user,
                    limits=Limits(
                        cpu=spec.requirements.cpu,
                        memory=spec.requirements.ram,
                        pids=self.cfg.task_pids_max,
                    ),
                )
            )
        except UserError as e:
            self._permanent_failure(key, f"run_as: {e}")
            return
        except ExecError as e:
            self._permanent_failure(key, str(e), e.code)
            return
        except (OSError, ValueError, CgroupError) as e:
            log.warning("task %s/%d could not start: %s", d.job, d.index, e)
            with self.lock:
                self.states.launch_failed(key, f"start-failed: {e}", now_ms())
                self._mark_dirty()
            self._timer_wake.set()
            self.wake.set()
            return
        if self._stop.is_set() and self.cfg.kill_tasks_on_exit:
            # The Borglet began shutting down (and sweeping its tasks) while this start ran:
            # do not leave the new process behind unrecorded.
            log.info("task %s/%d started during shutdown; stopping it", d.job, d.index)
            with contextlib.suppress(Exception):
                self.runtime.stop(task_id, proc, grace_s=0)
            return
        with self.lock:
            self.procs[key] = proc
            self.states.started(key, now_ms(), proc.pid, proc.shim_pid, proc.shim_start)
            t = self.states.tasks[key]
            self._track_health(t)
            restarts = t.restarts
            seen = self.first_seen.pop(key, None)
            self._mark_dirty()
        latency = ""
        if seen is not None:
            took = time.monotonic() - seen
            self.start_latency.observe(took)
            latency = f", {took * 1000:.1f} ms after desired"
        self._watch(key, proc)
        log.info(
            "task %s/%d started (pid %d, restarts %d%s)",
            d.job,
            d.index,
            proc.pid,
            restarts,
            latency,
        )
        self.wake.set()

    def _permanent_failure(self, key: TaskKey, reason: str, code: int | None = None) -> None:
        """The task can never run here as specified: failed, no restart, no storm."""
        log.warning("task %s/%d failed: %s", key[0], key[1], reason)
        with self.lock:
            self.states.start_failed(key, reason, code)
            self.first_seen.pop(key, None)
            self._mark_dirty()
        self.wake.set()

    def _kill_task(self, key: TaskKey) -> None:
        with self.lock:
            proc = self.procs.get(key)
            t = self.states.tasks.get(key)
            grace = t.spec.kill_timeout_ms / 1000 if t is not None else 10.0
        self.runtime.stop(task_id_of(key), proc, grace_s=grace)
        if proc is None:
            with self.lock:
                self.states.killed(key)
                self._mark_dirty()
        else:
            self._handle_exit(key, from_watcher=False)
        log.info("task %s/%d stopped", key[0], key[1])
        self.wake.set()

    def _handle_exit(self, key: TaskKey, from_watcher: bool = False) -> None:
        """A task's shim has exited: collect the status, clean up, apply the restart policy.

        Whoever takes the process out of `procs` handles it, exactly once. While we are
        stopping a task ourselves the killer does it, after the whole cgroup is gone (so a
        restart never finds the old processes still in the cgroup).
        """
        with self.lock:
            t = self.states.tasks.get(key)
            if from_watcher and t is not None and t.phase == STOPPING:
                return
            proc = self.procs.pop(key, None)
        if proc is None:
            return
        task_id = task_id_of(key)
        status = proc.status()
        lost = status is None
        if status is None:
            status = ExitStatus(code=137, signal=9)
        try:
            st = self.runtime.stats(task_id)
        except CgroupError:
            st = CgroupStats(0.0, 0, 0)
        oom = st.oom_kills > 0
        # Whatever the main process left behind in its cgroup goes with it.
        self.runtime.stop(task_id, proc, grace_s=0)
        self.runtime.forget(proc)
        with self.lock:
            t = self.states.tasks.get(key)
            before = t.restarts if t is not None else 0
            self.states.exited(
                key, status.returncode(), oom, now_ms(), pids_limit=st.pids_limit_hits > 0
            )
            t = self.states.tasks.get(key)
            if t is None:
                return
            if t.restarts > before:
                k = (key[0], key[1])
                self.restarts_total[k] = self.restarts_total.get(k, 0) + t.restarts - before
            if lost and t.reason.startswith("signal"):
                t.reason = LOST_SHIM_REASON
            if oom:
                k = (key[0], key[1])
                self.oom_kills[k] = self.oom_kills.get(k, 0) + 1
            self.health.pop(key, None)
            self.usage.pop(key, None)
            self._mark_dirty()
            log.info(
                "task %s/%d exited: code %s%s -> %s",
                key[0],
                key[1],
                t.exit_code,
                f" ({t.reason})" if t.reason else "",
                t.observed_state() if t.phase == DONE else f"restart #{t.restarts}",
            )
        self._timer_wake.set()
        self.wake.set()

    # ----- watching shims ------------------------------------------------------------------

    def _watch(self, key: TaskKey, proc: TaskProcess) -> None:
        """Have the watch thread wake up when the task's shim exits."""
        fd = proc.open_pidfd()
        if fd < 0:
            threading.Thread(target=self._handle_exit, args=(key, True), daemon=True).start()
            return
        with self._watch_lock:
            self._watch_new.append((fd, key))
        with contextlib.suppress(OSError):
            os.write(self._watch_w, b"x")

    def _watch_loop(self) -> None:
        poller = select.poll()
        poller.register(self._watch_r, select.POLLIN)
        fds: dict[int, TaskKey] = {}
        while not self._stop.is_set():
            with self._watch_lock:
                new, self._watch_new = self._watch_new, []
            for fd, key in new:
                fds[fd] = key
                poller.register(fd, select.POLLIN)
            try:
                events = poller.poll()
            except InterruptedError:
                continue
            for fd, _ in events:
                if fd == self._watch_r:
                    with contextlib.suppress(BlockingIOError):
                        os.read(self._watch_r, 4096)
                    continue
                key = fds.pop(fd)
                poller.unregister(fd)
                os.close(fd)
                threading.Thread(target=self._handle_exit, args=(key, True), daemon=True).start()
        for fd in fds:
            os.close(fd)

    # ----- timers: restart backoffs, state file ---------------------------------------------

    def _timer_loop(self) -> None:
        while not self._stop.is_set():
            with self.lock:
                nxt = self.states.next_wakeup_ms()
            now = now_ms()
            if nxt is not None and nxt <= now:
                self.converge()
                continue
            self._flush_state()
            timeout = 5.0 if nxt is None else max(0.005, (nxt - now) / 1000)
            self._timer_wake.wait(min(timeout, 5.0))
            self._timer_wake.clear()

    # ----- usage ----------------------------------------------------------------------------

    def _usage_loop(self) -> None:
        """Refresh per-task usage from the cgroup files every --usage-interval (bounded cost:
        a few small reads per running task), and notice tasks stuck at pids.max."""
        last_gc = 0.0
        while not self._stop.wait(self.cfg.usage_interval_s):
            self.refresh_usage()
            if time.monotonic() - last_gc >= 60.0:
                last_gc = time.monotonic()
                self.gc_sandboxes()
                self.prune_counters()

    def refresh_usage(self) -> None:
        with self.lock:
            keys = [k for k, t in self.states.tasks.items() if t.phase == ACTIVE]
        changed = False
        for key in keys:
            try:
                st = self.runtime.stats(task_id_of(key))
            except CgroupError:
                continue
            with self.lock:
                prev = self.usage.get(key)
                self.usage[key] = st
                t = self.states.tasks.get(key)
                if t is None or t.phase != ACTIVE:
                    continue
                if st.pids_limit_hits > (prev.pids_limit_hits if prev else 0):
                    if t.reason != "pids-limit":
                        log.warning("task %s/%d hit its pids limit", key[0], key[1])
                        changed = True
                    self.states.pids_limit_hit(key)
        if changed:
            self.wake.set()

    # ----- health checks --------------------------------------------------------------------

    def _track_health(self, t: LocalTask) -> None:
        check = HealthCheck.from_spec(t.spec.health)
        if check is not None:
            self.health[t.key] = HealthTracker.starting(check, t.started_ms)
            self._health_wake.set()

    def _health_loop(self) -> None:
        pool = futures.ThreadPoolExecutor(max_workers=4, thread_name_prefix="probe")
        try:
            while not self._stop.is_set():
                now = now_ms()
                due: list[tuple[TaskKey, HealthTracker, LocalTask]] = []
                nxt = now + 5000
                with self.lock:
                    for key, tr in self.health.items():
                        t = self.states.tasks.get(key)
                        if t is None or t.phase != ACTIVE:
                            continue
                        if tr.due(now):
                            tr.begin(now)
                            due.append((key, tr, t))
                        if not tr.in_flight:
                            nxt = min(nxt, tr.next_ms)
                for key, tr, t in due:
                    pool.submit(self._probe, key, tr, t)
                self._health_wake.wait(max(0.005, (nxt - now_ms()) / 1000))
                self._health_wake.clear()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _probe(self, key: TaskKey, tr: HealthTracker, t: LocalTask) -> None:
        check = tr.check
        timeout = check.timeout_ms / 1000
        try:
            if check.kind == EXEC:
                acct = self.accounts.resolve(t.spec.run_as)
                user = (acct.uid, acct.gid, list(acct.groups))
                env = dict(t.spec.env)
                env.setdefault("PATH", DEFAULT_PATH)
                for name, port in t.ports.items():
                    env[f"BORG_PORT_{name.upper().replace('-', '_')}"] = str(port)
                sandbox = self.sandbox_of(*key)
                # In the task's cgroup: the check counts against its pids and memory limits
                # (a check that forks or allocates cannot escape them).
                procs = self.driver.procs_files(task_id_of(key)) if self.driver else []
                ok = probe_exec(check.argv, env, sandbox, user, timeout, procs_files=procs)
            else:
                port = t.ports.get(check.port, 0)
                if check.kind == HTTP:
                    ok = port > 0 and probe_http(port, check.path, timeout)
                else:
                    ok = port > 0 and probe_tcp(port, timeout)
        except Exception as e:  # a probe must never kill the health thread
            log.warning("health check of %s/%d failed to run: %s", key[0], key[1], e)
            ok = False
        kill = None
        with self.lock:
            if self.health.get(key) is not tr:
                return  # the task restarted or went away meanwhile
            went_bad = tr.record(ok)
            self.states.set_health(key, tr.status)
            if went_bad:
                log.warning(
                    "task %s/%d unhealthy after %d failed %s checks",
                    key[0],
                    key[1],
                    tr.failures,
                    check.kind,
                )
                kill = self.states.unhealthy(key)
                self._mark_dirty()
        self._health_wake.set()
        if kill is not None:
            threading.Thread(target=self._kill_task, args=(key,), daemon=True).start()
        self.wake.set()

    # ----- HTTP ---------------------------------------------------------------------------

    def _start_http(self) -> ThreadingHTTPServer:
        borglet = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    if borglet.state_error:
                        body, code = f"{borglet.state_error}\n".encode(), 503
                    else:
                        body, code = b"ok\n", 200
                    ctype = "text/plain"
                elif path == "/metrics":
                    body, ctype, code = generate_latest(borglet.registry), CONTENT_TYPE_LATEST, 200
                else:
                    body, ctype, code = b"not found\n", "text/plain", 404
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        server = ThreadingHTTPServer(_split(self.cfg.http), Handler)
        server.daemon_threads = True
        threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
        return server

    def find_sandbox(self, job: str, index: int, incarnation: str = "") -> str | None:
        """The sandbox of that incarnation; without one, of the copy this Borglet runs (or
        knows) for job/index, else the newest one left on disk."""
        if incarnation:
            path = self.sandbox_of(job, index, incarnation)
            return path if _is_real_dir(path) else None
        with self.lock:
            known = [
                (t.phase != DONE, k) for k, t in self.states.tasks.items() if k[:2] == (job, index)
            ]
        if known:
            with contextlib.suppress(ValueError):  # an odd key from an old state file
                path = self.sandbox_of(*max(known)[1])
                if _is_real_dir(path):
                    return path
        tasks_dir = os.path.join(self.cfg.data_dir, "tasks")
        prefix = f"{job}.{index}"
        try:
            found = [
                e
                for e in os.scandir(tasks_dir)
                if (e.name == prefix or e.name.startswith(prefix + "."))
                and e.is_dir(follow_symlinks=False)
            ]
        except OSError:
            return None
        if not found:
            return None
        return max(found, key=lambda e: e.stat(follow_symlinks=False).st_mtime).path

    def task_running(self, job: str, index: int, sandbox: str) -> bool:
        """Whether the task whose sandbox this is may still write to its logs (running, in a
        restart backoff, or being stopped): `logs -f` ends once it is finished for good."""
        with self.lock:
            for k, t in self.states.tasks.items():
                if k[:2] == (job, index) and os.path.basename(sandbox) == task_id_of(k):
                    return t.phase != DONE
        return False


def _is_real_dir(path: str) -> bool:
    """A directory itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_tree(path: str) -> None:
    """Delete a sandbox (a tree its task owns and may fill with links) without ever following
    a link out of it: shutil.rmtree's fd-based walk (openat/unlinkat relative to each opened
    directory, checked against lstat) deletes a link, never what it points to. Refuses to run
    on a Python whose rmtree lacks that walk rather than fall back to the path-based one."""
    if not shutil.rmtree.avoids_symlink_attacks:
        raise RuntimeError("shutil.rmtree is not symlink-attack safe on this platform")
    shutil.rmtree(path, ignore_errors=True)


def _first_closed_dir(path: str) -> str:
    """The first directory on `path` that other users cannot traverse, or ''."""
    p = os.path.abspath(path)
    while True:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return ""
        p = parent


FOLLOW_POLL_S = 0.2
COUNTER_RETENTION_S = 600.0
"""How long /metrics keeps a forgotten task index's restart and OOM counters."""
SANDBOX_RETENTION_S = 3600.0
"""How long a sandbox of a task this Borglet no longer knows is kept after its last change."""


INCARNATION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an incarnation id may look like (the master makes 12 hex digits): never a path."""
MAX_TAIL_BYTES = 1 << 40
"""ReadLogs' tail_bytes beyond this is a caller's mistake, not a log size."""
_OPEN_TASK_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TaskFileError(Exception):
    """A task file the Borglet will not serve: missing, or something the task planted in its
    place (a link, a FIFO, a directory, a file of another account). The message is one line
    for the user and never contains the file's content."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_sandbox_dir(sandbox: str) -> int:
    """An fd of the sandbox directory itself, never of what a link in its place points to.

    Every open of a task file is relative to this fd and names one component, so the task
    (which owns the sandbox and everything in it) cannot redirect the root Borglet elsewhere.
    """
    try:
        return os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TaskFileError(grpc.StatusCode.NOT_FOUND, "no sandbox") from None
    except OSError as e:
        raise TaskFileError(
            grpc.StatusCode.FAILED_PRECONDITION, f"sandbox is not a directory ({e.strerror})"
        ) from None


def open_task_file(dir_fd: int, name: str) -> int:
    """Open `name` (one path component) in the sandbox `dir_fd` for reading, as root, safely.

    O_NOFOLLOW refuses a link the task planted (e.g. to /etc/shadow), O_NONBLOCK keeps a FIFO
    or a leased file from blocking the thread, and the fstat checks refuse anything but a
    regular file with one link owned by the sandbox's owner (the task's account): a hard link
    to a file of root or of another account is refused even where protected_hardlinks is off.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    try:
        fd = os.open(name, _OPEN_TASK_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        raise TaskFileError(grpc.StatusCode.NOT_FOUND, f"no {name} log yet") from None
    except OSError as e:
        raise TaskFileError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{name} is not a regular file of the task (a link or other special file)"
            f" ({e.strerror}): not served",
        ) from None
    try:
        st = os.fstat(fd)
        owner = os.fstat(dir_fd).st_uid
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_nlink != 1:
            why = f"a hard link ({st.st_nlink} links)"
        elif st.st_uid != owner:
            why = f"owned by uid {st.st_uid}, not by the task's uid {owner}"
        if why:
            raise TaskFileError(grpc.StatusCode.FAILED_PRECONDITION, f"{name} is {why}: not served")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def follow_file(path: str, tail_bytes: int, follow: bool, active: Any, writing: Any = None) -> Any:
    """Yield the file's bytes; with `follow`, keep yielding what is appended, across
    rotations (the file renamed to path.1 and a new one created: the old one is read to its
    end first) and truncations, while `active()` is true and, when given, `writing()` says
    the task may still write (once it is finished, the rest is read and the stream ends).

    `path` is a task file: it is opened and re-checked relative to an fd of its directory,
    never following links (see open_task_file); TaskFileError when it is not servable."""
    name = os.path.basename(path)
    dir_fd = open_sandbox_dir(os.path.dirname(path) or ".")
    f = None
    try:
        f = os.fdopen(open_task_file(dir_fd, name), "rb")  # reopened on rotation
        ino = os.fstat(f.fileno()).st_ino
        if tail_bytes > 0:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - tail_bytes))
        while active():
            chunk = f.read(64 * 1024)
            if chunk:
                yield chunk
                continue
            if not follow:
                return
            if writing is not None and not writing():
                rest = f.read()  # written between the last read and the task's end
                if rest:
                    yield rest
                return
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino != ino:
                rest = f.read()
                if rest:
                    yield rest
                f.close()
                f = None
                f = os.fdopen(open_task_file(dir_fd, name), "rb")
                ino = os.fstat(f.fileno()).st_ino
                continue
            if st is not None and st.st_size < f.tell():
                f.seek(0)  # truncated in place
                continue
            time.sleep(FOLLOW_POLL_S)
    finally:
        if f is not None:
            f.close()
        os.close(dir_fd)


def check_logs_request(request: pb.ReadLogsRequest) -> str:
    """Why a ReadLogs request is malformed ('' when it is fine), checked before any disk
    access: job and incarnation become parts of a path under the data dir."""
    if not JOB_NAME_RE.fullmatch(request.job):
        return f"job {request.job[:80]!r} is not a valid job name (^{JOB_NAME_RE.pattern}$)"
    if not 0 <= request.index < MAX_REPLICAS:
        return f"index {request.index} is out of range (0..{MAX_REPLICAS - 1})"
    if request.incarnation and not INCARNATION_RE.fullmatch(request.incarnation):
        return f"incarnation {request.incarnation[:80]!r} is not valid (^{INCARNATION_RE.pattern}$)"
    if not 0 <= request.tail_bytes <= MAX_TAIL_BYTES:
        return f"tail_bytes {request.tail_bytes} is out of range (0..{MAX_TAIL_BYTES})"
    return ""


MAX_FOLLOWERS = 12
"""`logs -f` streams served at once: each holds one of the gRPC server's 16 threads for as
long as the client likes, so some are always left for plain reads."""


class _LogsServicer(borg_pb2_grpc.BorgletServicer):
    def __init__(self, b: Borglet) -> None:
        self.b = b
        self.followers = threading.BoundedSemaphore(MAX_FOLLOWERS)

    def ReadLogs(self, request: pb.ReadLogsRequest, context: grpc.ServicerContext) -> Any:
        uid = task_account_caller(context.peer(), self.b.task_uids)
        if uid is not None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"logs are not served to tasks of this machine (caller uid {uid})",
            )
            return
        bad = check_logs_request(request)
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
            return
        sandbox = self.b.find_sandbox(request.job, request.index, request.incarnation)
        if sandbox is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"no task {request.job}/{request.index} on this machine"
            )
            return
        path = os.path.join(sandbox, "stderr" if request.stderr else "stdout")
        job, index = request.job, request.index

        def running() -> bool:
            return self.b.task_running(job, index, sandbox)

        if request.follow and not self.followers.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_FOLLOWERS} logs -f streams are open on this machine: try again later",
            )
            return
        try:
            for chunk in follow_file(
                path, request.tail_bytes, request.follow, context.is_active, running
            ):
                yield pb.LogChunk(data=chunk)
        except TaskFileError as e:
            context.abort(e.code, f"{job}/{index}: {e}")
        finally:
            if request.follow:
                self.followers.release()
