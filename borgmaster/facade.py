"""The narrow interfaces the API servicer, the HTTP port and the metrics collector get of a
replica, so none of them imports `server.py` (which composes them: importing it back would
be a cycle). `Master` satisfies all three; tests pass small fakes.

`ProposeError` and `now_ms` live here because every side of the interface needs them.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Protocol

from borgmaster import commands as C
from borgmaster.config import MasterConfig
from borgmaster.digests import DigestChecker, Digests
from borgmaster.diskspace import DataDirSpace
from borgmaster.fsm import RaftStatus
from borgmaster.naming import Zone
from borgmaster.store import Store
from cfg.tls import Identity
from proto.borg.v1 import borg_pb2 as pb

if TYPE_CHECKING:  # types only: neither module imports this one back at run time
    from concurrent.futures import Executor

    from borgmaster.link import BorgletLink
    from borgmaster.linkstream import LinkStreams
    from borgmaster.rpc_loop import Waiters
    from borgmaster.scheduler import Scheduler, Snapshot


class ProposeError(Exception):
    """A write that did not commit: no leader, timeout, or rejected by the state machine."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def now_ms() -> int:
    """Wall-clock milliseconds: the shells stamp commands with it (`ts_ms`) before proposing,
    so every replica applies the same time."""
    return int(time.time() * 1000)


class RequestCounter(Protocol):
    def on_request(self, method: str, code: str, seconds: float) -> None: ...


class ProposalCounts(Protocol):
    """The proposer's counters the metrics export."""

    batches: int
    entries: int


class MetricsHost(Protocol):
    """What the metrics collector reads at scrape time."""

    store: Store
    digests: Digests
    digest_check: DigestChecker
    space: DataDirSpace
    link_streams: LinkStreams

    def raft_status(self) -> RaftStatus: ...

    def proposal_counts(self) -> ProposalCounts | None: ...


class HttpHost(Protocol):
    """What the HTTP port (health, metrics, web UI) uses."""

    cfg: MasterConfig
    store: Store

    def replica_info(self) -> pb.ReplicaInfo: ...

    def ready(self) -> bool: ...

    def unready_reason(self) -> str: ...

    def metrics_registry(self) -> Any: ...


class ApiHost(Protocol):
    """What the gRPC servicer uses: writes and barriers through Raft, reads of the store,
    the Borglet link, and the replica's Raft identity."""

    cfg: MasterConfig
    store: Store
    link: BorgletLink
    scheduler: Scheduler
    zone: Zone
    link_pool: Executor
    """Where the async Sync's blocking steps run (a few threads of their own)."""
    sync_waiters: Waiters
    """The Syncs waiting for their machine's desired set (on the gRPC loop)."""
    link_streams: LinkStreams
    """The Borglets' Link streams this replica serves, and the relay of their reports."""

    def propose(self, cmd: C.Command, timeout: float | None = None) -> dict[str, Any]: ...

    def barrier(self, timeout: float = 5.0) -> None: ...

    def is_leader(self) -> bool: ...

    def leader_grpc(self) -> str: ...

    def replica_info(self) -> pb.ReplicaInfo: ...

    def raft_members(self) -> list[str]: ...

    def stopping(self) -> bool: ...

    def change_membership(self, raft: str, remove: bool) -> None: ...

    def audit_record(
        self, ident: Identity, method: str, target: str, request_id: str, result: str
    ) -> None: ...

    def request_counter(self) -> RequestCounter | None: ...

    def scheduler_snapshot(self) -> Snapshot: ...
