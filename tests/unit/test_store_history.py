"""Version records (`borgcfg history`) and `rollback --to-version`, applied by the store."""

from __future__ import annotations

from borgmaster import commands as C
from borgmaster.model import VERSION_MEMORY, Requirements, changed_fields
from borgmaster.store import Store
from tests.unit.test_store import Cell, GiB, spec


def _history(cell: Cell, job: str = "web") -> list[tuple[int, str, list[str]]]:
    return [(r.version, r.user, r.changed) for r in cell.store.jobs[job].versions]


def test_changed_fields_names_sections_per_key() -> None:
    a = spec(requirements=Requirements(cpu=1.0, ram=GiB))
    b = spec(command=["sleep", "5"], requirements=Requirements(cpu=2.0, ram=GiB), replicas=3)
    assert changed_fields(a, b) == ["command", "replicas", "requirements.cpu"]
    assert changed_fields(a, a) == []


def test_each_version_is_recorded_with_user_time_and_changes() -> None:
    cell = Cell()
    cell.submit(spec(user="alice"), user="alice")
    cell.submit(spec(user="alice", command=["sleep", "5"]), user="alice")
    # Same version (replicas only): amends the current record.
    cell.submit(spec(user="alice", command=["sleep", "5"], replicas=4), user="alice")
    assert _history(cell) == [(1, "alice", []), (2, "alice", ["command", "replicas"])]
    job = cell.store.jobs["web"]
    assert job.versions[-1].spec == job.spec
    assert job.versions[0].submitted_ms < job.versions[1].submitted_ms


def test_only_the_last_versions_are_kept_and_survive_a_snapshot() -> None:
    cell = Cell()
    for i in range(VERSION_MEMORY + 3):
        cell.submit(spec(command=["sleep", str(i)]))
    versions = [r.version for r in cell.store.jobs["web"].versions]
    assert versions == list(range(4, VERSION_MEMORY + 4))
    copy = Store()
    copy.load_snapshot(cell.store.snapshot_bytes())
    assert copy.jobs["web"].versions == cell.store.jobs["web"].versions
    assert copy.digest() == cell.store.digest()


def test_a_job_submitted_again_after_down_keeps_its_history() -> None:
    cell = Cell()
    cell.submit(spec())
    cell.apply(C.KillJob(ts_ms=50, name="web"))
    cell.submit(spec(replicas=1))
    assert [v for v, _, _ in _history(cell)] == [1, 2]
    assert _history(cell)[-1][2] == ["replicas"]


def test_rollback_to_a_remembered_version_rolls_it_out_as_a_new_version() -> None:
    cell = Cell()
    cell.machine("m1")
    for cmd in (["a"], ["b"], ["c"]):
        cell.submit(spec(command=cmd, replicas=1))
    res = cell.apply(C.Rollback(ts_ms=100, name="web", version=1, user="bob"))
    assert res == {"name": "web", "version": 4, "result": "rolled-back"}
    job = cell.store.jobs["web"]
    assert job.spec.command == ["a"] and job.rollout == "rolling"
    assert _history(cell)[-1] == (4, "bob", ["command"])
    # And plain rollback now goes back to version 3 (the one before the rollback).
    res = cell.apply(C.Rollback(ts_ms=110, name="web"))
    assert res["version"] == 5 and cell.store.jobs["web"].spec.command == ["c"]


def test_rollback_to_version_refusals() -> None:
    cell = Cell()
    for cmd in (["a"], ["b"]):
        cell.submit(spec(command=cmd, user="alice"))
    current = cell.apply(C.Rollback(ts_ms=100, name="web", version=2))
    assert current["error"] == "invalid" and "at version 2 already" in current["message"]
    gone = cell.apply(C.Rollback(ts_ms=100, name="web", version=9))
    assert gone["error"] == "invalid"
    assert gone["message"].startswith("to_version: version 9 of job 'web' is not kept (kept: 1")
    other = cell.apply(C.Rollback(ts_ms=100, name="web", version=1, user="mallory"))
    assert other["error"] == "permission-denied"
    assert cell.store.jobs["web"].version == 2


def test_rollback_to_a_version_with_the_current_template_applies_in_place() -> None:
    cell = Cell()
    cell.submit(spec(replicas=1, command=["a"]))
    cell.submit(spec(replicas=1, command=["b"]))
    cell.submit(spec(replicas=3, command=["a"]))  # version 3: version 1's template, scaled
    res = cell.apply(C.Rollback(ts_ms=100, name="web", version=1))
    assert res == {"name": "web", "version": 3, "result": "rolled-back"}
    assert cell.store.jobs["web"].spec.replicas == 1
    assert _history(cell)[-1] == (3, "", ["command", "replicas"])


def test_rollback_command_without_version_encodes_as_v1() -> None:
    entry = C.encode(C.Rollback(ts_ms=1, name="web", user="u"))
    assert b"version" not in entry
    assert C.decode(entry) == C.Rollback(ts_ms=1, name="web", user="u")
    with_version = C.Rollback(ts_ms=1, name="web", version=3)
    assert C.decode(C.encode(with_version)) == with_version
