"""HTTP side of a replica: /healthz, /readyz, /metrics and a small read-only web UI."""

from __future__ import annotations

import html
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from borgmaster.store import ACTIVE_STATES

if TYPE_CHECKING:
    from borgmaster.server import Master


def _split(addr: str) -> tuple[str, int]:
    host, _, port = addr.rpartition(":")
    return host.strip("[]") or "0.0.0.0", int(port)


def start_http(master: Master) -> ThreadingHTTPServer:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:  # quiet access log
            return

        def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8") -> None:
            self.send_response(code)
            self.send_header("Content-Type", ctype)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self) -> None:
            path = self.path.split("?", 1)[0]
            if path == "/healthz":
                self._send(200, b"ok\n")
            elif path == "/readyz":
                if master.ready():
                    self._send(200, b"ready\n")
                else:
                    self._send(503, b"not ready: no leader known or log not applied\n")
            elif path == "/metrics":
                self._send(200, generate_latest(master.metrics.registry), CONTENT_TYPE_LATEST)
            elif path == "/":
                self._send(200, render_ui(master).encode(), "text/html; charset=utf-8")
            else:
                self._send(404, b"not found\n")

    server = ThreadingHTTPServer(_split(master.cfg.http), Handler)
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, name="http", daemon=True).start()
    return server


def render_ui(master: Master) -> str:
    """The cell at a glance: jobs with their task counts and pending reasons, and machines."""
    e = html.escape
    store = master.store
    rows_j = []
    rows_m = []
    with store.lock:
        for name in sorted(store.jobs):
            j = store.jobs[name]
            tasks = store.job_tasks(name)
            running = sum(1 for t in tasks if t.state == "running")
            why = sorted({t.reason for t in tasks if t.state == "pending" and t.reason})
            rows_j.append(
                f"<tr><td>{e(name)}</td><td>{e(j.spec.user)}</td><td>{j.spec.priority}</td>"
                f"<td class='{e(j.state)}'>{e(j.state)}</td><td>{running}/{j.spec.replicas}</td>"
                f"<td>{j.version}</td><td>{e('; '.join(why))}</td></tr>"
            )
        for name in sorted(store.machines):
            m = store.machines[name]
            u = store.used(name)
            n = sum(
                1
                for k in store.tasks_by_machine.get(name, ())
                if store.tasks[k].state in ACTIVE_STATES
            )
            rows_m.append(
                f"<tr><td>{e(name)}</td><td class='{e(m.state)}'>{e(m.state)}</td>"
                f"<td>{u.cpu:.2f}/{m.capacity.cpu:.2f}</td>"
                f"<td>{u.ram // 2**20}/{m.capacity.ram // 2**20} MiB</td><td>{n}</td></tr>"
            )
    info = master.replica_info()
    return f"""<!doctype html><html><head><meta charset="utf-8"><title>borgcell</title>
<meta http-equiv="refresh" content="5">
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}
td,th{{border:1px solid #ccc;padding:4px 8px}}.running,.up{{color:green}}
.pending,.draining{{color:#b80}}.failed,.lost{{color:red}}.killed{{color:#888}}</style></head>
<body><h1>borgcell</h1>
<p>replica <b>{e(info.id)}</b> ({e(info.role)}, term {info.term}, applied {info.applied_index}),
leader {e(info.leader or "none")}</p>
<h2>Jobs</h2><table><tr><th>name</th><th>user</th><th>priority</th><th>state</th>
<th>running</th><th>version</th><th>why pending</th></tr>{"".join(rows_j)}</table>
<h2>Machines</h2><table><tr><th>name</th><th>state</th><th>cpu</th><th>ram</th><th>tasks</th>
</tr>{"".join(rows_m)}</table></body></html>"""
