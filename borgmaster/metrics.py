"""Prometheus metrics of a Borgmaster replica.

Two kinds of figures, kept apart so a cell's replicas are never double counted:

- Cell-wide gauges (jobs, tasks, machines, capacity, pending work) describe the replicated
  state, which every replica holds. Only the leader exports them: `sum(borg_tasks)` over all
  scraped masters is then the cell's figure, and a failover moves them to the new leader.
- Replica figures (Raft gauges, API counters, scheduler counters and histograms) describe the
  process itself and are exported by every replica.

The cell-wide figures are computed at scrape time from the store (`cell_figures`, pure) by a
custom collector; nothing is updated on the apply path, so Raft throughput is unaffected.

Units are base units: seconds, bytes, cores. The `resource` label of the capacity gauges is
`cpu` (cores), `ram` and `disk` (bytes) or `gpu` (devices), matching the Borglet's
`borg_machine_capacity{resource}`.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, Histogram, disable_created_metrics
from prometheus_client import Counter as PCounter
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from borgmaster.digests import Digests, Verdict
from borgmaster.diskspace import DataDirSpace
from borgmaster.model import (
    BANDS,
    JOB_STATES,
    LOST,
    MACHINE_LOST,
    MACHINE_STATES,
    TASK_STATES,
    Task,
    band_of,
)
from borgmaster.store import ACTIVE_STATES, Store, pending_tasks

if TYPE_CHECKING:  # types only: facade.py does not import this module back
    from borgmaster.facade import MetricsHost

RESOURCES = ("cpu", "ram", "disk", "gpu")
BAND_NAMES = tuple(b[0] for b in BANDS)

# Submit -> placed: from a few ms (idle cell) to minutes (a queue waiting for room).
SCHEDULING_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 300, 900, 3600)
# API calls: local reads are sub-ms, writes wait for a Raft commit (~1-2 heartbeats).
API_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
PASS_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


# ----- pure: the cell's figures from the store ---------------------------------------------


@dataclass
class CellFigures:
    """What the leader exports about the cell, computed from one consistent read of the store."""

    jobs: Counter[str] = field(default_factory=Counter)
    tasks: Counter[str] = field(default_factory=Counter)
    machines: Counter[str] = field(default_factory=Counter)
    capacity: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    allocated: dict[str, float] = field(default_factory=lambda: dict.fromkeys(RESOURCES, 0.0))
    pending: Counter[str] = field(default_factory=Counter)
    # Per band, how long the longest-waiting task has waited (seconds; absent: none waiting).
    oldest_pending_s: dict[str, float] = field(default_factory=dict)


def waiting_since_ms(t: Task) -> int:
    """When a task started waiting for a machine: its (re)submission, or when it was lost.

    A lost task keeps the `submitted_ms` of its first placement, so its wait starts at the
    update that marked it lost.
    """
    return t.updated_ms if t.state == LOST else t.submitted_ms


def cell_figures(store: Store, now_ms: int) -> CellFigures:
    """Count jobs, tasks, machines and pending work; call with `store.lock` held."""
    f = CellFigures()
    f.jobs.update(j.state for j in store.jobs.values())
    f.tasks.update(t.state for t in store.tasks.values())
    f.machines.update(m.state for m in store.machines.values())
    for m in store.machines.values():
        if m.state == MACHINE_LOST:
            continue  # a lost machine offers nothing; its tasks are being replaced
        used = store.used(m.name)
        for r in RESOURCES:
            f.capacity[r] += float(getattr(m.capacity, r))
            f.allocated[r] += float(getattr(used, r))
    for t in pending_tasks(store):
        band = band_of(store.jobs[t.job].spec.priority)
        f.pending[band] += 1
        waited = max(0.0, (now_ms - waiting_since_ms(t)) / 1000.0)
        f.oldest_pending_s[band] = max(f.oldest_pending_s.get(band, 0.0), waited)
    return f


class _PlacementLike(Protocol):
    job: str
    index: int
    incarnation: str


def placement_latencies(
    store: Store,
    placements: Iterable[_PlacementLike],
    waiting_since: Mapping[tuple[str, int], int],
    placed_ms: int,
) -> list[float]:
    """Submit -> placed latency (seconds) of each placement that the store accepted.

    `waiting_since` is `waiting_since_ms(t)` of each pending task, read when the pass took its
    snapshot (placement overwrites the task's timestamps); a placement the leader's re-check
    rejected left the task without that incarnation and is not counted.
    """
    out = []
    with store.lock:
        for p in placements:
            key = (p.job, p.index)
            t = store.tasks.get(key)
            since = waiting_since.get(key)
            if t is None or since is None or t.incarnation != p.incarnation:
                continue
            if t.state not in ACTIVE_STATES:
                continue
            out.append(max(0.0, (placed_ms - since) / 1000.0))
    return out


# ----- I/O shell: the collector and the replica's own counters -----------------------------


class _CellCollector(Collector):
    """Raft gauges on every replica; the cell-wide gauges on the leader only."""

    def __init__(self, master: MetricsHost) -> None:
        self.m = master

    def collect(self) -> Iterator[Metric]:
        st = self.m.raft_status()
        is_leader = st.is_leader
        yield _gauge("borg_raft_is_leader", "1 when this replica is the Raft leader.", is_leader)
        yield _gauge("borg_raft_term", "Current Raft term of this replica.", st.term)
        yield _gauge(
            "borg_raft_commit_index", "Raft commit index known to this replica.", st.commit_index
        )
        yield _gauge(
            "borg_raft_applied_index",
            "Last Raft log index applied to this replica's state.",
            st.applied_index,
        )
        yield CounterMetricFamily(
            "borg_raft_elections_started",
            "Elections this replica started (each one a new term) since it started.",
            value=float(st.elections_started),
        )
        yield CounterMetricFamily(
            "borg_raft_tick_stalls",
            "Times this replica's Raft thread ran more than 0.1 s late (CPU or GIL starved).",
            value=float(st.tick_stalls),
        )
        yield _gauge(
            "borg_raft_leader_heartbeat_gap_seconds",
            "A follower's largest recent gap between its leader's messages (decaying); it "
            "waits at least twice this long before it campaigns.",
            st.heartbeat_gap,
        )
        yield CounterMetricFamily(
            "borg_store_lock_slow_holds",
            "Times a thread held the store lock longer than 0.1 s (the Raft thread waits for "
            "it to apply entries; the log names the slowest holder).",
            value=float(self.m.store.lock.slow_holds),
        )
        prop = self.m.proposal_counts()
        if prop is not None:
            yield CounterMetricFamily(
                "borg_raft_proposals",
                "Raft entries this replica proposed (each may carry a batch of writes).",
                value=float(prop.batches),
            )
            yield CounterMetricFamily(
                "borg_raft_proposed_commands",
                "Commands this replica proposed, counted inside batches.",
                value=float(prop.entries),
            )
        streams = self.m.link_streams
        yield _gauge(
            "borg_link_streams",
            "Borglet Link streams this replica serves (every replica serves its share).",
            len(streams.sessions),
        )
        yield CounterMetricFamily(
            "borg_link_relayed_reports",
            "Borglet reports this replica handed to the leader (RelayLink).",
            value=float(streams.relayed),
        )
        yield from digest_families(self.m.digests, self.m.digest_check.verdict)
        yield from space_families(self.m.space)
        if not is_leader:
            return
        store = self.m.store
        with store.lock:
            f = cell_figures(store, int(time.time() * 1000))
        yield from families(f)


def digest_families(d: Digests, v: Verdict) -> Iterator[Metric]:
    """The state digest gauges of this replica (digests.py)."""
    yield _gauge(
        "borg_replica_digest_index",
        "Log index of this replica's latest state digest.",
        d.latest()[0],
    )
    yield _gauge(
        "borg_replica_digest_mismatch",
        "Peers whose state digest differs from this replica's at the last compared log index "
        "(0 while the replicas agree).",
        len(v.mismatched),
    )
    yield _gauge(
        "borg_replica_digest_diverged",
        "1 when a majority of replicas holds a state digest this replica does not.",
        v.odd_one_out,
    )
    yield _gauge(
        "borg_replica_digest_seconds",
        "Time the last state digest took, fork to answer (off the apply thread).",
        d.last_seconds,
    )
    yield CounterMetricFamily(
        "borg_replica_digests_skipped",
        "Due state digests skipped because the previous one was still being computed.",
        value=float(d.skipped),
    )


def space_families(space: DataDirSpace) -> Iterator[Metric]:
    """The data dir's free space, and whether writes are refused for lack of it."""
    free = space.free()
    yield _gauge(
        "borg_data_dir_free_bytes",
        "Free space on the file system of this replica's data dir (for unprivileged writers).",
        free,
    )
    yield _gauge(
        "borg_data_dir_writes_refused",
        "1 while the data dir has less free space than --min-free: writes are refused.",
        free < space.reserve,
    )


def families(f: CellFigures) -> Iterator[Metric]:
    """The cell-wide metric families for `f` (every label value present, zeros included, so
    dashboards and alerts see a series from the first scrape)."""
    yield _labelled("borg_jobs", "Jobs in the cell by state.", "state", JOB_STATES, f.jobs)
    yield _labelled("borg_tasks", "Tasks in the cell by state.", "state", TASK_STATES, f.tasks)
    yield _labelled(
        "borg_machines", "Machines in the cell by state.", "state", MACHINE_STATES, f.machines
    )
    yield _labelled(
        "borg_pending_tasks",
        "Tasks waiting for a machine, by priority band.",
        "band",
        BAND_NAMES,
        f.pending,
    )
    old = GaugeMetricFamily(
        "borg_pending_tasks_oldest_age_seconds",
        "How long the longest-waiting task of each priority band has waited for a machine.",
        labels=["band"],
    )
    for b in BAND_NAMES:
        old.add_metric([b], f.oldest_pending_s.get(b, 0.0))
    yield old
    cap = GaugeMetricFamily(
        "borg_cell_capacity",
        "Capacity of the machines not lost (cpu in cores, ram and disk in bytes, gpu devices).",
        labels=["resource"],
    )
    alloc = GaugeMetricFamily(
        "borg_cell_allocated",
        "Resources reserved by assigned and running tasks (same units as capacity).",
        labels=["resource"],
    )
    for r in RESOURCES:
        cap.add_metric([r], f.capacity[r])
        alloc.add_metric([r], f.allocated[r])
    yield cap
    yield alloc


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=float(value))


def _labelled(
    name: str, doc: str, label: str, keys: tuple[str, ...], counts: Mapping[str, int]
) -> GaugeMetricFamily:
    g = GaugeMetricFamily(name, doc, labels=[label])
    for k in keys:
        g.add_metric([k], float(counts.get(k, 0)))
    return g


class MasterMetrics:
    """The replica's registry, plus the hooks the API and the leader's loops call."""

    def __init__(self, master: MetricsHost) -> None:
        # `*_created` samples double the series count for nothing Prometheus uses.
        disable_created_metrics()
        self.registry = CollectorRegistry()
        self.registry.register(_CellCollector(master))
        self.requests = PCounter(
            "borg_api_requests",
            "gRPC API requests served by this replica, by method and result code.",
            ["method", "code"],
            registry=self.registry,
        )
        self.duration = Histogram(
            "borg_api_request_duration_seconds",
            "gRPC API request latency on this replica, by method.",
            ["method"],
            buckets=API_BUCKETS,
            registry=self.registry,
        )
        self.placements = PCounter(
            "borg_scheduler_placements",
            "Tasks placed on a machine by this replica's scheduler (committed placements).",
            registry=self.registry,
        )
        self.preemptions = PCounter(
            "borg_scheduler_preemptions",
            "Running tasks evicted by this replica's scheduler to make room for higher priority.",
            registry=self.registry,
        )
        self.latency = Histogram(
            "borg_scheduling_latency_seconds",
            "Time from a task starting to wait for a machine (submit, preemption, loss) to its "
            "committed placement.",
            buckets=SCHEDULING_BUCKETS,
            registry=self.registry,
        )
        self.pass_seconds = Histogram(
            "borg_scheduler_pass_duration_seconds",
            "Time to compute one scheduler pass (snapshot to plan, before the commit).",
            buckets=PASS_BUCKETS,
            registry=self.registry,
        )

        self.denied = PCounter(
            "borg_api_permission_denied",
            "gRPC API calls refused by the authorization table, by method.",
            ["method"],
            registry=self.registry,
        )

    def on_denied(self, method: str) -> None:
        """A caller's role may not call `method` (the interceptor refused it)."""
        self.denied.labels(method).inc()

    def on_request(self, method: str, code: str, seconds: float) -> None:
        """An API call finished with `code` (a gRPC status name, lower case, e.g. `ok`)."""
        self.requests.labels(method, code).inc()
        self.duration.labels(method).observe(seconds)

    def on_plan(self, proposed: int, placed: int, seconds: float) -> None:
        """A scheduler pass committed: `placed` of `proposed` placements survived re-check."""
        self.placements.inc(placed)
        self.pass_seconds.observe(seconds)

    def on_placed(self, latencies_s: list[float]) -> None:
        """Submit -> placed latency of each task the last committed plan placed."""
        for s in latencies_s:
            self.latency.observe(s)

    def on_preempted(self, n: int) -> None:
        """`n` running tasks were evicted by a committed plan."""
        if n > 0:
            self.preemptions.inc(n)
