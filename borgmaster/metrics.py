"""Prometheus metrics of a Borgmaster replica.

Cell-wide gauges (jobs, tasks, machines, capacity) are computed from the store at scrape time
by a collector, and exported only by the leader so a cell's replicas are not double counted;
Raft gauges and API counters describe the replica itself.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Histogram
from prometheus_client import Counter as PCounter
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from borgmaster.model import JOB_STATES, MACHINE_STATES, TASK_STATES, band_of
from borgmaster.store import ACTIVE_STATES, pending_tasks

if TYPE_CHECKING:
    from borgmaster.server import Master


class _CellCollector(Collector):
    def __init__(self, master: Master) -> None:
        self.m = master

    def collect(self) -> Iterator[Metric]:
        st = self.m.fsm.getStatus()
        is_leader = st["state"] == 2
        yield _gauge("borg_raft_is_leader", "1 when this replica is the Raft leader.", is_leader)
        yield _gauge("borg_raft_term", "Current Raft term of this replica.", st["raft_term"])
        yield _gauge("borg_raft_commit_index", "Raft commit index seen here.", st["commit_idx"])
        yield _gauge("borg_raft_applied_index", "Last log index applied here.", st["last_applied"])
        if not is_leader:
            return
        store = self.m.store
        with store.lock:
            jobs = Counter(j.state for j in store.jobs.values())
            tasks = Counter(t.state for t in store.tasks.values())
            machines = Counter(m.state for m in store.machines.values())
            cap = {"cpu": 0.0, "ram": 0.0, "disk": 0.0, "gpu": 0.0}
            used = dict.fromkeys(cap, 0.0)
            for m in store.machines.values():
                if m.state == "lost":
                    continue
                u = store.used(m.name)
                for r in cap:
                    cap[r] += float(getattr(m.capacity, r))
                    used[r] += float(getattr(u, r))
            pending = Counter(
                band_of(store.jobs[t.job].spec.priority) for t in pending_tasks(store)
            )
            running = sum(1 for t in store.tasks.values() if t.state in ACTIVE_STATES)
        yield _labelled("borg_jobs", "Jobs by state.", "state", JOB_STATES, jobs)
        yield _labelled("borg_tasks", "Tasks by state.", "state", TASK_STATES, tasks)
        yield _labelled("borg_machines", "Machines by state.", "state", MACHINE_STATES, machines)
        bands = ("free", "batch", "production", "monitoring")
        yield _labelled(
            "borg_pending_tasks", "Tasks waiting for a machine.", "band", bands, pending
        )
        c = GaugeMetricFamily(
            "borg_cell_capacity",
            "Capacity of machines not lost (cores or bytes).",
            labels=["resource"],
        )
        a = GaugeMetricFamily(
            "borg_cell_allocated",
            "Resources held by placed tasks (cores or bytes).",
            labels=["resource"],
        )
        for r in cap:
            c.add_metric([r], cap[r])
            a.add_metric([r], used[r])
        yield c
        yield a
        yield _gauge("borg_tasks_placed", "Tasks assigned or running.", running)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _labelled(
    name: str, doc: str, label: str, keys: tuple[str, ...], counts: Counter[str]
) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    for k in keys:
        g.add_metric([k], float(counts.get(k, 0)))
    return g


class MasterMetrics:
    def __init__(self, master: Master) -> None:
        self.registry = CollectorRegistry()
        self.registry.register(_CellCollector(master))
        self.requests = PCounter(
            "borg_api_requests",
            "API requests by method and result code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "borg_api_request_duration_seconds",
            "API request latency.",
            ["method"],
            registry=self.registry,
        )
        self.placements = PCounter(
            "borg_scheduler_placements", "Tasks placed by the scheduler.", registry=self.registry
        )
        self.pass_seconds = Histogram(
            "borg_scheduler_pass_duration_seconds",
            "Time to compute one scheduler pass.",
            registry=self.registry,
        )

    def on_request(self, method: str, code: str, seconds: float) -> None:
        self.requests.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)

    def on_plan(self, proposed: int, placed: int, seconds: float) -> None:
        self.placements.inc(placed)
        self.pass_seconds.observe(seconds)
