"""Who is calling from this machine (borglet/peers.py): the owner of a local TCP peer."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from borglet.peers import local_owner, parse_peer

# ----- local peers --------------------------------------------------------------------------


def test_parse_peer_reads_grpc_peer_strings() -> None:
    assert parse_peer("ipv4:127.0.0.1:5555") == ("127.0.0.1", 5555)
    assert parse_peer("ipv6:[::1]:80") == ("::1", 80)
    assert parse_peer("unix:/tmp/x") is None
    assert parse_peer("ipv4:nonsense") is None


def test_local_owner_finds_the_uid_of_a_local_client_socket(tmp_path: Path) -> None:
    with socket.socket() as srv:
        srv.bind(("127.0.0.1", 0))
        srv.listen()
        with socket.create_connection(srv.getsockname()) as client:
            conn, (host, port) = srv.accept()
            with conn:
                assert local_owner(f"ipv4:{host}:{port}") == os.geteuid()
                assert client.getsockname() == (host, port)
    assert local_owner("ipv4:192.0.2.1:1") is None  # not a socket of this machine
    missing = str(tmp_path / "none")
    assert local_owner("ipv4:127.0.0.1:1", tables=(missing,)) is None
