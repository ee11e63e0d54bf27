"""Read barriers (borgmaster/writer.py): a replica alone in its cell that leads answers a
consistent read without a Raft round; any replica with peers goes through the barrier."""

from __future__ import annotations

import threading
from concurrent.futures import Future
from typing import Any

from borgmaster.writer import Writer


class FakeFsm:
    def __init__(self, leader: bool, members: list[str]) -> None:
        self._leader, self._members = leader, members

    def is_leader(self) -> bool:
        return self._leader

    def members(self) -> list[str]:
        return self._members

    def leader(self) -> str:
        return "127.0.0.1:1"


class CountingProposer:
    def __init__(self) -> None:
        self.barriers = 0

    def barrier(self) -> Future[Any]:
        self.barriers += 1
        f: Future[Any] = Future()
        f.set_result(({"ok": True}, 0))
        return f


def writer(leader: bool, members: list[str]) -> tuple[Writer, CountingProposer]:
    p = CountingProposer()
    w = Writer(FakeFsm(leader, members), p, threading.Event(), 1.0, lambda: "")  # type: ignore[arg-type]
    return w, p


def test_a_lone_leader_reads_without_a_raft_round() -> None:
    w, p = writer(leader=True, members=[])
    w.barrier()
    assert p.barriers == 0


def test_replicas_with_peers_always_commit_a_barrier() -> None:
    for leader in (True, False):
        w, p = writer(leader=leader, members=["127.0.0.1:2", "127.0.0.1:3"])
        w.barrier()
        assert p.barriers == 1


def test_a_command_over_the_entry_cap_is_refused_before_raft() -> None:
    import pytest

    from borgmaster import commands as C
    from borgmaster.facade import ProposeError
    from borgmaster.proposer import MAX_ENTRY_BYTES

    w, _ = writer(leader=True, members=[])
    huge = C.KillJob(name="x" * (MAX_ENTRY_BYTES + 1))
    with pytest.raises(ProposeError) as e:
        w.propose(huge)
    assert e.value.code == "too-large"
    assert str(e.value.message) == "KillJob of 16.0 MiB is over the 16 MiB a Raft entry may be"
