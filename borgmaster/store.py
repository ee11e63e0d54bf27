"""The cell's in-memory state and the deterministic apply of Raft commands.

`Store.apply` is the only writer. It runs on PySyncObj's tick thread, does no I/O and reads no
clock: the same log gives the same state on every replica. Readers (gRPC handlers, leader
loops) take `lock` and copy what they need out; `changed` lets the Borglet long-poll and the
scheduler wake up when the state moves instead of polling on a timer.
"""

from __future__ import annotations

import hashlib
import threading
from collections import OrderedDict
from collections.abc import Iterable
from typing import Any

import msgpack

from borgmaster import commands as C
from borgmaster.model import (
    ASSIGNED,
    BATCH,
    FAILED,
    KILLED,
    LOST,
    MACHINE_LOST,
    MACHINE_UP,
    PENDING,
    RUNNING,
    SUCCEEDED,
    TERMINAL_TASK_STATES,
    Job,
    JobSpec,
    Machine,
    Replica,
    Resources,
    Task,
)

SNAPSHOT_FORMAT = 1
# How many recent request ids are remembered for exactly-once retries.
REQUEST_ID_MEMORY = 10_000

# States in which a task holds resources on its machine.
ACTIVE_STATES = frozenset({ASSIGNED, RUNNING})
# Observed states a Borglet may report.
OBSERVED_STATES = frozenset({RUNNING, SUCCEEDED, FAILED, KILLED})

Result = dict[str, Any]


def err(code: str, message: str) -> Result:
    """Errors are values: a replicated method that raises is retried forever by PySyncObj."""
    return {"error": code, "message": message}


class Store:
    """Jobs, tasks, machines and replicas, plus the index of the last applied entry."""

    def __init__(self) -> None:
        self.lock = threading.RLock()
        self.changed = threading.Condition(self.lock)
        self.jobs: dict[str, Job] = {}
        self.tasks: dict[tuple[str, int], Task] = {}
        self.machines: dict[str, Machine] = {}
        self.replicas: dict[str, Replica] = {}
        self.tasks_by_machine: dict[str, set[tuple[str, int]]] = {}
        self.request_ids: OrderedDict[str, Result] = OrderedDict()
        self.applied_index = 0
        # Bumped on every state change; per machine, on changes to its desired task set.
        self.generation = 0
        self.machine_generation: dict[str, int] = {}

    # ----- reads -------------------------------------------------------------------------

    def job_tasks(self, name: str) -> list[Task]:
        job = self.jobs.get(name)
        if job is None:
            return []
        return [t for i in range(job.spec.replicas) if (t := self.tasks.get((name, i)))]

    def desired_for(self, machine: str) -> list[Task]:
        """Tasks the Borglet on `machine` should be running now."""
        out = []
        for key in sorted(self.tasks_by_machine.get(machine, ())):
            t = self.tasks[key]
            job = self.jobs.get(t.job)
            if t.state in ACTIVE_STATES and job is not None and not job.killed:
                out.append(t)
        return out

    def used(self, machine: str) -> Resources:
        """Resources held on `machine` by tasks placed there and not yet finished."""
        r = Resources()
        for key in self.tasks_by_machine.get(machine, ()):
            t = self.tasks[key]
            if t.state not in ACTIVE_STATES:
                continue
            req = self.jobs[t.job].spec.requirements
            r.cpu += req.cpu
            r.ram += req.ram
            r.disk += req.disk
            r.gpu += req.gpu
        return r

    def digest(self) -> str:
        """A hash of the whole state: equal on replicas that applied the same log."""
        return hashlib.sha256(self.snapshot_bytes(include_index=False)).hexdigest()

    # ----- apply -------------------------------------------------------------------------

    def apply(self, entry: bytes, index: int) -> Result:
        """Apply one encoded command at log position `index`; never raises."""
        with self.lock:
            try:
                cmd = C.decode(entry)
            except C.CommandError as e:
                self.applied_index = max(self.applied_index, index)
                return err("invalid", str(e))
            try:
                if cmd.request_id and cmd.request_id in self.request_ids:
                    result = dict(self.request_ids[cmd.request_id])
                    result["duplicate"] = True
                else:
                    result = self._dispatch(cmd)
                    if cmd.request_id:
                        self.request_ids[cmd.request_id] = result
                        while len(self.request_ids) > REQUEST_ID_MEMORY:
                            self.request_ids.popitem(last=False)
            except Exception as e:  # a bug must not wedge the log: record and move on
                result = err("internal", f"{type(cmd).__name__}: {type(e).__name__}: {e}")
            self.applied_index = max(self.applied_index, index)
            self.generation += 1
            self.changed.notify_all()
            return result

    def _dispatch(self, cmd: C.Command) -> Result:
        if isinstance(cmd, C.Noop):
            return {"ok": True}
        if isinstance(cmd, C.SubmitJob):
            return self._submit(cmd)
        if isinstance(cmd, C.KillJob):
            return self._kill(cmd)
        if isinstance(cmd, C.RegisterMachine):
            return self._register_machine(cmd)
        if isinstance(cmd, C.ApplyPlan):
            return self._apply_plan(cmd)
        if isinstance(cmd, C.TaskUpdates):
            return self._task_updates(cmd)
        if isinstance(cmd, C.MachineLost):
            return self._machine_lost(cmd)
        if isinstance(cmd, C.SetMachineState):
            return self._set_machine_state(cmd)
        if isinstance(cmd, C.RegisterReplica):
            r = Replica(**cmd.replica)
            self.replicas[r.id] = r
            return {"ok": True}
        return err("invalid", f"unhandled command {type(cmd).__name__}")

    def _touch_machine(self, machine: str) -> None:
        if machine:
            self.machine_generation[machine] = self.generation + 1

    def _set_task_machine(self, t: Task, machine: str) -> None:
        if t.machine:
            self.tasks_by_machine.get(t.machine, set()).discard(t.key)
            self._touch_machine(t.machine)
        t.machine = machine
        if machine:
            self.tasks_by_machine.setdefault(machine, set()).add(t.key)
            self._touch_machine(machine)

    def _new_task(self, job: Job, index: int, ts: int) -> Task:
        t = Task(job=job.name, index=index, version=job.version, submitted_ms=ts, updated_ms=ts)
        self.tasks[t.key] = t
        return t

    def _reset_task(self, t: Task, version: int, ts: int, reason: str = "") -> None:
        """Send a task back to the queue (new version, or its copy is gone)."""
        self._set_task_machine(t, "")
        t.state = PENDING
        t.version = version
        t.incarnation = ""
        t.exit_code = None
        t.reason = reason
        t.restarts = 0
        t.ports = {}
        t.submitted_ms = ts
        t.updated_ms = ts

    def _submit(self, cmd: C.SubmitJob) -> Result:
        spec = JobSpec.from_dict(cmd.spec)
        ts = cmd.ts_ms
        old = self.jobs.get(spec.name)
        if old is None or old.killed:
            if cmd.must_exist:
                return err("not-found", f"job '{spec.name}' does not exist")
            version = old.version + 1 if old is not None else 1
            if old is not None:
                for t in self.job_tasks(old.name):
                    self._drop_task(t)
            job = Job(spec=spec, state=PENDING, version=version, created_ms=ts, updated_ms=ts)
            self.jobs[spec.name] = job
            for i in range(spec.replicas):
                self._new_task(job, i, ts)
            return {"name": spec.name, "version": version, "result": "created"}
        if old.spec.user and spec.user and old.spec.user != spec.user:
            return err(
                "permission-denied",
                f"job '{spec.name}' belongs to user '{old.spec.user}', not '{spec.user}'",
            )
        if old.spec == spec:
            return {"name": spec.name, "version": old.version, "result": "unchanged"}
        template_changed = old.spec.task_template() != spec.task_template()
        old_replicas = old.spec.replicas
        if template_changed:
            old.version += 1
        old.spec = spec
        old.updated_ms = ts
        # Scale down: the highest indexes go first.
        for i in range(spec.replicas, old_replicas):
            gone = self.tasks.get((spec.name, i))
            if gone is not None:
                self._drop_task(gone)
        for i in range(old_replicas, spec.replicas):
            self._new_task(old, i, ts)
        if template_changed:
            for t in self.job_tasks(spec.name):
                if t.version != old.version:
                    self._reset_task(t, old.version, ts, reason="updated")
        self._recompute_job(old)
        return {"name": spec.name, "version": old.version, "result": "updated"}

    def _drop_task(self, t: Task) -> None:
        self._set_task_machine(t, "")
        self.tasks.pop(t.key, None)

    def _kill(self, cmd: C.KillJob) -> Result:
        job = self.jobs.get(cmd.name)
        if job is None or job.killed:
            return err("not-found", f"job '{cmd.name}' does not exist")
        job.killed = True
        job.updated_ms = cmd.ts_ms
        to_stop = 0
        for t in self.job_tasks(job.name):
            if t.state in ACTIVE_STATES:
                to_stop += 1
                self._touch_machine(t.machine)
            elif t.state not in TERMINAL_TASK_STATES or t.state == LOST:
                t.state = KILLED
                t.reason = "job-killed"
                t.updated_ms = cmd.ts_ms
        self._recompute_job(job)
        return {"name": job.name, "tasks_to_stop": to_stop}

    def _register_machine(self, cmd: C.RegisterMachine) -> Result:
        m = Machine.from_dict(cmd.machine)
        old = self.machines.get(m.name)
        if old is not None:
            m.registered_ms = old.registered_ms
            if old.state != MACHINE_LOST:
                m.state = old.state  # keep draining across re-registration
        else:
            m.registered_ms = cmd.ts_ms
        if m.state == MACHINE_LOST:
            m.state = MACHINE_UP
        self.machines[m.name] = m
        self._touch_machine(m.name)
        return {"ok": True}

    def _set_machine_state(self, cmd: C.SetMachineState) -> Result:
        m = self.machines.get(cmd.name)
        if m is None:
            return err("not-found", f"machine '{cmd.name}' does not exist")
        m.state = cmd.state
        return {"ok": True}

    def _machine_lost(self, cmd: C.MachineLost) -> Result:
        m = self.machines.get(cmd.name)
        if m is None:
            return err("not-found", f"machine '{cmd.name}' does not exist")
        m.state = MACHINE_LOST
        lost = 0
        for key in list(self.tasks_by_machine.get(m.name, ())):
            t = self.tasks[key]
            if t.state in ACTIVE_STATES:
                job = self.jobs[t.job]
                t.state = KILLED if job.killed else LOST
                t.reason = "machine-lost"
                t.updated_ms = cmd.ts_ms
                lost += 1
                self._recompute_job(job)
        self._touch_machine(m.name)
        return {"ok": True, "tasks_lost": lost}

    def fits(self, machine: Machine, used: Resources, spec: JobSpec) -> bool:
        req = spec.requirements
        cap = machine.capacity
        return (
            used.cpu + req.cpu <= cap.cpu + 1e-9
            and used.ram + req.ram <= cap.ram
            and used.disk + req.disk <= cap.disk
            and used.gpu + req.gpu <= cap.gpu
        )

    def _apply_plan(self, cmd: C.ApplyPlan) -> Result:
        placed = 0
        rejected = 0
        used_cache: dict[str, Resources] = {}
        for p in cmd.placements:
            pl = C.Placement(**p)
            t = self.tasks.get((pl.job, pl.index))
            job = self.jobs.get(pl.job)
            m = self.machines.get(pl.machine)
            ok = (
                t is not None
                and job is not None
                and not job.killed
                and needs_placement(t, job)
                and job.version == pl.version
                and m is not None
                and m.state == MACHINE_UP
            )
            if ok and t is not None and job is not None and m is not None:
                used = used_cache.get(m.name)
                if used is None:
                    used = used_cache[m.name] = self.used(m.name)
                if self.fits(m, used, job.spec):
                    req = job.spec.requirements
                    used.cpu += req.cpu
                    used.ram += req.ram
                    used.disk += req.disk
                    used.gpu += req.gpu
                    self._set_task_machine(t, m.name)
                    t.state = ASSIGNED
                    t.version = job.version
                    t.incarnation = pl.incarnation
                    t.exit_code = None
                    t.reason = ""
                    t.updated_ms = cmd.ts_ms
                    placed += 1
                    self._recompute_job(job)
                    continue
            rejected += 1
        for job_name, index, reason in cmd.failures:
            t = self.tasks.get((job_name, index))
            if t is not None and t.state in (PENDING, LOST) and t.reason != reason:
                t.reason = reason
        return {"placed": placed, "rejected": rejected}

    def _task_updates(self, cmd: C.TaskUpdates) -> Result:
        # Validate the whole batch first so a malformed update cannot half-apply it.
        for u in cmd.updates:
            ok = (
                isinstance(u, dict)
                and isinstance(u.get("job"), str)
                and isinstance(u.get("index"), int)
                and isinstance(u.get("incarnation"), str)
                and isinstance(u.get("state"), str)
                and (u.get("exit_code") is None or isinstance(u.get("exit_code"), int))
                and isinstance(u.get("restarts", 0), int)
                and isinstance(u.get("reason", ""), str)
            )
            if not ok:
                return err("invalid", f"malformed task update {u!r:.200}")
        applied = 0
        touched: set[str] = set()
        for u in cmd.updates:
            t = self.tasks.get((u["job"], int(u["index"])))
            if t is None or t.incarnation != u["incarnation"] or t.machine != cmd.machine:
                continue
            if t.state in TERMINAL_TASK_STATES:
                continue
            state = u["state"]
            if state not in OBSERVED_STATES:
                continue
            t.state = state
            t.restarts = int(u.get("restarts", t.restarts))
            ec = u.get("exit_code")
            t.exit_code = None if ec is None or ec < -255 else int(ec)
            t.reason = str(u.get("reason", ""))
            t.updated_ms = cmd.ts_ms
            if state in TERMINAL_TASK_STATES:
                self._touch_machine(t.machine)
            touched.add(t.job)
            applied += 1
        for name in touched:
            self._recompute_job(self.jobs[name])
        return {"applied": applied}

    def _recompute_job(self, job: Job) -> None:
        tasks = self.job_tasks(job.name)
        states = [t.state for t in tasks]
        if job.killed:
            job.state = KILLED
        elif job.spec.kind == BATCH and states and all(s == SUCCEEDED for s in states):
            job.state = SUCCEEDED
        elif FAILED in states and (
            job.spec.kind == BATCH or all(s in TERMINAL_TASK_STATES for s in states)
        ):
            job.state = FAILED
        elif RUNNING in states:
            job.state = RUNNING
        else:
            job.state = PENDING

    # ----- snapshots ---------------------------------------------------------------------

    def snapshot_bytes(self, include_index: bool = True) -> bytes:
        """Our own msgpack encoding of the whole state (PySyncObj's default is pickle)."""
        with self.lock:
            doc = {
                "format": SNAPSHOT_FORMAT,
                "jobs": [j.to_dict() for j in sorted(self.jobs.values(), key=lambda j: j.name)],
                "tasks": [self.tasks[k].to_dict() for k in sorted(self.tasks)],
                "machines": [self.machines[k].to_dict() for k in sorted(self.machines)],
                "replicas": [self.replicas[k].to_dict() for k in sorted(self.replicas)],
                "request_ids": [[k, v] for k, v in self.request_ids.items()],
                "applied_index": self.applied_index if include_index else 0,
            }
            return msgpack.packb(doc, use_bin_type=True)

    def load_snapshot(self, data: bytes) -> None:
        doc = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if not isinstance(doc, dict) or doc.get("format") != SNAPSHOT_FORMAT:
            raise ValueError("not a borgcell snapshot (unknown format)")
        with self.lock:
            self.jobs = {j["spec"]["name"]: Job.from_dict(j) for j in doc["jobs"]}
            self.tasks = {}
            self.tasks_by_machine = {}
            for td in doc["tasks"]:
                t = Task.from_dict(td)
                self.tasks[t.key] = t
                if t.machine:
                    self.tasks_by_machine.setdefault(t.machine, set()).add(t.key)
            self.machines = {m["name"]: Machine.from_dict(m) for m in doc["machines"]}
            self.replicas = {r["id"]: Replica(**r) for r in doc["replicas"]}
            self.request_ids = OrderedDict((k, v) for k, v in doc["request_ids"])
            self.applied_index = int(doc["applied_index"])
            self.generation += 1
            for name in self.machines:
                self._touch_machine(name)
            self.changed.notify_all()

    def wait_changed(self, since_generation: int, timeout: float) -> int:
        """Block until the generation moves past `since_generation` (or timeout)."""
        with self.changed:
            self.changed.wait_for(lambda: self.generation != since_generation, timeout)
            return self.generation


def needs_placement(t: Task, job: Job) -> bool:
    """A task waits for a machine when it is pending, or lost while its job still wants it."""
    if job.killed:
        return False
    if t.state == PENDING:
        return True
    return t.state == LOST


def pending_tasks(store: Store) -> Iterable[Task]:
    for t in store.tasks.values():
        job = store.jobs.get(t.job)
        if job is not None and needs_placement(t, job):
            yield t
