"""Cold restart: every replica SIGKILLed at once and restarted on its data dir comes back with
exactly the state it had (jobs with versions and states, tasks, machines), elects a leader
and takes writes."""

from __future__ import annotations

import time
import uuid
from typing import Any

import grpc
import pytest

from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, wait_for
from tests.fault.util import Stubs, job_spec, list_rows, submit_until_acked

pytestmark = pytest.mark.e2e

SMALL = {"requirements": {"cpu": 0.1, "ram": "16Mi"}}


def full_state(stubs: Stubs, addr: str) -> dict[str, Any]:
    """Everything replicated a client can see of the cell, read from this replica's OWN store
    (--stale: a consistent GetJob or ListMachines on a follower is answered by the leader,
    so "every replica" would read the leader's state three times)."""
    s = stubs.get(addr)
    own = pb.ReadOptions(stale=True)
    jobs = list_rows(stubs, addr, stale=True)
    tasks = []
    for name, *_ in jobs:
        j = s.GetJob(pb.GetJobRequest(name=name, options=own), timeout=5)
        tasks += [(name, t.index, t.state, t.machine, t.version) for t in j.tasks]
    ms = s.ListMachines(pb.ListMachinesRequest(options=own), timeout=5).machines
    machines = [
        (m.name, m.state, m.capacity.cpu, m.capacity.ram, m.used.cpu, m.used.ram, m.tasks)
        for m in ms
    ]
    return {"jobs": jobs, "tasks": sorted(tasks), "machines": machines}


def register_fake_machine(cell: Cell, stubs: Stubs, name: str) -> None:
    """One Sync, as a Borglet's first contact would send it (no Borglet process needed)."""
    req = pb.SyncRequest(
        machine=name,
        address="127.0.0.1:1",
        capacity=pb.Resources(cpu=4.0, ram=4 << 30, disk=10 << 30),
    )

    def sync() -> bool:
        try:
            stubs.get(cell.leader().info["grpc"]).Sync(req, timeout=5)
            return True
        except grpc.RpcError:
            return False  # the leader moved: ask again

    wait_for(sync, 20, what="machine registered")


def test_cold_restart_of_every_replica_restores_the_same_state(stubs: Stubs) -> None:
    cell = Cell()
    try:
        cell.start(masters=3, borglets=0, machine_timeout=300)
        addrs = [m.info["grpc"] for m in cell.masters]
        register_fake_machine(cell, stubs, "fake-0")
        deadline = time.monotonic() + 30
        for i in range(12):
            a = submit_until_acked(
                stubs,
                addrs,
                f"job{i}",
                uuid.uuid4().hex,
                deadline,
                spec=job_spec(f"job{i}", **SMALL),
            )
            assert a.response is not None, a.errors
        # Scale one job (same version, more tasks) and kill another.
        a = submit_until_acked(
            stubs,
            addrs,
            "job0",
            uuid.uuid4().hex,
            deadline,
            spec=job_spec("job0", replicas=3, **SMALL),
        )
        assert a.response is not None and a.response.result == "updated", a
        s = stubs.get(addrs[0])
        s.KillJob(pb.KillJobRequest(name="job1", user="tester"), timeout=10)

        # Quiet cell: every live task placed on the fake machine, all replicas agreeing.
        def settled() -> dict[str, Any] | None:
            states = [full_state(stubs, a) for a in addrs]
            if any(st != states[0] for st in states):
                return None
            live = [t for t in states[0]["tasks"] if t[0] != "job1"]
            if len(live) != 13 or any(t[2] != "assigned" for t in live):
                return None
            return states[0]

        before = wait_for(settled, 30, what="scheduled and agreed state")
        assert before is not None
        assert [m[0] for m in before["machines"]] == ["fake-0"]

        for m in cell.masters:
            m.kill()
        t0 = time.monotonic()
        for m in cell.masters:
            m.start()
        cell.wait_ready()
        print(f"cold restart: ready in {time.monotonic() - t0:.2f}s")
        for addr in addrs:
            # Ready = caught up with the commit index it knows; it may still learn a later
            # one, so give each replica a moment to apply, then its own state must match.
            def restored(a: str = addr) -> bool:
                return full_state(stubs, a) == before

            try:
                wait_for(restored, 10, what=addr)
            except TimeoutError:
                raise AssertionError(
                    f"state on {addr} changed: {full_state(stubs, addr)} != {before}"
                ) from None

        # It elects a leader and takes writes.
        leader = cell.leader()
        a = submit_until_acked(stubs, addrs, "after", uuid.uuid4().hex, time.monotonic() + 20)
        assert a.response is not None and a.response.result == "created", a.errors
        assert "after" in [r[0] for r in list_rows(stubs, leader.info["grpc"])]
    except Exception:
        print(cell.dump_logs())
        raise
    finally:
        cell.close()
