"""Exec shim: join the task cgroup, drop privileges, exec the task.

Run by the Borglet as ``python3 -I -S shim.py SPECFILE`` (stdlib only, nothing else imported).
Joining the cgroup here, before exec, means the task is confined before it can fork, so no
child ever escapes the limits. The spec file is JSON:
``{argv, env, cwd, uid, gid, groups, procs_files, rlimits?: {nofile: N}}``.

The spec file lives in the task's sandbox, a directory the task user owns, so the shim refuses
a spec file that is not owned by its own euid or is writable by others (someone else could
otherwise swap in a file naming uid 0). It is deleted once read.

Failures: one line ``borglet-shim: <what failed>: <error>`` on stderr and exit 127 (the
command was not found) or 126 (anything else), like a shell.
"""

from __future__ import annotations

import errno
import json
import os
import resource
import signal
import stat
import sys

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs an import at every task start; the shim only needs it for mypy
    from typing import Any, NoReturn


def fail(what: str, err: object, code: int = 126) -> NoReturn:
    """Report one line on the task's stderr (the Borglet's log file) and exit."""
    sys.stderr.write(f"borglet-shim: {what}: {err}\n")
    sys.stderr.flush()
    os._exit(code)


def load_spec(path: str) -> dict[str, Any]:
    """Read the spec, trusting it only when it belongs to us (see module docstring)."""
    fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        st = os.fstat(fd)
        if (
            not stat.S_ISREG(st.st_mode)
            or st.st_uid != os.geteuid()
            or st.st_mode & 0o022
            or st.st_nlink != 1
        ):
            raise PermissionError(f"{path} is not a private file owned by uid {os.geteuid()}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            spec = json.loads(f.read())
    finally:
        os.close(fd)
    if not isinstance(spec, dict):
        raise ValueError("spec is not a JSON object")
    try:
        os.unlink(path)
    except OSError:
        pass
    return spec


def set_rlimits(rlimits: dict[str, Any]) -> None:
    """``{name: N}`` or ``{name: [soft, hard]}`` for RLIMIT_<NAME> (nofile, nproc, core...)."""
    for name, value in rlimits.items():
        res = getattr(resource, "RLIMIT_" + name.upper(), None)
        if res is None:
            raise ValueError(f"unknown rlimit {name!r}")
        soft, hard = (value, value) if isinstance(value, int) else (value[0], value[1])
        resource.setrlimit(res, (int(soft), int(hard)))


def main(argv: list[str]) -> NoReturn:
    """Each step in the order that keeps it possible: cgroup and rlimits need root."""
    if len(argv) != 2:
        fail("usage", "shim.py SPECFILE")
    try:
        spec = load_spec(argv[1])
        args = [str(a) for a in spec["argv"]]
        env = {str(k): str(v) for k, v in spec["env"].items()}
        cwd = str(spec["cwd"])
        uid, gid = int(spec["uid"]), int(spec["gid"])
        groups = [int(g) for g in spec.get("groups", [])]
        procs_files = [str(p) for p in spec.get("procs_files", [])]
        rlimits = spec.get("rlimits") or {}
        if not args:
            raise ValueError("argv is empty")
    except Exception as e:
        fail("reading spec " + (argv[1] if len(argv) > 1 else ""), e)

    pid = str(os.getpid())
    for pf in procs_files:
        try:
            with open(pf, "w") as f:
                f.write(pid)
        except OSError as e:
            fail(f"joining cgroup {pf}", e)
    try:
        set_rlimits(rlimits)
    except Exception as e:
        fail("setting rlimits", e)
    if (os.getuid(), os.getgid()) != (uid, gid) or os.geteuid() != uid:
        try:
            os.setgroups(groups)
        except OSError as e:
            fail(f"setgroups {groups}", e)
        try:
            os.setgid(gid)
        except OSError as e:
            fail(f"setgid {gid}", e)
        try:
            os.setuid(uid)
        except OSError as e:
            fail(f"setuid {uid}", e)
    try:
        os.chdir(cwd)
    except OSError as e:
        fail(f"chdir {cwd}", e)
    os.umask(0o022)
    # Python ignores SIGPIPE and SIGXFSZ; ignored dispositions survive exec, so restore them.
    for sig in (signal.SIGPIPE, signal.SIGXFSZ):
        signal.signal(sig, signal.SIG_DFL)
    exec_search(args, env)


def exec_search(args: list[str], env: dict[str, str]) -> NoReturn:
    """os.execvpe, done by hand: the stdlib version lazily imports modules, which fails once
    the interpreter's own files may no longer be readable by the task user."""
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
    if first is None:
        fail(f"exec {cmd}", "command not found", 127)
    fail(f"exec {cmd}", first.strerror or first)


if __name__ == "__main__":
    main(sys.argv)
