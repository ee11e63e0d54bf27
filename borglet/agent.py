"""The Borglet's I/O shell: sync with the master, carry out the task state machine's actions.

The sync loop is a long-poll: each call reports every local task's observed state and gets
back the full desired set for this machine (level-triggered, so a lost reply or a restarted
master costs nothing but a round). A local event - a task exiting, a kill finishing - cancels
the call in flight so the master hears about it at once instead of at the next heartbeat.
"""

from __future__ import annotations

import contextlib
import glob
import logging
import os
import socket
import stat
import threading
import time
from concurrent import futures
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import grpc
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from borglet.metrics import BorgletCollector
from borglet.runtime.cgroups import CgroupDriver, Limits, detect
from borglet.runtime.process import ProcessRuntime, SpawnSpec, TaskProcess, UserError
from borglet.state import ACTIVE, Desired, Kill, Start, TaskKey, TaskStates
from borgmaster.convert import dict_from
from cfg.errors import ConfigError
from cfg.schema import validate_job
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

log = logging.getLogger("borglet")

SYNC_WAIT_MS = 1000
TASK_PIDS_MAX = 4096


def now_ms() -> int:
    return int(time.monotonic() * 1000)


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
    allow_root: bool = False
    kill_tasks_on_exit: bool = False
    cgroup_root: str = "/sys/fs/cgroup"
    cgroup_parent: str = ""


def task_id_of(key: TaskKey) -> str:
    job, index, inc = key
    return f"{job}.{index}.{inc}"


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("0.0.0.0", 0))
        return int(s.getsockname()[1])


class Borglet:
    def __init__(self, cfg: BorgletConfig, driver: CgroupDriver | None = None) -> None:
        self.cfg = cfg
        parent = cfg.cgroup_parent or f"borgcell/{cfg.name}"
        self.driver = driver if driver is not None else detect(cfg.cgroup_root, parent)
        self.runtime = ProcessRuntime(self.driver, allow_root=cfg.allow_root)
        self.states = TaskStates()
        self.procs: dict[TaskKey, TaskProcess] = {}
        self.desired: dict[TaskKey, Desired] = {}
        self.lock = threading.RLock()
        self.wake = threading.Event()
        self._stop = threading.Event()
        self._master_idx = 0
        self._known_generation = -1
        self.connected = False
        self.unreachable_dir = ""
        self.cell = "borgcell"  # the cell's name, as the master reports it
        self.oom_kills: dict[tuple[str, int], int] = {}
        self.grpc_server: grpc.Server | None = None
        self.http_server: ThreadingHTTPServer | None = None
        self._threads: list[threading.Thread] = []
        self.registry = CollectorRegistry()
        self.registry.register(BorgletCollector(self))

    # ----- lifecycle ----------------------------------------------------------------------

    def start(self) -> None:
        tasks_dir = os.path.join(self.cfg.data_dir, "tasks")
        os.makedirs(tasks_dir, exist_ok=True)
        os.chmod(tasks_dir, 0o711)
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
            self._remove_leftovers()
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=16))
        borg_pb2_grpc.add_BorgletServicer_to_server(_LogsServicer(self), server)
        if server.add_insecure_port(self.cfg.grpc) == 0:
            raise OSError(f"cannot bind gRPC to {self.cfg.grpc}")
        server.start()
        self.grpc_server = server
        self.http_server = self._start_http()
        for fn, name in ((self._sync_loop, "sync"), (self._reaper_loop, "reaper")):
            th = threading.Thread(target=fn, name=name, daemon=True)
            th.start()
            self._threads.append(th)
        log.info(
            "borglet %s up: cpu %g, memory %d MiB, cgroups %s, masters %s",
            self.cfg.name,
            self.cfg.cpu,
            self.cfg.memory // 2**20,
            f"v{self.driver.version}" if self.driver else "none",
            ",".join(self.cfg.masters),
        )

    def _remove_leftovers(self) -> None:
        """Tasks of a previous run of this Borglet are not re-adopted yet: stop them cleanly
        (the master's desired set restarts what is still wanted) rather than run twice."""
        assert self.driver is not None
        for name in self.driver.list():
            log.info("stopping leftover task cgroup %s", name)
            self.runtime.stop(name, None, grace_s=2.0)

    def stop(self) -> None:
        self._stop.set()
        self.wake.set()
        if self.cfg.kill_tasks_on_exit:
            with self.lock:
                keys = list(self.procs)
            threads = [
                threading.Thread(target=self._kill_task, args=(k,), daemon=True) for k in keys
            ]
            for th in threads:
                th.start()
            for th in threads:
                th.join(timeout=30)
            if self.driver is not None:
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
        for th in self._threads:
            th.join(timeout=5)
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5).wait(2)
        if self.http_server is not None:
            self.http_server.shutdown()
        log.info("borglet %s stopped", self.cfg.name)

    # ----- talking to the master ----------------------------------------------------------

    def _request(self, wait_ms: int) -> tuple[pb.SyncRequest, set[TaskKey]]:
        with self.lock:
            reports = [t.report() for t in self.states.tasks.values()]
        keys = {(r["job"], r["index"], r["incarnation"]) for r in reports}
        req = pb.SyncRequest(
            machine=self.cfg.name,
            address=self.cfg.grpc,
            http=self.cfg.http,
            capacity=pb.Resources(
                cpu=self.cfg.cpu, ram=self.cfg.memory, disk=self.cfg.disk, gpu=self.cfg.gpu
            ),
            attrs=self.cfg.attrs,
            taints=[pb.Taint(**t) for t in self.cfg.taints],
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
            req, reported = self._request(SYNC_WAIT_MS if self.connected else 0)
            fut = stub.Sync.future(req, timeout=SYNC_WAIT_MS / 1000 + 10)
            while not fut.done() and not self._stop.is_set():
                if self.wake.wait(0.05) and not fut.done():
                    fut.cancel()
                    break
            if self._stop.is_set():
                fut.cancel()
                break
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
        desired: dict[TaskKey, Desired] = {}
        for d in resp.tasks:
            try:
                spec = validate_job(dict_from(d.spec))
            except ConfigError as e:
                log.error("master sent an invalid spec for %s/%d: %s", d.job, d.index, e)
                continue
            des = Desired(
                job=d.job,
                index=d.index,
                incarnation=d.incarnation,
                version=d.version,
                spec=spec,
                ports=dict(d.ports),
            )
            desired[des.key] = des
        with self.lock:
            self.desired = desired
            self.cell = resp.cell or self.cell
            self._known_generation = resp.generation
            self.states.forget_reported(reported, set(desired))
        self.converge()

    # ----- carrying out the state machine ---------------------------------------------------

    def converge(self) -> None:
        with self.lock:
            actions = self.states.reconcile(list(self.desired.values()), now_ms())
        for a in actions:
            if isinstance(a, Start):
                self._start_task(a.key)
            elif isinstance(a, Kill):
                threading.Thread(target=self._kill_task, args=(a.key,), daemon=True).start()

    def _start_task(self, key: TaskKey) -> None:
        with self.lock:
            d = self.desired.get(key)
            if d is None:  # no longer wanted: let the next reconcile retire it
                self.states.launch_aborted(key)
                return
        spec = d.spec
        task_id = task_id_of(key)
        ports = dict(d.ports)
        for p in spec.requirements.ports:
            ports.setdefault(p, _free_port())
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
            env[f"BORG_PORT_{p.upper()}"] = str(ports[p])
            if i == 0:
                env["BORG_PORT"] = str(ports[p])
        sandbox = os.path.join(self.cfg.data_dir, "tasks", f"{d.job}.{d.index}")
        user = spec.run_as or self.cfg.task_user
        try:
            if self.unreachable_dir and user != "root":
                raise UserError(
                    f"sandbox not reachable by {user}: {self.unreachable_dir} is not searchable"
                )
            proc = self.runtime.start(
                SpawnSpec(
                    task_id=task_id,
                    argv=list(spec.command),
                    env=env,
                    sandbox=sandbox,
                    user=user,
                    limits=Limits(cpu=spec.requirements.cpu, memory=spec.requirements.ram),
                )
            )
        except (UserError, OSError, ValueError) as e:
            log.warning("task %s/%d could not start: %s", d.job, d.index, e)
            with self.lock:
                self.states.start_failed(key, f"start-failed: {e}")
            self.wake.set()
            return
        with self.lock:
            self.procs[key] = proc
            self.states.started(key, now_ms())
            restarts = self.states.tasks[key].restarts
        log.info("task %s/%d started (pid %d, restarts %d)", d.job, d.index, proc.pid, restarts)
        self.wake.set()

    def _kill_task(self, key: TaskKey) -> None:
        with self.lock:
            proc = self.procs.get(key)
            t = self.states.tasks.get(key)
            grace = t.spec.kill_timeout_ms / 1000 if t is not None else 10.0
        self.runtime.stop(task_id_of(key), proc, grace_s=grace)
        with self.lock:
            self.procs.pop(key, None)
            self.states.killed(key)
        log.info("task %s/%d killed", key[0], key[1])
        self.wake.set()

    def _reaper_loop(self) -> None:
        """Notice exited processes and restart backoffs that have run out."""
        while not self._stop.wait(0.1):
            exited: list[tuple[TaskKey, TaskProcess, int]] = []
            with self.lock:
                for key, proc in list(self.procs.items()):
                    t = self.states.tasks.get(key)
                    if t is None or t.phase != ACTIVE:
                        continue
                    rc = proc.poll()
                    if rc is not None:
                        exited.append((key, proc, rc))
                        del self.procs[key]
            for key, proc, rc in exited:
                task_id = task_id_of(key)
                oom = self.runtime.oom_killed(task_id)
                if oom:
                    k = (key[0], key[1])
                    self.oom_kills[k] = self.oom_kills.get(k, 0) + 1
                # Whatever the main process left behind in its cgroup goes with it.
                self.runtime.stop(task_id, proc, grace_s=0)
                with self.lock:
                    self.states.exited(key, rc, oom, now_ms())
                    t = self.states.tasks[key]
                log.info(
                    "task %s/%d exited: code %s%s -> %s",
                    key[0],
                    key[1],
                    t.exit_code,
                    f" ({t.reason})" if t.reason else "",
                    t.observed_state() if t.phase == "done" else f"restart #{t.restarts}",
                )
                self.wake.set()
            with self.lock:
                nxt = self.states.next_wakeup_ms()
            if nxt is not None and nxt <= now_ms():
                self.converge()

    # ----- HTTP ---------------------------------------------------------------------------

    def _start_http(self) -> ThreadingHTTPServer:
        borglet = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:
                return

            def do_GET(self) -> None:
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    body, ctype, code = b"ok\n", "text/plain", 200
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

    def find_sandbox(self, job: str, index: int) -> str | None:
        path = os.path.join(self.cfg.data_dir, "tasks", f"{job}.{index}")
        return path if os.path.isdir(path) else None


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


class _LogsServicer(borg_pb2_grpc.BorgletServicer):
    def __init__(self, b: Borglet) -> None:
        self.b = b

    def ReadLogs(self, request: pb.ReadLogsRequest, context: grpc.ServicerContext) -> Any:
        sandbox = self.b.find_sandbox(request.job, request.index)
        if sandbox is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"no task {request.job}/{request.index} on this machine"
            )
            return
        path = os.path.join(sandbox, "stderr" if request.stderr else "stdout")
        if not os.path.isfile(path):
            context.abort(grpc.StatusCode.NOT_FOUND, f"no {os.path.basename(path)} log yet")
        with open(path, "rb") as f:
            if request.tail_bytes > 0:
                size = os.fstat(f.fileno()).st_size
                f.seek(max(0, size - request.tail_bytes))
            while context.is_active():
                chunk = f.read(64 * 1024)
                if chunk:
                    yield pb.LogChunk(data=chunk)
                    continue
                if not request.follow:
                    return
                time.sleep(0.2)
