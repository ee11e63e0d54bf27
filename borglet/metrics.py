"""Prometheus metrics of a Borglet, read from the task cgroups at scrape time.

Values come from the cgroup files (cheap reads, no process walks), so a scrape costs a few
small file reads per running task.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from borglet.state import ACTIVE

if TYPE_CHECKING:
    from borglet.agent import Borglet


def task_id_of(key: tuple[str, int, str]) -> str:
    job, index, inc = key
    return f"{job}.{index}.{inc}"


class BorgletCollector(Collector):
    def __init__(self, b: Borglet) -> None:
        self.b = b

    def collect(self) -> Iterator[Metric]:
        b = self.b
        cpu = CounterMetricFamily(
            "borg_task_cpu_seconds", "CPU time used by a task's cgroup.", labels=["job", "index"]
        )
        mem = GaugeMetricFamily(
            "borg_task_memory_bytes", "Memory charged to a task's cgroup.", labels=["job", "index"]
        )
        restarts = CounterMetricFamily(
            "borg_task_restarts", "Restarts of a task on this machine.", labels=["job", "index"]
        )
        ooms = CounterMetricFamily(
            "borg_task_oom_kills", "Kernel OOM kills of a task.", labels=["job", "index"]
        )
        with b.lock:
            tasks = [(k, t.restarts, t.phase) for k, t in b.states.tasks.items()]
            oom = dict(b.oom_kills)
        used_cpu = 0.0
        used_mem = 0
        for key, nrestarts, phase in tasks:
            labels = [key[0], str(key[1])]
            restarts.add_metric(labels, nrestarts)
            ooms.add_metric(labels, oom.get((key[0], key[1]), 0))
            if phase != ACTIVE:
                continue
            try:
                st = b.runtime.stats(task_id_of(key))
            except Exception:
                continue
            cpu.add_metric(labels, st.cpu_seconds)
            mem.add_metric(labels, st.memory_bytes)
            used_cpu += st.cpu_seconds
            used_mem += st.memory_bytes
        yield cpu
        yield mem
        yield restarts
        yield ooms
        cap = GaugeMetricFamily(
            "borg_machine_capacity", "Capacity offered to the cell.", labels=["resource"]
        )
        cap.add_metric(["cpu"], b.cfg.cpu)
        cap.add_metric(["ram"], b.cfg.memory)
        yield cap
        yield GaugeMetricFamily(
            "borg_machine_tasks_running",
            "Tasks with a live process on this machine.",
            value=sum(1 for _, _, p in tasks if p == ACTIVE),
        )
        yield GaugeMetricFamily(
            "borg_borglet_connected", "1 when the last sync succeeded.", value=float(b.connected)
        )
