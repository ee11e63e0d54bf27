"""update.canary and update.auto_revert: the pure rollout decisions (controllers.py) and the
store's Promote / RevertRollout commands."""

from __future__ import annotations

from typing import Any

import pytest

from borgmaster import commands as C
from borgmaster import controllers
from borgmaster.model import FAILED, PENDING, RUNNING, UpdatePolicy
from borgmaster.store import Store
from cfg.errors import ConfigError
from cfg.schema import spec_to_config, validate_job
from tests.unit.test_store import Cell, GiB, spec

LATER = 10**9  # a controller clock past every task's MIN_READY_MS


def canary_job(cell: Cell, canary: int = 1, auto_revert: bool = False, **kw: Any) -> None:
    """web: 3 replicas running version 1 on m1, then updated to version 2 with a canary."""
    cell.machine("m1", cpu=16, ram=64 * GiB)
    upd = UpdatePolicy(max_unavailable=1, canary=canary, auto_revert=auto_revert)
    cell.submit(spec(replicas=3, update=upd, user="alice", **kw))
    for i in range(3):
        cell.place("web", i, "m1")
        cell.update("web", i, RUNNING)
    cell.submit(spec(replicas=3, update=upd, user="alice", env={"V": "2"}, **kw))


def step(cell: Cell) -> list[controllers.JobActions]:
    """One controller pass applied as the shell would, then every pending task placed and
    running (a cooperative scheduler and Borglet)."""
    acts = controllers.plan_all(cell.store, now_ms=LATER)
    for a in acts:
        if a.revert:
            cell.apply(C.RevertRollout(job=a.job, version=a.version, reason=a.revert))
            continue
        if a.rollout_status is not None:
            cell.apply(C.SetRollout(job=a.job, version=a.version, status=a.rollout_status))
        if a.replace_update:
            cell.apply(C.ReplaceTasks(job=a.job, tasks=a.replace_update, reason="updated"))
    for (job, i), t in sorted(cell.store.tasks.items()):
        if t.state == PENDING:
            v = cell.store.jobs[job].version
            cell.apply(C.ApplyPlan(placements=[C.Placement(job, i, "m1", f"{job}-{i}-v{v}", v)]))
            cell.update(job, i, RUNNING)
    return acts


def versions(cell: Cell) -> list[int]:
    return [t.version for t in cell.store.job_tasks("web")]


def test_canary_moves_n_tasks_then_waits_for_promote() -> None:
    cell = Cell()
    canary_job(cell, canary=1)
    for _ in range(5):
        step(cell)
    job = cell.store.jobs["web"]
    assert job.rollout == "canary" and sorted(versions(cell)) == [1, 1, 2]
    assert [e.type for e in cell.store.events][-1] == "canary"
    assert controllers.plan_all(cell.store, now_ms=LATER) == []  # waits, however long
    other = cell.apply(C.Promote(name="web", user="mallory"))
    assert other["error"] == "permission-denied"
    res = cell.apply(C.Promote(name="web", user="alice"))
    assert res == {"name": "web", "version": 2, "result": "promoted"}
    for _ in range(8):
        step(cell)
    assert job.rollout == "" and versions(cell) == [2, 2, 2]
    again = cell.apply(C.Promote(name="web", user="alice"))
    assert again["error"] == "invalid" and "no canary waiting" in again["message"]


def test_a_canary_as_large_as_the_job_is_a_plain_rollout() -> None:
    cell = Cell()
    canary_job(cell, canary=3)
    for _ in range(8):
        step(cell)
    assert cell.store.jobs["web"].rollout == "" and versions(cell) == [2, 2, 2]


def test_auto_revert_rolls_a_failing_canary_back_with_the_reason() -> None:
    cell = Cell()
    canary_job(cell, canary=1, auto_revert=True)
    step(cell)  # the canary (task 0) is replaced and runs version 2
    cell.update("web", 0, FAILED, exit_code=3, reason="exit 3")
    [act] = controllers.plan_all(cell.store, now_ms=LATER)
    assert act.revert == "task 0 on version 2 failed (exit 3)" and act.rollout_status is None
    step(cell)
    job = cell.store.jobs["web"]
    assert job.version == 3 and job.spec.env == {} and job.reverted_to == 3
    reverted = [e for e in cell.store.events if e.type == "reverted"]
    assert len(reverted) == 1
    assert reverted[0].message == (
        "version 3, 3 tasks (version 2 -> version 1's spec: task 0 on version 2 failed (exit 3))"
    )
    # Tasks still on version 1's template are re-versioned where they run; no canary stage.
    for _ in range(6):
        step(cell)
    assert job.rollout == "" and versions(cell) == [3, 3, 3]
    assert [r.user for r in job.versions][-1] == "borgmaster"


def test_a_version_made_by_a_revert_halts_instead_of_flipping_back() -> None:
    cell = Cell()
    canary_job(cell, canary=1, auto_revert=True)
    step(cell)
    cell.update("web", 0, FAILED, exit_code=3)
    step(cell)  # reverted to version 3; task 0 placed again on it
    cell.update("web", 0, RUNNING, restarts=3, reason="exit 1")
    [act] = controllers.plan_all(cell.store, now_ms=LATER)
    assert not act.revert
    assert act.rollout_status == "halted: task 0 on version 3 restarted 3 times (exit 1)"


def test_revert_is_fenced_and_a_late_one_changes_nothing() -> None:
    cell = Cell()
    canary_job(cell, canary=1, auto_revert=True)
    cell.apply(C.LeaderElected(term=5))
    stale = cell.apply(C.RevertRollout(job="web", version=2, reason="x", term=4))
    assert stale["error"] == "stale-leader"
    assert cell.apply(C.RevertRollout(job="web", version=2, reason="x", term=5))["version"] == 3
    late = cell.apply(C.RevertRollout(job="web", version=2, reason="x", term=5))
    assert late["error"] == "not-found" and cell.store.jobs["web"].version == 3


def test_canary_state_survives_a_snapshot() -> None:
    cell = Cell()
    canary_job(cell, canary=1)
    for _ in range(5):
        step(cell)
    cell.apply(C.Promote(name="web", user="alice"))
    copy = Store()
    copy.load_snapshot(cell.store.snapshot_bytes())
    assert copy.jobs["web"].canary_passed == 2 and "web" in copy.rolling
    assert copy.digest() == cell.store.digest()


def test_config_keys_validate_with_one_line_errors_naming_the_field() -> None:
    base = {"name": "web", "command": ["x"], "user": "alice"}
    ok = validate_job({**base, "update": {"canary": 2, "auto_revert": True}})
    assert (ok.update.canary, ok.update.auto_revert) == (2, True)
    assert spec_to_config(ok)["update"] == {
        "max_unavailable": 1,
        "max_surge": 0,
        "canary": 2,
        "auto_revert": True,
    }
    assert "canary" not in spec_to_config(validate_job(base))["update"]
    with pytest.raises(ConfigError, match=r"update\.canary"):
        validate_job({**base, "update": {"canary": -1}})
    with pytest.raises(ConfigError, match=r"update\.auto_revert: expected true or false"):
        validate_job({**base, "update": {"auto_revert": "yes"}})
