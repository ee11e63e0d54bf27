"""HTTP/2 keepalive on the Borglet's Link stream (both ends agree on it here).

A Link stream can outlive its peer without either end hearing of it: a replica whose process
hangs (stopped, swapping, its host frozen) still has a kernel that acknowledges every byte the
Borglet sends, and a replica behind a dead route or a crashed host sends no FIN or RST. The
Borglet would go on streaming heartbeats into the void while the leader, hearing nothing
relayed, declares the machine lost. gRPC's keepalive pings are answered by the peer's gRPC
runtime, not its kernel, and cost no Python on either side: a Borglet pings every
`LINK_KEEPALIVE_S` and gives the stream up when no answer came within
`LINK_KEEPALIVE_TIMEOUT_S`, then links to the next replica (well inside the 10 s dev machine
timeout). A replica pings its Borglets less often, only to let go of the sessions of
Borglets that vanished.

gRPC servers refuse pings more frequent than 5 minutes by default (GOAWAY "too_many_pings"
after two), so the masters' servers accept one per `MIN_PING_INTERVAL_S`.
"""

from __future__ import annotations

from typing import Any

LINK_KEEPALIVE_S = 2.0
LINK_KEEPALIVE_TIMEOUT_S = 4.0
MIN_PING_INTERVAL_S = 1.0
SERVER_KEEPALIVE_S = 20.0
SERVER_KEEPALIVE_TIMEOUT_S = 10.0


def _ms(s: float) -> int:
    return int(s * 1000)


def link_channel_options() -> list[tuple[str, Any]]:
    """Options of a channel that carries Link streams (a Borglet, or hollow machines)."""
    return [
        ("grpc.keepalive_time_ms", _ms(LINK_KEEPALIVE_S)),
        ("grpc.keepalive_timeout_ms", _ms(LINK_KEEPALIVE_TIMEOUT_S)),
        # gRPC 1.85 waits for a ping's answer this long (default: a minute), whatever
        # keepalive_timeout says: without it a stopped replica was never left (measured).
        ("grpc.http2.ping_timeout_ms", _ms(LINK_KEEPALIVE_TIMEOUT_S)),
        ("grpc.http2.max_pings_without_data", 0),  # a stream may stay idle for long
        ("grpc.keepalive_permit_without_calls", 0),
    ]


def master_server_options() -> list[tuple[str, Any]]:
    """Options of a master's gRPC server: accept the Borglets' pings, send its own."""
    return [
        ("grpc.http2.min_ping_interval_without_data_ms", _ms(MIN_PING_INTERVAL_S)),
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.keepalive_time_ms", _ms(SERVER_KEEPALIVE_S)),
        ("grpc.keepalive_timeout_ms", _ms(SERVER_KEEPALIVE_TIMEOUT_S)),
        ("grpc.http2.ping_timeout_ms", _ms(SERVER_KEEPALIVE_TIMEOUT_S)),
    ]
