"""State digests on real replicas: three masters agree on their digests at common log indexes,
and a replica whose store was changed behind Raft's back (tests/fault/corrupt_master.py) is
named by the others, logs the mismatch loudly, exports it, and fails /readyz."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator

import pytest

from tests.cluster import Cell, add_master_with_args, free_port, wait_for
from tests.fault.corrupt_master import CORRUPT_JOB
from tests.fault.util import Stubs, submit_until_acked

pytestmark = [pytest.mark.e2e]

EVERY = 10


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


def test_replicas_agree_then_the_corrupted_one_is_reported(diverging_cell: Cell) -> None:
    cell = diverging_cell
    stubs = Stubs()
    try:
        write(cell, stubs, [f"a{i}" for i in range(EVERY + 2)])

        def agreeing() -> list[dict[str, object]] | None:
            reps = cell.cell_json()
            indexes = {r["digest_index"] for r in reps}
            if len(indexes) != 1 or 0 in indexes or len({r["digest"] for r in reps}) != 1:
                return None
            return reps

        reps = wait_for(agreeing, 30, what="three replicas with one digest at one index")
        assert all(len(str(r["digest"])) == 32 for r in reps)
        assert all(r["digest_mismatch"] == [] and not r["digest_diverged"] for r in reps)

        # m2's store diverges; the next common digest index shows it.
        write(cell, stubs, [CORRUPT_JOB, *[f"b{i}" for i in range(EVERY + 2)]])
        m0, m1, m2 = cell.masters

        def m2_unready() -> str:
            code, body = cell.http_get(m2.info["http"], "/readyz")
            return body if code == 503 and "diverged" in body else ""

        body = wait_for(m2_unready, 30, what="m2 failing /readyz as the odd one out")
        assert "state digest at log index" in body

        def all_report() -> dict[str, dict[str, object]] | None:
            reps = cell.cell_json()
            if not all(r["digest_mismatch"] for r in reps):
                return None
            return {str(r["id"]): r for r in reps}

        by_id = wait_for(all_report, 30, what="every replica reporting the mismatch")
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
