"""The Borglet: composes the state machine with the parts that do I/O.

Everything that happens becomes an event for `borglet/state.py` (`feed`), and the shell carries
out the instructions it returns, in order, under one lock:

- `Start` / `Kill` go to the task's serial runner (`borglet/runner.py`): one queue per task,
  so a kill never overtakes the start it undoes and an exit is collected once; `Adopt` (at
  start) finds a restored task's supervisor again;
- the runner's outcome comes back as an event (`Started`, `StartFailed`, `Exited`, ...);
- `Persist` marks the state file dirty (`borglet/checkpoint.py`, written before each report);
- `Report` pokes the master link (`borglet/link.py`) so the master hears of it now;
- `WatchHealth` / `EndRun` start and stop the run's health probes (`borglet/probes.py`);
- `WakeAt` re-arms the timer that sends `Tick` when a restart backoff ends;
- `Forget` drops what the shell holds for a task.

The exit watcher (`borglet/watcher.py`) turns a supervisor's exit into a step on that task's
runner; housekeeping (`borglet/housekeeping.py`) refreshes usage and deletes old sandboxes;
`borglet/logs.py` serves task logs over gRPC. What the Borglet knows is written to the state
file before the master hears of it, so a Borglet that crashed or was stopped re-adopts its
running tasks when it comes back (state file + shim pid and start time + the task's cgroup).
"""

from __future__ import annotations

import glob
import logging
import os
import threading
import time
from concurrent import futures
from functools import partial
from http.server import ThreadingHTTPServer
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Histogram

from borglet.accounts import TaskAccounts, lookup_quiet
from borglet.checkpoint import Checkpoint, Written
from borglet.clock import now_ms
from borglet.config import BorgletConfig
from borglet.devices import Devices, Gpu, GpuUsage, denied_nodes, gpu_env, open_devices
from borglet.execs import ExecError, ExecSessions, ExecTarget
from borglet.housekeeping import COUNTER_RETENTION_S, Housekeeper
from borglet.http import serve_http
from borglet.launch import NotLaunched, account_of, spawn, task_env
from borglet.link import Link, StreamLink
from borglet.logs import MAX_FOLLOWERS, LogsServicer
from borglet.metrics import BorgletCollector
from borglet.ports import PortAllocator
from borglet.probes import HealthProber
from borglet.runner import TaskRunners
from borglet.runtime.base import Process, Runtime
from borglet.runtime.cgroups import CgroupDriver, CgroupError, CgroupStats, detect
from borglet.runtime.process import SHIM_CACHE, ProcessRuntime
from borglet.sandboxes import (
    SANDBOX_RETENTION_S,
    find_sandbox,
    first_closed_dir,
    gc_sandboxes,
    sandbox_of,
    tasks_dir,
)
from borglet.state import (
    ACTIVE,
    DONE,
    STOPPING,
    Adopt,
    Adopted,
    Desired,
    DesiredSet,
    EndRun,
    Event,
    Exited,
    Forget,
    Instruction,
    Kill,
    Killed,
    LocalTask,
    MachineDown,
    MachineDownDone,
    Persist,
    PidsLimitHit,
    PortsAssigned,
    PruneCounters,
    Report,
    Restored,
    Start,
    StartAborted,
    Started,
    TaskKey,
    TaskStates,
    Tick,
    WakeAt,
    WatchHealth,
    task_id_of,
)
from borglet.watcher import ExitWatcher
from cfg.grpcauth import AuthInterceptor, Rule, server_credentials
from cfg.tls import Role
from proto.borg.v1 import borg_pb2_grpc

__all__ = [  # what tests and borglet/cli.py import from here
    "COUNTER_RETENTION_S",
    "MAX_FOLLOWERS",
    "SANDBOX_RETENTION_S",
    "Borglet",
    "BorgletConfig",
    "task_id_of",
]

log = logging.getLogger("borglet")

WARM_SHIMS = 2
"""Shims started ahead of need: a start then costs a fork and an exec, not an interpreter
start-up (~20 ms, far more on a busy machine)."""
EXIT_KILL_WAIT_S = 30.0
"""--kill-tasks-on-exit: how long the Borglet's exit waits for its tasks' kills."""


BORGLET_RULES = {
    "ReadLogs": Rule(frozenset({Role.MASTER}), "read task logs on a Borglet"),
    "Exec": Rule(frozenset({Role.MASTER}), "exec into tasks on a Borglet"),
}
"""Who may call a Borglet: masters (the user's right to a task's logs is the master's check)."""


class Borglet:
    def __init__(
        self,
        cfg: BorgletConfig,
        driver: CgroupDriver | None = None,
        runtime: Runtime | None = None,
        link: Link | None = None,
        devices: Devices | None = None,
    ) -> None:
        """`runtime`, `link` and `devices` are for tests (FakeRuntime, a fake master link, a
        fake NVML); by default tasks run through ProcessRuntime on the detected cgroups,
        sync with cfg.masters and get the GPUs `cfg.gpus` names."""
        self.cfg = cfg
        self.devices = devices if devices is not None else open_devices(cfg.gpus)
        self.gpus: dict[str, Gpu] = {}  # every device known, by id (guarded by lock)
        self._offered: list[str] = []  # the healthy ones, offered to the cell
        if runtime is None:
            parent = cfg.cgroup_parent or f"borgcell/{cfg.name}"
            drv = driver if driver is not None else detect(cfg.cgroup_root, parent)
            runtime = ProcessRuntime(
                drv,
                allow_root=cfg.allow_root,
                control_root=os.path.join(cfg.data_dir, "run"),
                log_max_size=cfg.log_max_size,
                log_keep=cfg.log_keep,
                warm_shims=WARM_SHIMS,
                shim_cache=os.path.join(cfg.data_dir, SHIM_CACHE),
            )
        self.runtime: Runtime = runtime
        self.accounts = TaskAccounts.of(cfg.task_user, cfg.task_users, cfg.allow_root)
        # Local callers running as these accounts are tasks: no logs for them (peers.py).
        self.task_uids = frozenset(
            a.uid for a in (lookup_quiet(n) for n in self.accounts.allowed) if a is not None
        )
        self.lock = threading.RLock()  # guards states, procs, usage, first_seen
        self.states = TaskStates()
        self.refresh_gpus()
        self.procs: dict[TaskKey, Process] = {}
        self.usage: dict[TaskKey, CgroupStats] = {}
        self.first_seen: dict[TaskKey, float] = {}
        self.cell = "borgcell"  # the cell's name, as the master reports it
        self.unreachable_dir = ""
        self.ports = PortAllocator(*cfg.port_range)
        self._stop = threading.Event()
        self._timer_wake = threading.Event()
        self._threads: list[threading.Thread] = []
        self.runners = TaskRunners()
        self._same_boot = True  # whether the state file was written in this boot
        self.checkpoint = Checkpoint(cfg.data_dir, self._snapshot)
        self.watcher = ExitWatcher(self.on_exit)
        self._execs = ExecSessions()
        self.link: Link = (
            link if link is not None else StreamLink(cfg, self, list(self.accounts.allowed))
        )
        self.prober = HealthProber(
            self._active,
            self.feed,
            self.accounts,
            lambda key: self.sandbox_of(*key),
            self.runtime.procs_files,
        )
        self.housekeeper = Housekeeper(
            cfg.usage_interval_s, self.refresh_usage, self.gc_sandboxes, self.prune_counters
        )
        self.grpc_server: grpc.Server | None = None
        self.http_server: ThreadingHTTPServer | None = None
        self.registry = CollectorRegistry()
        self.registry.register(BorgletCollector(self))
        self.start_latency = Histogram(
            "borg_task_start_latency_seconds",
            "From the desired state reaching the Borglet to the task's process running.",
            buckets=(0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 1.0, 2.5, 5.0),
            registry=self.registry,
        )

    # ----- what other parts read --------------------------------------------------------------

    @property
    def connected(self) -> bool:
        return self.link.connected

    @property
    def state_error(self) -> str:
        """Why the state file cannot be written ('' when it can): /healthz says it."""
        return self.checkpoint.error

    @property
    def state_path(self) -> str:
        return self.checkpoint.path

    def sandbox_of(self, job: str, index: int, incarnation: str) -> str:
        return sandbox_of(self.cfg.data_dir, job, index, incarnation)

    def _snapshot(self) -> list[dict[str, Any]]:
        with self.lock:
            return self.states.to_doc()

    def _active(self, key: TaskKey) -> LocalTask | None:
        with self.lock:
            t = self.states.tasks.get(key)
            return t if t is not None and t.phase == ACTIVE else None

    # ----- events in, instructions out --------------------------------------------------------

    def feed(self, ev: Event) -> None:
        """Hand one event to the state machine and carry out what it says, in order."""
        with self.lock:
            self._carry_out(self.states.handle(ev, now_ms()))

    def _carry_out(self, instructions: list[Instruction]) -> None:
        for i in instructions:
            if isinstance(i, Start):
                assert i.desired is not None
                self.runners.submit(i.key, partial(self._start, i.desired))
            elif isinstance(i, Kill):
                self.runners.submit(i.key, partial(self._kill, i.key, i.grace_s))
            elif isinstance(i, Adopt):
                self._adopt(i.key)
            elif isinstance(i, Persist):
                self.checkpoint.mark_dirty()
            elif isinstance(i, Report):
                self.link.poke()
            elif isinstance(i, WatchHealth):
                t = self.states.tasks.get(i.key)
                if t is not None:
                    self.prober.track(i.key, t.spec.health, i.started_ms)
            elif isinstance(i, EndRun):
                self.prober.untrack(i.key)
                self.usage.pop(i.key, None)
            elif isinstance(i, WakeAt):
                self._timer_wake.set()
            elif isinstance(i, Forget):
                self.prober.untrack(i.key)
                self.usage.pop(i.key, None)
                self.procs.pop(i.key, None)
                self.first_seen.pop(i.key, None)

    # ----- the master link's host -------------------------------------------------------------

    def state_written(self, wait_s: float) -> Written:
        """The master never hears of a task the state file does not know: without it a
        restarted Borglet could not re-adopt what it reported."""
        return self.checkpoint.written(wait_s)

    def reports(self) -> list[dict[str, Any]]:
        with self.lock:
            out = []
            for key, t in self.states.tasks.items():
                r = t.report()
                u = self.usage.get(key)
                if u is not None and t.phase in (ACTIVE, STOPPING):
                    r["cpu_seconds"] = u.cpu_seconds
                    r["memory_bytes"] = u.memory_bytes
                    r["memory_peak_bytes"] = u.memory_peak_bytes
                out.append(r)
            return out

    # ----- GPUs -------------------------------------------------------------------------------

    def refresh_gpus(self) -> bool:
        """Look at the devices again; a device that turned unhealthy stops being offered (and
        one that recovered is offered again). True when the offer changed."""
        found = self.devices.discover()
        offered = [g.id for g in found if g.healthy]
        with self.lock:
            before = self._offered
            for g in found:
                old = self.gpus.get(g.id)
                if not g.healthy and (old is None or old.healthy):
                    log.warning(
                        "GPU %s (%s) is unhealthy: no longer offered: %s", g.id, g.uuid, g.why
                    )
                elif g.healthy and old is not None and not old.healthy:
                    log.warning("GPU %s (%s) is healthy again: offered", g.id, g.uuid)
            self.gpus = {g.id: g for g in found}
            self._offered = offered
        return offered != before

    def offered_gpus(self) -> list[str]:
        with self.lock:
            return list(self._offered)

    def gpus_of(self, ids: list[str]) -> list[Gpu]:
        """The devices named `ids` (as this machine knows them; an id it does not know any
        more is taken as a device index, so the task still gets a precise environment)."""
        with self.lock:
            return [self.gpus.get(i) or Gpu(index=int(i)) for i in ids if i.isdigit()]

    def gpu_usage(self) -> list[tuple[TaskKey, Gpu, GpuUsage]]:
        """Per running task, each of its devices' usage (devices are never shared, so the
        device's usage is the task's); empty where the source cannot measure (declared)."""
        with self.lock:
            held = [
                (k, list(t.gpus))
                for k, t in self.states.tasks.items()
                if t.gpus and t.phase in (ACTIVE, STOPPING)
            ]
        out = []
        for key, ids in held:
            for g in self.gpus_of(ids):
                u = self.devices.usage(g)
                if u is not None:
                    out.append((key, g, u))
        return out

    def on_desired(self, desired: list[Desired], reported: frozenset[TaskKey], cell: str) -> None:
        received = time.monotonic()
        with self.lock:
            self.cell = cell or self.cell
            keys = {d.key for d in desired}
            for key in keys:
                if key not in self.states.tasks:
                    self.first_seen.setdefault(key, received)
            for key in [k for k in self.first_seen if k not in keys]:
                del self.first_seen[key]
            self.feed(DesiredSet(tuple(desired), reported))

    # ----- lifecycle --------------------------------------------------------------------------

    def start(self) -> None:
        tdir = tasks_dir(self.cfg.data_dir)
        os.makedirs(tdir, exist_ok=True)
        os.chmod(tdir, 0o711)
        run_dir = os.path.join(self.cfg.data_dir, "run")
        os.makedirs(run_dir, mode=0o700, exist_ok=True)
        os.chmod(run_dir, 0o700)  # shims' specs (task env) and exit statuses: root only
        self.unreachable_dir = first_closed_dir(tdir)
        if self.unreachable_dir:
            log.error(
                "%s is not searchable by other users: tasks running as unprivileged accounts "
                "cannot reach their sandboxes under %s (use a data dir on a world-searchable "
                "path)",
                self.unreachable_dir,
                tdir,
            )
        self.runtime.setup()
        self.watcher.start()
        self._recover()
        self.runtime.prefill()
        if self.cfg.grpc:
            # Logs (and exec) are served to masters only: they check the caller's identity
            # against the job's owner before relaying (SPEC part 2, Authorization).
            auth = AuthInterceptor(
                BORGLET_RULES, tls=self.cfg.tls is not None, closed_services=("borg.v1.Borglet",)
            )
            server = grpc.server(futures.ThreadPoolExecutor(max_workers=16), interceptors=[auth])
            borg_pb2_grpc.add_BorgletServicer_to_server(LogsServicer(self, self.task_uids), server)
            if self.cfg.tls is not None:
                bound = server.add_secure_port(self.cfg.grpc, server_credentials(self.cfg.tls))
            else:
                bound = server.add_insecure_port(self.cfg.grpc)
            if bound == 0:
                raise OSError(f"cannot bind gRPC to {self.cfg.grpc}")
            server.start()
            self.grpc_server = server
        if self.cfg.http:
            self.http_server = serve_http(
                self.cfg.http, lambda: self.state_error, self.registry, self.cfg.tls
            )
        th = threading.Thread(target=self._timer_loop, name="timer", daemon=True)
        th.start()
        self._threads.append(th)
        self.link.start()
        self.housekeeper.start()
        self.prober.start()
        log.info(
            "borglet %s up: cpu %g (reserved %g), memory %d MiB (reserved %d MiB), "
            "gpus %s (%s), %s, masters %s",
            self.cfg.name,
            self.cfg.offered_cpu,
            self.cfg.reserve_cpu,
            self.cfg.offered_memory // 2**20,
            self.cfg.reserve_memory // 2**20,
            ",".join(self.offered_gpus()) or "none",
            self.devices.source,
            self.runtime.isolation,
            ",".join(self.cfg.masters),
        )

    def stop(self) -> None:
        """Stop the agent. Tasks keep running (a new Borglet re-adopts them) unless the
        Borglet was started with --kill-tasks-on-exit (the dev cell)."""
        self._stop.set()
        self._timer_wake.set()
        # Sync, timers, health checks and usage end before anything is killed: the master
        # must not hear of tasks the shutdown kills, and nothing may restart them meanwhile.
        self.link.stop()
        self.prober.stop()
        self.housekeeper.stop()
        for th in self._threads:
            th.join(timeout=5)
        if self.cfg.kill_tasks_on_exit and not self.checkpoint.refused:
            self._kill_all_for_exit()
        self.watcher.stop()
        self._execs.close_all()
        self.checkpoint.flush(force=True)
        self.runtime.close()
        if self.grpc_server is not None:
            self.grpc_server.stop(grace=0.5).wait(2)
        if self.http_server is not None:
            self.http_server.shutdown()
        self.devices.close()
        log.info("borglet %s stopped", self.cfg.name)

    def _kill_all_for_exit(self) -> None:
        """--kill-tasks-on-exit: stop every task and forget the ones that were running, like
        a machine going down (see state.MachineDown); the next Borglet on this data dir
        starts them afresh when the master still wants them."""
        with self.lock:
            stopping = sum(1 for t in self.states.tasks.values() if t.phase == ACTIVE)
        self.feed(MachineDown())
        self.runners.wait_idle(EXIT_KILL_WAIT_S)
        # Whatever is left (a start that raced the shutdown) goes with the machine.
        for name in self.runtime.task_ids():
            self.runtime.stop(name, None, grace_s=0)
        tops: list[str] = []
        if not self.cfg.cgroup_parent:
            # The shared top `borgcell/` goes too once the last Borglet here leaves.
            root = self.cfg.cgroup_root
            tops = [os.path.join(root, "borgcell"), *glob.glob(os.path.join(root, "*", "borgcell"))]
        self.runtime.remove_parent(tops)
        self.feed(MachineDownDone())
        if stopping:
            log.info("stopped %d task(s) for the exit; the master still wants them", stopping)

    # ----- re-adoption ---------------------------------------------------------------------

    def _recover(self) -> None:
        """Re-adopt the tasks of an earlier run of this Borglet; clean up what is not ours.

        A task whose shim still runs is adopted as it is (same pids); one whose shim finished
        while we were away is reported with the exit status its shim recorded; one whose shim
        vanished without a status is reported failed (`supervisor-lost`). Cgroups of tasks the
        state file does not know are removed when empty and stopped otherwise (nobody could
        report on them). Tasks of an earlier boot are never adopted. A state file that cannot
        be read back makes the Borglet refuse: nothing is swept, started or reported.
        """
        loaded = self.checkpoint.load()
        if loaded.error:
            # Forgetting the file's tasks would sweep their live processes as unknown and
            # start them again beside themselves: touch nothing, run nothing, say why.
            log.error("%s", loaded.error)
            self.checkpoint.refuse(loaded.error)
            return
        self._same_boot = loaded.same_boot
        known = {task_id_of(t.key) for t in loaded.tasks}
        # Adopted, or finished while we were away: handled with their exits, not swept.
        watched = {task_id_of(t.key) for t in loaded.tasks if t.phase in (ACTIVE, STOPPING)}
        self.feed(Restored(loaded.tasks, loaded.same_boot))
        for name in self.runtime.task_ids():
            self.runtime.thaw(name)  # an earlier Borglet killed mid-SIGKILL left it frozen
            if name in watched:
                continue
            if self.runtime.busy(name):
                log.warning("stopping processes of unknown task cgroup %s", name)
                self.runtime.stop(name, None, grace_s=2.0)
            else:
                try:
                    self.runtime.remove_cgroup(name)
                except CgroupError:
                    pass
        run_dir = os.path.join(self.cfg.data_dir, "run")
        try:
            names = os.listdir(run_dir)
        except OSError:
            names = []
        for name in names:
            if name not in known:
                self.runtime.forget(self.runtime.orphan(name, os.path.join(run_dir, name), 0))
        self.checkpoint.flush()

    def _adopt(self, key: TaskKey) -> None:
        """Carry out Adopt (at start, under the lock): find the shim of a restored task."""
        tid = task_id_of(key)
        control = self.runtime.control_dir(tid)
        # A shim of an earlier boot is gone whatever /proc says now (its pid and start time
        # may belong to another process): never adopt across boots; collecting it as lost
        # also stops anything still in its cgroup.
        proc = self.runtime.adopt(tid, control) if self._same_boot else None
        if proc is None:
            if not self._same_boot:
                log.warning("task %s/%d is from an earlier boot: not re-adopted", key[0], key[1])
            t = self.states.tasks[key]
            self.procs[key] = self.runtime.orphan(tid, control, t.pid)
            self.runners.submit(key, partial(self._collect_exit, key))
            return
        self.procs[key] = proc
        log.info("re-adopted task %s/%d (pid %d)", key[0], key[1], proc.pid)
        self.feed(Adopted(key, proc.pid))
        self.watcher.watch(key, proc.open_pidfd())

    # ----- the runners' steps -----------------------------------------------------------------

    def _start(self, d: Desired) -> None:
        key = d.key
        with self.lock:
            if not self.states.wanted(key):  # no longer wanted: the next reconcile retires it
                self.feed(StartAborted(key))
                return
        spec = d.spec
        try:
            user = account_of(self.accounts, spec.run_as, self.cfg.task_user, self.unreachable_dir)
            try:
                ports = self._ports_for(key, list(spec.requirements.ports), d.ports)
            except ValueError as e:
                raise NotLaunched(f"ports: {e}", permanent=True) from None
            own = self.gpus_of(d.gpus)
            with self.lock:
                has_gpus = bool(self.gpus)
            env = task_env(d, self.cell, self.cfg.name, ports, gpu_env(own, has_gpus))
            deny = tuple(denied_nodes(self.cfg.dev_dir, own))
            sandbox = self.sandbox_of(d.job, d.index, d.incarnation)
            proc = spawn(self.runtime, d, user, env, sandbox, self.cfg.task_pids_max, deny)
        except NotLaunched as e:
            if e.permanent:  # it can never run here as specified: failed, no restart storm
                log.warning("task %s/%d failed: %s", d.job, d.index, e.reason)
            else:
                log.warning("task %s/%d could not start: %s", d.job, d.index, e.reason)
            with self.lock:
                if e.permanent:
                    self.first_seen.pop(key, None)
                self.feed(e.event(key))
            return
        with self.lock:
            self.procs[key] = proc
            self.feed(Started(key, proc.pid, proc.shim_pid, proc.shim_start))
            restarts = self.states.tasks[key].restarts
            seen = self.first_seen.pop(key, None)
        latency = ""
        if seen is not None:
            took = time.monotonic() - seen
            self.start_latency.observe(took)
            latency = f", {took * 1000:.1f} ms after desired"
        self.watcher.watch(key, proc.open_pidfd())
        log.info(
            "task %s/%d started (pid %d, restarts %d%s)",
            d.job,
            d.index,
            proc.pid,
            restarts,
            latency,
        )

    def _ports_for(self, key: TaskKey, names: list[str], given: dict[str, int]) -> dict[str, int]:
        """The task's ports: the master's, else the ones it had (restarts keep their ports),
        unless another live task holds one or something else on the host bound it meanwhile;
        new ones from --port-range otherwise (free on the host too, see borglet/ports.py)."""
        with self.lock:
            t = self.states.tasks[key]
            ports = self.ports.assign(names, [given, t.ports], self.states.ports_in_use(key))
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
            self.feed(PortsAssigned(key, ports))
            return dict(ports)

    def _kill(self, key: TaskKey, grace_s: float) -> None:
        with self.lock:
            proc = self.procs.get(key)
        self.runtime.stop(task_id_of(key), proc, grace_s=grace_s)
        if proc is None:
            self.feed(Killed(key))
        else:
            self._collect_exit(key)
        log.info("task %s/%d stopped", key[0], key[1])

    def _collect_exit(self, key: TaskKey) -> None:
        """A task's shim has exited (or was stopped): read its status, clean up, and tell the
        state machine. Runs on the task's runner, so exactly once per process, and after a
        kill in progress has removed the whole cgroup (a restart never finds the old
        processes still there)."""
        with self.lock:
            proc = self.procs.pop(key, None)
        if proc is None:
            return
        task_id = task_id_of(key)
        status = proc.status()
        try:
            st = self.runtime.stats(task_id)
        except CgroupError:
            st = CgroupStats(0.0, 0, 0)
        oom = st.oom_kills > 0
        # Whatever the main process left behind in its cgroup goes with it (exec sessions
        # too: they live in its cgroup; without cgroups they are killed by name).
        self.runtime.stop(task_id, proc, grace_s=0)
        self._execs.end_task(key)
        self.runtime.forget(proc)
        code = status.returncode() if status is not None else -9
        with self.lock:
            self.feed(
                Exited(key, code, oom, pids_limit=st.pids_limit_hits > 0, lost=status is None)
            )
            t = self.states.tasks.get(key)
            if t is not None:
                log.info(
                    "task %s/%d exited: code %s%s -> %s",
                    key[0],
                    key[1],
                    t.exit_code,
                    f" ({t.reason})" if t.reason else "",
                    t.observed_state() if t.phase == DONE else f"restart #{t.restarts}",
                )

    def on_exit(self, key: TaskKey) -> None:
        """The watcher saw the task's shim exit: collect it on the task's runner."""
        self.runners.submit(key, partial(self._collect_exit, key))

    # ----- timers, usage, housekeeping --------------------------------------------------------

    def _timer_loop(self) -> None:
        """Restart backoffs: Tick when the earliest ends. Also writes the state file when it
        changed (coalesced), so it is current even while the master is unreachable."""
        while not self._stop.is_set():
            with self.lock:
                nxt = self.states.next_wakeup_ms()
            now = now_ms()
            if nxt is not None and nxt <= now:
                self.feed(Tick())
                continue
            self.checkpoint.flush()
            timeout = 5.0 if nxt is None else max(0.005, (nxt - now) / 1000)
            self._timer_wake.wait(min(timeout, 5.0))
            self._timer_wake.clear()

    def refresh_usage(self) -> None:
        """Usage of running tasks from their cgroup files, and tasks stuck at pids.max; and
        the GPUs' health (a changed offer is reported to the master at once)."""
        if self.refresh_gpus():
            self.link.poke()
        with self.lock:
            keys = [k for k, t in self.states.tasks.items() if t.phase == ACTIVE]
        for key in keys:
            try:
                st = self.runtime.stats(task_id_of(key))
            except CgroupError:
                continue
            with self.lock:
                prev = self.usage.get(key)
                t = self.states.tasks.get(key)
                if t is None or t.phase != ACTIVE:
                    continue
                self.usage[key] = st
                if st.pids_limit_hits > (prev.pids_limit_hits if prev else 0):
                    if t.reason != "pids-limit":
                        log.warning("task %s/%d hit its pids limit", key[0], key[1])
                    self.feed(PidsLimitHit(key))

    def gc_sandboxes(self, now: float | None = None) -> int:
        if self.checkpoint.refused:  # the tasks we do not know may be running: keep all
            return 0
        with self.lock:
            known = list(self.states.tasks)
        return gc_sandboxes(self.cfg.data_dir, known, time.time() if now is None else now)

    def prune_counters(self) -> None:
        self.feed(PruneCounters(int(COUNTER_RETENTION_S * 1000)))

    # ----- logs and exec (LogsServicer's TaskDirectory) ---------------------------------------

    @property
    def execs(self) -> ExecSessions:
        return self._execs

    def exec_target(self, job: str, index: int, incarnation: str) -> tuple[TaskKey, ExecTarget]:
        """How to run a command beside task job/index (that incarnation, when given): its
        account, environment, sandbox and cgroup, from this Borglet's own records."""
        with self.lock:
            found = [
                (k, t)
                for k, t in self.states.tasks.items()
                if k[:2] == (job, index)
                and t.phase == ACTIVE
                and (not incarnation or k[2] == incarnation)
            ]
        if not found:
            raise ExecError(f"task {job}/{index} is not running on this machine")
        key, t = found[0]
        own = self.gpus_of(list(t.gpus))
        with self.lock:
            has_gpus = bool(self.gpus)
        try:
            acct = self.accounts.resolve(t.spec.run_as)
        except Exception as e:
            raise ExecError(f"run_as: {e}") from None
        return key, ExecTarget(
            task_id=task_id_of(key),
            sandbox=self.sandbox_of(job, index, key[2]),
            uid=acct.uid,
            gid=acct.gid,
            groups=list(acct.groups),
            env=task_env(t, self.cell, self.cfg.name, dict(t.ports), gpu_env(own, has_gpus)),
            procs_files=self.runtime.procs_files(task_id_of(key)),
        )

    def find_sandbox(self, job: str, index: int, incarnation: str = "") -> str | None:
        with self.lock:
            known = [
                (t.phase != DONE, k) for k, t in self.states.tasks.items() if k[:2] == (job, index)
            ]
        return find_sandbox(self.cfg.data_dir, job, index, incarnation, known)

    def task_running(self, job: str, index: int, sandbox: str) -> bool:
        """Whether the task whose sandbox this is may still write to its logs (running, in a
        restart backoff, or being stopped): `logs -f` ends once it is finished for good."""
        with self.lock:
            for k, t in self.states.tasks.items():
                if k[:2] == (job, index) and os.path.basename(sandbox) == task_id_of(k):
                    return t.phase != DONE
        return False
