"""Run one Borgmaster replica with any number of peers (`borgmaster run` accepts only cells
of 1, 3 or 5, which a replica joining a 3-replica cell with every member as peer is not).

Usage: python -m tests.fault.join_replica ID RAFT GRPC HTTP DATA_DIR PEER...
"""

from __future__ import annotations

import sys

from borgmaster.cli import serve
from borgmaster.logsetup import setup_logging
from borgmaster.server import MasterConfig


def main(argv: list[str]) -> None:
    rid, raft, grpc_addr, http_addr, data_dir, *peers = argv
    setup_logging("info", "text")
    serve(
        MasterConfig(
            id=rid, raft=raft, grpc=grpc_addr, http=http_addr, data_dir=data_dir, peers=peers
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
