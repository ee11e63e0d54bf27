"""Run one Borgmaster replica with any number of peers, joining (`borgmaster run --join`):
it lists every member of a running cell as peer and waits to be added.

Usage: python -m tests.fault.join_replica ID RAFT GRPC HTTP DATA_DIR PEER...
"""

from __future__ import annotations

import sys

from borgmaster.cli import serve
from borgmaster.server import MasterConfig
from cfg.logsetup import setup_logging
from tests.cluster import TEST_RAFT_SECRET


def main(argv: list[str]) -> None:
    rid, raft, grpc_addr, http_addr, data_dir, *peers = argv
    setup_logging("info", "text")
    serve(
        MasterConfig(
            id=rid,
            raft=raft,
            grpc=grpc_addr,
            http=http_addr,
            data_dir=data_dir,
            peers=peers,
            raft_secret=TEST_RAFT_SECRET,
            join=True,
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
