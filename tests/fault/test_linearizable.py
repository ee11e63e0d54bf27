"""Jepsen-style: concurrent writers and readers on a real 3-replica cell while a nemesis
SIGKILLs the leader (and restarts it from its data dir) and freezes a follower (SIGSTOP, a
replica that stops answering); and, in a second test, while it cuts the leader and then a
follower off the network (tests/fault/netpart.py: an iptables rule per replica's cgroup, so
no one else's loopback traffic is touched). Either way the history of adds and whole-set
reads must be linearizable (tests/fault/linearizable.py), and every acknowledged write must
exist exactly once on every replica."""

from __future__ import annotations

import random
import signal
import threading
import time
import uuid
from collections.abc import Callable

import grpc
import pytest

from proto.borg.v1 import borg_pb2 as pb
from tests.cluster import Cell, Proc, add_master_with_args, free_port, wait_for
from tests.fault import netpart
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


def hold(seconds: float) -> None:
    """Keep the current fault (or the load) going this long: the length of a fault is what
    the nemesis chooses, nothing is being waited for."""
    time.sleep(seconds)


def nemesis(cell: Cell, log: list[str]) -> None:
    """Alternately SIGKILL the leader (restarted a second later) and freeze a follower for
    1.5 s; the pauses are the faults' lengths, not synchronisation."""
    for round_ in range(NEMESIS_ROUNDS):
        hold(1.0)
        leader = cell.leader()
        if round_ % 2 == 0:
            leader.kill()
            log.append(f"killed {leader.name}")
            hold(1.0)
            leader.start()
            log.append(f"restarted {leader.name}")
        else:
            follower: Proc = next(m for m in cell.masters if m is not leader)
            follower.signal(signal.SIGSTOP)
            log.append(f"froze {follower.name}")
            hold(1.5)
            follower.signal(signal.SIGCONT)
            log.append(f"thawed {follower.name}")


def test_history_under_kills_and_freezes_is_linearizable(cell: Cell, stubs: Stubs) -> None:
    run_and_check(cell, stubs, lambda log: nemesis(cell, log))


def partition_nemesis(cell: Cell, part: netpart.Partitioner, log: list[str]) -> None:
    """Cut the leader off for 2.5 s (the others elect a new one; the old one must not
    acknowledge anything meanwhile), heal, then cut a follower for 2 s, then the new leader;
    the pauses are the faults' lengths, not synchronisation."""
    for round_ in range(3):
        hold(1.0)
        leader = cell.leader()
        victim = leader if round_ != 1 else next(m for m in cell.masters if m is not leader)
        part.cut(victim.name)
        log.append(f"cut {victim.name} ({'leader' if victim is leader else 'follower'})")
        hold(2.5 if victim is leader else 2.0)
        part.heal(victim.name)
        log.append(f"healed {victim.name}")


def test_history_under_network_partitions_is_linearizable(stubs: Stubs) -> None:
    why = netpart.unavailable()
    if why:
        pytest.skip(why)
    c = Cell()
    part = netpart.Partitioner(f"borgtest-{c.prefix}")
    try:
        rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        for i in range(3):
            peers = [r for j, r in enumerate(rafts) if j != i]
            m = add_master_with_args(c, i, rafts[i], peers, start=False)
            m.argv = part.wrap(m.name, m.argv)
            m.start()
        c.wait_ready()
        run_and_check(c, stubs, lambda log: partition_nemesis(c, part, log))
    except Exception:
        print(c.dump_logs())
        raise
    finally:
        part.heal_all()  # first: a replica cut off cannot be asked to stop cleanly
        c.close()
        part.close()


def run_and_check(cell: Cell, stubs: Stubs, faults_of: Callable[[list[str]], None]) -> None:
    """Load the cell with writers and readers while `faults_of` injects faults, then check
    the history is linearizable and every replica holds exactly the acknowledged adds."""
    addrs = [m.info["grpc"] for m in cell.masters]
    h = History()
    threads = [threading.Thread(target=writer, args=(h, stubs, addrs, k)) for k in range(WRITERS)]
    threads += [threading.Thread(target=reader, args=(h, stubs, addrs, k)) for k in range(READERS)]
    for t in threads:
        t.start()
    faults: list[str] = []
    try:
        faults_of(faults)
        hold(1.0)  # a last stretch of load after the faults
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
