"""Health checks of running tasks: the verdict logic (pure) and the three probes (I/O).

A check is the job's normalised ``health`` dict (cfg/schema.py): one of
``{"http": {port, path}}``, ``{"tcp": {port}}`` or ``{"exec": [argv]}`` plus ``interval_ms``,
``timeout_ms``, ``failure_threshold`` and ``initial_delay_ms``. ``port`` names one of the
task's ``requirements.ports``; the Borglet resolves it to the number it allocated.

Like the kubelet's liveness probes: the first probe runs ``initial_delay`` after the start,
then one every ``interval``; ``failure_threshold`` consecutive failures make the task
unhealthy (the Borglet restarts a service task); any success makes it healthy again.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import signal
import socket
import subprocess
from dataclasses import dataclass, field
from typing import Any

HTTP = "http"
TCP = "tcp"
EXEC = "exec"


@dataclass
class HealthCheck:
    kind: str
    port: str = ""
    path: str = "/"
    argv: list[str] = field(default_factory=list)
    interval_ms: int = 10_000
    timeout_ms: int = 1_000
    failure_threshold: int = 3
    initial_delay_ms: int = 0

    @classmethod
    def from_spec(cls, health: dict[str, Any] | None) -> HealthCheck | None:
        """None when the job has no health check."""
        if not health:
            return None
        if EXEC in health:
            check = cls(kind=EXEC, argv=[str(a) for a in health[EXEC]])
        else:
            kind = next((k for k in (HTTP, TCP) if k in health), "")
            if not kind:
                return None
            body = health[kind] or {}
            check = cls(
                kind=kind, port=str(body.get("port", "")), path=str(body.get("path") or "/")
            )
        for k in ("interval_ms", "timeout_ms", "failure_threshold", "initial_delay_ms"):
            if health.get(k) is not None:
                setattr(check, k, int(health[k]))
        return check


@dataclass
class HealthTracker:
    """The verdict for one task run: when to probe next and what the results add up to."""

    check: HealthCheck
    next_ms: int
    failures: int = 0
    status: str = ""  # "" until the first verdict, then healthy | unhealthy
    in_flight: bool = False

    @classmethod
    def starting(cls, check: HealthCheck, started_ms: int) -> HealthTracker:
        return cls(check=check, next_ms=started_ms + check.initial_delay_ms)

    def due(self, now_ms: int) -> bool:
        return not self.in_flight and now_ms >= self.next_ms

    def begin(self, now_ms: int) -> None:
        """A probe was started; the next one is due an interval later."""
        self.in_flight = True
        self.next_ms = now_ms + self.check.interval_ms

    def record(self, ok: bool) -> bool:
        """Add a probe result; True exactly when it makes the task unhealthy."""
        self.in_flight = False
        if ok:
            self.failures = 0
            self.status = "healthy"
            return False
        self.failures += 1
        if self.failures >= self.check.failure_threshold and self.status != "unhealthy":
            self.status = "unhealthy"
            return True
        return False


# ----- probes ------------------------------------------------------------------------------


def probe_http(port: int, path: str, timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Healthy on any 2xx or 3xx answer within the timeout."""
    conn = http.client.HTTPConnection(host, port, timeout=timeout_s)
    try:
        conn.request("GET", path, headers={"User-Agent": "borglet-health"})
        resp = conn.getresponse()
        resp.read(65536)
        return 200 <= resp.status < 400
    except (OSError, http.client.HTTPException):
        return False
    finally:
        conn.close()


def probe_tcp(port: int, timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Healthy when a TCP connection is accepted within the timeout."""
    try:
        with socket.create_connection((host, port), timeout=timeout_s):
            return True
    except OSError:
        return False


def probe_exec(
    argv: list[str],
    env: dict[str, str],
    cwd: str,
    user: tuple[int, int, list[int]] | None,
    timeout_s: float,
) -> bool:
    """Healthy when the command exits 0 within the timeout; it runs as the task's user in the
    task's sandbox with the task's environment (killed with its process group on timeout)."""
    kwargs: dict[str, Any] = {}
    if user is not None and os.geteuid() == 0:
        uid, gid, groups = user
        kwargs = {"user": uid, "group": gid, "extra_groups": groups}
    try:
        p = subprocess.Popen(
            argv,
            env=env,
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            close_fds=True,
            **kwargs,
        )
    except OSError:
        return False
    try:
        return p.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        p.wait()
        return False
