"""A real single-node BorgFSM: snapshots are written in our msgpack format and restored."""

from __future__ import annotations

import socket
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from types import SimpleNamespace

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.fsm import DUMP_MAGIC, BorgFSM, RaftTuning
from borgmaster.model import JobSpec, Machine, Resources
from borgmaster.store import Store
from tests.cluster import wait_for as wait_until

FAST = RaftTuning(
    append_entries_period=0.02,
    raft_min_timeout=0.1,
    raft_max_timeout=0.2,
    leader_fallback_timeout=1.0,
)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


wait_for = partial(wait_until, timeout=5.0, interval=0.01)


def is_leader(fsm: BorgFSM) -> bool:
    if not fsm._isReady():
        return False
    status = fsm.getStatus()
    return bool(status.get("leader") == status.get("self"))


def stop(fsm: BorgFSM) -> None:
    fsm.destroy()
    wait_for(lambda: not fsm.tick_thread_alive(), what="the tick thread to stop")


@pytest.fixture
def started() -> Iterator[list[BorgFSM]]:
    """Every FSM a test starts, destroyed at the end even when the test fails."""
    fsms: list[BorgFSM] = []
    yield fsms
    for fsm in fsms:
        if fsm.tick_thread_alive():
            stop(fsm)


def start(addr: str, data_dir: Path, store: Store, started: list[BorgFSM]) -> BorgFSM:
    fsm = BorgFSM(addr, [], str(data_dir), store, tuning=FAST)
    started.append(fsm)
    wait_for(lambda: is_leader(fsm), what="the single node to become leader")
    return fsm


def commands() -> list[C.Command]:
    m = Machine(name="m1", address="m1:1", capacity=Resources(cpu=4, ram=8 << 30))
    spec = JobSpec(name="web", replicas=2, command=["sleep", "1"])
    return [
        C.RegisterMachine(ts_ms=1, machine=m),
        C.SubmitJob(ts_ms=2, request_id="req-1", spec=spec),
        C.ApplyPlan(
            ts_ms=3,
            placements=[C.Placement(job="web", index=0, machine="m1", incarnation="i0", version=1)],
        ),
    ]


def test_snapshot_is_msgpack_and_restores_the_store(tmp_path: Path, started: list[BorgFSM]) -> None:
    addr = f"127.0.0.1:{free_port()}"
    data_dir = tmp_path / "data"
    store = Store()
    fsm = start(addr, data_dir, store, started)
    for cmd in commands():
        result = fsm.apply(C.encode(cmd), sync=True, timeout=5)
        assert "error" not in result, result
    assert store.tasks[("web", 0)].state == "assigned"

    snap = data_dir / "raft.snapshot"
    assert not snap.exists()
    log_size = fsm._getRaftLogSize()
    fsm.forceLogCompaction()
    wait_for(snap.exists, what="raft.snapshot to be written")
    # The compacted entries are gone: a restart can only get them back from the snapshot.
    wait_for(lambda: fsm._getRaftLogSize() < log_size, what="the log to be compacted")
    raw = snap.read_bytes()
    assert raw.startswith(DUMP_MAGIC)
    body = raw[len(DUMP_MAGIC) :]
    assert not body.startswith((b"\x80", b"\x1f\x8b"))  # neither pickle nor gzip'd pickle
    doc = msgpack.unpackb(body, raw=False)
    assert set(doc) == {"state", "last", "prev", "cluster"}
    assert doc["cluster"] == [addr]
    snap_store = Store()
    snap_store.load_snapshot(doc["state"])
    assert snap_store.digest() == store.digest()

    # One more entry after the snapshot: it must come back from the journal.
    fsm.apply(C.encode(C.KillJob(ts_ms=4, name="web")), sync=True, timeout=5)
    before = store.digest()
    stop(fsm)

    restored = Store()
    fsm2 = start(addr, data_dir, restored, started)
    wait_for(lambda: restored.digest() == before, what="the restored store to catch up")
    assert restored.jobs["web"].killed
    assert restored.request_ids["req-1"]["result"] == "created"

    # The deserializer refuses a file that is not ours.
    snap.write_bytes(b"\x80\x04garbage that is certainly not a borgcell snapshot")
    with pytest.raises(ValueError, match="not a borgcell snapshot"):
        fsm2._deserialize(str(snap))
    stop(fsm2)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"BORGCELL-SNAPSHOT-0\n" + msgpack.packb({}),
        DUMP_MAGIC + b"\xc1\xc1\xc1",
        DUMP_MAGIC + msgpack.packb({"state": msgpack.packb({"format": 99})}),
    ],
    ids=["empty", "wrong-magic", "bad-msgpack", "unknown-store-format"],
)
def test_deserialize_rejects_garbage_with_value_error(tmp_path: Path, data: bytes) -> None:
    path = tmp_path / "raft.snapshot"
    path.write_bytes(data)
    store = Store()
    fake_fsm = SimpleNamespace(_store=store)
    with pytest.raises(ValueError):
        BorgFSM._deserialize(fake_fsm, str(path))  # type: ignore[arg-type]
    assert store.jobs == {} and store.applied_index == 0
