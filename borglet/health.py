"""Health checks of running tasks: the verdict logic (pure) and the three probes (I/O).

A check is the job's ``HealthCheck`` (cfg/model.py): http (port, path), tcp (port) or exec
(argv), with ``interval_ms``, ``timeout_ms``, ``failure_threshold`` and ``initial_delay_ms``.
``port`` names one of the task's ``requirements.ports``; the Borglet resolves it to the
number it allocated.

Like the kubelet's liveness probes: the first probe runs ``initial_delay`` after the start,
then one every ``interval``; ``failure_threshold`` consecutive failures make the task
unhealthy (the Borglet restarts a service task); any success makes it healthy again.
"""

from __future__ import annotations

import contextlib
import marshal
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from urllib.parse import quote

from borglet.runtime.process import SHIM_PATH
from cfg.model import HealthCheck


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


HTTP_STATUS_LINE_MAX = 4096
"""The HTTP probe reads at most this much: the status line is all it needs."""


def probe_http(port: int, path: str, timeout_s: float, host: str = "127.0.0.1") -> bool:
    """Healthy on any 2xx or 3xx answer within the timeout.

    The timeout bounds the whole exchange (connect, request, status line), not each socket
    call, and at most HTTP_STATUS_LINE_MAX bytes are read: a task that answers one byte at a
    time, or never stops sending headers, costs one timeout, never a probe thread's time or
    the Borglet's memory. The path is percent-encoded, so it cannot add header lines."""
    deadline = time.monotonic() + timeout_s
    target = quote(path if path.startswith("/") else "/" + path, safe="!#$%&'()*+,/:;=?@[]~")
    request = (
        f"GET {target} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: borglet-health\r\n"
        "Connection: close\r\n\r\n"
    ).encode()
    buf = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as s:
            s.settimeout(max(0.001, deadline - time.monotonic()))
            s.sendall(request)
            while b"\n" not in buf and len(buf) < HTTP_STATUS_LINE_MAX:
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                s.settimeout(left)
                chunk = s.recv(HTTP_STATUS_LINE_MAX - len(buf))
                if not chunk:
                    break
                buf += chunk
    except OSError:
        return False
    parts = buf.split(b"\n", 1)[0].split()
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        return False
    return 200 <= int(parts[1]) < 400


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
    procs_files: Sequence[str] = (),
) -> bool:
    """Healthy when the command exits 0 within the timeout.

    It runs like the task itself, through the shim's child set-up (borglet/shim.py --probe):
    it joins the task's cgroup (`procs_files`) before dropping to the task's user, so a check
    is held to the task's pids and memory limits, then runs in the sandbox with the task's
    environment. Killed with its process group on timeout."""
    if user is not None and os.geteuid() == 0:
        uid, gid, groups = user
    else:
        uid, gid, groups = os.getuid(), os.getgid(), os.getgroups()
    spec = {
        "argv": [str(a) for a in argv],
        "env": dict(env),
        "cwd": cwd,
        "uid": uid,
        "gid": gid,
        "groups": list(groups),
        "procs_files": list(procs_files),
        "rlimits": {},
    }
    try:
        p = subprocess.Popen(
            [sys.executable, "-I", "-S", SHIM_PATH, "--probe"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            close_fds=True,
            env={},
            cwd="/",
        )
    except OSError:
        return False
    try:
        assert p.stdin is not None
        with contextlib.suppress(OSError):
            p.stdin.write(marshal.dumps(spec))
            p.stdin.close()
        return p.wait(timeout=timeout_s) == 0
    except subprocess.TimeoutExpired:
        # The check called setsid(): its group is its pid (children it left go with it).
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(p.pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            p.kill()
        p.wait()
        return False
