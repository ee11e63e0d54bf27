"""A write retried under the same request id after it committed is applied once, on a real
cell: the retry goes through another replica (and, the second time, to a new leader after the
old one was SIGKILLed right after the commit), the way borgcfg retries (cfg.client.Client with
one request id per logical write).

Why a retry is dangerous without the cell's memory of request ids: a SubmitJob of the same
spec again answers `unchanged` (the caller is told its create did nothing), and a late retry
after someone else's update rolls the job back to the retried spec (a new version).
"""

from __future__ import annotations

import json
from typing import Any

import grpc
import pytest

import cfg.client
from borgmaster.convert import struct_from
from cfg.client import Client
from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, wait_for
from tests.fault.util import USER, Stubs, job_spec

pytestmark = pytest.mark.e2e


def own_version(stubs: Stubs, addr: str, name: str) -> int:
    """The job's version in this replica's OWN store (0 when it has not seen the job)."""
    req = pb.GetJobRequest(name=name, options=pb.ReadOptions(stale=True))
    try:
        return int(stubs.get(addr).GetJob(req, timeout=5).version)
    except grpc.RpcError as e:
        if e.code() == grpc.StatusCode.NOT_FOUND:
            return 0
        raise


def writes(cell: Cell, name: str, via: str) -> list[tuple[str, str]]:
    """The job's `submitted` and `updated` events: one per applied SubmitJob."""
    r = cell.borgcfg("events", "--job", name, "-o", "json", master=via, check=True)
    events = [json.loads(line) for line in r.stdout.splitlines() if line.strip()]
    return [(e["type"], e["message"]) for e in events if e["type"] in ("submitted", "updated")]


def retry(masters: list[str], spec: dict[str, Any], request_id: str) -> pb.SubmitJobResponse:
    """borgcfg's client, sending `request_id` (as it does for every attempt of one write)."""
    saved = cfg.client.new_request_id
    cfg.client.new_request_id = lambda: request_id
    client = Client(masters, retry_s=20)
    try:
        return client.submit(spec, USER)
    finally:
        cfg.client.new_request_id = saved
        client.close()


def commit_and_lose_the_answer(
    stubs: Stubs, leader: str, follower: str, spec: dict[str, Any], request_id: str
) -> None:
    """Send the write to the leader, wait until a follower's own store has it (committed),
    and drop the call: the client never reads the answer."""
    req = pb.SubmitJobRequest(
        spec=struct_from(spec), user=USER, options=pb.WriteOptions(request_id=request_id)
    )
    fut = stubs.get(leader).SubmitJob.future(req, timeout=10)
    wait_for(lambda: own_version(stubs, follower, spec["name"]) == 1, 15, what="committed")
    fut.cancel()


def test_retry_after_commit_through_another_replica_is_applied_once(
    cell: Cell, stubs: Stubs
) -> None:
    leader = cell.leader()
    others = [m for m in cell.masters if m is not leader]
    lead, f1, f2 = leader.info["grpc"], others[0].info["grpc"], others[1].info["grpc"]

    # 1. The answer is lost; the retry goes through a follower (forwarded to the leader).
    once = job_spec("once")
    commit_and_lose_the_answer(stubs, lead, f1, once, "retry-once")
    r = retry([f2], once, "retry-once")
    assert (r.name, r.version, r.result) == ("once", 1, "created")  # the first answer
    assert writes(cell, "once", f1) == [("submitted", "version 1, 1 tasks")]
    assert [own_version(stubs, a, "once") for a in (lead, f1, f2)] == [1, 1, 1]

    # 2. The leader dies right after the commit; meanwhile another client updates the job
    # (version 2); the late retry reaches the new leader and must not roll the job back.
    twice = job_spec("twice")
    commit_and_lose_the_answer(stubs, lead, f1, twice, "retry-twice")
    leader.kill()
    survivors = [f1, f2]
    newer = retry(survivors, {**twice, "command": "sleep 2000"}, "another-client")
    assert (newer.version, newer.result) == (2, "updated")
    r = retry(survivors, twice, "retry-twice")
    assert (r.name, r.version, r.result) == ("twice", 1, "created")  # the first answer
    assert writes(cell, "twice", f1) == [
        ("submitted", "version 1, 1 tasks"),
        ("updated", "version 2, 1 tasks"),
    ]
    wait_for(
        lambda: [own_version(stubs, a, "twice") for a in survivors] == [2, 2],
        10,
        what="both survivors at version 2",
    )
