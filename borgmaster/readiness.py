"""When the master counts a task as ready (up and stable): judged once, here, with the
master's clock, and reported in the API (`Task.ready`, `Job.ready`) for `borgcfg up --wait`,
the web UI and scripts. A client never re-judges it, so a client whose clock is off cannot
call a task ready too early or never.

Pure: the caller passes the time.
"""

from __future__ import annotations

from typing import Protocol

from cfg.model import MAX_BACKOFF_MS, MIN_READY_MS, RUNNING

WAIT_BACKOFF_CAP_MS = 30_000
"""The most a restarted task's possible restart backoff adds to the stability it must show."""


class TaskLike(Protocol):
    """What readiness reads of a task (the store's Task and the API's pb.Task both fit)."""

    state: str
    health: str
    restarts: int
    updated_ms: int


def task_ready(t: TaskLike, health_check: bool, backoff_ms: int, now_ms: int) -> bool:
    """Running, healthy if the job has a health check, and up unchanged for MIN_READY_MS: the
    rollout controller's stability rule, so a task that starts and dies at once (and is
    restarted by its Borglet) never counts as ready.

    The Borglet reports a task restarting (`restarts` + 1, `updated_ms` moves) when its process
    exits, and keeps reporting it running through the restart backoff; so a task that has
    restarted must also outlast the longest backoff its Borglet may have waited (backoff
    doubling per restart, capped), or a crash loop would look stable between two crashes.
    `restarts` counts every restart of the incarnation while the Borglet's backoff resets
    after a stable run, so this is an upper bound; capped so that a long-lived task with old
    restarts is not held for minutes (a crash loop whose backoff has grown past the cap is
    caught by the rollout controller's restart count instead).
    """
    if t.state != RUNNING or (health_check and t.health != "healthy"):
        return False
    need = MIN_READY_MS
    if t.restarts > 0:
        need += min(backoff_ms * 2 ** min(t.restarts - 1, 30), MAX_BACKOFF_MS, WAIT_BACKOFF_CAP_MS)
    return now_ms - t.updated_ms >= need
