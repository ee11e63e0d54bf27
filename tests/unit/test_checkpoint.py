"""The Borglet's state file writes (borglet/checkpoint.py `Checkpoint.written`): a large
table is written on its own thread, so the link can heartbeat while it waits for it."""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

from borglet.checkpoint import Checkpoint, Written
from tests.cluster import wait_for


class Table:
    """A task table whose snapshot blocks until released (a write that takes a while)."""

    def __init__(self) -> None:
        self.release = threading.Event()
        self.snapshots = 0

    def __call__(self) -> list[dict[str, Any]]:
        self.snapshots += 1
        self.release.wait(10)
        return [{"n": self.snapshots}]


def test_a_slow_write_answers_writing_then_written(tmp_path: Path) -> None:
    table = Table()
    cp = Checkpoint(str(tmp_path), table)
    cp.mark_dirty()
    assert cp.written(0.05) is Written.WRITING  # the write goes on meanwhile
    assert cp.written(0.05) is Written.WRITING  # the same write: not a second one
    assert table.snapshots == 1
    table.release.set()
    assert cp.written(5) is Written.YES
    assert json.loads((tmp_path / "state.json").read_text())["tasks"] == [{"n": 1}]
    assert cp.written(0) is Written.YES and table.snapshots == 1  # nothing changed since
    cp.mark_dirty()
    assert cp.written(5) is Written.YES and table.snapshots == 2


def test_a_file_that_cannot_be_written_or_is_refused_answers_failed(tmp_path: Path) -> None:
    table = Table()
    table.release.set()
    cp = Checkpoint(str(tmp_path / "missing"), table)
    cp.mark_dirty()
    assert cp.written(5) is Written.FAILED and "cannot write" in cp.error
    assert cp.written(5) is Written.FAILED  # still dirty: tried again, failed again
    ok = Checkpoint(str(tmp_path), table)
    ok.refuse("unreadable")
    ok.mark_dirty()
    assert ok.written(5) is Written.FAILED and not (tmp_path / "state.json").exists()


def test_written_waits_for_a_write_another_caller_has_under_way(tmp_path: Path) -> None:
    table = Table()
    cp = Checkpoint(str(tmp_path), table)
    cp.mark_dirty()
    other = threading.Thread(target=cp.flush)  # the timer loop's write, say: slow
    other.start()
    wait_for(lambda: table.snapshots == 1, 5, what="the other write's snapshot")
    assert cp.written(0.05) is Written.WRITING  # not "written" while the file is old
    table.release.set()
    other.join(5)
    assert cp.written(5) is Written.YES and (tmp_path / "state.json").exists()
