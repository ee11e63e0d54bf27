"""Per-task supervisor (like containerd-shim or conmon): start the task, pump its logs, record
how it ended.

Run by the Borglet as ``python3 -I -S shim.py CONTROL_DIR READY_FD``, or ahead of need as
``shim.py - READY_FD`` (a warm shim, reading CONTROL_DIR from stdin when a task comes, so the
interpreter's ~20 ms start-up is off the task's start path); stdlib only and few imports.
It stays outside the task's cgroup (in the cgroup it was started in), so its ~10 MB of
interpreter are never charged to the task: a 16 MiB task works.

1. Read ``CONTROL_DIR/spec`` (``marshal`` of a dict written by the Borglet: argv, env, cwd,
   uid, gid, groups, procs_files, rlimits, stdout, stderr, log_max_size, log_keep). The
   control directory is root-only, outside the task's (user-writable) sandbox, so a task can
   neither forge its spec nor its exit status.
2. Fork the task. The child joins the task cgroup *before* exec (so it is confined before it
   can fork), sets rlimits, drops to the task's user, and execs; a failure before or at exec
   comes back over a close-on-exec pipe (the subprocess-module trick), so "command not found"
   is known at once and reported as ``exec: not found``.
3. Tell the Borglet on READY_FD: ``ok PID`` or ``err CODE MESSAGE``; write ``CONTROL_DIR/pid``.
4. Pump the task's stdout/stderr pipes into ``stdout``/``stderr`` in the sandbox with
   ``splice`` (no copy through user space) and rotate by size, keeping N old files. A task
   writing 1 GB/s is slowed to what the pump writes (pipe back-pressure) and never uses more
   than ``(keep + 1) * max_size`` of disk per stream.
5. When the task's main process exits, write ``CONTROL_DIR/status`` atomically (temp file +
   rename): the Borglet reads it even if it was restarted meanwhile, so exit codes survive.

Status file lines: ``code N`` (shell convention: 128+N when killed by signal N), ``signal N``
(0 when it exited), ``error MESSAGE`` (only when the command never ran).
"""

from __future__ import annotations

import errno
import fcntl
import marshal
import os
import resource
import select
import signal
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import at every task start; the shim only needs it for mypy
    from typing import Any, NoReturn

F_SETPIPE_SZ = 1031
PIPE_SIZE = 1 << 20
CHUNK = 1 << 20
DRAIN_LIMIT = 64 << 20
"""After the task exits, at most this much buffered output is still copied (daemonized
children may keep the pipe open and writing forever)."""


def shim_log(msg: str) -> None:
    """The shim's own diagnostics go to its stderr (the Borglet points it at a file)."""
    try:
        os.write(2, f"borglet-shim: {msg}\n".encode())
    except OSError:
        pass


def load_spec(path: str) -> dict[str, Any]:
    """Read the spec, trusting it only when it is a private file of ours."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o022:
            raise PermissionError(f"{path} is not a private file owned by uid {os.geteuid()}")
        data = b""
        while True:
            chunk = os.read(fd, 1 << 16)
            if not chunk:
                break
            data += chunk
    finally:
        os.close(fd)
    spec = marshal.loads(data)
    if not isinstance(spec, dict):
        raise ValueError("spec is not a dict")
    return spec


def set_rlimits(rlimits: dict[str, Any]) -> None:
    """``{name: N}`` or ``{name: [soft, hard]}`` for RLIMIT_<NAME> (nofile, nproc, core...)."""
    for name, value in rlimits.items():
        res = getattr(resource, "RLIMIT_" + name.upper(), None)
        if res is None:
            raise ValueError(f"unknown rlimit {name!r}")
        soft, hard = (value, value) if isinstance(value, int) else (value[0], value[1])
        resource.setrlimit(res, (int(soft), int(hard)))


def write_atomic(path: str, text: str, sync: bool = True) -> None:
    """temp file (+ fsync) + rename: a reader sees the old file or the whole new one."""
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)
    except FileNotFoundError:
        pass
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        os.write(fd, text.encode())
        if sync:
            os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, path)


# ----- the task child --------------------------------------------------------------------


def child(
    spec: dict[str, Any], out_w: int, err_w: int, errpipe: int, stdin_fd: int = -1
) -> NoReturn:
    """Runs in the forked child: confine, drop privileges, exec. Never returns.

    `stdin_fd` < 0: stdin is /dev/null (tasks, probes); else that fd (exec sessions), which
    becomes the controlling terminal when `spec["tty"]` is set."""
    step = "setsid"
    try:
        os.setsid()
        if spec.get("tty"):
            import fcntl
            import termios

            fcntl.ioctl(stdin_fd, termios.TIOCSCTTY, 0)
        step = "cgroup"
        pid = str(os.getpid()).encode()
        for pf in spec.get("procs_files", []):
            fd = os.open(pf, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, pid)
            finally:
                os.close(fd)
        step = "rlimits"
        set_rlimits(spec.get("rlimits") or {})
        uid, gid = int(spec["uid"]), int(spec["gid"])
        if (os.getuid(), os.getgid(), os.geteuid()) != (uid, gid, uid):
            step = "user"
            os.setgroups([int(g) for g in spec.get("groups", [])])
            os.setgid(gid)
            os.setuid(uid)
        step = "chdir"
        os.chdir(str(spec["cwd"]))
        os.umask(0o022)
        step = "stdio"
        inp = stdin_fd if stdin_fd >= 0 else os.open("/dev/null", os.O_RDONLY)
        if inp != 0:
            os.dup2(inp, 0)
        if out_w != 1:
            os.dup2(out_w, 1)
        if err_w != 2:
            os.dup2(err_w, 2)
        os.closerange(3, errpipe)
        os.closerange(errpipe + 1, 1 << 16)
        for sig in (signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(sig, signal.SIG_DFL)
        step = "exec"
        args = [str(a) for a in spec["argv"]]
        env = {str(k): str(v) for k, v in spec["env"].items()}
        exec_search(args, env)
    except OSError as e:
        msg = (e.strerror or str(e)).lower()
        code = 126
        if step == "exec" and e.errno in (errno.ENOENT, errno.ENOTDIR):
            msg, code = "not found", 127
        report_child_error(errpipe, code, f"{step}: {msg}")
    except BaseException as e:  # anything at all must be reported, not raised
        report_child_error(errpipe, 126, f"{step}: {e}")


EXEC_MODE = False
"""Set by `--exec`: errors go to the person at the other end, as a line of stderr."""


def report_child_error(errpipe: int, code: int, msg: str) -> NoReturn:
    try:
        text = f"exec: {msg}\n" if EXEC_MODE else f"{code} {msg}"
        os.write(errpipe, text.encode()[:4000])
    finally:
        os._exit(code)


def exec_search(args: list[str], env: dict[str, str]) -> NoReturn:
    """os.execvpe, done by hand: the stdlib version lazily imports modules, which may fail once
    the interpreter's files are no longer readable by the task user."""
    cmd = args[0]
    if "/" in cmd:
        candidates = [cmd]
    else:
        path = env.get("PATH") or os.defpath
        candidates = [os.path.join(d or ".", cmd) for d in path.split(os.pathsep)]
    first: OSError | None = None
    for c in candidates:
        try:
            os.execve(c, args, env)
        except OSError as e:
            if e.errno not in (errno.ENOENT, errno.ENOTDIR) and first is None:
                first = e  # like execvp: remember EACCES & co, keep searching
    raise first if first is not None else FileNotFoundError(errno.ENOENT, "not found")


# ----- the log pump ----------------------------------------------------------------------


class LogFile:
    """One rotated log stream: ``path``, ``path.1`` ... ``path.keep``.

    The sandbox belongs to the (untrusted) task's account and the shim runs as root, so every
    operation is relative to an fd of the sandbox directory, on one name, never following a
    link: the task may replace any of these names by a link, a FIFO or a directory at any
    time, and the worst it gets is losing its own logs."""

    def __init__(self, path: str, uid: int, gid: int, max_size: int, keep: int) -> None:
        self.path = path
        self.name = os.path.basename(path)
        self.uid, self.gid = uid, gid
        self.max_size = max_size
        self.keep = keep
        self.fd = -1
        self.size = 0
        self.splice = hasattr(os, "splice")
        self.dir_fd = os.open(
            os.path.dirname(path) or ".",
            os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
        )
        self.fd = self.open()
        self.size = os.lseek(self.fd, 0, os.SEEK_END)

    def open(self) -> int:
        """The log file to append to: the existing one when it is a regular file with one
        link owned by the task's account, else a new one in its place.

        O_NOFOLLOW refuses a planted link, O_NONBLOCK a FIFO (which would block the open
        forever), and the fstat checks a hard link or a file of another account (the shim
        would give it to the task). Whatever else is there is unlinked (a name in the task's
        own directory; nothing it points to is touched) and a new file created."""
        flags = os.O_WRONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        try:
            fd = os.open(self.name, flags, dir_fd=self.dir_fd)
        except FileNotFoundError:
            return self._create(flags)
        except OSError as e:  # ELOOP: a link; ENXIO: a FIFO; EISDIR; EWOULDBLOCK: a lease
            shim_log(f"replacing {self.path}: {e.strerror}")
            return self._replace(flags)
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_nlink == 1 and st.st_uid == self.uid:
            os.set_blocking(fd, True)
            return fd
        os.close(fd)
        shim_log(f"replacing {self.path}: not a regular file of uid {self.uid} with one link")
        return self._replace(flags)

    def _replace(self, flags: int) -> int:
        try:
            os.unlink(self.name, dir_fd=self.dir_fd)
        except FileNotFoundError:
            pass
        except OSError as e:
            raise OSError(f"{self.path} is not a regular file and cannot be replaced: {e}") from e
        return self._create(flags)

    def _create(self, flags: int) -> int:
        """A new file under a random temporary name (nothing the task can plant in advance),
        given to the task's account, then renamed into place: the log never exists even
        briefly as root's file."""
        for _ in range(3):
            tmp = f".{self.name}.{os.urandom(8).hex()}"
            try:
                fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o640, dir_fd=self.dir_fd)
            except FileExistsError:
                continue
            try:
                if os.geteuid() == 0:
                    os.fchown(fd, self.uid, self.gid)
                os.set_blocking(fd, True)
                os.rename(tmp, self.name, src_dir_fd=self.dir_fd, dst_dir_fd=self.dir_fd)
            except BaseException:
                os.close(fd)
                try:
                    os.unlink(tmp, dir_fd=self.dir_fd)
                except OSError:
                    pass
                raise
            return fd
        raise OSError(f"cannot create {self.path}")

    def truncate(self) -> None:
        os.ftruncate(self.fd, 0)
        os.lseek(self.fd, 0, os.SEEK_SET)
        self.size = 0

    def rotate(self) -> None:
        """path.N-1 -> path.N ... path -> path.1, then a new path. Renames are relative to the
        sandbox fd (rename never follows a link at either name); a name the task blocked (a
        directory at path.2) is skipped, and when the current file cannot be moved away it is
        truncated instead. The old fd stays valid until a new file is open."""
        if self.keep <= 0:
            self.truncate()
            return
        d = self.dir_fd
        for i in range(self.keep - 1, 0, -1):
            try:
                os.rename(f"{self.name}.{i}", f"{self.name}.{i + 1}", src_dir_fd=d, dst_dir_fd=d)
            except FileNotFoundError:
                pass
            except OSError as e:
                shim_log(f"rotating {self.path}.{i}: {e.strerror}")
        try:
            os.rename(self.name, self.name + ".1", src_dir_fd=d, dst_dir_fd=d)
            fd = self.open()
        except OSError as e:
            shim_log(f"rotating {self.path}: {e}")
            self.truncate()
            return
        os.close(self.fd)
        self.fd = fd
        self.size = os.lseek(fd, 0, os.SEEK_END)

    def pump(self, src: int, nonblock: bool = False) -> int:
        """Move what is in the pipe into the file; 0 at end of file, -1 when nothing is there."""
        want = CHUNK
        if self.max_size > 0:
            want = max(1, min(CHUNK, self.max_size - self.size))
        try:
            if self.splice:
                try:
                    flags = os.SPLICE_F_NONBLOCK if nonblock else 0
                    n = os.splice(src, self.fd, want, flags=flags)
                except OSError as e:
                    if e.errno not in (errno.EINVAL, errno.ENOSYS):
                        raise
                    self.splice = False
                    return self.pump(src, nonblock)
            else:
                data = os.read(src, want)
                n = len(data)
                view = memoryview(data)
                while view:
                    w = os.write(self.fd, view)
                    view = view[w:]
        except BlockingIOError:
            return -1
        except OSError as e:
            if e.errno == errno.EAGAIN:
                return -1
            if e.errno == errno.ENOSPC:
                # Disk full: drop output rather than block the task forever.
                os.read(src, want)
                return want
            raise
        self.size += n
        if self.max_size > 0 and self.size >= self.max_size:
            try:
                self.rotate()
            except OSError as e:
                shim_log(f"rotating {self.path}: {e}")
                self.truncate()
        return n


def status_text(wait_status: int) -> str:
    if os.WIFSIGNALED(wait_status):
        sig = os.WTERMSIG(wait_status)
        return f"code {128 + sig}\nsignal {sig}\n"
    return f"code {os.waitstatus_to_exitcode(wait_status)}\nsignal 0\n"


def proc_start_time(pid: int) -> str:
    """Field 22 of /proc/PID/stat: with the pid it names a process uniquely (no reuse)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        data = f.read()
    return data[data.rindex(b")") + 2 :].split()[19].decode()


def notify(ready_fd: int, line: str) -> None:
    if ready_fd < 0:
        return
    try:
        os.write(ready_fd, (line + "\n").encode())
    except OSError:
        pass  # the Borglet went away: it will read the pid file when it comes back
    try:
        os.close(ready_fd)
    except OSError:
        pass


def probe_main() -> int:
    """``shim.py --probe``: run an exec health check exactly as a task is run (cgroup, rlimits,
    user, sandbox; see child()), from the spec the Borglet writes to stdin (marshal). Exits
    126/127 when the command cannot run, else execs it: its exit status is the verdict."""
    data = b""
    while True:
        chunk = os.read(0, 1 << 16)
        if not chunk:
            break
        data += chunk
    spec = marshal.loads(data)
    if not isinstance(spec, dict):
        return 126
    null = os.open("/dev/null", os.O_WRONLY)
    errpipe = os.open("/dev/null", os.O_WRONLY | os.O_CLOEXEC)
    child(spec, null, null, errpipe)


def exec_main(spec_fd: int) -> int:
    """``shim.py --exec SPEC_FD``: `borgcfg exec`'s command, set up like the task (cgroup,
    rlimits, user, sandbox, env; see child()) with the stdio the Borglet gave this process
    (pipes, or a pseudo-terminal that becomes the controlling terminal)."""
    data = b""
    while True:
        chunk = os.read(spec_fd, 1 << 16)
        if not chunk:
            break
        data += chunk
    os.close(spec_fd)
    spec = marshal.loads(data)
    if not isinstance(spec, dict):
        return 126
    global EXEC_MODE
    EXEC_MODE = True
    errpipe = os.dup(2)
    os.set_inheritable(errpipe, False)
    child(spec, 1, 2, errpipe, stdin_fd=0)


def main(argv: list[str]) -> int:
    if argv[1:] == ["--probe"]:
        return probe_main()
    if len(argv) == 3 and argv[1] == "--exec" and argv[2].isdigit():
        return exec_main(int(argv[2]))
    if len(argv) != 3:
        shim_log("usage: shim.py CONTROL_DIR|- READY_FD")
        return 2
    control, ready_fd = argv[1], int(argv[2])
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # stray signals must not orphan the task
    if control == "-":
        # Warm mode: started ahead of need, with the interpreter loaded; the Borglet hands it
        # a task by writing the control directory to stdin (EOF: not needed, exit).
        line = b""
        while not line.endswith(b"\n"):
            chunk = os.read(0, 4096)
            if not chunk:
                return 0
            line += chunk
        control = line.decode().strip()
    null = os.open("/dev/null", os.O_RDONLY)
    os.dup2(null, 0)
    os.close(null)
    try:
        log_fd = os.open(
            os.path.join(control, "shim.log"), os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600
        )
        os.dup2(log_fd, 2)
        os.close(log_fd)
    except OSError:
        pass
    status_path = os.path.join(control, "status")
    try:
        spec = load_spec(os.path.join(control, "spec"))
        uid, gid = int(spec["uid"]), int(spec["gid"])
        max_size, keep = int(spec.get("log_max_size", 0)), int(spec.get("log_keep", 0))
        logs = [
            LogFile(str(spec["stdout"]), uid, gid, max_size, keep),
            LogFile(str(spec["stderr"]), uid, gid, max_size, keep),
        ]
        pipes = [os.pipe(), os.pipe()]
        for r, _ in pipes:
            try:
                fcntl.fcntl(r, F_SETPIPE_SZ, PIPE_SIZE)
            except OSError:
                pass
        err_r, err_w = os.pipe2(os.O_CLOEXEC)
    except Exception as e:
        msg = f"shim: {e}"
        write_atomic(status_path, f"code 126\nsignal 0\nerror {msg}\n")
        notify(ready_fd, "err 126 " + msg)
        return 0
    pid = os.fork()
    if pid == 0:
        os.close(err_r)
        for r, _ in pipes:
            os.close(r)
        child(spec, pipes[0][1], pipes[1][1], err_w)
    os.close(err_w)
    for _, w in pipes:
        os.close(w)
    report = b""
    while True:
        chunk = os.read(err_r, 4096)
        if not chunk:
            break
        report += chunk
    os.close(err_r)
    if report:
        _, ws = os.waitpid(pid, 0)
        code, _, msg = report.decode(errors="replace").partition(" ")
        write_atomic(status_path, f"code {code}\nsignal 0\nerror {msg}\n")
        notify(ready_fd, f"err {code} {msg}")
        return 0
    try:
        # No fsync: only a Borglet of this same boot reads it, and it is on the start path.
        write_atomic(
            os.path.join(control, "pid"),
            f"{pid} {os.getpid()} {proc_start_time(os.getpid())}\n",
            sync=False,
        )
    except OSError as e:
        shim_log(f"writing pid file: {e}")
    notify(ready_fd, f"ok {pid}")
    ws = pump(pid, pipes[0][0], pipes[1][0], logs)
    write_atomic(status_path, status_text(ws))
    return 0


def pump(pid: int, out_r: int, err_r: int, logs: list[LogFile]) -> int:
    """Copy output until the main process exits; returns its wait status."""
    streams = {out_r: logs[0], err_r: logs[1]}
    poller = select.poll()
    for fd in streams:
        poller.register(fd, select.POLLIN)
    pidfd = os.pidfd_open(pid)
    poller.register(pidfd, select.POLLIN)
    while True:
        try:
            events = poller.poll()
        except InterruptedError:
            continue
        done = False
        for fd, _ in events:
            if fd == pidfd:
                done = True
                continue
            try:
                n = streams[fd].pump(fd)
            except OSError as e:
                shim_log(f"writing {streams[fd].path}: {e}")
                n = len(os.read(fd, CHUNK))  # keep the task from blocking on a full pipe
            if n == 0:
                poller.unregister(fd)
        if done:
            break
    _, ws = os.waitpid(pid, 0)
    os.close(pidfd)
    # Drain what is already buffered, without waiting for children that keep the pipe open.
    for fd, log in streams.items():
        os.set_blocking(fd, False)
        moved = 0
        while moved < DRAIN_LIMIT:
            try:
                n = log.pump(fd, nonblock=True)
            except OSError:
                break
            if n <= 0:
                break
            moved += n
    return ws


if __name__ == "__main__":
    sys.exit(main(sys.argv))
