"""Task logs served over the Borglet's gRPC port (`ReadLogs`, used by `borgcfg logs`).

The task owns its sandbox and can put anything there at any time, so the root Borglet treats
every name in it as hostile: requests are checked before any disk access, every open is
relative to an fd of the sandbox directory and names one component (`O_NOFOLLOW`, then
`fstat`: a regular file with one link owned by the task), callers on this machine that run as a
task account are refused (`borglet/peers.py`), and `-f` streams are capped so followers
cannot take every gRPC thread. See docs/borglet.md, "Logs".
"""

from __future__ import annotations

import os
import stat
import threading
import time
from typing import Any, Protocol

import grpc

from borglet.execs import ExecError, ExecSessions, ExecTarget, check_argv
from borglet.peers import task_account_caller
from borglet.sandboxes import INCARNATION_RE
from cfg.schema import JOB_NAME_RE, MAX_REPLICAS
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc

FOLLOW_POLL_S = 0.2
MAX_TAIL_BYTES = 1 << 40
"""ReadLogs' tail_bytes beyond this is a caller's mistake, not a log size."""
_OPEN_TASK_FILE = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


class TaskFileError(Exception):
    """A task file the Borglet will not serve: missing, or something the task planted in its
    place (a link, a FIFO, a directory, a file of another account). The message is one line
    for the user and never contains the file's content."""

    def __init__(self, code: grpc.StatusCode, message: str) -> None:
        super().__init__(message)
        self.code = code


def open_sandbox_dir(sandbox: str) -> int:
    """An fd of the sandbox directory itself, never of what a link in its place points to.

    Every open of a task file is relative to this fd and names one component, so the task
    (which owns the sandbox and everything in it) cannot redirect the root Borglet elsewhere.
    """
    try:
        return os.open(sandbox, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise TaskFileError(grpc.StatusCode.NOT_FOUND, "no sandbox") from None
    except OSError as e:
        raise TaskFileError(
            grpc.StatusCode.FAILED_PRECONDITION, f"sandbox is not a directory ({e.strerror})"
        ) from None


def open_task_file(dir_fd: int, name: str) -> int:
    """Open `name` (one path component) in the sandbox `dir_fd` for reading, as root, safely.

    O_NOFOLLOW refuses a link the task planted (e.g. to /etc/shadow), O_NONBLOCK keeps a FIFO
    or a leased file from blocking the thread, and the fstat checks refuse anything but a
    regular file with one link owned by the sandbox's owner (the task's account): a hard link
    to a file of root or of another account is refused even where protected_hardlinks is off.
    """
    if not name or "/" in name or name in (".", ".."):
        raise ValueError(f"not a file name: {name!r}")
    try:
        fd = os.open(name, _OPEN_TASK_FILE, dir_fd=dir_fd)
    except FileNotFoundError:
        raise TaskFileError(grpc.StatusCode.NOT_FOUND, f"no {name} log yet") from None
    except OSError as e:
        raise TaskFileError(
            grpc.StatusCode.FAILED_PRECONDITION,
            f"{name} is not a regular file of the task (a link or other special file)"
            f" ({e.strerror}): not served",
        ) from None
    try:
        st = os.fstat(fd)
        owner = os.fstat(dir_fd).st_uid
        why = ""
        if not stat.S_ISREG(st.st_mode):
            why = "not a regular file"
        elif st.st_nlink != 1:
            why = f"a hard link ({st.st_nlink} links)"
        elif st.st_uid != owner:
            why = f"owned by uid {st.st_uid}, not by the task's uid {owner}"
        if why:
            raise TaskFileError(grpc.StatusCode.FAILED_PRECONDITION, f"{name} is {why}: not served")
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def follow_file(path: str, tail_bytes: int, follow: bool, active: Any, writing: Any = None) -> Any:
    """Yield the file's bytes; with `follow`, keep yielding what is appended, across
    rotations (the file renamed to path.1 and a new one created: the old one is read to its
    end first) and truncations, while `active()` is true and, when given, `writing()` says
    the task may still write (once it is finished, the rest is read and the stream ends).

    `path` is a task file: it is opened and re-checked relative to an fd of its directory,
    never following links (see open_task_file); TaskFileError when it is not servable."""
    name = os.path.basename(path)
    dir_fd = open_sandbox_dir(os.path.dirname(path) or ".")
    f = None
    try:
        f = os.fdopen(open_task_file(dir_fd, name), "rb")  # reopened on rotation
        ino = os.fstat(f.fileno()).st_ino
        if tail_bytes > 0:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - tail_bytes))
        while active():
            chunk = f.read(64 * 1024)
            if chunk:
                yield chunk
                continue
            if not follow:
                return
            if writing is not None and not writing():
                rest = f.read()  # written between the last read and the task's end
                if rest:
                    yield rest
                return
            try:
                st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            except FileNotFoundError:
                st = None
            if st is not None and st.st_ino != ino:
                rest = f.read()
                if rest:
                    yield rest
                f.close()
                f = None
                f = os.fdopen(open_task_file(dir_fd, name), "rb")
                ino = os.fstat(f.fileno()).st_ino
                continue
            if st is not None and st.st_size < f.tell():
                f.seek(0)  # truncated in place
                continue
            time.sleep(FOLLOW_POLL_S)
    finally:
        if f is not None:
            f.close()
        os.close(dir_fd)


def check_logs_request(request: pb.ReadLogsRequest) -> str:
    """Why a ReadLogs request is malformed ('' when it is fine), checked before any disk
    access: job and incarnation become parts of a path under the data dir."""
    if not JOB_NAME_RE.fullmatch(request.job):
        return f"job {request.job[:80]!r} is not a valid job name (^{JOB_NAME_RE.pattern}$)"
    if not 0 <= request.index < MAX_REPLICAS:
        return f"index {request.index} is out of range (0..{MAX_REPLICAS - 1})"
    if request.incarnation and not INCARNATION_RE.fullmatch(request.incarnation):
        return f"incarnation {request.incarnation[:80]!r} is not valid (^{INCARNATION_RE.pattern}$)"
    if not 0 <= request.tail_bytes <= MAX_TAIL_BYTES:
        return f"tail_bytes {request.tail_bytes} is out of range (0..{MAX_TAIL_BYTES})"
    return ""


MAX_FOLLOWERS = 12
"""`logs -f` streams served at once: each holds one of the gRPC server's 16 threads for as
long as the client likes, so some are always left for plain reads."""


class TaskDirectory(Protocol):
    """What the servicer asks of the Borglet: where a task's sandbox is, whether it runs."""

    def find_sandbox(self, job: str, index: int, incarnation: str = "") -> str | None: ...

    def task_running(self, job: str, index: int, sandbox: str) -> bool: ...

    def exec_target(
        self, job: str, index: int, incarnation: str
    ) -> tuple[tuple[str, int, str], ExecTarget]:
        """The running task (its key and how to run beside it); ExecError if there is none."""
        ...

    @property
    def execs(self) -> ExecSessions: ...


class LogsServicer(borg_pb2_grpc.BorgletServicer):
    def __init__(self, tasks: TaskDirectory, task_uids: frozenset[int]) -> None:
        self.tasks = tasks
        self.task_uids = task_uids  # local callers running as these accounts are tasks
        self.followers = threading.BoundedSemaphore(MAX_FOLLOWERS)

    def ReadLogs(self, request: pb.ReadLogsRequest, context: grpc.ServicerContext) -> Any:
        uid = task_account_caller(context.peer(), self.task_uids)
        if uid is not None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"logs are not served to tasks of this machine (caller uid {uid})",
            )
            return
        bad = check_logs_request(request)
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
            return
        sandbox = self.tasks.find_sandbox(request.job, request.index, request.incarnation)
        if sandbox is None:
            context.abort(
                grpc.StatusCode.NOT_FOUND, f"no task {request.job}/{request.index} on this machine"
            )
            return
        path = os.path.join(sandbox, "stderr" if request.stderr else "stdout")
        job, index = request.job, request.index

        def running() -> bool:
            return self.tasks.task_running(job, index, sandbox)

        if request.follow and not self.followers.acquire(blocking=False):
            context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"{MAX_FOLLOWERS} logs -f streams are open on this machine: try again later",
            )
            return
        try:
            for chunk in follow_file(
                path, request.tail_bytes, request.follow, context.is_active, running
            ):
                yield pb.LogChunk(data=chunk)
        except TaskFileError as e:
            context.abort(e.code, f"{job}/{index}: {e}")
        finally:
            if request.follow:
                self.followers.release()

    def Exec(self, request_iterator: Any, context: grpc.ServicerContext) -> Any:
        """Run a command beside a running task (borglet/execs.py); the master has checked the
        caller may (owner or admin), and only masters reach this method on a TLS cell."""
        uid = task_account_caller(context.peer(), self.task_uids)
        if uid is not None:
            context.abort(
                grpc.StatusCode.PERMISSION_DENIED,
                f"exec is not served to tasks of this machine (caller uid {uid})",
            )
            return
        first = next(request_iterator, None)
        if first is None or first.WhichOneof("msg") != "start":
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the first message must be start")
            return
        st = first.start
        bad = check_logs_request(pb.ReadLogsRequest(job=st.job, index=st.index)) or check_argv(
            list(st.argv)
        )
        if not bad and st.incarnation and not INCARNATION_RE.fullmatch(st.incarnation):
            bad = "incarnation: malformed"
        if bad:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad)
            return
        execs = self.tasks.execs
        try:
            key, target = self.tasks.exec_target(st.job, st.index, st.incarnation)
            session = execs.start(key, target, list(st.argv), st.tty, st.rows, st.cols)
        except ExecError as e:
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            return
        except OSError as e:
            context.abort(grpc.StatusCode.INTERNAL, f"exec: {e.strerror or e}")
            return
        context.add_callback(lambda: execs.close(session))

        def pump_input() -> None:
            try:
                for msg in request_iterator:
                    if session.closed.is_set():
                        return
                    execs.feed(session, msg)
            except grpc.RpcError:
                pass  # the caller went away: the callback ends the session
            if not session.tty:
                execs.feed(session, pb.ExecInput(stdin_eof=True))

        threading.Thread(target=pump_input, name="exec-in", daemon=True).start()
        for kind, data in execs.output(session):
            if kind == "exit":
                yield pb.ExecOutput(exit_code=int(data))
            elif kind == "stdout":
                yield pb.ExecOutput(stdout=bytes(data))  # type: ignore[arg-type]
            else:
                yield pb.ExecOutput(stderr=bytes(data))  # type: ignore[arg-type]
