"""`borgcfg plan`'s computation (borgmaster/preview.py): the store's own submit and the real
scheduler, on a copy, leaving the cell's store untouched."""

from __future__ import annotations

import itertools

from borgmaster import commands as C
from borgmaster.model import RUNNING, Requirements
from borgmaster.preview import JobPreview, copy_of, preview
from borgmaster.scheduler import BorgScheduler
from tests.unit.test_store import Cell, GiB, spec


def _ids() -> itertools.count[int]:
    return itertools.count()


def run_plan(cell: Cell, *specs: object, user: str = "alice") -> dict[str, JobPreview]:
    before = cell.store.digest()
    ids = _ids()
    out = preview(
        copy_of(cell.store),
        list(specs),  # type: ignore[arg-type]
        user,
        BorgScheduler(),
        now_ms=1000,
        new_id=lambda: f"p{next(ids)}",
    )
    assert cell.store.digest() == before  # nothing written
    return {p.job: p for p in out}


def running_job(cell: Cell, name: str, replicas: int, machine: str, **kw: object) -> None:
    cell.submit(spec(name, replicas=replicas, **kw))  # type: ignore[arg-type]
    version = cell.store.jobs[name].version
    for i in range(replicas):
        cell.place(name, i, machine, version=version)
        cell.update(name, i, RUNNING)


def test_a_new_job_is_placed_across_machines() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0)
    cell.machine("m2", cpu=2.0)
    got = run_plan(cell, spec("web", replicas=3, user="alice"))
    p = got["web"]
    assert (p.change, p.version, p.unplaceable, p.preemptions) == ("created", 1, 0, 0)
    assert sum(p.placements.values()) == 3 and set(p.placements) <= {"m1", "m2"}


def test_tasks_that_fit_nowhere_are_counted_with_the_reason() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0)
    big = spec("big", replicas=3, user="alice", requirements=Requirements(cpu=1.5, ram=GiB))
    p = run_plan(cell, big)["big"]
    assert p.placements == {"m1": 1} and p.unplaceable == 2
    assert p.reasons and "cpu" in p.reasons[0]


def test_an_update_shows_where_every_task_runs_after_the_rollout() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0)
    cell.machine("m2", cpu=4.0)
    running_job(cell, "web", 2, "m1", user="alice")
    new = spec("web", replicas=3, user="alice", command=["sleep", "9"])
    p = run_plan(cell, new)["web"]
    assert (p.change, p.version, p.unplaceable) == ("updated", 2, 0)
    assert sum(p.placements.values()) == 3
    same = run_plan(cell, spec("web", replicas=2, user="alice"))["web"]
    assert (same.change, same.version, same.placements) == ("unchanged", 1, {"m1": 2})


def test_preemptions_are_counted_against_the_job_that_causes_them() -> None:
    cell = Cell()
    cell.machine("m1", cpu=2.0)
    running_job(cell, "filler", 2, "m1", user="bob", priority=100)
    prod = spec("prod", replicas=1, user="alice", priority=200)
    low = spec("low", replicas=1, user="alice", priority=100)
    got = run_plan(cell, prod, low)
    assert got["prod"].placements == {"m1": 1} and got["prod"].preemptions == 1
    assert got["low"].preemptions == 0 and got["low"].unplaceable == 1


def test_what_up_would_refuse_is_reported_per_job() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.apply(C.SetQuota(user="alice", band="production", limit=C.QuotaLimit(cpu=1.0)))
    over = spec("prod", replicas=2, user="alice", priority=200)
    got = run_plan(cell, over, spec("ok", replicas=1, user="alice"))
    assert got["prod"].change == "rejected" and "quota" in got["prod"].error
    assert got["ok"].change == "created" and got["ok"].placements == {"m1": 1}
