"""A replica's configuration (what `borgmaster run` parses its flags into)."""

from __future__ import annotations

from dataclasses import dataclass, field

from borgmaster.digests import DIGEST_EVERY
from borgmaster.diskspace import MIN_FREE_BYTES
from borgmaster.fsm import RaftTuning
from cfg.tls import TlsDir


@dataclass
class MasterConfig:
    id: str
    raft: str
    grpc: str
    http: str
    data_dir: str
    peers: list[str] = field(default_factory=list)
    raft_secret: str | None = None
    cell: str = "borgcell"
    machine_timeout_s: float = 30.0
    tuning: RaftTuning = field(default_factory=RaftTuning)
    write_timeout_s: float = 10.0
    job_retention_s: float = 3600.0
    fsync: bool = False
    scheduler_policy: str = "hybrid"
    join: bool = False
    """Joining an existing cell: do not campaign until a leader has contacted this replica
    (once it has, recorded in the data dir, the flag has no effect)."""
    dns: str = ""
    """HOST:PORT to serve the cell's BNS zone on (UDP and TCP); "" serves no DNS."""
    tls: TlsDir | None = None
    """The replica's certificate (`--tls-dir`): mTLS on gRPC, HTTPS, identities and the
    authorization table; None: plaintext and every caller trusted (SPEC part 1)."""
    audit_log: str = ""
    """`--audit-log FILE`: one JSON line per write RPC."""
    digest_every: int = DIGEST_EVERY
    """`--digest-every N`: hash the state every N log indexes (0: never); the same on every
    replica of a cell (digests.py)."""
    min_free_bytes: int = MIN_FREE_BYTES
    """`--min-free`: below this much free space in the data dir, writes are refused."""
    digest_check_s: float = 2.0
    """How often this replica compares its digests with its peers'."""
