"""Sandbox garbage collection: sandboxes of tasks the Borglet no longer knows go after a while."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from borglet.agent import SANDBOX_RETENTION_S, Borglet
from borglet.housekeeping import COUNTER_RETENTION_S
from borglet.state import LocalTask, PruneCounters, TaskStates
from cfg.model import JobSpec


def test_unknown_sandboxes_go_after_the_retention_known_ones_stay(tmp_path: Path) -> None:
    tasks = tmp_path / "tasks"
    for name in ("web.0.aaa", "web.0.bbb", "old.1", "batch.2.ccc"):
        (tasks / name).mkdir(parents=True)
        (tasks / name / "stdout").write_text("x")
    now = time.time()
    long_ago = now - SANDBOX_RETENTION_S - 10
    for name in ("web.0.aaa", "web.0.bbb", "old.1"):
        os.utime(tasks / name, (long_ago, long_ago))
    fake = SimpleNamespace(
        cfg=SimpleNamespace(data_dir=str(tmp_path)),
        lock=threading.Lock(),
        states=SimpleNamespace(tasks={("web", 0, "bbb"): object()}),
        checkpoint=SimpleNamespace(refused=False),
    )
    assert Borglet.gc_sandboxes(fake, now) == 2  # type: ignore[arg-type]
    # known (bbb) stays however old; recent (ccc) stays; old unknown ones are gone
    assert sorted(p.name for p in tasks.iterdir()) == ["batch.2.ccc", "web.0.bbb"]


def test_counters_of_forgotten_task_indices_are_pruned_after_the_retention() -> None:
    retention = int(COUNTER_RETENTION_S * 1000)
    ts = TaskStates()
    ts.tasks[("web", 0, "new")] = LocalTask(key=("web", 0, "new"), spec=JobSpec(name="web"))
    c = ts.counters
    c.restarts.update({("web", 0): 2, ("gone", 1): 3, ("recent", 0): 1})
    c.oom_kills.update({("gone", 1): 1})
    c.forgotten_at_ms.update({("web", 0): 0, ("gone", 1): 0, ("recent", 0): 100_000})
    assert ts.handle(PruneCounters(retention), retention + 50_000) == []
    # web/0 runs again (kept), gone/1 is dropped, recent/0 not yet
    assert c.restarts == {("web", 0): 2, ("recent", 0): 1}
    assert c.oom_kills == {}
    assert c.forgotten_at_ms == {("recent", 0): 100_000}
