"""The snapshot file (cfg/snapshot.py) and `borgmaster restore` (borgmaster/restore.py) in
process: what a damaged or foreign file does, what a restored data dir holds, and that a real
(single-node) BorgFSM started on it resumes from the snapshot as a new cell."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.fsm import (
    DUMP_MAGIC,
    ID_FILE,
    RESTORED_MIN_INDEX,
    DataDirError,
    check_data_dir,
)
from borgmaster.model import Replica
from borgmaster.restore import RestoreError, restore
from borgmaster.store import SNAPSHOT_FORMAT, Store
from cfg import snapshot
from proto.borg.v1 import borg_pb2 as pb
from tests.unit.test_cli import FakeMaster, one_line_error, run, serve
from tests.unit.test_fsm_snapshot import commands, free_port, is_leader, start, started, wait_for

__all__ = ["started"]  # the fixture, imported for the FSM test


def old_cell_store() -> Store:
    """A state as an old cell had it: a job placed on a machine, a replica, a fence term."""
    store = Store()
    for i, cmd in enumerate(commands(), start=1):
        assert "error" not in store.apply(C.encode(cmd), i)
    store.apply(C.encode(C.LeaderElected(ts_ms=4, term=7, replica="a")), 40)
    me = Replica(id="a", raft="x:1", grpc="x:2")
    store.apply(C.encode(C.RegisterReplica(ts_ms=5, replica=me)), 41)
    return store


def save(path: Path, store: Store, term: int = 7) -> snapshot.SnapshotInfo:
    data = store.snapshot_bytes()
    info = snapshot.SnapshotInfo(
        cell="old",
        replica="a",
        index=store.applied_index,
        term=term,
        taken_ms=1_700_000_000_000,
        state_format=SNAPSHOT_FORMAT,
        size=len(data),
        sha256=hashlib.sha256(data).hexdigest(),
    )
    snapshot.write(str(path), info, [data[:100], data[100:]])
    return info


def test_file_round_trip_and_every_damage_is_refused(tmp_path: Path) -> None:
    store = old_cell_store()
    path = tmp_path / "s.snap"
    info = save(path, store)
    assert os.stat(path).st_mode & 0o777 == 0o600
    got, state = snapshot.read(str(path))
    assert got == info and state == store.snapshot_bytes()
    raw = path.read_bytes()
    for where in (len(snapshot.MAGIC) + 10, len(raw) // 2, len(raw) - 1):
        bad = bytearray(raw)
        bad[where] ^= 0x40
        (tmp_path / "bad").write_bytes(bytes(bad))
        with pytest.raises(snapshot.SnapshotFileError, match="corrupt"):
            snapshot.read(str(tmp_path / "bad"))
    (tmp_path / "short").write_bytes(raw[:-100])
    with pytest.raises(snapshot.SnapshotFileError, match="corrupt"):
        snapshot.read(str(tmp_path / "short"))
    (tmp_path / "dump").write_bytes(DUMP_MAGIC + b"\x80")  # a Raft dump is not a backup
    with pytest.raises(snapshot.SnapshotFileError, match="not a borgcell snapshot"):
        snapshot.read(str(tmp_path / "dump"))


def test_a_stream_that_does_not_match_its_header_leaves_nothing(tmp_path: Path) -> None:
    store = old_cell_store()
    path = tmp_path / "s.snap"
    info = save(path, store)
    before = path.read_bytes()
    with pytest.raises(snapshot.SnapshotFileError, match="does not match"):
        snapshot.write(str(path), info, [store.snapshot_bytes()[:-1]])
    assert path.read_bytes() == before  # the previous snapshot is untouched
    assert sorted(os.listdir(tmp_path)) == ["s.snap"]


def test_restore_refuses_without_writing(tmp_path: Path) -> None:
    snap = tmp_path / "s.snap"
    save(snap, old_cell_store())
    used = tmp_path / "used"
    used.mkdir()
    (used / "x").write_text("")
    with pytest.raises(RestoreError, match="not empty"):
        restore(str(snap), str(used))
    (tmp_path / "foreign").write_bytes(b"hello")
    with pytest.raises(RestoreError, match="not a borgcell snapshot"):
        restore(str(tmp_path / "foreign"), str(tmp_path / "new"))
    assert not (tmp_path / "new").exists()


def test_restored_dir_starts_a_new_cell_with_the_state(
    tmp_path: Path, started: list[object]
) -> None:
    old = old_cell_store()
    snap = tmp_path / "s.snap"
    info = save(snap, old)
    data = tmp_path / "r0"
    got = restore(str(snap), str(data))
    assert got.index == max(info.index, RESTORED_MIN_INDEX) and (got.jobs, got.tasks) == (1, 2)
    assert sorted(os.listdir(data)) == [ID_FILE, "raft.snapshot"]
    assert os.stat(data).st_mode & 0o777 == 0o700

    # Any replica id may claim the dir once; then only that one.
    check_data_dir(str(data), "new", "r0")
    with pytest.raises(DataDirError, match="belongs to replica 'r0'"):
        check_data_dir(str(data), "new", "r1")

    doc = msgpack.unpackb((data / "raft.snapshot").read_bytes()[len(DUMP_MAGIC) :], raw=False)
    assert doc["cluster"] == [] and doc["last"][1] == got.index and doc["last"][2] == 0

    store = Store()
    fsm = start(f"127.0.0.1:{free_port()}", data, store, started)  # type: ignore[arg-type]
    wait_for(lambda: "web" in store.jobs, what="the restored state")
    assert fsm.applied_index() >= got.index and store.applied_index >= got.index
    t = store.tasks[("web", 0)]
    assert (t.state, t.machine, t.incarnation) == ("assigned", "m1", "i0")  # re-adoptable
    assert store.replicas == {} and store.fence_term == 0
    assert [e.type for e in store.events][-1] == "restored"
    assert store.events[-1].index == old.next_event

    # The new cell's first term is 1: its leader's fenced decisions must apply.
    assert is_leader(fsm) and fsm.term() == 1
    fsm.apply(C.encode(C.LeaderElected(ts_ms=9, term=1, replica="r0")), sync=True)
    res = fsm.apply(
        C.encode(
            C.ApplyPlan(
                ts_ms=10,
                term=1,
                placements=[
                    C.Placement(job="web", index=1, machine="m1", incarnation="i1", version=1)
                ],
            )
        ),
        sync=True,
    )
    assert res == {"placed": 1, "rejected": 0, "preempted": 0}


class SnapshotMaster(FakeMaster):
    """Streams a snapshot of `state` in 3 chunks; `lie` drops the last byte of the state."""

    def __init__(self, state: bytes, lie: bool = False) -> None:
        super().__init__()
        self.state = state
        self.lie = lie

    def SaveSnapshot(self, request: pb.SaveSnapshotRequest, context: Any) -> Any:
        data = self.state
        header = pb.SnapshotHeader(
            cell="c",
            replica="m0",
            index=42,
            term=3,
            taken_ms=1,
            state_format=SNAPSHOT_FORMAT,
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
        )
        sent = data[:-1] if self.lie else data
        third = len(sent) // 3
        yield pb.SnapshotChunk(header=header, data=sent[:third])
        yield pb.SnapshotChunk(data=sent[third : 2 * third])
        yield pb.SnapshotChunk(data=sent[2 * third :])


def test_borgcfg_snapshot_save_writes_a_checked_file_or_nothing(tmp_path: Path) -> None:
    state = old_cell_store().snapshot_bytes()
    out = tmp_path / "cell.snap"
    for _fm, addr in serve(SnapshotMaster(state)):
        r = run(addr, "snapshot", "save", str(out), "-o", "json")
        assert r.exit_code == 0, r.stderr
        assert json.loads(r.stdout)["index"] == 42
        info, got = snapshot.read(str(out))
        assert got == state and (info.index, info.term) == (42, 3)
    for _fm, addr in serve(SnapshotMaster(state, lie=True)):
        r = run(addr, "snapshot", "save", str(out))
        assert r.exit_code == 1
        assert "does not match its header" in one_line_error(r)
    assert sorted(os.listdir(tmp_path)) == ["cell.snap"]  # the good one, untouched
    assert snapshot.read(str(out))[1] == state
    r = run("127.0.0.1:1", "snapshot", "save", str(tmp_path / "no" / "such.snap"))
    assert r.exit_code == 1 and "does not exist" in one_line_error(r)
