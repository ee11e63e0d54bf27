"""Health probing: when each running task's check is due, and running it.

The verdicts are pure (`HealthTracker` in borglet/health.py); this module keeps one tracker per
task run, wakes when the earliest probe is due, runs probes on a small pool (4 at a time, each
bounded by the check's timeout) and hands each result to the shell as a `HealthResult` event.
Exec checks run as the task's account, in its sandbox with its env, inside its cgroup.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent import futures

from borglet.accounts import TaskAccounts
from borglet.clock import now_ms
from borglet.health import HealthTracker, probe_exec, probe_http, probe_tcp
from borglet.runtime.process import DEFAULT_PATH
from borglet.state import HealthResult, LocalTask, TaskKey, task_id_of
from cfg.model import HealthCheck, HealthKind

log = logging.getLogger("borglet")

PROBE_WORKERS = 4


class HealthProber:
    def __init__(
        self,
        active: Callable[[TaskKey], LocalTask | None],
        report: Callable[[HealthResult], None],
        accounts: TaskAccounts,
        sandbox_of: Callable[[TaskKey], str],
        procs_files: Callable[[str], list[str]],
    ) -> None:
        """`active(key)`: the task while it runs, else None (takes the shell's lock, so it is
        never called with this prober's lock held)."""
        self.active = active
        self.report = report
        self.accounts = accounts
        self.sandbox_of = sandbox_of
        self.procs_files = procs_files
        self._lock = threading.Lock()
        self._trackers: dict[TaskKey, tuple[HealthTracker, int]] = {}
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def track(self, key: TaskKey, check: HealthCheck | None, started_ms: int) -> None:
        if check is None:
            return
        with self._lock:
            self._trackers[key] = (HealthTracker.starting(check, started_ms), started_ms)
        self._wake.set()

    def untrack(self, key: TaskKey) -> None:
        with self._lock:
            self._trackers.pop(key, None)

    def start(self) -> None:
        self._thread = threading.Thread(target=self._loop, name="health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=5)

    def _loop(self) -> None:
        pool = futures.ThreadPoolExecutor(max_workers=PROBE_WORKERS, thread_name_prefix="probe")
        try:
            while not self._stop.is_set():
                now = now_ms()
                nxt = now + 5000
                with self._lock:
                    items = list(self._trackers.items())
                for key, (tr, run) in items:
                    t = self.active(key)
                    if t is None:
                        continue
                    with self._lock:
                        if self._trackers.get(key, (None, 0))[0] is not tr:
                            continue
                        if tr.due(now):
                            tr.begin(now)
                            pool.submit(self._probe, key, tr, run, t)
                        if not tr.in_flight:
                            nxt = min(nxt, tr.next_ms)
                self._wake.wait(max(0.005, (nxt - now_ms()) / 1000))
                self._wake.clear()
        finally:
            pool.shutdown(wait=False, cancel_futures=True)

    def _probe(self, key: TaskKey, tr: HealthTracker, run: int, t: LocalTask) -> None:
        check = tr.check
        try:
            ok = self._run(key, check, t)
        except Exception as e:  # a probe must never kill the health thread
            log.warning("health check of %s/%d failed to run: %s", key[0], key[1], e)
            ok = False
        with self._lock:
            if self._trackers.get(key, (None, 0))[0] is not tr:
                return  # the task restarted or went away meanwhile
            went_bad = tr.record(ok)
            status = tr.status
        if went_bad:
            log.warning(
                "task %s/%d unhealthy after %d failed %s checks",
                key[0],
                key[1],
                tr.failures,
                check.kind,
            )
        self._wake.set()
        self.report(HealthResult(key, status, went_bad, run))

    def _run(self, key: TaskKey, check: HealthCheck, t: LocalTask) -> bool:
        timeout = check.timeout_ms / 1000
        if check.kind is HealthKind.EXEC:
            acct = self.accounts.resolve(t.spec.run_as)
            user = (acct.uid, acct.gid, list(acct.groups))
            env = dict(t.spec.env)
            env.setdefault("PATH", DEFAULT_PATH)
            for name, port in t.ports.items():
                env[f"BORG_PORT_{name.upper().replace('-', '_')}"] = str(port)
            # In the task's cgroup: the check counts against its pids and memory limits (a
            # check that forks or allocates cannot escape them).
            procs = self.procs_files(task_id_of(key))
            return probe_exec(check.argv, env, self.sandbox_of(key), user, timeout, procs)
        port = t.ports.get(check.port, 0)
        if check.kind is HealthKind.HTTP:
            return port > 0 and probe_http(port, check.path, timeout)
        return port > 0 and probe_tcp(port, timeout)
