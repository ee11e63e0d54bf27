"""Link shards under faults (real processes): hollow machines spread their Link streams over
all three replicas; a replica that dies under its Borglets hands them to the others without
any machine or task declared lost, and a rollout in which Borglets switch replicas midway
completes; a replica that hangs (stopped, its sockets open) loses its Borglets to keepalive.
One cell (machine timeout 10 s, so a machine that failed to move would be declared lost
within the test) serves all three tests."""

from __future__ import annotations

import re
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cfg.keepalive import LINK_KEEPALIVE_S, LINK_KEEPALIVE_TIMEOUT_S
from tests.cluster import Cell, stays, wait_for

pytestmark = [pytest.mark.e2e]

MACHINES = 60
TASKS = 120
MACHINE_TIMEOUT_S = 10.0


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    c = Cell(tls=True)
    try:
        c.start(masters=3, borglets=0, machine_timeout=MACHINE_TIMEOUT_S)
        flags = ["--cpu", "4", "--memory", "8Gi", "--start-ms", "300", "--ramp-s", "0.3"]
        c.add_hollow(MACHINES, "hollow-", flags)
        c.wait_machines(MACHINES, timeout=60)
        yield c
    except BaseException:
        print(c.dump_logs())
        raise
    finally:
        c.close()


def served(cell: Cell, i: int) -> int:
    """Link streams replica `i` serves (its /metrics); -1 when it does not answer."""
    try:
        _, body = cell.http_get(cell.masters[i].info["http"], "/metrics")
    except OSError:
        return -1
    hit = re.search(r"^borg_link_streams ([0-9.e+]+)$", body, re.M)
    return int(float(hit.group(1))) if hit else -1


def streams(cell: Cell) -> dict[int, int]:
    """Link streams each live replica serves."""
    out = {}
    for i, m in enumerate(cell.masters):
        if m.alive() and (n := served(cell, i)) >= 0:
            out[i] = n
    return out


def states(cell: Cell, job: str, via: str | None = None) -> dict[tuple[str, int], int]:
    out: dict[tuple[str, int], int] = {}
    for t in cell.borgcfg_json("status", job, master=via)["tasks"]:
        k = (t["state"], t.get("version", 0))
        out[k] = out.get(k, 0) + 1
    return out


def lost_lines(cell: Cell) -> list[str]:
    return [ln for m in cell.masters for ln in m.log().splitlines() if " lost: no contact" in ln]


def follower(cell: Cell) -> int:
    leader = cell.leader()
    return next(i for i, m in enumerate(cell.masters) if m is not leader and m.alive())


def write_job(tmp_path: Path, command: str) -> str:
    job = tmp_path / "spread.yaml"
    job.write_text(
        f"name: spread\nreplicas: {TASKS}\ncommand: '{command}'\n"
        "requirements: {cpu: 0.01, ram: 1Mi}\n"
        "update: {max_unavailable: 30}\n"
    )
    return str(job)


def test_a_rollout_completes_while_borglets_switch_replicas(cell: Cell, tmp_path: Path) -> None:
    wait_for(lambda: len(streams(cell)) == 3 and sum(streams(cell).values()) == MACHINES, 30)
    assert all(n > 0 for n in streams(cell).values()), streams(cell)  # every replica serves
    assert cell.borgcfg("up", write_job(tmp_path, "sleep 1000")).returncode == 0
    wait_for(lambda: states(cell, "spread").get(("running", 1)) == TASKS, 60, 0.5, "v1 running")

    assert cell.borgcfg("up", write_job(tmp_path, "sleep 2000")).returncode == 0
    wait_for(lambda: states(cell, "spread").get(("running", 2), 0) >= 10, 60, 0.2, "rollout on")
    assert states(cell, "spread").get(("running", 2), 0) < TASKS  # midway
    i = follower(cell)
    moved = streams(cell)[i]
    m = cell.masters[i]
    assert m.stop() == 0  # its Borglets switch to the other two replicas mid-rollout
    wait_for(lambda: sum(streams(cell).values()) == MACHINES, 30, 0.2, "streams moved")
    wait_for(lambda: states(cell, "spread").get(("running", 2)) == TASKS, 90, 0.5, "v2 running")
    assert moved > 0
    assert not lost_lines(cell)
    m.start()  # back for the next test: it serves again whoever hashes or moves to it
    wait_for(
        lambda: (
            len(cell.cell_json()) == 3
            and all(r["role"] in ("leader", "follower") for r in cell.cell_json())
        ),
        30,
        0.5,
        "replica back",
    )


def test_a_hung_replica_loses_its_borglets_to_keepalive_and_nothing_is_lost(cell: Cell) -> None:
    # A stopped process: its kernel still acknowledges what the Borglets send, so their
    # streams neither fail nor block; only the HTTP/2 keepalive (cfg/keepalive.py), which
    # its gRPC runtime no longer answers, tells them to move. Without it they would stream
    # heartbeats into it until the leader declared every one of its machines lost.
    wait_for(lambda: sum(streams(cell).values()) == MACHINES, 30)
    leader = cell.leader()
    via = leader.info["grpc"]
    before = states(cell, "spread")
    counts = streams(cell)
    i = max((r for r in counts if cell.masters[r] is not leader), key=lambda r: counts[r])
    hung = cell.masters[i]
    others = [r for r in counts if r != i]
    assert counts[i] > 0
    hung.signal(signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        wait_for(
            lambda: sum(served(cell, r) for r in others) == MACHINES,
            LINK_KEEPALIVE_S + LINK_KEEPALIVE_TIMEOUT_S + 5,
            0.2,
            "streams moved off the hung replica",
        )
        print(f"{counts[i]} streams left the hung replica in {time.monotonic() - t0:.1f} s")

        def calm() -> bool:
            ms = cell.borgcfg_json("machines", master=via)
            return (
                len(ms) == MACHINES
                and all(x["state"] == "up" for x in ms)
                and states(cell, "spread", via) == before
            )

        assert stays(calm, MACHINE_TIMEOUT_S + 2.0, 0.5)
        assert not lost_lines(cell)
    finally:
        hung.signal(signal.SIGCONT)
    wait_for(lambda: sum(streams(cell).values()) == MACHINES, 30, 0.2, "streams settled")


def test_a_dying_replica_moves_its_borglets_and_nothing_is_lost(cell: Cell) -> None:
    # (runs after the rollout: the job's TASKS tasks at version 2 are running)
    wait_for(lambda: sum(streams(cell).values()) == MACHINES, 30)
    before = states(cell, "spread")
    counts = streams(cell)
    leader = cell.masters.index(cell.leader())
    # the replica serving the most Borglets (a follower when one serves as many)
    i = max(counts, key=lambda r: (counts[r], r != leader))
    served = counts[i]
    cell.masters[i].kill()  # SIGKILL: its streams break at once, no goodbye
    wait_for(lambda: sum(streams(cell).values()) == MACHINES, 30, 0.2, "streams moved")
    cell.leader()  # (a new one, if it was the leader)

    # For longer than a machine timeout after the kill: every machine stays up, every task
    # stays running, and no replica declares anything lost.
    def calm() -> bool:
        ms = cell.borgcfg_json("machines")
        return (
            len(ms) == MACHINES
            and all(x["state"] == "up" for x in ms)
            and states(cell, "spread") == before
        )

    assert stays(calm, MACHINE_TIMEOUT_S + 2.0, 0.5)
    assert served > 0
    assert not lost_lines(cell)
    assert cell.hollows[0].alive()
