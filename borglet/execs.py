"""`borgcfg exec` on the Borglet: a command beside a running task, set up exactly like the task
(its cgroup, so it counts against the task's limits; its user; its sandbox; its environment),
through the same shim child set-up (`shim.py --exec`), with stdin/stdout/stderr relayed as
stream messages or through a pseudo-terminal.

The command lives in the task's cgroup, so stopping the task (which empties the cgroup) ends
every exec session with it; `ExecSessions.end_task` also kills them when the task's main
process exits on its own.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import marshal
import os
import select
import signal
import struct
import subprocess
import sys
import termios
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from borglet.runtime.process import SHIM_PATH

log = logging.getLogger("borglet.exec")

MAX_ARGV_BYTES = 64 << 10
MAX_SESSIONS = 16
"""Exec sessions at once on one machine (each holds a process, fds and two threads)."""
READ_CHUNK = 32 << 10


@dataclass
class ExecTarget:
    """What running a command beside one task takes (from the Borglet's own records)."""

    task_id: str
    sandbox: str
    uid: int
    gid: int
    groups: list[int]
    env: dict[str, str]
    procs_files: list[str]


@dataclass
class Session:
    key: tuple[str, int, str]
    proc: subprocess.Popen[bytes]
    stdin_fd: int
    out_fds: dict[int, str]  # fd -> "stdout" | "stderr"
    tty: bool
    closed: threading.Event = field(default_factory=threading.Event)

    def kill(self) -> None:
        """SIGKILL the command's process group (it called setsid: its pgid is its pid)."""
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, signal.SIGKILL)


class ExecError(Exception):
    """Why a session could not start (one line for the caller)."""


def set_winsize(fd: int, rows: int, cols: int) -> None:
    if rows > 0 and cols > 0:
        with contextlib.suppress(OSError):
            fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


def check_argv(argv: list[str]) -> str:
    """'' when argv is acceptable, else why not."""
    if not argv:
        return "argv: a command is required"
    if sum(len(a.encode()) + 1 for a in argv) > MAX_ARGV_BYTES:
        return f"argv: over {MAX_ARGV_BYTES >> 10} KiB"
    if any("\x00" in a for a in argv):
        return "argv: NUL bytes are not allowed"
    return ""


class ExecSessions:
    """The machine's running exec sessions, killed with their task."""

    def __init__(self, python: str = sys.executable) -> None:
        self.python = python
        self._lock = threading.Lock()
        self._sessions: list[Session] = []

    def start(
        self,
        key: tuple[str, int, str],
        target: ExecTarget,
        argv: list[str],
        tty: bool,
        rows: int = 0,
        cols: int = 0,
    ) -> Session:
        with self._lock:
            if len(self._sessions) >= MAX_SESSIONS:
                raise ExecError(f"{MAX_SESSIONS} exec sessions are open on this machine")
        env = dict(target.env)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        env.setdefault("HOME", target.sandbox)
        if tty:
            env.setdefault("TERM", "xterm")
        spec = {
            "argv": list(argv),
            "env": env,
            "cwd": target.sandbox,
            "uid": target.uid,
            "gid": target.gid,
            "groups": list(target.groups),
            "procs_files": list(target.procs_files),
            "rlimits": {},
            "tty": tty,
        }
        spec_r, spec_w = os.pipe()
        child_fds: list[int] = []
        try:
            if tty:
                master, slave = os.openpty()
                set_winsize(master, rows, cols)
                stdin, stdout, stderr = slave, slave, slave
                child_fds = [slave]
                mine_in, outs = master, {master: "stdout"}
            else:
                in_r, in_w = os.pipe()
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                stdin, stdout, stderr = in_r, out_w, err_w
                child_fds = [in_r, out_w, err_w]
                mine_in, outs = in_w, {out_r: "stdout", err_r: "stderr"}
            proc = subprocess.Popen(
                [self.python, "-I", "-S", SHIM_PATH, "--exec", str(spec_r)],
                stdin=stdin,
                stdout=stdout,
                stderr=stderr,
                pass_fds=(spec_r,),
                close_fds=True,
                env={},
                cwd="/",
            )
        finally:
            os.close(spec_r)
            for fd in child_fds:
                os.close(fd)
        try:
            os.write(spec_w, marshal.dumps(spec))
        finally:
            os.close(spec_w)
        s = Session(key=key, proc=proc, stdin_fd=mine_in, out_fds=outs, tty=tty)
        with self._lock:
            self._sessions.append(s)
        log.info("exec in %s/%d: %s (pid %d)", key[0], key[1], argv[0][:80], proc.pid)
        return s

    def feed(self, s: Session, msg: Any) -> None:
        """One ExecInput after `start`: stdin bytes, end of stdin, a resize or a signal."""
        kind = msg.WhichOneof("msg")
        try:
            if kind == "stdin" and msg.stdin:
                os.write(s.stdin_fd, msg.stdin)
            elif kind == "stdin_eof":
                if s.tty:
                    os.write(s.stdin_fd, b"\x04")  # the terminal's EOF (VEOF) character
                else:
                    self._close_stdin(s)
            elif kind == "resize" and s.tty:
                set_winsize(s.stdin_fd, msg.resize.rows, msg.resize.cols)
            elif kind == "signal" and 0 < msg.signal < 65:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(s.proc.pid, msg.signal)
        except OSError:
            pass  # the command closed its stdin or ended: its output and exit tell the rest

    def _close_stdin(self, s: Session) -> None:
        if not s.tty and s.stdin_fd >= 0:
            with contextlib.suppress(OSError):
                os.close(s.stdin_fd)
            s.stdin_fd = -1

    def output(self, s: Session) -> Iterator[tuple[str, bytes | int]]:
        """("stdout"|"stderr", bytes) until the command's output ends, then ("exit", code)."""
        fds = dict(s.out_fds)
        try:
            while fds:
                poller = select.poll()  # not select(): fds past 1024 on a busy Borglet
                for fd in fds:
                    poller.register(fd, select.POLLIN)
                ready = [fd for fd, _ in poller.poll(500)]
                for fd in ready:
                    try:
                        data = os.read(fd, READ_CHUNK)
                    except OSError:  # a pty reads EIO once the command is gone
                        data = b""
                    if not data:
                        os.close(fd)
                        del fds[fd]
                        continue
                    yield fds[fd], data
                if not ready and s.proc.poll() is not None:
                    break  # background children that keep its output open do not hold us
            code = s.proc.wait()
            yield "exit", 128 - code if code < 0 else code
        finally:
            self.close(s)
            for fd in fds:
                with contextlib.suppress(OSError):
                    os.close(fd)

    def close(self, s: Session) -> None:
        """End a session (the caller left, or it finished): kill what is left of it."""
        if s.closed.is_set():
            return
        s.closed.set()
        if s.proc.poll() is None:
            s.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                s.proc.wait(timeout=5)
        if s.tty:
            with contextlib.suppress(OSError):
                os.close(s.stdin_fd)
        else:
            self._close_stdin(s)
        with self._lock:
            if s in self._sessions:
                self._sessions.remove(s)

    def end_task(self, key: tuple[str, int, str]) -> int:
        """The task `key` ended: kill its exec sessions. Returns how many there were."""
        with self._lock:
            victims = [s for s in self._sessions if s.key == key]
        for s in victims:
            s.kill()
        return len(victims)

    def close_all(self) -> None:
        with self._lock:
            victims = list(self._sessions)
        for s in victims:
            s.kill()
