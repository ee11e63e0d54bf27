"""Spawn tasks through their shim, find them again after a restart, stop them without leaving
anything behind.

A task is started through ``borglet/shim.py``, a small supervisor that stays outside the task's
cgroup: the Borglet (root) prepares the sandbox, the cgroup and a root-only control directory,
then runs the shim, which forks the task (the child joins the cgroup, drops privileges and
execs), pumps its output into rotated log files and records how it ended. Because the shim,
not the Borglet, is the task's parent, a Borglet can die and come back: it finds the shim again
by pid (+ start time, so a reused pid is never mistaken for it) and reads the exit status file.

Stopping works on the cgroup, not the process tree: daemonized or re-parented children are
still in the cgroup and get signalled too.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import marshal
import os
import py_compile
import select
import shutil
import signal
import stat
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field

from borglet.accounts import AccountError, lookup, refuse_privileged
from borglet.runtime.cgroups import CgroupDriver, CgroupError, CgroupStats, Limits, validate_name

log = logging.getLogger(__name__)

SHIM_PATH = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "shim.py")
SHIM_CACHE = "shim"
"""Directory (under the Borglet's data dir) of the shim compiled once per Borglet start."""
DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
KILL_WAIT_S = 5.0
"""How long to wait for a cgroup to empty after SIGKILL (a D-state process can take a while)."""
READY_TIMEOUT_S = 30.0
"""How long a shim may take to report the task started (interpreter start on a loaded host)."""
_POLL_S = 0.01
_MAX_POLL_S = 0.25
"""Waits for a stopping task back off from _POLL_S to this: a thousand tasks stopping at once
each read their cgroup's process lists 100 times a second, and the kernel's lock behind
those reads (css_set_lock) kept a co-located master off the CPU for seconds."""


UserError = AccountError
"""A task's unix account is unknown or not allowed (kept as the runtime's name for it)."""


class ExecError(Exception):
    """The command never ran (not found, not executable, cannot join its cgroup...).

    Permanent: restarting would fail the same way, so the task is failed, not restarted.
    The message is the reason reported to the master, e.g. ``exec: not found``; ``code`` the
    exit code a shell would give (127 not found, 126 anything else).
    """

    def __init__(self, message: str, code: int = 126) -> None:
        super().__init__(message)
        self.code = code


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
class ExitStatus:
    """How a task ended, as its shim recorded it."""

    code: int  # shell convention: 128 + N when killed by signal N
    signal: int = 0
    error: str = ""  # set when the command never ran (e.g. "exec: not found")

    def returncode(self) -> int:
        """Popen style: negative signal number when killed by a signal."""
        return -self.signal if self.signal else self.code


@dataclass
class TaskProcess:
    """A started (or re-adopted) task: its shim and its main process."""

    task_id: str
    control: str
    shim_pid: int
    shim_start: str
    pid: int
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0

    def shim_alive(self) -> bool:
        if self.popen is not None:
            return self.popen.poll() is None
        return proc_alive(self.shim_pid, self.shim_start)

    def status(self) -> ExitStatus | None:
        """The recorded exit status, None while there is none (yet)."""
        return read_status(os.path.join(self.control, "status"))

    def poll(self) -> int | None:
        """None while running, else the exit status Popen-style (negative = signal)."""
        if self.shim_alive():
            return None
        st = self.status()
        return st.returncode() if st is not None else -signal.SIGKILL

    def open_pidfd(self) -> int:
        """A pidfd of the shim (poll()-able for its exit), or -1 when it is already gone."""
        try:
            fd = os.pidfd_open(self.shim_pid)
        except OSError:
            return -1
        if self.popen is None and not proc_alive(self.shim_pid, self.shim_start):
            os.close(fd)  # the pid was reused after we looked: not our shim
            return -1
        return fd


def read_status(path: str) -> ExitStatus | None:
    try:
        with open(path) as f:
            text = f.read()
    except FileNotFoundError:
        return None
    fields: dict[str, str] = {}
    for line in text.splitlines():
        k, _, v = line.partition(" ")
        fields[k] = v
    try:
        return ExitStatus(
            code=int(fields.get("code", "-1")),
            signal=int(fields.get("signal", "0")),
            error=fields.get("error", ""),
        )
    except ValueError:
        return ExitStatus(code=-1, error=f"unreadable status file {path}")


def proc_start_time(pid: int) -> str | None:
    """Start time of a live (non-zombie) process, None when there is none."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read()
    except OSError:
        return None
    fields = data[data.rindex(b")") + 2 :].split()
    if fields[0] in (b"Z", b"X"):
        return None
    return fields[19].decode()


def proc_alive(pid: int, start: str) -> bool:
    return pid > 0 and proc_start_time(pid) == start


def resolve_user(name: str, allow_root: bool) -> tuple[int, int, list[int]]:
    """uid, primary gid and supplementary groups of a unix account; UserError for an account
    that does not exist or is root-equivalent without `allow_root` (the last line of defence:
    the Borglet's --task-users policy is checked before, in borglet.accounts)."""
    a = refuse_privileged(lookup(name), allow_root)
    return a.uid, a.gid, list(a.groups)


def _write_private(path: str, data: bytes) -> None:
    """Write a fresh 0600 file (any planted file or link is replaced)."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def compiled_shim(cache_dir: str) -> str:
    """The shim compiled to bytecode in `cache_dir` (root-only), for `python -I -S FILE.pyc`.

    A script run by path is compiled at every start (no .pyc for __main__): for the shim
    that was a fifth of its start-up CPU (40 ms vs 32 ms here) and 1.3 MB of the 5 MB each
    running shim keeps, which is what a 5,000-task machine ran out of. The file is named by
    the source's hash and the interpreter's cache tag, so an upgraded shim or Python gets a
    new one; the source is used when compiling fails (logged)."""
    with open(SHIM_PATH, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    name = f"shim-{digest}.{sys.implementation.cache_tag}.pyc"
    try:
        os.makedirs(cache_dir, mode=0o700, exist_ok=True)
        st = os.lstat(cache_dir)
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise OSError(f"{cache_dir} is not a directory of ours")
        os.chmod(cache_dir, 0o700)
        path = os.path.join(cache_dir, name)
        if not os.path.isfile(path):
            py_compile.compile(
                SHIM_PATH,
                cfile=path,
                doraise=True,
                invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH,
            )
        for old in os.listdir(cache_dir):
            if old != name and old.startswith("shim-") and old.endswith(".pyc"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(cache_dir, old))
        return path
    except (OSError, py_compile.PyCompileError) as e:
        log.warning("shims run from source (slower to start, larger): %s", e)
        return SHIM_PATH


class ProcessRuntime:
    """Starts, adopts, stops and measures task processes; the cgroup driver does the isolation."""

    def __init__(
        self,
        driver: CgroupDriver | None,
        allow_root: bool = False,
        control_root: str = "",
        log_max_size: int = 10 << 20,
        log_keep: int = 3,
        python: str = sys.executable,
        warm_shims: int = 0,
        shim_cache: str = "",
    ) -> None:
        self.driver = driver
        self.shim = (
            compiled_shim(shim_cache) if shim_cache and python == sys.executable else SHIM_PATH
        )
        """The shim the tasks are started with: compiled (see compiled_shim) or its source."""
        self.allow_root = allow_root
        self.control_root = control_root
        self.log_max_size = log_max_size
        self.log_keep = log_keep
        self.python = python
        self.warm_shims = warm_shims
        self._warm: list[tuple[subprocess.Popen[bytes], int]] = []
        self._warm_lock = threading.Lock()
        self._closed = False
        self._supervisors_warned = False
        self._setups = threading.BoundedSemaphore(max(4, 2 * (os.cpu_count() or 1)))
        """Bounds the starts and stops changing directories at once (sandboxes, control
        dirs, cgroups: each a mkdir or rmdir under one shared parent). 5,000 tasks starting
        together put 5,000 threads on those parents' locks, which spin while they wait: the
        machine's CPUs went to the spinning (hung-task reports after 120 s) and a master on
        it lost its lead again and again. A few at a time start them sooner."""
        if driver is None:
            log.warning("no usable cgroup hierarchy: tasks run without cpu/memory/pids limits")

    def control_dir(self, task_id: str, sandbox: str = "") -> str:
        """Root-only directory with the shim's spec, pid and status files of one task."""
        validate_name(task_id)
        root = self.control_root or os.path.join(os.path.dirname(sandbox), ".control")
        return os.path.join(root, task_id)

    def start(self, spec: SpawnSpec) -> TaskProcess:
        """Prepare sandbox and cgroup, run the shim, return once the command has been exec'd.

        Raises UserError (bad account), ExecError (the command never ran: permanent),
        CgroupError or OSError (the machine could not start it).
        """
        validate_name(spec.task_id)
        if not spec.argv:
            raise ValueError("argv is empty")
        uid, gid, groups = resolve_user(spec.user, self.allow_root)
        as_root = os.geteuid() == 0
        with self._setups:
            sandbox = os.path.abspath(spec.sandbox)
            # 0700 and the task's own: only its account (and root) reach its files and logs, not
            # other tasks, even of accounts sharing its group. Set through an fd of the directory
            # itself (O_NOFOLLOW), never through a link in its place.
            os.makedirs(sandbox, mode=0o700, exist_ok=True)
            try:
                dfd = os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            except OSError as e:
                raise OSError(f"sandbox {sandbox} is not a directory: {e.strerror}") from None
            try:
                if as_root:
                    os.fchown(dfd, uid, gid)
                os.fchmod(dfd, 0o700)
            finally:
                os.close(dfd)
            control = self.control_dir(spec.task_id, sandbox)
            shutil.rmtree(control, ignore_errors=True)  # a previous run's status is not ours
            os.makedirs(control, mode=0o700)
            os.chmod(os.path.dirname(control), 0o700)

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

        shim_spec: dict[str, object] = {
            "argv": list(spec.argv),
            "env": env,
            "cwd": sandbox,
            "uid": uid,
            "gid": gid,
            "groups": groups,
            "procs_files": procs_files,
            "rlimits": dict(spec.rlimits),
            "stdout": os.path.join(sandbox, "stdout"),
            "stderr": os.path.join(sandbox, "stderr"),
            "log_max_size": self.log_max_size,
            "log_keep": self.log_keep,
        }
        ready_r = -1
        try:
            _write_private(os.path.join(control, "spec"), marshal.dumps(shim_spec))
            popen, ready_r = self._shim(control)
            line = _read_ready(ready_r, READY_TIMEOUT_S)
        except BaseException:
            if self.driver is not None:
                with contextlib.suppress(CgroupError):
                    self.driver.remove(spec.task_id)
            raise
        finally:
            if ready_r >= 0:
                os.close(ready_r)
            self.prefill()
        shim_start = proc_start_time(popen.pid) or ""
        kind, _, rest = line.partition(" ")
        if kind != "ok":
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=KILL_WAIT_S)
            if self.driver is not None:
                with contextlib.suppress(CgroupError):
                    self.stop(spec.task_id, None, grace_s=0)
            if kind == "err":
                code_s, _, msg = rest.partition(" ")
                code = int(code_s) if code_s.isdigit() else 126
                raise ExecError(msg.strip() or "exec: failed", code)
            raise OSError(f"shim for {spec.task_id} did not report: {self._shim_log(control)}")
        return TaskProcess(
            task_id=spec.task_id,
            control=control,
            shim_pid=popen.pid,
            shim_start=shim_start,
            pid=int(rest),
            popen=popen,
            started_at=time.time(),
        )

    def _spawn_shim(self, control: str) -> tuple[subprocess.Popen[bytes], int]:
        """Run a shim for `control` ("-": a warm one that waits for it on stdin)."""
        ready_r, ready_w = os.pipe2(os.O_CLOEXEC)
        try:
            popen = subprocess.Popen(
                [self.python, "-I", "-S", self.shim, control, str(ready_w)],
                stdin=subprocess.PIPE if control == "-" else subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                pass_fds=(ready_w,),
                start_new_session=True,
                close_fds=True,
                env={},
                cwd="/",
            )
        except BaseException:
            os.close(ready_r)
            raise
        finally:
            os.close(ready_w)
        if self.driver is not None:
            # Right after the fork: the interpreter's start-up (most of a shim's CPU) and
            # every wake-up after it count in the Borglet's parent, not beside the host's
            # other processes (cgroups.SUPERVISORS).
            try:
                self.driver.join_supervisors(popen.pid)
            except CgroupError as e:
                if not self._supervisors_warned:
                    self._supervisors_warned = True
                    log.warning("shims stay outside the supervisors cgroup: %s", e)
        return popen, ready_r

    def _shim(self, control: str) -> tuple[subprocess.Popen[bytes], int]:
        """A warm shim handed `control` if one is ready, else a fresh one."""
        while True:
            with self._warm_lock:
                warm = self._warm.pop() if self._warm else None
            if warm is None or self.warm_shims <= 0:
                return self._spawn_shim(control)
            popen, ready_r = warm
            assert popen.stdin is not None
            try:
                popen.stdin.write(control.encode() + b"\n")
                popen.stdin.close()
                return popen, ready_r
            except OSError:  # it died while waiting: try the next one
                os.close(ready_r)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=1)

    def prefill(self) -> None:
        """Keep `warm_shims` shims started ahead of need (Popen itself is cheap; the
        interpreter start happens in the child, off the caller's path)."""
        while True:
            with self._warm_lock:
                if self._closed or len(self._warm) >= self.warm_shims:
                    return
            try:
                warm = self._spawn_shim("-")
            except OSError as e:
                log.warning("cannot start a warm shim: %s", e)
                return
            with self._warm_lock:
                self._warm.append(warm)

    def close(self) -> None:
        """Let the warm shims go (EOF on their stdin makes them exit)."""
        with self._warm_lock:
            self._closed = True
            warm, self._warm = self._warm, []
        for popen, ready_r in warm:
            os.close(ready_r)
            if popen.stdin is not None:
                with contextlib.suppress(OSError):
                    popen.stdin.close()
            with contextlib.suppress(subprocess.TimeoutExpired):
                popen.wait(timeout=2)

    def _shim_log(self, control: str) -> str:
        try:
            with open(os.path.join(control, "shim.log"), errors="replace") as f:
                return f.read().strip()[-500:] or "no output"
        except OSError:
            return "no output"

    def adopt(self, task_id: str, control: str) -> TaskProcess | None:
        """Find the shim of a task started by an earlier Borglet; None when it is gone."""
        validate_name(task_id)
        try:
            with open(os.path.join(control, "pid")) as f:
                pid_s, shim_s, start = f.read().split()
            pid, shim_pid = int(pid_s), int(shim_s)
        except (OSError, ValueError):
            return None
        if not proc_alive(shim_pid, start):
            return None
        return TaskProcess(task_id, control, shim_pid, start, pid, None, time.time())

    def orphan(self, task_id: str, control: str, pid: int) -> TaskProcess:
        """A task whose shim is gone: its control dir may still hold the exit status."""
        return TaskProcess(task_id, control, 0, "", pid)

    def exit_status(self, proc: TaskProcess) -> ExitStatus:
        """How a task whose shim is gone ended (a shim killed itself leaves no status)."""
        st = proc.status()
        if st is not None:
            return st
        return ExitStatus(code=128 + signal.SIGKILL, signal=signal.SIGKILL)

    def stop(self, task_id: str, proc: TaskProcess | None, grace_s: float) -> None:
        """SIGTERM everything, wait up to grace_s, SIGKILL what is left, remove the cgroup."""
        validate_name(task_id)
        self._signal(task_id, proc, signal.SIGTERM)
        if not self._wait_gone(task_id, proc, grace_s):
            self._signal(task_id, proc, signal.SIGKILL)
            if not self._wait_gone(task_id, proc, KILL_WAIT_S):
                log.warning("task %s: processes survive SIGKILL after %.0fs", task_id, KILL_WAIT_S)
        if proc is not None and proc.popen is not None:
            try:
                proc.popen.wait(timeout=KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                log.warning("task %s: shim pid %d not reaped", task_id, proc.shim_pid)
        if self.driver is not None:
            deadline = time.monotonic() + KILL_WAIT_S
            delay = _POLL_S
            while not self._remove_cgroup(task_id):
                if time.monotonic() >= deadline:
                    log.warning("task %s: cgroup still busy, left in place", task_id)
                    break
                time.sleep(delay)
                delay = min(2 * delay, _MAX_POLL_S)

    def _remove_cgroup(self, task_id: str) -> bool:
        """Remove the task's cgroup (rmdir under the shared parent: a few at a time)."""
        assert self.driver is not None
        with self._setups:
            return self.driver.remove(task_id)

    def _signal(self, task_id: str, proc: TaskProcess | None, sig: int) -> None:
        """Signal the task cgroup; without a driver, the task's session (it called setsid)."""
        if self.driver is not None:
            if self.driver.exists(task_id):
                self.driver.kill(task_id, sig)
            return
        if proc is not None and proc.pid > 0:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(proc.pid, sig)

    def _alive(self, task_id: str, proc: TaskProcess | None) -> bool:
        if proc is not None and proc.shim_alive():
            return True
        if self.driver is not None:
            return self.driver.exists(task_id) and bool(self.driver.pids(task_id))
        if proc is not None and proc.pid > 0:
            try:
                os.killpg(proc.pid, 0)
            except (ProcessLookupError, PermissionError):
                return False
            return True
        return False

    def _wait_gone(self, task_id: str, proc: TaskProcess | None, timeout: float) -> bool:
        """Wait for the shim's exit without polling (its pidfd), then for the cgroup to
        empty (daemonized children), polling with a growing delay."""
        deadline = time.monotonic() + timeout
        fd = proc.open_pidfd() if proc is not None else -1
        if fd >= 0:
            try:
                _wait_readable(fd, timeout)
            finally:
                os.close(fd)
        delay = _POLL_S
        while self._alive(task_id, proc):
            left = deadline - time.monotonic()
            if left <= 0:
                return False
            time.sleep(min(delay, left))
            delay = min(2 * delay, _MAX_POLL_S)
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
        if self.driver is not None and not self._remove_cgroup(task_id):
            raise CgroupError(f"cgroup of task {task_id} still has processes")

    def forget(self, proc: TaskProcess) -> None:
        """Delete a finished task's control directory (its status has been reported)."""
        with self._setups:
            shutil.rmtree(proc.control, ignore_errors=True)

    # ----- the machine's task cgroups (what the Borglet's start and exit need) ---------------

    @property
    def isolation(self) -> str:
        """What confines tasks, for the start-up log line: the cgroup version, or none."""
        return f"cgroups v{self.driver.version}" if self.driver is not None else "cgroups none"

    def setup(self) -> None:
        """Create the parent cgroup (idempotent)."""
        if self.driver is not None:
            self.driver.setup()

    def thaw(self, task_id: str) -> None:
        """Unfreeze a task cgroup an earlier Borglet may have left frozen (cgroups.thaw)."""
        if self.driver is not None:
            with contextlib.suppress(CgroupError, OSError):
                self.driver.thaw(task_id)

    def task_ids(self) -> list[str]:
        """Names of the task cgroups under our parent (those an earlier Borglet left too)."""
        return self.driver.list() if self.driver is not None else []

    def busy(self, task_id: str) -> bool:
        """Whether the task's cgroup still holds processes."""
        return self.driver is not None and bool(self.driver.pids(task_id))

    def procs_files(self, task_id: str) -> list[str]:
        """cgroup.procs files an exec health check joins to run inside the task's limits."""
        return self.driver.procs_files(task_id) if self.driver is not None else []

    def remove_parent(self, shared_tops: list[str]) -> None:
        """The machine goes down with its tasks: remove our parent cgroup and, when given,
        the shared `borgcell/` tops (they stay while another Borglet on this host uses them)."""
        if self.driver is None:
            return
        self.close()  # warm shims wait in the supervisors' leaf: they go first, or it never empties
        with contextlib.suppress(Exception):
            self.driver.remove_parent()
        for top in shared_tops:
            with contextlib.suppress(OSError):
                os.rmdir(top)


def _wait_readable(fd: int, timeout: float) -> bool:
    """poll(), not select(): a Borglet with thousands of tasks has fds past select's 1024."""
    p = select.poll()
    p.register(fd, select.POLLIN)
    return bool(p.poll(max(0, int(timeout * 1000))))


def _read_ready(fd: int, timeout: float) -> str:
    """The shim's one-line report; '' when it exited or timed out without one."""
    deadline = time.monotonic() + timeout
    data = b""
    while b"\n" not in data:
        left = deadline - time.monotonic()
        if left <= 0:
            break
        if not _wait_readable(fd, left):
            break
        chunk = os.read(fd, 4096)
        if not chunk:
            break
        data += chunk
    return data.decode(errors="replace").split("\n", 1)[0]
