"""Reads through a follower show what the leader knows: live usage and last contact.

Borglets report usage and liveness to the leader only; a follower forwards consistent reads
of jobs and machines to it (a --stale read stays local)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import grpc
import pytest

from borgmaster.convert import struct_from
from proto.borg.v1 import borg_pb2 as pb
from proto.borg.v1 import borg_pb2_grpc
from tests.cluster import Cell, wait_for
from tests.conftest import real_cell

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def cell() -> Iterator[Cell]:
    yield from real_cell(
        masters=3,
        borglets=1,
        borglet_cpu=2.0,
        borglet_memory="2Gi",
    )


def stub(addr: str) -> Any:
    return borg_pb2_grpc.BorgmasterStub(grpc.insecure_channel(addr))


def test_follower_reads_show_the_leaders_usage_and_last_contact(cell: Cell) -> None:
    leader = cell.leader()
    follower = next(m for m in cell.masters if m is not leader)
    lead, fol = stub(leader.info["grpc"]), stub(follower.info["grpc"])
    spec = {
        "name": "fr",
        "replicas": 1,
        "run_as": "nobody",
        "command": "exec sleep 1000",
        "requirements": {"cpu": 0.1, "ram": "32Mi"},
    }
    lead.SubmitJob(pb.SubmitJobRequest(spec=struct_from(spec), user="tester"), timeout=10)

    def usage_known() -> bool:
        t = lead.GetJob(pb.GetJobRequest(name="fr"), timeout=5).tasks[0]
        return t.state == "running" and t.memory_bytes > 0

    wait_for(usage_known, 60, what="the leader to know fr/0's usage")
    task = fol.GetJob(pb.GetJobRequest(name="fr"), timeout=5).tasks[0]
    assert task.memory_bytes > 0 and task.pid > 0
    [m] = fol.ListMachines(pb.ListMachinesRequest(), timeout=5).machines
    assert m.last_seen_ms > 0
    assert m.usage.ram > 0
    # --stale stays local: the follower's own view has no usage.
    stale = pb.GetJobRequest(name="fr", options=pb.ReadOptions(stale=True))
    assert fol.GetJob(stale, timeout=5).tasks[0].memory_bytes == 0
    # Errors come back as the leader gave them.
    with pytest.raises(grpc.RpcError) as e:
        fol.GetJob(pb.GetJobRequest(name="nosuch"), timeout=5)
    assert e.value.code() == grpc.StatusCode.NOT_FOUND
    lead.KillJob(pb.KillJobRequest(name="fr"), timeout=10)
