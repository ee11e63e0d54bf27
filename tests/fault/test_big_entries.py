"""Big commands replicate: a job of thousands of tasks yields Raft entries of hundreds of KB
(the scheduler's plan with a reason per task). PySyncObj's chunked transfer of entries above
its batch size truncates them on followers (UnpicklingError), so entries must stay below it."""

from __future__ import annotations

import grpc
import pytest

from bench.raft import spec
from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, wait_for
from tests.fault.util import Stubs

pytestmark = pytest.mark.e2e


def test_a_5000_task_job_replicates_to_every_follower_without_errors(
    cell: Cell, stubs: Stubs
) -> None:
    leader = cell.leader()
    stubs.get(leader.info["grpc"]).SubmitJob(
        pb.SubmitJobRequest(spec=spec("huge", 5000), user="tester"), timeout=60
    )

    def reasons_everywhere() -> bool:
        # No machines: every task is pending with the scheduler's reason (its plan is the
        # big entry); each replica's local state must have all of them.
        for m in cell.masters:
            req = pb.GetJobRequest(name="huge", options=pb.ReadOptions(stale=True))
            try:
                job = stubs.get(m.info["grpc"]).GetJob(req, timeout=10)
            except grpc.RpcError:
                return False
            if len(job.tasks) != 5000 or not all(t.reason for t in job.tasks):
                return False
        return True

    wait_for(reasons_everywhere, 60, what="5000 tasks with reasons on every replica")
    for m in cell.masters:
        log = m.log()
        assert "UnpicklingError" not in log and "failed _onTick" not in log, log[-3000:]
