"""One process per data dir: the lock both programs take before touching theirs.

Two replicas on one Raft data dir would interleave their writes to one journal; two Borglets
on one data dir would adopt the same tasks, kill each other's "unknown" cgroups and
overwrite one state file. So each program takes an exclusive `flock` on a lock file in its
data dir at start and writes its pid there. `flock` belongs to the open file, so the lock
ends with the process however it dies (SIGKILL included) and never needs cleaning up; the fd
is close-on-exec, so no child (a task's supervisor) inherits it. Taking it again in the same
process is a no-op (in-process tests restart a replica on its dir).
"""

from __future__ import annotations

import contextlib
import fcntl
import os


class DataDirInUse(OSError):
    """Another live process holds the data dir's lock; the message names its pid."""


_held: dict[str, int] = {}
"""Lock files this process holds (real path -> fd), kept open for its life."""


def lock(data_dir: str, name: str, mode: int = 0o700) -> None:
    """Take `data_dir` (created with `mode` if missing) for this process through the lock file
    `name`, or raise DataDirInUse."""
    os.makedirs(data_dir, mode=mode, exist_ok=True)
    path = os.path.join(os.path.realpath(data_dir), name)
    if path in _held:
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise DataDirInUse(
            f"data dir {data_dir} is in use by another process (pid {holder})"
        ) from None
    except BaseException:
        os.close(fd)
        raise
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    _held[path] = fd


def write_atomic(path: str, data: bytes, tmp_suffix: str = ".tmp") -> None:
    """Replace `path` with `data` (0600) so that a crash leaves the old file or the new one:
    a fresh temporary file (no planted file or link is followed), fsync, rename, fsync of
    the directory. Only system calls: safe in a forked child of a threaded process."""
    tmp = path + tmp_suffix
    with contextlib.suppress(FileNotFoundError):
        os.unlink(tmp)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(tmp, flags, 0o600)
    try:
        os.fchmod(fd, 0o600)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)
    dfd = os.open(os.path.dirname(path) or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
