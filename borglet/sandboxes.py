"""Where tasks' sandboxes are, and how old ones go.

One sandbox per incarnation, `<data-dir>/tasks/<job>.<index>.<incarnation>`: restarts of a task
keep it (and its logs), while a new placement, or a new job that reuses the name, starts empty
and cannot read what an earlier one left. A task owns its sandbox and may plant anything in
it, so nothing here follows a link out of it.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import stat
from collections.abc import Iterable

from borglet.state import TaskKey, task_id_of
from cfg.schema import JOB_NAME_RE, MAX_REPLICAS

log = logging.getLogger("borglet")

INCARNATION_RE = re.compile(r"[A-Za-z0-9_-]{1,64}")
"""What an incarnation id may look like (the master makes 12 hex digits): never a path."""
SANDBOX_RETENTION_S = 3600.0
"""How long a sandbox of a task this Borglet no longer knows is kept after its last change."""


def tasks_dir(data_dir: str) -> str:
    return os.path.join(data_dir, "tasks")


def sandbox_of(data_dir: str, job: str, index: int, incarnation: str) -> str:
    """The sandbox of one incarnation. ValueError for a name that is not a job's, an index or
    an incarnation id: the result is always one directory directly under data_dir/tasks,
    whoever asks."""
    if (
        not JOB_NAME_RE.fullmatch(job)
        or not 0 <= index < MAX_REPLICAS
        or not INCARNATION_RE.fullmatch(incarnation)
    ):
        raise ValueError(f"no sandbox for {job[:80]!r}/{index}/{incarnation[:80]!r}")
    return os.path.join(tasks_dir(data_dir), f"{job}.{index}.{incarnation}")


def find_sandbox(
    data_dir: str, job: str, index: int, incarnation: str, known: Iterable[tuple[bool, TaskKey]]
) -> str | None:
    """The sandbox of that incarnation; without one, of the copy this Borglet runs (or knows:
    `known` holds (live, key) of the tasks of job/index) for job/index, else the newest one
    left on disk."""
    if incarnation:
        path = sandbox_of(data_dir, job, index, incarnation)
        return path if is_real_dir(path) else None
    best = max(known, default=None)
    if best is not None:
        try:
            path = sandbox_of(data_dir, *best[1])
        except ValueError:  # an odd key from an old state file
            path = ""
        if path and is_real_dir(path):
            return path
    prefix = f"{job}.{index}"
    try:
        found = [
            e
            for e in os.scandir(tasks_dir(data_dir))
            if (e.name == prefix or e.name.startswith(prefix + "."))
            and e.is_dir(follow_symlinks=False)
        ]
    except OSError:
        return None
    if not found:
        return None
    return max(found, key=lambda e: e.stat(follow_symlinks=False).st_mtime).path


def gc_sandboxes(data_dir: str, known: Iterable[TaskKey], now: float) -> int:
    """Delete sandboxes of tasks this Borglet no longer knows, once untouched for
    SANDBOX_RETENTION_S: finished tasks' logs stay readable for a while, and disk does not
    fill with sandboxes of jobs long gone. Returns how many were removed."""
    keep = {task_id_of(k) for k in known}
    removed = 0
    try:
        entries = list(os.scandir(tasks_dir(data_dir)))
    except OSError:
        return 0
    for e in entries:
        if e.name in keep or not e.is_dir(follow_symlinks=False):
            continue
        try:
            # The task owns its sandbox and may set its mtime into the future (to keep it
            # forever); ctime it cannot forge, and it caps the mtime.
            st = e.stat(follow_symlinks=False)
            if now - min(st.st_mtime, st.st_ctime) < SANDBOX_RETENTION_S:
                continue
        except OSError:
            continue
        remove_tree(e.path)
        removed += 1
    if removed:
        log.info("removed %d sandbox(es) of tasks gone for an hour or more", removed)
    return removed


def is_real_dir(path: str) -> bool:
    """A directory itself, not a link to one."""
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def remove_tree(path: str) -> None:
    """Delete a sandbox (a tree its task owns and may fill with links) without ever following
    a link out of it: shutil.rmtree's fd-based walk (openat/unlinkat relative to each opened
    directory, checked against lstat) deletes a link, never what it points to. Refuses to run
    on a Python whose rmtree lacks that walk rather than fall back to the path-based one."""
    if not shutil.rmtree.avoids_symlink_attacks:
        raise RuntimeError("shutil.rmtree is not symlink-attack safe on this platform")
    shutil.rmtree(path, ignore_errors=True)


def first_closed_dir(path: str) -> str:
    """The first directory on `path` that other users cannot traverse, or ''."""
    p = os.path.abspath(path)
    while True:
        if not os.stat(p).st_mode & stat.S_IXOTH:
            return p
        parent = os.path.dirname(p)
        if parent == p:
            return ""
        p = parent
