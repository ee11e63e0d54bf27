"""Raft dumps written by a forked child (borgmaster/dumps.py): the file appears complete or
not at all, PySyncObj's temporary file is never left for it to rename, and the checker
reports each dump's outcome exactly once."""

from __future__ import annotations

import os
from pathlib import Path

from pysyncobj.config import SERIALIZER_STATE

from borgmaster.dumps import BackgroundDumps
from tests.cluster import wait_for


def outcome(dumps: BackgroundDumps) -> int:
    state = wait_for(
        lambda: (s := dumps.check()) != SERIALIZER_STATE.SERIALIZING and s,
        10,
        0.01,
        "the dump's outcome",
    )
    return int(state)


def test_a_dump_is_written_by_a_child_and_reported_once(tmp_path: Path) -> None:
    final = tmp_path / "raft.snapshot"
    tmp = tmp_path / "raft.snapshot.tmp"
    tmp.write_bytes(b"stale")  # PySyncObj renames this over the dump: it must be gone
    dumps = BackgroundDumps()
    parent = os.getpid()
    dumps.start(str(tmp), lambda: b"state of %d" % os.getpid())
    assert not tmp.exists()
    assert outcome(dumps) == SERIALIZER_STATE.SUCCESS
    data = final.read_bytes()
    assert data.startswith(b"state of ") and data != b"state of %d" % parent  # the child's
    assert dumps.check() == SERIALIZER_STATE.NOT_SERIALIZING  # reported once
    assert sorted(p.name for p in tmp_path.iterdir()) == ["raft.snapshot"]
    assert dumps.written == 1


def test_a_failed_dump_keeps_the_old_one_and_is_reported_once(tmp_path: Path) -> None:
    final = tmp_path / "raft.snapshot"
    final.write_bytes(b"old dump")
    dumps = BackgroundDumps()

    def boom() -> bytes:
        raise RuntimeError("encoding failed")

    dumps.start(str(tmp_path / "raft.snapshot.tmp"), boom)
    assert outcome(dumps) == SERIALIZER_STATE.FAILED
    assert final.read_bytes() == b"old dump"
    assert dumps.check() == SERIALIZER_STATE.NOT_SERIALIZING
    assert dumps.failed == 1
