"""`/readyz` answers 503 while a replica knows no leader and 200 once it has one: a lone
replica of a 3-member cell, then the same replica after the other two are stopped.

Load balancers and `Cell.wait_ready` rely on it; a /readyz that always said 200 would send
clients to replicas that can neither read consistently nor write. Real master processes."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cluster import Cell, free_port, wait_for

pytestmark = pytest.mark.e2e


@pytest.fixture
def cell() -> Iterator[Cell]:
    c = Cell()
    try:
        yield c
    finally:
        c.close()


def test_readyz_is_503_without_a_leader_and_200_with_one(cell: Cell) -> None:
    rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    m0 = cell.add_master(0, rafts)
    http = m0.info["http"]
    # Alone (its peers were never started) m0 cannot know a leader, however long it runs:
    # its first answer, and every one until the others start, must be 503.
    code, body = wait_for(lambda: cell.http_get(http, "/readyz"), 30, what="m0's HTTP port")
    assert (code, body) == (503, "not ready: no leader known or log not applied\n")
    assert m0.alive(), m0.log()[-3000:]

    for i in (1, 2):
        cell.add_master(i, rafts)
    cell.wait_ready()  # every replica's /readyz is 200
    assert cell.http_get(http, "/readyz") == (200, "ready\n")

    # Lose the majority again: the leader, left alone, steps down (leaderFallbackTimeout)
    # and says it is not ready.
    survivor = cell.leader()
    for m in cell.masters:
        if m is not survivor:
            m.kill()
    wait_for(
        lambda: cell.http_get(survivor.info["http"], "/readyz")[0] == 503,
        20,
        what="/readyz 503 on the replica left alone",
    )
