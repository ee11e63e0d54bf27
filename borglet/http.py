"""The Borglet's HTTP port: /healthz (503 with the reason while the state file cannot be
written) and /metrics."""

from __future__ import annotations

import threading
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from cfg.https import HttpServer, peer_identity
from cfg.tls import TlsDir


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def serve_http(
    addr: str,
    unhealthy: Callable[[], str],
    registry: CollectorRegistry,
    tls: TlsDir | None = None,
) -> HttpServer:
    """Serve on a daemon thread; `unhealthy()` says why /healthz fails ('' when it does not).
    With `tls`: HTTPS, and /metrics only for a client certificate of the cell."""

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                why = unhealthy()
                body, code = (f"{why}\n".encode(), 503) if why else (b"ok\n", 200)
                ctype = "text/plain"
            elif path == "/metrics" and tls is not None and peer_identity(self) is None:
                body, ctype, code = (
                    b"a client certificate of the cell is needed\n",
                    "text/plain",
                    401,
                )
            elif path == "/metrics":
                body, ctype, code = generate_latest(registry), CONTENT_TYPE_LATEST, 200
            else:
                body, ctype, code = b"not found\n", "text/plain", 404
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = HttpServer(_split(addr), Handler, tls.server_context() if tls is not None else None)
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server
