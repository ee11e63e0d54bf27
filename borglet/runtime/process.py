"""Spawn tasks into their cgroup as their unix user, and stop them without leaving anything.

A task is started through ``borglet/shim.py``: the Borglet (root) prepares the sandbox, the log
files and the cgroup, then runs the shim, which joins the cgroup, drops privileges and execs
the command. So the task is confined before its first instruction and before it can fork.

Stopping works on the cgroup, not the process tree: daemonized or re-parented children are
still in the cgroup and get signalled too.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import pwd
import signal
import stat
import subprocess
import sys
import time
from dataclasses import dataclass, field

from borglet.runtime.cgroups import CgroupDriver, CgroupError, CgroupStats, Limits, validate_name

log = logging.getLogger(__name__)

SHIM_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shim.py")
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SPEC_NAME = ".shim.json"
KILL_WAIT_S = 5.0
"""How long to wait for a cgroup to empty after SIGKILL (a D-state process can take a while)."""
_POLL_S = 0.02


class UserError(Exception):
    """The task cannot run as the requested account (unknown, or root without permission)."""


@dataclass
class SpawnSpec:
    """Everything needed to start one task; ``task_id`` doubles as the cgroup name."""

    task_id: str
    argv: list[str]
    env: dict[str, str]
    sandbox: str
    user: str
    limits: Limits
    rlimits: dict[str, int] = field(default_factory=dict)


@dataclass
class TaskProcess:
    """A started task: the shim's pid, which becomes the task's pid at exec."""

    pid: int
    popen: subprocess.Popen[bytes]
    started_at: float

    def poll(self) -> int | None:
        """Exit status once exited (negative = killed by that signal), like Popen."""
        return self.popen.poll()


def resolve_user(name: str, allow_root: bool) -> tuple[int, int, list[int]]:
    """uid, primary gid and supplementary groups of a unix account."""
    try:
        pw = pwd.getpwnam(name)
    except KeyError:
        raise UserError(f"unix account {name!r} does not exist on this machine") from None
    if pw.pw_uid == 0 and not allow_root:
        raise UserError("tasks may not run as root: start the Borglet with --allow-root-tasks")
    try:
        groups = sorted(set(os.getgrouplist(name, pw.pw_gid)))
    except OSError:
        groups = [pw.pw_gid]
    return pw.pw_uid, pw.pw_gid, groups


def _open_log(path: str, uid: int, gid: int, as_root: bool) -> int:
    """Open a log file for appending, refusing links planted by the (untrusted) task user.

    O_APPEND keeps writes at the end even after an external copy-and-truncate rotation.
    """
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o640)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
            raise OSError(f"{path} is not a regular file with one link")
        if as_root:
            os.fchown(fd, uid, gid)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _write_spec(path: str, spec: dict[str, object]) -> None:
    """Write the shim spec as a fresh 0600 file (any planted file or link is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(spec, f)


class ProcessRuntime:
    """Starts, stops and measures task processes; the cgroup driver does the isolation."""

    def __init__(self, driver: CgroupDriver | None, allow_root: bool = False) -> None:
        self.driver = driver
        self.allow_root = allow_root
        if driver is None:
            log.warning("no usable cgroup hierarchy: tasks run without cpu/memory/pids limits")

    def start(self, spec: SpawnSpec) -> TaskProcess:
        """Prepare sandbox, logs and cgroup, then run the shim that becomes the task."""
        validate_name(spec.task_id)
        if not spec.argv:
            raise ValueError("argv is empty")
        uid, gid, groups = resolve_user(spec.user, self.allow_root)
        as_root = os.geteuid() == 0
        sandbox = os.path.abspath(spec.sandbox)
        os.makedirs(sandbox, mode=0o750, exist_ok=True)
        st = os.lstat(sandbox)
        if not stat.S_ISDIR(st.st_mode):
            raise OSError(f"sandbox {sandbox} is not a directory")
        os.chmod(sandbox, 0o750)
        if as_root:
            os.chown(sandbox, uid, gid)

        env = dict(spec.env)
        env.setdefault("PATH", DEFAULT_PATH)
        env.setdefault("HOME", sandbox)
        env.setdefault("USER", spec.user)
        env.setdefault("LOGNAME", spec.user)

        procs_files: list[str] = []
        if self.driver is not None:
            if self.driver.exists(spec.task_id) and self.driver.pids(spec.task_id):
                raise CgroupError(f"cgroup of task {spec.task_id} still has processes")
            self.driver.create(spec.task_id, spec.limits)
            procs_files = self.driver.procs_files(spec.task_id)

        specfile = os.path.join(sandbox, SPEC_NAME)
        shim_spec: dict[str, object] = {
            "argv": list(spec.argv),
            "env": env,
            "cwd": sandbox,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "procs_files": procs_files,
        }
        if spec.rlimits:
            shim_spec["rlimits"] = dict(spec.rlimits)
        out_fd = err_fd = -1
        try:
            _write_spec(specfile, shim_spec)
            out_fd = _open_log(os.path.join(sandbox, "stdout"), uid, gid, as_root)
            err_fd = _open_log(os.path.join(sandbox, "stderr"), uid, gid, as_root)
            popen = subprocess.Popen(
                [sys.executable, "-I", "-S", SHIM_PATH, specfile],
                stdin=subprocess.DEVNULL,
                stdout=out_fd,
                stderr=err_fd,
                start_new_session=True,
                close_fds=True,
                env={},
                cwd="/",
            )
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(specfile)
            if self.driver is not None:
                with contextlib.suppress(CgroupError):
                    self.driver.remove(spec.task_id)
            raise
        finally:
            for fd in (out_fd, err_fd):
                if fd >= 0:
                    os.close(fd)
        return TaskProcess(pid=popen.pid, popen=popen, started_at=time.time())

    def stop(self, task_id: str, proc: TaskProcess | None, grace_s: float) -> None:
        """SIGTERM everything, wait up to grace_s, SIGKILL what is left, reap, remove cgroup."""
        validate_name(task_id)
        self._signal(task_id, proc, signal.SIGTERM)
        if not self._wait_gone(task_id, proc, grace_s):
            self._signal(task_id, proc, signal.SIGKILL)
            if not self._wait_gone(task_id, proc, KILL_WAIT_S):
                log.warning("task %s: processes survive SIGKILL after %.0fs", task_id, KILL_WAIT_S)
        if proc is not None:
            try:
                proc.popen.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("task %s: pid %d not reaped", task_id, proc.pid)
        if self.driver is not None:
            deadline = time.monotonic() + KILL_WAIT_S
            while not self.driver.remove(task_id):
                if time.monotonic() >= deadline:
                    log.warning("task %s: cgroup still busy, left in place", task_id)
                    break
                time.sleep(_POLL_S)

    def _signal(self, task_id: str, proc: TaskProcess | None, sig: int) -> None:
        """Signal the cgroup and the task's process group (the group covers the window before
        the shim joins the cgroup, and hosts without a driver)."""
        if self.driver is not None and self.driver.exists(task_id):
            self.driver.kill(task_id, sig)
        # poll() is None means not yet reaped, so the pid (= pgid) cannot have been reused.
        if proc is not None and proc.poll() is None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)
        elif proc is not None and self.driver is None:
            # Leader gone; the group lives on while members do, so its id is still theirs.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _alive(self, task_id: str, proc: TaskProcess | None) -> bool:
        if proc is not None and proc.poll() is None:
            return True
        if self.driver is not None:
            return self.driver.exists(task_id) and bool(self.driver.pids(task_id))
        if proc is not None:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        return False

    def _wait_gone(self, task_id: str, proc: TaskProcess | None, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while self._alive(task_id, proc):
            if time.monotonic() >= deadline:
                return False
            time.sleep(_POLL_S)
        return True

    def stats(self, task_id: str) -> CgroupStats:
        """Usage of the task's cgroup (zeros without a driver)."""
        if self.driver is None:
            return CgroupStats(cpu_seconds=0.0, memory_bytes=0, oom_kills=0)
        return self.driver.stats(task_id)

    def oom_killed(self, task_id: str) -> bool:
        """Whether the kernel OOM-killed a process of this task."""
        return self.stats(task_id).oom_kills > 0

    def remove_cgroup(self, task_id: str) -> None:
        """Remove an (empty) task cgroup, e.g. after reporting a task that exited."""
        if self.driver is not None and not self.driver.remove(task_id):
            raise CgroupError(f"cgroup of task {task_id} still has processes")
