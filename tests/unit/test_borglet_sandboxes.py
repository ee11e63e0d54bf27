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
