"""Membership: a 4th replica joins a running 3-replica cell (`borgcfg cell add`), catches up,
and is removed again (`borgcfg cell remove`); `borgcfg cell` shows both changes.

PySyncObj's procedure (dynamicMembershipChange): start the new replica with EVERY current
member as a peer, then ask the leader to add it (addNodeToCluster, one change at a time, each
committed before the next); to remove, ask the leader (removeNodeFromCluster), then stop the
removed process. The leader cannot remove itself.
"""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable

import pytest

from tests.cluster import Cell, Proc, add_master_with_args, free_port, wait_for
from tests.fault.util import Stubs, list_rows, submit_until_acked

pytestmark = pytest.mark.e2e


def write_jobs(cell: Cell, stubs: Stubs, prefix: str, n: int) -> None:
    addrs = [m.info["grpc"] for m in cell.masters if m.alive()]
    for i in range(n):
        a = submit_until_acked(
            stubs, addrs, f"{prefix}{i}", uuid.uuid4().hex, time.monotonic() + 20
        )
        assert a.response is not None, a.errors


def by_raft(cell: Cell, via: str) -> dict[str, dict[str, object]]:
    return {r["raft"]: r for r in cell.cell_json_via(via)}


def raft_term(cell: Cell, p: Proc) -> int:
    """The replica's own Raft term, from its /metrics (-1 while it does not answer)."""
    code, body = cell.http_get(p.info["http"], "/metrics")
    found = re.search(r"^borg_raft_term ([0-9.]+)$", body, re.M) if code == 200 else None
    return int(float(found.group(1))) if found else -1


def holds_for(cond: Callable[[], bool], seconds: float, what: str) -> None:
    """`cond` stays true for `seconds` (checked every 50 ms): the scenario here is time
    passing (election timeouts, 0.3-0.6 s, elapsing) while nothing may happen."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert cond(), what
        time.sleep(0.05)


def test_join_procedure_of_the_readme_with_a_restart_before_cell_add(
    cell: Cell, stubs: Stubs
) -> None:
    """README "Adding or removing a master", as an operator runs it: `borgmaster run --join`
    with every member as `--peer`, the cell's `--raft-secret-file` and an empty data dir,
    restarted once before `borgcfg cell add` (the join hold must survive it: the `joined`
    marker is written only once the leader has spoken to it), then added."""
    write_jobs(cell, stubs, "before", 3)
    term = max(r["term"] for r in cell.cell_json())
    peers = [m.info["raft"] for m in cell.masters]
    new = add_master_with_args(cell, 3, f"127.0.0.1:{free_port()}", peers, extra=["--join"])
    argv = new.argv
    assert argv[argv.index("--raft-secret-file") + 1] == cell.raft_secret_file()
    assert all(f"--peer {r}" in " ".join(argv) for r in peers)
    marker = os.path.join(new.info["data"], "joined")

    def waiting() -> bool:
        return new.alive() and raft_term(cell, new) == 0 and not os.path.exists(marker)

    for attempt in ("first start", "after a restart"):
        wait_for(lambda: raft_term(cell, new) == 0, 30, what=f"joiner serving ({attempt})")
        # Not a member yet: it hears from no leader, and must not campaign meanwhile.
        holds_for(waiting, 1.5, f"joiner stays at term 0 without a marker ({attempt})")
        if attempt == "first start":
            new.kill()  # SIGKILL before `cell add`: the same command line starts it again
            new.start()

    r = cell.borgcfg("cell", "add", new.info["raft"], "-o", "json")
    assert r.returncode == 0, r.stderr
    wait_for(lambda: cell.http_get(new.info["http"], "/readyz")[0] == 200, 30, what="ready")
    wait_for(lambda: os.path.exists(marker), 10, what="the joined marker")
    leader = cell.leader()
    with open(marker) as f:
        assert f.read().strip() == leader.info["raft"]
    # Joining disturbed nobody: no campaign anywhere, the cell's term is unchanged.
    assert "campaigning" not in new.log(), new.log()[-2000:]
    assert max(r["term"] for r in cell.cell_json()) == term
    via = cell.masters[0].info["grpc"]
    wait_for(
        lambda: by_raft(cell, via).get(new.info["raft"], {}).get("role") == "follower",
        20,
        what="cell lists the new replica as follower",
    )
    assert by_raft(cell, via)[new.info["raft"]]["id"] == "m3"
    # A member now: it has the cell's state and follows new writes.
    write_jobs(cell, stubs, "after", 2)
    wait_for(lambda: same_jobs(stubs, new, leader), 20, what="joiner has every job")
    assert len(list_rows(stubs, new.info["grpc"], stale=True)) == 5


def add_fourth(cell: Cell, stubs: Stubs) -> Proc:
    """Start a 4th replica as the README says (`borgmaster run --join`, every member as
    `--peer`, the cell's secret file) and `borgcfg cell add` it once election timeouts have
    passed without it campaigning (one that had would now hold a higher term than the cell)."""
    peers = [m.info["raft"] for m in cell.masters]
    new = add_master_with_args(cell, 3, f"127.0.0.1:{free_port()}", peers, extra=["--join"])
    wait_for(lambda: raft_term(cell, new) == 0, 30, what="joiner serving")
    holds_for(lambda: new.alive() and raft_term(cell, new) == 0, 1.5, "joiner stays at term 0")
    r = cell.borgcfg("cell", "add", new.info["raft"], "-o", "json")
    assert r.returncode == 0, r.stderr
    return new


def same_jobs(stubs: Stubs, replica: Proc, leader: Proc) -> bool:
    """The replica's local state (no barrier) has what the leader has."""
    return list_rows(stubs, replica.info["grpc"], stale=True) == list_rows(
        stubs, leader.info["grpc"]
    )


def test_fourth_replica_joins_catches_up_and_is_removed(cell: Cell, stubs: Stubs) -> None:
    write_jobs(cell, stubs, "before", 10)
    term = max(r["term"] for r in cell.cell_json())
    new = add_fourth(cell, stubs)
    raft = new.info["raft"]
    # Joining did not disturb the cell: the new replica waited for the leader instead of
    # campaigning with ever higher terms (which, without pre-vote, deposes the leader).
    wait_for(lambda: cell.http_get(new.info["http"], "/readyz")[0] == 200, 30, what="ready")
    assert "campaigning" not in new.log(), new.log()[-2000:]
    assert max(r["term"] for r in cell.cell_json()) == term

    # It catches up: ready, and the same jobs as the leader.
    wait_for(lambda: cell.http_get(new.info["http"], "/readyz")[0] == 200, 30, what="ready")
    leader = cell.leader()
    wait_for(lambda: same_jobs(stubs, new, leader), 20, what="new replica has every job")
    # `borgcfg cell` shows four members, the new one following the leader.
    via = cell.masters[0].info["grpc"]
    wait_for(
        lambda: by_raft(cell, via).get(raft, {}).get("role") == "follower",
        20,
        what="cell lists the new replica as follower",
    )
    reps = by_raft(cell, via)
    assert len(reps) == 4, reps
    assert reps[raft]["id"] == "m3"
    # Writes commit with it in the cell and reach it.
    write_jobs(cell, stubs, "with-four-", 5)
    wait_for(lambda: same_jobs(stubs, new, leader), 20, what="new replica follows writes")

    r = cell.borgcfg("cell", "remove", raft, "-o", "json")
    assert r.returncode == 0, r.stderr
    assert new.stop() == 0
    # The removal took effect in Raft: with the 4th gone AND one original follower stopped,
    # two of three members are a quorum (two of four would not be).
    follower = next(m for m in cell.masters[:3] if m is not leader)
    follower.kill()
    write_jobs(cell, stubs, "after", 5)
    live = [m for m in cell.masters[:3] if m.alive()]
    rows = [list_rows(stubs, m.info["grpc"]) for m in live]
    assert rows[0] == rows[1]
    assert len(rows[0]) == 20


def test_cell_listing_drops_a_removed_replica(cell: Cell, stubs: Stubs) -> None:
    new = add_fourth(cell, stubs)
    raft = new.info["raft"]
    via = cell.masters[0].info["grpc"]
    wait_for(lambda: raft in by_raft(cell, via), 20, what="cell lists the new replica")
    r = cell.borgcfg("cell", "remove", raft, "-o", "json")
    assert r.returncode == 0, r.stderr
    new.stop()
    wait_for(lambda: raft not in by_raft(cell, via), 10, what="listing without the replica")
    assert len(by_raft(cell, via)) == 3
