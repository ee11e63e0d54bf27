"""Health-check verdicts, probe helpers, port allocation and log following (no cell needed)."""

from __future__ import annotations

import http.server
import os
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from borglet.health import (
    HealthTracker,
    probe_exec,
    probe_http,
    probe_tcp,
)
from borglet.logs import follow_file
from borglet.ports import PortAllocator, parse_range
from cfg.model import HealthCheck, HealthKind

# ----- health ------------------------------------------------------------------------------


def test_health_check_from_normalised_spec() -> None:
    c = HealthCheck.from_dict(
        {
            "http": {"port": "web", "path": "/healthz"},
            "interval_ms": 200,
            "timeout_ms": 50,
            "failure_threshold": 2,
            "initial_delay_ms": 1000,
        }
    )
    assert c == HealthCheck(HealthKind.HTTP, "web", "/healthz", [], 200, 50, 2, 1000)
    tcp = HealthCheck.from_dict({"tcp": {"port": "x"}})
    assert (tcp.kind, tcp.port) == (HealthKind.TCP, "x")
    ex = HealthCheck.from_dict({"exec": ["true"], "interval_ms": 5})
    assert (ex.kind, ex.argv, ex.interval_ms) == (HealthKind.EXEC, ["true"], 5)


def test_tracker_waits_initial_delay_then_interval() -> None:
    c = HealthCheck(HealthKind.TCP, "p", interval_ms=100, initial_delay_ms=500)
    tr = HealthTracker.starting(c, started_ms=1000)
    assert not tr.due(1499)
    assert tr.due(1500)
    tr.begin(1500)
    assert not tr.due(1700)  # a probe is in flight
    tr.record(True)
    assert not tr.due(1599) and tr.due(1600)


def test_tracker_unhealthy_after_threshold_once_and_recovers() -> None:
    tr = HealthTracker.starting(HealthCheck(HealthKind.TCP, "p", failure_threshold=3), 0)
    assert tr.status == ""
    assert [tr.record(False) for _ in range(2)] == [False, False]
    assert tr.status == ""
    assert tr.record(False) is True
    assert tr.status == "unhealthy"
    assert tr.record(False) is False  # reported once
    tr.record(True)
    assert (tr.status, tr.failures) == ("healthy", 0)


@pytest.fixture
def http_port() -> Iterator[int]:
    class H(http.server.BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: object) -> None:
            return

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/ok" else 500)
            self.end_headers()

    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
    threading.Thread(target=srv.serve_forever, daemon=True).start()
    yield srv.server_address[1]
    srv.shutdown()


def test_probes(http_port: int, tmp_path: Path) -> None:
    assert probe_http(http_port, "/ok", 2)
    assert not probe_http(http_port, "/bad", 2)
    assert probe_tcp(http_port, 2)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]
    assert not probe_tcp(closed, 0.5)
    assert not probe_http(closed, "/", 0.5)
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin")}
    assert probe_exec(["true"], env, str(tmp_path), None, 5)
    assert not probe_exec(["false"], env, str(tmp_path), None, 5)
    assert not probe_exec(["sleep", "10"], env, str(tmp_path), None, 0.2)
    assert not probe_exec(["no-such-probe-cmd"], env, str(tmp_path), None, 1)


# ----- ports -------------------------------------------------------------------------------


def test_parse_range() -> None:
    assert parse_range("20000-32000") == (20000, 32000)
    for bad in ("20000", "a-b", "0-10", "10-5", "1-70000"):
        with pytest.raises(ValueError, match="port range"):
            parse_range(bad)


def test_allocator_skips_used_and_busy_ports_and_walks_the_range() -> None:
    a = PortAllocator(100, 105)
    got = a.allocate(["http", "admin"], in_use={100}, is_free=lambda p: p != 101)
    assert got == {"http": 102, "admin": 103}
    assert a.allocate(["x"], in_use={102, 103}, is_free=lambda p: True) == {"x": 104}
    # wraps around, never hands out a port held by a live task
    assert a.allocate(["a", "b"], in_use={104}, is_free=lambda p: True) == {"a": 105, "b": 100}


def test_allocator_exhausted_is_a_clear_error() -> None:
    a = PortAllocator(100, 101)
    with pytest.raises(ValueError, match="no free port left in 100-101"):
        a.allocate(["a", "b", "c"], in_use=set(), is_free=lambda p: True)


# ----- following logs across rotation -----------------------------------------------------


def test_follow_reads_across_rotation_and_truncation(tmp_path: Path) -> None:
    log = tmp_path / "stdout"
    log.write_bytes(b"one\n")
    steps = iter(range(100))
    out: list[bytes] = []

    def active() -> bool:
        i = next(steps)
        if i == 2:  # writer appends to the old file, then rotates and starts a new one
            with open(log, "ab") as f:
                f.write(b"two\n")
            os.rename(log, tmp_path / "stdout.1")
            log.write_bytes(b"three\n")
        if i == 6:
            log.write_bytes(b"")  # truncated in place
            with open(log, "ab") as f:
                f.write(b"four\n")
        return i < 12

    for chunk in follow_file(str(log), 0, True, active):
        out.append(chunk)
    assert b"".join(out) == b"one\ntwo\nthree\nfour\n"


def test_follow_without_follow_stops_at_end_and_honours_tail(tmp_path: Path) -> None:
    log = tmp_path / "stdout"
    log.write_bytes(b"0123456789")
    assert b"".join(follow_file(str(log), 4, False, lambda: True)) == b"6789"
