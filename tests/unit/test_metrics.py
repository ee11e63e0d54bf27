"""The master's metrics: families, types, labels and values for a known store, leader-only
export of cell-wide gauges, the hooks the leader calls, and `promtool check metrics`."""

from __future__ import annotations

import shutil
import subprocess
import threading
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any, cast

import pytest
from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from borgmaster.digests import DigestChecker, Digests
from borgmaster.diskspace import DataDirSpace
from borgmaster.fsm import RaftStatus, Role
from borgmaster.metrics import (
    MasterMetrics,
    cell_figures,
    placement_latencies,
    waiting_since_ms,
)
from borgmaster.model import Job, JobSpec, Machine, Requirements, Resources, Task
from borgmaster.store import Store

GiB = 2**30
NOW = 1_000_000


def add_job(store: Store, name: str, priority: int, states: list[str], cpu: float = 0.5) -> None:
    spec = JobSpec(
        name=name,
        user="alice",
        priority=priority,
        replicas=len(states),
        requirements=Requirements(cpu=cpu, ram=GiB),
    )
    store.jobs[name] = Job(spec=spec, state="running")
    for i, st in enumerate(states):
        machine = "m1" if st in ("assigned", "running") else ""
        t = Task(job=name, index=i, state=st, machine=machine, incarnation=f"{name}{i}")
        t.submitted_ms = NOW - 30_000
        t.updated_ms = NOW - 5_000
        store.tasks[t.key] = t
        if machine:
            store.tasks_by_machine.setdefault(machine, set()).add(t.key)


def indexed(s: Store) -> Store:
    """The same state with the store's own indexes built (a snapshot round trip)."""
    out = Store()
    out.load_snapshot(s.snapshot_bytes())
    return out


def cell() -> Store:
    """Two machines (one lost), a running batch job and a pending production job."""
    s = Store()
    s.machines["m1"] = Machine(name="m1", capacity=Resources(cpu=4.0, ram=8 * GiB, disk=GiB))
    s.machines["m2"] = Machine(name="m2", capacity=Resources(cpu=8.0, ram=16 * GiB), state="lost")
    add_job(s, "web", 150, ["running", "running", "assigned"])
    add_job(s, "big", 250, ["pending", "lost"], cpu=64)
    s.jobs["big"].state = "pending"
    return indexed(s)


@dataclass
class FakeFSM:
    state: int = 2
    status: dict[str, Any] = field(default_factory=dict)

    def getStatus(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "raft_term": 7,
            "commit_idx": 42,
            "last_applied": 41,
            **self.status,
        }


@dataclass
class FakeMaster:
    """The metrics' view of a replica (facade.MetricsHost)."""

    store: Store
    fsm: FakeFSM
    digests: Digests = field(default_factory=lambda: Digests(lambda: ""))
    digest_check: Any = None
    space: DataDirSpace = field(default_factory=lambda: DataDirSpace("/", "m0", 0))
    link_streams: Any = field(default_factory=lambda: SimpleNamespace(sessions={}, relayed=0))

    def __post_init__(self) -> None:
        self.digest_check = DigestChecker(self.digests, dict, lambda: 3, threading.Event())

    def raft_status(self) -> RaftStatus:
        st = self.fsm.getStatus()
        return RaftStatus(
            role=Role(st["state"]),
            term=st["raft_term"],
            commit_index=st["commit_idx"],
            applied_index=st["last_applied"],
            leader="",
        )

    def proposal_counts(self) -> None:
        return None


def scrape(m: MasterMetrics) -> tuple[str, dict[str, Any]]:
    text = generate_latest(m.registry).decode()
    return text, {f.name: f for f in text_string_to_metric_families(text)}


def value(fams: dict[str, Any], family: str, sample: str = "", **labels: str) -> float:
    for s in fams[family].samples:
        if s.name == (sample or family) and all(s.labels.get(k) == v for k, v in labels.items()):
            return float(s.value)
    raise KeyError(f"{sample or family}{labels}")


def metrics_for(store: Store, leader: bool = True) -> MasterMetrics:
    return MasterMetrics(cast(Any, FakeMaster(store, FakeFSM(state=2 if leader else 0))))


def test_leader_exports_cell_gauges_with_types_labels_and_values() -> None:
    _, fams = scrape(metrics_for(cell()))
    for name in ("borg_jobs", "borg_tasks", "borg_machines", "borg_pending_tasks"):
        assert fams[name].type == "gauge"
    assert value(fams, "borg_tasks", state="running") == 2
    assert value(fams, "borg_tasks", state="assigned") == 1
    assert value(fams, "borg_tasks", state="pending") == 1
    assert value(fams, "borg_tasks", state="lost") == 1
    assert value(fams, "borg_tasks", state="succeeded") == 0  # every state present, zeros too
    assert value(fams, "borg_jobs", state="running") == 1
    assert value(fams, "borg_jobs", state="pending") == 1
    assert value(fams, "borg_machines", state="up") == 1
    assert value(fams, "borg_machines", state="lost") == 1
    # The lost machine offers nothing; allocation counts assigned + running tasks.
    assert value(fams, "borg_cell_capacity", resource="cpu") == 4.0
    assert value(fams, "borg_cell_capacity", resource="ram") == 8 * GiB
    assert value(fams, "borg_cell_allocated", resource="cpu") == 1.5
    assert value(fams, "borg_cell_allocated", resource="ram") == 3 * GiB
    # big (priority 250) has one pending and one lost task: both wait, in the production band.
    assert value(fams, "borg_pending_tasks", band="production") == 2
    assert value(fams, "borg_pending_tasks", band="batch") == 0
    assert {s.labels["band"] for s in fams["borg_pending_tasks"].samples} == {
        "free",
        "batch",
        "production",
        "monitoring",
    }
    assert value(fams, "borg_raft_is_leader") == 1
    assert value(fams, "borg_raft_term") == 7
    assert value(fams, "borg_raft_commit_index") == 42
    assert value(fams, "borg_raft_applied_index") == 41


def test_follower_exports_only_its_own_raft_and_process_figures() -> None:
    _, fams = scrape(metrics_for(cell(), leader=False))
    assert value(fams, "borg_raft_is_leader") == 0
    assert value(fams, "borg_raft_term") == 7
    for name in ("borg_jobs", "borg_tasks", "borg_machines", "borg_cell_capacity"):
        assert name not in fams, f"{name} would be double counted across replicas"
    assert fams["borg_scheduler_placements"].type == "counter"  # its own process figures
    assert "borg_api_request_duration_seconds" in fams


def test_digest_gauges_on_every_replica() -> None:
    fake = FakeMaster(Store(), FakeFSM(state=0))
    m = MasterMetrics(cast(Any, fake))
    _, fams = scrape(m)
    assert value(fams, "borg_replica_digest_mismatch") == 0
    assert value(fams, "borg_replica_digest_index") == 0
    fake.digests.record(2000, "a" * 32, 0.25)
    fake.digest_check = DigestChecker(
        fake.digests,
        lambda: {"m1": {2000: "b" * 32}, "m2": {2000: "b" * 32}},
        lambda: 3,
        threading.Event(),
    )
    fake.digest_check.check()
    _, fams = scrape(m)
    assert value(fams, "borg_replica_digest_index") == 2000
    assert value(fams, "borg_replica_digest_mismatch") == 2
    assert value(fams, "borg_replica_digest_diverged") == 1
    assert value(fams, "borg_replica_digest_seconds") == 0.25


def test_data_dir_space_gauges() -> None:
    fake = FakeMaster(Store(), FakeFSM(state=0))
    _, fams = scrape(MasterMetrics(cast(Any, fake)))
    assert value(fams, "borg_data_dir_free_bytes") > 0
    assert value(fams, "borg_data_dir_writes_refused") == 0
    fake.space = DataDirSpace("/", "m0", reserve=1 << 62)
    _, fams = scrape(MasterMetrics(cast(Any, fake)))
    assert value(fams, "borg_data_dir_writes_refused") == 1
    assert fake.space.full().startswith("disk full on replica m0: ")


def test_hooks_feed_counters_and_histograms() -> None:
    m = metrics_for(Store())
    m.on_request("SubmitJob", "ok", 0.02)
    m.on_request("SubmitJob", "ok", 0.03)
    m.on_request("GetJob", "not_found", 0.0005)
    m.on_plan(proposed=3, placed=2, seconds=0.004)
    m.on_placed([0.2, 1.5, 40.0])
    m.on_preempted(2)
    m.on_preempted(0)
    text, fams = scrape(m)
    assert fams["borg_api_requests"].type == "counter"
    assert value(fams, "borg_api_requests", "borg_api_requests_total", method="SubmitJob") == 2
    assert (
        value(
            fams, "borg_api_requests", "borg_api_requests_total", code="not_found", method="GetJob"
        )
        == 1
    )
    assert fams["borg_api_request_duration_seconds"].type == "histogram"
    assert (
        value(
            fams,
            "borg_api_request_duration_seconds",
            "borg_api_request_duration_seconds_count",
            method="SubmitJob",
        )
        == 2
    )
    assert value(fams, "borg_scheduler_placements", "borg_scheduler_placements_total") == 2
    assert value(fams, "borg_scheduler_preemptions", "borg_scheduler_preemptions_total") == 2
    lat = "borg_scheduling_latency_seconds"
    assert fams[lat].type == "histogram"
    assert value(fams, lat, lat + "_count") == 3
    assert value(fams, lat, lat + "_bucket", le="1.0") == 1
    assert value(fams, lat, lat + "_bucket", le="60.0") == 3
    assert value(fams, lat, lat + "_sum") == pytest.approx(41.7)
    assert "_created" not in text  # no doubled series for creation timestamps


def test_cell_figures_time_the_longest_wait_per_band() -> None:
    s = cell()
    with s.lock:
        f = cell_figures(s, NOW)
    # The pending task waits since submission (30 s); the lost one since it was lost (5 s).
    assert f.oldest_pending_s == {"production": 30.0}
    assert waiting_since_ms(s.tasks[("big", 1)]) == NOW - 5_000
    assert waiting_since_ms(s.tasks[("big", 0)]) == NOW - 30_000
    s.jobs["big"].killed = True  # a killed job's tasks wait for nothing
    s = indexed(s)
    with s.lock:
        assert cell_figures(s, NOW).pending == {}


@dataclass
class P:
    job: str
    index: int
    incarnation: str


def test_placement_latencies_count_only_committed_placements() -> None:
    s = cell()
    since = {("web", 0): NOW - 2_000, ("web", 2): NOW - 500, ("big", 0): NOW - 9_000}
    placements = [
        P("web", 0, "web0"),  # committed: running with this incarnation
        P("web", 2, "web2"),  # committed: assigned
        P("web", 1, "other"),  # the re-check gave the task another incarnation
        P("big", 0, "big0"),  # still pending: rejected
        P("nope", 0, "x"),  # unknown task
    ]
    assert placement_latencies(s, placements, since, NOW) == [2.0, 0.5]


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_lint_is_clean() -> None:
    m = metrics_for(cell())
    m.on_request("SubmitJob", "ok", 0.01)
    m.on_placed([0.1])
    text, _ = scrape(m)
    r = subprocess.run(
        ["promtool", "check", "metrics"], input=text, capture_output=True, text=True, timeout=30
    )
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.strip() == "" and r.stderr.strip() == "", r.stdout + r.stderr
