"""Jepsen-style: concurrent writers and readers on a real 3-replica cell while a nemesis
SIGKILLs the leader (and restarts it from its data dir) and freezes a follower (SIGSTOP, a
replica that stops answering, as a partitioned one does to its peers); then the history of
adds and whole-set reads must be linearizable (tests/fault/linearizable.py), and every
acknowledged write must exist exactly once on every replica.

Not a network partition: this host has no iptables, and `tc`/network namespaces would change
the loopback that other test runs on the machine share."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid

import grpc
import pytest

from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, Proc, wait_for
from tests.fault.linearizable import Add, Read, check_set
from tests.fault.util import Stubs, list_rows, submit_until_acked

pytestmark = pytest.mark.e2e

NEMESIS_ROUNDS = 4
WRITERS = 3
READERS = 2


class History:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.adds: list[Add] = []
        self.reads: list[Read] = []
        self.not_created: list[str] = []
        """Acknowledged adds whose answer was not "created" (applied twice?)."""
        self.stop = threading.Event()


def writer(h: History, stubs: Stubs, addrs: list[str], k: int) -> None:
    i = 0
    while not h.stop.is_set():
        name = f"lin{k}-{i}"
        t0 = time.monotonic()
        a = submit_until_acked(stubs, addrs, name, uuid.uuid4().hex, t0 + 20, first=k + i)
        done = time.monotonic() if a.response is not None else None
        with h.lock:
            h.adds.append(Add(name, t0, done))
            if a.response is not None and a.response.result != "created":
                h.not_created.append(f"{name}: {a.response.result} after {a.errors}")
        i += 1


def reader(h: History, stubs: Stubs, addrs: list[str], k: int) -> None:
    rng = random.Random(k)
    while not h.stop.is_set():
        addr = rng.choice(addrs)
        t0 = time.monotonic()
        try:
            resp = stubs.get(addr).ListJobs(pb.ListJobsRequest(), timeout=2.0)
        except grpc.RpcError:
            continue  # a failed read says nothing
        seen = frozenset(j.name for j in resp.jobs)
        with h.lock:
            h.reads.append(Read(t0, time.monotonic(), seen))


def nemesis(cell: Cell, log: list[str]) -> None:
    """Alternately SIGKILL the leader (restarted a second later) and freeze a follower for
    1.5 s; the pauses are the faults' lengths, not synchronisation."""
    for round_ in range(NEMESIS_ROUNDS):
        time.sleep(1.0)
        leader = cell.leader()
        if round_ % 2 == 0:
            leader.kill()
            log.append(f"killed {leader.name}")
            time.sleep(1.0)
            leader.start()
            log.append(f"restarted {leader.name}")
        else:
            follower: Proc = next(m for m in cell.masters if m is not leader)
            follower.signal(signal.SIGSTOP)
            log.append(f"froze {follower.name}")
            time.sleep(1.5)
            follower.signal(signal.SIGCONT)
            log.append(f"thawed {follower.name}")


def test_history_under_kills_and_freezes_is_linearizable(cell: Cell, stubs: Stubs) -> None:
    addrs = [m.info["grpc"] for m in cell.masters]
    h = History()
    threads = [threading.Thread(target=writer, args=(h, stubs, addrs, k)) for k in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(h, stubs, addrs, k)) for k in range(READERS)]
    for t in threads:
        t.start()
    faults: list[str] = []
    try:
        nemesis(cell, faults)
        time.sleep(1.0)  # a last stretch of load after the faults
    finally:
        h.stop.set()
        for t in threads:
            t.join(40)
    cell.wait_ready()
    acked = [a for a in h.adds if a.complete is not None]
    print(f"faults: {faults}; {len(acked)}/{len(h.adds)} adds acked, {len(h.reads)} reads")
    assert len(acked) >= 30 and len(h.reads) >= 30, "too little load to show anything"
    assert not h.not_created, h.not_created[:5]
    problems = check_set(h.adds, h.reads)
    assert not problems, problems
    # Every acknowledged add exactly once on every replica, and only attempted ones.
    attempted = {a.name for a in h.adds}
    rows = [wait_for(lambda m=m: list_rows(stubs, m.info["grpc"]), 20) for m in cell.masters]
    for m, got in zip(cell.masters, rows, strict=True):
        names = [r[0] for r in got if r[0].startswith("lin")]
        assert len(names) == len(set(names)), f"{m.name}: a job listed twice"
        assert {a.name for a in acked} <= set(names), f"{m.name} lost acknowledged jobs"
        assert set(names) <= attempted, f"{m.name} has jobs nobody wrote"
    assert rows[0] == rows[1] == rows[2]
