"""Sandbox garbage collection: sandboxes of tasks the Borglet no longer knows go after a while."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from borglet.agent import SANDBOX_RETENTION_S, Borglet


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
    )
    assert Borglet.gc_sandboxes(fake, now) == 2  # type: ignore[arg-type]
    # known (bbb) stays however old; recent (ccc) stays; old unknown ones are gone
    assert sorted(p.name for p in tasks.iterdir()) == ["batch.2.ccc", "web.0.bbb"]


def test_counters_of_forgotten_task_indices_are_pruned_after_the_retention() -> None:
    from borglet.agent import COUNTER_RETENTION_S

    fake = SimpleNamespace(
        lock=threading.Lock(),
        states=SimpleNamespace(tasks={("web", 0, "new"): object()}),
        restarts_total={("web", 0): 2, ("gone", 1): 3, ("recent", 0): 1},
        oom_kills={("gone", 1): 1},
        _forgotten_at={("web", 0): 0.0, ("gone", 1): 0.0, ("recent", 0): 100.0},
    )
    assert Borglet.prune_counters(fake, COUNTER_RETENTION_S + 50) == 2  # type: ignore[arg-type]
    # web/0 runs again (kept), gone/1 is dropped, recent/0 not yet
    assert fake.restarts_total == {("web", 0): 2, ("recent", 0): 1}
    assert fake.oom_kills == {}
