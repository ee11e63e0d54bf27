"""The store's admission of writes: ownership by the acting user, idempotent kill, quota
limits merged in the store (omitted limits kept, unlimited by default), and run_as only where
a machine allows it."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest

from borgmaster import commands as C
from borgmaster.model import ASSIGNED, KILLED, MACHINE_LOST, Machine, Requirements, Resources
from borgmaster.store import Store
from tests.unit.test_store import Cell, GiB, spec

PROD = 200  # a production-band priority

# ----- ownership ---------------------------------------------------------------------------


def test_update_by_another_acting_user_is_rejected_and_changes_nothing() -> None:
    cell = Cell()
    cell.submit(spec(user="alice"), user="alice")
    before = cell.store.digest()
    # bob submits a config that names alice as the owner: the spec agrees, the actor does not
    r = cell.submit(spec(user="alice", replicas=5), user="bob")
    assert r == {
        "error": "permission-denied",
        "message": "bob may not update job 'web' (owner alice)",
    }
    assert cell.store.digest() == before
    # the owner may, and so may a client that names no acting user (not checked)
    assert cell.submit(spec(user="alice", replicas=3), user="alice")["result"] == "updated"
    assert cell.submit(spec(user="alice", replicas=4))["result"] == "updated"


def test_kill_by_another_acting_user_is_rejected() -> None:
    cell = Cell()
    cell.submit(spec(user="alice"), user="alice")
    r = cell.apply(C.KillJob(name="web", user="bob"))
    assert r["error"] == "permission-denied"
    assert r["message"] == "bob may not kill job 'web' (owner alice)"
    assert not cell.store.jobs["web"].killed
    assert cell.apply(C.KillJob(name="web", user="alice"))["tasks_to_stop"] == 0
    assert cell.store.jobs["web"].killed


def test_a_new_job_after_kill_may_have_a_new_owner() -> None:
    cell = Cell()
    cell.submit(spec(user="alice"), user="alice")
    cell.apply(C.KillJob(name="web", user="alice"))
    r = cell.submit(spec(user="bob"), user="bob")
    assert r["result"] == "created" and cell.store.jobs["web"].spec.user == "bob"


def test_old_entries_without_acting_user_still_decode_and_apply() -> None:
    # an entry written before the `user` field: encoded without it
    entry = C.encode(C.KillJob(name="web"))
    assert C.decode(entry) == C.KillJob(name="web", user="")
    cell = Cell()
    cell.submit(spec(user="alice"))
    assert cell.apply_raw(entry) == {"name": "web", "tasks_to_stop": 0}


# ----- kill is idempotent ------------------------------------------------------------------


def test_kill_of_a_killed_job_succeeds_and_reports_what_is_still_stopping() -> None:
    cell = Cell()
    cell.machine("m1")
    cell.submit(spec(replicas=2))
    cell.place("web", 0, "m1")
    assert cell.apply(C.KillJob(name="web")) == {"name": "web", "tasks_to_stop": 1}
    events = cell.store.next_event
    before = cell.store.digest()
    again = cell.apply(C.KillJob(name="web"))
    assert again == {"name": "web", "tasks_to_stop": 1, "already": True}
    assert cell.store.digest() == before and cell.store.next_event == events
    assert cell.store.job_tasks("web")[0].state == ASSIGNED
    cell.update("web", 0, KILLED, exit_code=137)
    assert cell.apply(C.KillJob(name="web"))["tasks_to_stop"] == 0


def test_kill_of_an_unknown_job_is_still_not_found() -> None:
    assert Cell().apply(C.KillJob(name="nope"))["error"] == "not-found"


# ----- quota: partial limits merged in the store -------------------------------------------


def set_quota(cell: Cell, **limit: Any) -> dict[str, object]:
    return cell.apply(C.SetQuota(user="alice", band="production", limit=C.QuotaLimit(**limit)))


def quota(cell: Cell) -> Resources:
    return cell.store.quotas[("alice", "production")]


def test_quota_set_keeps_the_limits_it_does_not_name() -> None:
    cell = Cell()
    set_quota(cell, cpu=1, ram=GiB)
    assert quota(cell) == Resources(cpu=1.0, ram=GiB, disk=C.UNLIMITED, gpu=C.UNLIMITED)
    r = set_quota(cell, cpu=2)
    assert quota(cell) == Resources(cpu=2.0, ram=GiB, disk=C.UNLIMITED, gpu=C.UNLIMITED)
    assert r == {"ok": True, "limit": {"cpu": 2.0, "ram": GiB, "disk": -1, "gpu": -1}}
    set_quota(cell, ram=C.UNLIMITED, gpu=0)
    assert quota(cell) == Resources(cpu=2.0, ram=C.UNLIMITED, disk=C.UNLIMITED, gpu=0)


def test_old_full_quota_entries_still_replace_every_limit() -> None:
    cell = Cell()
    set_quota(cell, cpu=5, ram=GiB)
    set_quota(cell, **Resources(cpu=1).to_dict())  # as written before partial limits
    assert quota(cell) == Resources(cpu=1.0, ram=0, disk=0, gpu=0)


def test_unlimited_resources_are_not_admitted_against() -> None:
    cell = Cell()
    set_quota(cell, cpu=1)  # ram and gpu unlimited
    big = spec(
        replicas=2, user="alice", priority=PROD, requirements=Requirements(cpu=0.5, ram=64 * GiB)
    )
    assert cell.submit(big)["result"] == "created"
    over = spec(name="more", replicas=1, user="alice", priority=PROD)
    r = cell.submit(over)
    assert r["error"] == "quota"
    assert r["message"] == "quota for alice/production exceeded by cpu 1"


@pytest.mark.parametrize(
    ("limit", "message"),
    [
        ({"mem": 1}, "SetQuota.limit: unknown resource(s) ['mem']"),  # decode's check
        ({"cpu": "lots"}, "SetQuota.limit: cpu must be a number, not 'lots'"),
        ({"ram": True}, "SetQuota.limit: ram must be a number, not True"),
        ({"cpu": float("nan")}, "limit: cpu must be a number, not nan"),  # the store's
    ],
)
def test_bad_quota_limits_are_rejected_without_partial_state(
    limit: dict[str, object], message: str
) -> None:
    cell = Cell()
    set_quota(cell, cpu=1)
    before = cell.store.digest()
    body = {"user": "alice", "band": "production", "limit": limit}
    r = cell.apply_raw(bytes([C.CommandType.SET_QUOTA]) + msgpack.packb(body))
    assert r == {"error": "invalid", "message": message}
    assert cell.store.digest() == before


def test_merged_quota_is_the_same_on_every_replica_and_in_snapshots() -> None:
    cell = Cell()
    set_quota(cell, cpu=1, ram=GiB)
    set_quota(cell, gpu=2)
    other = Store()
    for i, e in enumerate(cell.entries, 1):
        other.apply(e, i)
    assert other.digest() == cell.store.digest()
    restored = Store()
    restored.load_snapshot(cell.store.snapshot_bytes())
    assert restored.quotas == cell.store.quotas


# ----- admission of run_as by the master ---------------------------------------------------


def register(cell: Cell, name: str, task_users: list[str]) -> None:
    m = Machine(
        name=name,
        address=f"{name}:1",
        capacity=Resources(cpu=4, ram=8 * GiB, disk=GiB),
        task_users=task_users,
    )
    cell.apply(C.RegisterMachine(ts_ms=1, machine=m))


def test_run_as_no_live_machine_allows_is_refused_and_changes_nothing() -> None:
    cell = Cell()
    register(cell, "a", ["nobody"])
    register(cell, "b", ["nobody", "www"])
    before = cell.store.digest()
    r = cell.submit(spec(run_as="daemon"))
    assert r["error"] == "invalid" and "'daemon'" in r["message"], r
    assert "nobody, www" in r["message"]
    assert cell.store.digest() == before
    assert cell.submit(spec(name="ok", run_as="www"))["result"] == "created"
    assert cell.submit(spec(name="dflt"))["result"] == "created"


def test_run_as_is_accepted_when_the_master_cannot_know() -> None:
    cell = Cell()
    assert cell.submit(spec(name="nomachines", run_as="daemon"))["result"] == "created"
    register(cell, "old", [])  # a Borglet that does not report its accounts
    register(cell, "new", ["nobody"])
    assert cell.submit(spec(name="unknown", run_as="daemon"))["result"] == "created"


def test_lost_machines_do_not_count_for_run_as() -> None:
    cell = Cell()
    register(cell, "a", ["nobody"])
    register(cell, "b", ["daemon"])
    cell.apply(C.MachineLost(ts_ms=2, name="b"))
    assert cell.store.machines["b"].state == MACHINE_LOST
    r = cell.submit(spec(run_as="daemon"))
    assert r.get("error") == "invalid", r
