"""Prometheus metrics of a Borglet, read from the task cgroups at scrape time.

Values come from the cgroup files (cheap reads, no process walks), so a scrape costs a few
small file reads per running task. The start-latency histogram lives on the agent (it is
observed when a task starts) and is registered in the same registry.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Protocol

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from borglet.config import BorgletConfig
from borglet.devices import Gpu, GpuUsage
from borglet.runtime.cgroups import CgroupStats
from borglet.state import ACTIVE, DONE, STOPPING, TaskKey, TaskStates, task_id_of

LABELS = ["job", "index"]


class _Stats(Protocol):
    def stats(self, task_id: str) -> CgroupStats: ...


class MetricsSource(Protocol):
    """What the collector reads of the Borglet (kept narrow: no import of the agent)."""

    cfg: BorgletConfig
    lock: threading.RLock
    states: TaskStates

    @property
    def runtime(self) -> _Stats: ...

    @property
    def connected(self) -> bool: ...

    def offered_gpus(self) -> list[str]: ...

    def gpu_usage(self) -> list[tuple[TaskKey, Gpu, GpuUsage]]: ...


class BorgletCollector(Collector):
    def __init__(self, b: MetricsSource) -> None:
        self.b = b

    def collect(self) -> Iterator[Metric]:
        b = self.b
        cpu = CounterMetricFamily(
            "borg_task_cpu_seconds", "CPU time used by a task's cgroup.", labels=LABELS
        )
        mem = GaugeMetricFamily(
            "borg_task_memory_bytes", "Memory charged to a task's cgroup.", labels=LABELS
        )
        peak = GaugeMetricFamily(
            "borg_task_memory_peak_bytes",
            "Peak memory charged to a task's cgroup (this run).",
            labels=LABELS,
        )
        restarts = CounterMetricFamily(
            "borg_task_restarts",
            "Restarts of a task (job, index) on this machine, over all its incarnations.",
            labels=LABELS,
        )
        ooms = CounterMetricFamily(
            "borg_task_oom_kills", "Kernel OOM kills of a task.", labels=LABELS
        )
        healthy = GaugeMetricFamily(
            "borg_task_healthy",
            "1 when the task's health check passes, 0 when it is unhealthy (absent: no check "
            "or no verdict yet).",
            labels=LABELS,
        )
        with b.lock:
            for key, t in b.states.tasks.items():
                if t.health and t.phase != DONE:
                    value = 1.0 if t.health == "healthy" else 0.0
                    healthy.add_metric([key[0], str(key[1])], value)
            tasks = [
                (k, t.restarts, t.phase, t.spec.requirements.cpu, t.spec.requirements.ram)
                for k, t in b.states.tasks.items()
            ]
            alloc_gpu = sum(len(t.gpus) for t in b.states.tasks.values() if t.phase != DONE)
            oom = dict(b.states.counters.oom_kills)
            restarts_total = dict(b.states.counters.restarts)
        used_cpu_s = 0.0
        used_mem = 0
        alloc_cpu = 0.0
        alloc_mem = 0
        seen = {(t[0][0], t[0][1]) for t in tasks}
        for k in sorted(seen | set(restarts_total) | set(oom)):
            labels = [k[0], str(k[1])]
            restarts.add_metric(labels, restarts_total.get(k, 0))
            ooms.add_metric(labels, oom.get(k, 0))
        for key, _, phase, req_cpu, req_ram in tasks:
            labels = [key[0], str(key[1])]
            if phase != DONE:
                alloc_cpu += req_cpu
                alloc_mem += req_ram
            if phase not in (ACTIVE, STOPPING):
                continue
            try:
                st = b.runtime.stats(task_id_of(key))
            except Exception:
                continue
            cpu.add_metric(labels, st.cpu_seconds)
            mem.add_metric(labels, st.memory_bytes)
            peak.add_metric(labels, st.memory_peak_bytes)
            used_cpu_s += st.cpu_seconds
            used_mem += st.memory_bytes
        yield cpu
        yield mem
        yield peak
        yield restarts
        yield ooms
        yield healthy
        # GPUs (NVML only: declared devices cannot be measured). Devices are never shared,
        # so a device's numbers are its task's.
        gpu_util = GaugeMetricFamily(
            "borg_task_gpu_utilization_ratio",
            "Share (0-1) of the last sample period a kernel ran on the task's GPU (NVML).",
            labels=[*LABELS, "gpu", "uuid"],
        )
        gpu_mem = GaugeMetricFamily(
            "borg_task_gpu_memory_bytes",
            "Memory in use on the task's GPU (NVML).",
            labels=[*LABELS, "gpu", "uuid"],
        )
        for key, g, u in b.gpu_usage():
            labels = [key[0], str(key[1]), g.id, g.uuid]
            gpu_util.add_metric(labels, u.utilization / 100.0)
            gpu_mem.add_metric(labels, u.memory_used)
        yield gpu_util
        yield gpu_mem
        cap = GaugeMetricFamily(
            "borg_machine_capacity",
            "Capacity offered to the cell (the machine minus --reserve-*).",
            labels=["resource"],
        )
        cap.add_metric(["cpu"], b.cfg.offered_cpu)
        cap.add_metric(["ram"], b.cfg.offered_memory)
        cap.add_metric(["gpu"], len(b.offered_gpus()))
        yield cap
        alloc = GaugeMetricFamily(
            "borg_machine_allocated",
            "Resources requested by the tasks placed on this machine.",
            labels=["resource"],
        )
        alloc.add_metric(["cpu"], alloc_cpu)
        alloc.add_metric(["ram"], alloc_mem)
        alloc.add_metric(["gpu"], alloc_gpu)
        yield alloc
        used = GaugeMetricFamily(
            "borg_machine_used",
            "Resources used by running tasks (cpu: seconds consumed by current runs).",
            labels=["resource"],
        )
        used.add_metric(["cpu_seconds"], used_cpu_s)
        used.add_metric(["ram"], used_mem)
        yield used
        yield GaugeMetricFamily(
            "borg_machine_tasks_running",
            "Tasks with a live process on this machine.",
            value=sum(1 for t in tasks if t[2] == ACTIVE),
        )
        yield GaugeMetricFamily(
            "borg_borglet_connected", "1 when the last sync succeeded.", value=float(b.connected)
        )
