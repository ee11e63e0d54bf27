"""The HTTP servers of the master and the Borglet, with HTTPS when the program has a TLS dir.

The TLS handshake happens in the request's own thread, with a deadline, so a client that
connects and says nothing never holds up the accept loop; every connection times out
(SPEC part 2, Limits). Pages learn who is asking from `peer_identity` (a client certificate
from the cell CA) and decide themselves; `/healthz` and `/readyz` need none.
"""

from __future__ import annotations

import socket
import ssl
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from cfg.tls import Identity, identity_from_peercert

HANDSHAKE_TIMEOUT_S = 10.0
CONNECTION_TIMEOUT_S = 30.0
"""Idle seconds before a connection is dropped (BaseHTTPRequestHandler.timeout)."""

OPEN_PATHS = frozenset({"/healthz", "/readyz"})


class HttpServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(
        self,
        addr: tuple[str, int],
        handler: type[BaseHTTPRequestHandler],
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.ssl_context = ssl_context
        if handler.timeout is None:
            handler.timeout = CONNECTION_TIMEOUT_S
        if ":" in addr[0]:
            self.address_family = socket.AF_INET6
        super().__init__(addr, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        if self.ssl_context is None:
            super().finish_request(request, client_address)
            return
        request.settimeout(HANDSHAKE_TIMEOUT_S)
        try:
            conn = self.ssl_context.wrap_socket(request, server_side=True)
        except (ssl.SSLError, OSError):
            return  # plaintext, a foreign certificate, or silence: nothing to answer
        try:
            self.RequestHandlerClass(conn, client_address, self)  # type: ignore[arg-type]
        finally:
            try:
                conn.close()
            except OSError:
                pass


def peer_identity(handler: BaseHTTPRequestHandler) -> Identity | None:
    """The identity of the client certificate on this connection (None: none was shown)."""
    conn = handler.connection
    if not isinstance(conn, ssl.SSLSocket):
        return None
    try:
        return identity_from_peercert(conn.getpeercert())  # type: ignore[arg-type]
    except (ValueError, OSError):
        return None
