"""State digests on real replicas: three masters agree on their digests at common log indexes,
and a replica whose store was changed behind Raft's back (tests/fault/corrupt_master.py) is
named by the others, logs the mismatch loudly, exports it, and fails /readyz."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from typing import TypeVar

import pytest

from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, Proc, add_master_with_args, free_port, wait_for
from tests.fault.corrupt_master import CORRUPT_JOB
from tests.fault.util import Stubs, submit_until_acked

pytestmark = [pytest.mark.e2e]

EVERY = 10
T = TypeVar("T")


@pytest.fixture
def diverging_cell() -> Iterator[Cell]:
    """m0 and m1 are plain replicas; m2 corrupts its own store when CORRUPT_JOB arrives."""
    c = Cell()
    try:
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        for i in range(3):
            peers = [r for j, r in enumerate(rafts) if j != i]
            p = add_master_with_args(
                c, i, rafts[i], peers, extra=["--digest-every", str(EVERY)], start=False
            )
            if i == 2:
                p.argv[p.argv.index("borgmaster.cli")] = "tests.fault.corrupt_master"
            p.start()
        c.wait_ready()
    except Exception:
        print(c.dump_logs())
        c.close()
        raise
    yield c
    c.close()


def write(cell: Cell, stubs: Stubs, names: list[str]) -> None:
    addrs = [m.info["grpc"] for m in cell.masters]
    for name in names:
        a = submit_until_acked(stubs, addrs, name, str(uuid.uuid4()), time.monotonic() + 20)
        assert a.response is not None, a.errors


def recent(stubs: Stubs, m: Proc) -> dict[int, str]:
    info = stubs.get(m.info["grpc"]).ReplicaStatus(pb.ReplicaStatusRequest(), timeout=2)
    return dict(info.recent_digests)


def writing_until(cell: Cell, stubs: Stubs, cond: Callable[[], T], what: str) -> T:
    """Poll `cond`, writing one more job between polls: a replica whose previous hashing
    child was still running skips a digest (more likely on a busy machine), so the test makes
    new common indexes until the claim holds, rather than hoping the last one was shared."""
    n = [0]

    def step() -> T | None:
        v = cond()
        if not v:
            n[0] += 1
            write(cell, stubs, [f"more-{what[:8].replace(' ', '-')}-{n[0]}"])
        return v

    return wait_for(step, 60, interval=0.05, what=what)


def test_replicas_agree_then_the_corrupted_one_is_reported(diverging_cell: Cell) -> None:
    cell = diverging_cell
    m0, m1, m2 = cell.masters
    stubs = Stubs()
    try:
        write(cell, stubs, [f"a{i}" for i in range(EVERY + 2)])

        def agreeing() -> set[int]:
            per = [recent(stubs, m) for m in cell.masters]
            common = set(per[0]) & set(per[1]) & set(per[2])
            assert all(len({d[i] for d in per}) == 1 for i in common), per
            return common

        writing_until(cell, stubs, agreeing, "three replicas with a common digest index")
        reps = cell.cell_json()
        assert all(len(str(r["digest"])) == 32 and int(r["digest_index"]) > 0 for r in reps)
        assert all(r["digest_mismatch"] == [] and not r["digest_diverged"] for r in reps)

        # m2's store diverges; the next common digest index shows it.
        write(cell, stubs, [CORRUPT_JOB])

        def m2_unready() -> str:
            code, body = cell.http_get(m2.info["http"], "/readyz")
            return body if code == 503 and "diverged" in body else ""

        body = writing_until(cell, stubs, m2_unready, "m2 failing /readyz as the odd one out")
        assert "state digest at log index" in body

        def all_report() -> dict[str, dict[str, object]] | None:
            reps = cell.cell_json()
            if not all(r["digest_mismatch"] for r in reps):
                return None
            return {str(r["id"]): r for r in reps}

        by_id = writing_until(cell, stubs, all_report, "every replica reporting the mismatch")
        assert by_id["m0"]["digest_mismatch"] == ["m2"]
        assert by_id["m1"]["digest_mismatch"] == ["m2"]
        assert by_id["m2"]["digest_mismatch"] == ["m0", "m1"]
        assert by_id["m2"]["digest_diverged"] and not by_id["m0"]["digest_diverged"]
        for m in (m0, m1):
            assert cell.http_get(m.info["http"], "/readyz")[0] == 200
            _, metrics = cell.http_get(m.info["http"], "/metrics")
            assert "borg_replica_digest_mismatch 1.0" in metrics
        _, metrics = cell.http_get(m2.info["http"], "/metrics")
        assert "borg_replica_digest_diverged 1.0" in metrics
        assert "STATE DIGEST MISMATCH" in m2.log() and "THIS REPLICA DIVERGED" in m2.log()
        assert "STATE DIGEST MISMATCH" in m0.log() and "DIVERGED" not in m0.log()
    finally:
        stubs.close()
