"""`--fsync` on a real single-node BorgFSM: every journal entry is synced (msync of the
journal's mmap) before the write is acknowledged, and the term/vote file is fsynced when it
changes. PySyncObj syncs neither by itself, so without the wrappers nothing here is synced.

The syncs are counted where they reach the file: PySyncObj's `ResizableFile.flush` (the
journal's msync) and `os.fsync` (the meta file), each noting what it synced."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pytest
from pysyncobj.journal import MemoryJournal, ResizableFile

from borgmaster import commands as C
from borgmaster.fsm import BorgFSM
from borgmaster.model import JobSpec
from borgmaster.store import Store
from tests.unit.test_fsm_snapshot import FAST, free_port, is_leader, stop, wait_for


@pytest.fixture
def fsms() -> Iterator[list[BorgFSM]]:
    started: list[BorgFSM] = []
    yield started
    for fsm in started:
        if fsm.tick_thread_alive():
            stop(fsm)


class Syncs:
    """Journal msyncs (with the journal's length when each ran) and fsynced paths."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.fsm: BorgFSM | None = None
        self.journal_len_at_flush: list[int] = []
        self.fsynced: list[str] = []
        flush = ResizableFile.flush
        fsync = os.fsync

        def counting_flush(f: ResizableFile) -> None:
            flush(f)
            if self.fsm is not None:
                self.journal_len_at_flush.append(len(self.fsm._SyncObj__raftLog))

        def counting_fsync(fd: int) -> None:
            fsync(fd)
            self.fsynced.append(os.readlink(f"/proc/self/fd/{fd}"))

        monkeypatch.setattr(ResizableFile, "flush", counting_flush)
        monkeypatch.setattr(os, "fsync", counting_fsync)


def start(data: Path, fsms: list[BorgFSM], syncs: Syncs, fsync: bool) -> BorgFSM:
    fsm = BorgFSM(f"127.0.0.1:{free_port()}", [], str(data), Store(), tuning=FAST, fsync=fsync)
    fsms.append(fsm)
    syncs.fsm = fsm
    wait_for(lambda: is_leader(fsm), what="the single node to become leader")
    return fsm


def submit(fsm: BorgFSM, i: int) -> None:
    spec = JobSpec(name=f"j{i}", replicas=1, command=["sleep", "1"])
    result = fsm.apply(C.encode(C.SubmitJob(ts_ms=i, request_id=f"r{i}", spec=spec)), sync=True)
    assert "error" not in result, result


def test_with_fsync_every_entry_is_synced_before_it_is_acknowledged(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsms: list[BorgFSM]
) -> None:
    syncs = Syncs(monkeypatch)
    fsm = start(tmp_path / "data", fsms, syncs, fsync=True)
    for i in range(5):
        before = len(syncs.journal_len_at_flush)
        submit(fsm, i)
        # Acknowledged: the journal, as long as it was with this entry in it, was synced.
        entries = len(fsm._SyncObj__raftLog)
        assert len(syncs.journal_len_at_flush) > before, f"entry {i}: no msync"
        assert max(syncs.journal_len_at_flush) >= entries, (syncs.journal_len_at_flush, entries)
    # The term and vote, stored the way PySyncObj stores them before it sends a vote (called
    # here: this node's one election may have run before the test could count): the file is
    # fsynced, and its directory too.
    journal = fsm._SyncObj__raftLog
    journal.setCurrentTerm(journal.getCurrentTerm(), journal.getVotedForNodeId())
    meta = str(tmp_path / "data" / "raft.journal.meta")
    assert any(p.startswith(meta) for p in syncs.fsynced), syncs.fsynced
    assert str(tmp_path / "data") in syncs.fsynced, syncs.fsynced


def test_without_fsync_nothing_is_synced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, fsms: list[BorgFSM]
) -> None:
    """The counters see only what `--fsync` adds (PySyncObj alone syncs nothing)."""
    syncs = Syncs(monkeypatch)
    fsm = start(tmp_path / "data", fsms, syncs, fsync=False)
    for i in range(3):
        submit(fsm, i)
    assert syncs.journal_len_at_flush == []
    journal = fsm._SyncObj__raftLog
    journal.setCurrentTerm(journal.getCurrentTerm(), journal.getVotedForNodeId())
    assert not any("raft.journal" in p for p in syncs.fsynced), syncs.fsynced


def test_fsync_refuses_a_journal_it_cannot_sync() -> None:
    """Never a silent no-op: a PySyncObj journal without `flush` stops the start."""
    fake = SimpleNamespace(_SyncObj__raftLog=MemoryJournal())
    with pytest.raises(RuntimeError, match="cannot sync"):
        BorgFSM._fsync_journal(fake)  # type: ignore[arg-type]
