"""Writes and read barriers through Raft, as the rest of the master sees them: a command in,
the state machine's result out, or a `ProposeError` saying why it did not commit.

PySyncObj's outcomes (no leader, a timed-out or failed proposal, a membership change that
did not commit) are turned into ProposeError here, in one place, with the leader's gRPC
address as a hint when one is known.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from typing import Any

from borgmaster import commands as C
from borgmaster.diskspace import DataDirSpace
from borgmaster.facade import ProposeError, now_ms
from borgmaster.fsm import BorgFSM, fail_reason_name
from borgmaster.proposer import MAX_ENTRY_BYTES, Proposer

log = logging.getLogger("borgmaster")

NO_LEADER_WAIT_S = 2.0
"""How long a write or consistent read waits for a leader to be elected before UNAVAILABLE."""


class Writer:
    def __init__(
        self,
        fsm: BorgFSM,
        proposer: Proposer,
        stop: threading.Event,
        write_timeout_s: float,
        leader_grpc: Callable[[], str],
        space: DataDirSpace | None = None,
    ) -> None:
        self.space = space
        """The data dir's reserve: below it, writes and consistent reads are refused."""
        self.fsm = fsm
        self.proposer = proposer
        self.stop = stop
        self.write_timeout_s = write_timeout_s
        self.leader_grpc = leader_grpc

    def propose(self, cmd: C.Command, timeout: float | None = None) -> dict[str, Any]:
        """Commit a command through Raft (group-committed with concurrent writes) and return
        the state machine's result. Stamps `ts_ms` when the caller has not."""
        if not cmd.ts_ms:
            cmd.ts_ms = now_ms()
        entry = C.encode(cmd)
        if len(entry) > MAX_ENTRY_BYTES:
            raise ProposeError(
                "too-large",
                f"{type(cmd).__name__} of {len(entry) / (1 << 20):.1f} MiB is over the "
                f"{MAX_ENTRY_BYTES >> 20} MiB a Raft entry may be",
            )
        self.check_space()
        self.wait_for_a_leader()
        fut = self.proposer.submit(entry)
        return self._await(fut, timeout)

    def barrier(self, timeout: float = 5.0) -> None:
        """Linearizable read: wait for a (shared) no-op to commit, so this replica has applied
        every write acknowledged before the read began.

        A replica alone in its cell (no other members) that leads needs none: nobody else can
        lead or commit, and a write is acknowledged only once applied here, so its store
        already holds every acknowledged write (saves a Raft round, ~10 ms, per read)."""
        if self.fsm.is_leader() and not self.fsm.members():
            return
        self.check_space()  # the barrier is a log entry this replica must append too
        self.wait_for_a_leader()
        self._await(self.proposer.barrier(), timeout)

    def check_space(self, at_least: int = 0) -> None:
        """UNAVAILABLE with "disk full on replica ..." while the data dir is below its reserve
        (diskspace.py): a client tries another replica, and nothing reaches the journal."""
        why = self.space.full(at_least) if self.space is not None else ""
        if why:
            raise ProposeError("unavailable", why)

    def wait_for_a_leader(self) -> None:
        """With no leader known, wait out one election (typically well under a second), then
        refuse: a replica cut off from the majority would otherwise hold the write until the
        write timeout (PySyncObj queues commands while there is no leader)."""
        deadline = time.monotonic() + NO_LEADER_WAIT_S
        while not self.fsm.leader():
            if time.monotonic() >= deadline or self.stop.is_set():
                raise ProposeError(
                    "unavailable", f"no leader elected within {NO_LEADER_WAIT_S:.0f} s"
                )
            time.sleep(0.01)

    def _await(self, fut: Future[Any], timeout: float | None) -> dict[str, Any]:
        try:
            res, reason = fut.result(timeout or self.write_timeout_s)
        except TimeoutError:
            raise ProposeError("unavailable", "timed out waiting for the write to commit")
        if reason != 0 or res is None:
            self.check_space(at_least=1 << 20)  # the journal may have refused it: say why
            name = fail_reason_name(reason) if isinstance(reason, int) else str(reason)
            leader = self.leader_grpc()
            hint = f" (leader: {leader})" if leader else " (no leader elected)"
            raise ProposeError("unavailable", f"write not committed: {name}{hint}")
        if "error" in res:
            raise ProposeError(res["error"], res["message"])
        return dict(res)

    def change_membership(self, raft: str, remove: bool, self_raft: str) -> None:
        """Add or remove one replica (leader only); waits until the change commits."""
        done = threading.Event()
        result: list[Any] = []

        def cb(res: Any, err: int) -> None:
            result.append(err)
            done.set()

        if remove:
            if raft == self_raft:
                raise ProposeError("invalid", "a leader cannot remove itself; stop it instead")
            self.fsm.remove_member(raft, callback=cb)
        else:
            self.fsm.add_member(raft, callback=cb)
        if not done.wait(self.write_timeout_s):
            raise ProposeError("unavailable", "membership change timed out")
        if result[0] != 0:
            raise ProposeError(
                "unavailable", f"membership change failed: {fail_reason_name(result[0])}"
            )
        log.info("membership: %s %s", "removed" if remove else "added", raft)
