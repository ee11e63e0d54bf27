"""Fault tests on three in-process `Master` objects (real PySyncObj Raft on loopback ports).

In-process replicas let a test reach what no RPC exposes: the fencing of a deposed leader's
loop writes (only leader loops send fenced commands), forced log compaction, and leadership
transfer.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import threading
import time
from collections.abc import Iterator

import pytest

from borgmaster import commands as C
from borgmaster.fsm import RaftTuning
from borgmaster.server import Master, MasterConfig, ProposeError
from tests.cluster import TEST_RAFT_SECRET, free_port, wait_for
from tests.fault.util import job_spec

pytestmark = pytest.mark.e2e


def new_master(base: str, i: int, rafts: list[str], tuning: RaftTuning) -> Master:
    cfg = MasterConfig(
        id=f"m{i}",
        raft=rafts[i],
        grpc=f"127.0.0.1:{free_port()}",
        http=f"127.0.0.1:{free_port()}",
        data_dir=os.path.join(base, f"m{i}"),
        peers=[r for j, r in enumerate(rafts) if j != i],
        raft_secret=TEST_RAFT_SECRET,
        tuning=tuning,
    )
    m = Master(cfg)
    m.start()
    return m


def stop_master(m: Master) -> None:
    m.stop()
    m.fsm.destroy_synchronous()  # Master.stop only asks the Raft thread to go


class Trio:
    """Three replicas; `ms[i]` is None while replica i is stopped."""

    def __init__(self, tuning: RaftTuning) -> None:
        self.base = tempfile.mkdtemp(prefix="borgcell-fault-")
        self.rafts = [f"127.0.0.1:{free_port()}" for _ in range(3)]
        self.tuning = tuning
        self.ms: list[Master | None] = [None, None, None]
        for i in range(3):
            self.ms[i] = new_master(self.base, i, self.rafts, tuning)

    def live(self) -> list[Master]:
        return [m for m in self.ms if m is not None]

    def leader(self, timeout: float = 20) -> Master:
        m = wait_for(
            lambda: next((m for m in self.live() if m.is_leader()), None), timeout, what="leader"
        )
        assert m is not None
        return m

    def close(self) -> None:
        for m in self.live():
            stop_master(m)
        shutil.rmtree(self.base, ignore_errors=True)


@pytest.fixture
def trio() -> Iterator[Trio]:
    t = Trio(RaftTuning())
    try:
        wait_for(lambda: all(m.ready() for m in t.live()), 20, what="replicas ready")
        yield t
    finally:
        t.close()


def submit(m: Master, name: str) -> dict[str, object]:
    spec = job_spec(name) | {"user": "tester"}
    from cfg.schema import validate_job

    return m.propose(C.SubmitJob(spec=validate_job(spec), request_id=name))


def transfer_until_accepted(m: Master, timeout: float = 5.0) -> None:
    """PySyncObj denies a transfer while the target lags the leader's log by even one entry
    (a leader loop may just have appended one), so ask again until it is accepted."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        answers: list[int] = []
        done = threading.Event()

        def cb(
            res: object, err: int, answers: list[int] = answers, done: threading.Event = done
        ) -> None:
            answers.append(err)
            done.set()

        m.fsm.transferLeadership(callback=cb)
        done.wait(1.0)
        if answers and answers[0] == 0:
            return
        time.sleep(0.01)  # retry pacing
    raise TimeoutError(f"leadership transfer from {m.cfg.id} never accepted")


def state_diff(a: Master, b: Master) -> str:
    """Which top-level parts of two stores' snapshots differ (for a failure message)."""
    import msgpack

    with a.store.lock, b.store.lock:
        da = msgpack.unpackb(a.store.snapshot_bytes(include_index=False), strict_map_key=False)
        db = msgpack.unpackb(b.store.snapshot_bytes(include_index=False), strict_map_key=False)
    out = [f"applied {a.store.applied_index} vs {b.store.applied_index}"]
    for k in sorted(set(da) | set(db), key=str):
        if da.get(k) != db.get(k):
            out.append(f"{k}: {str(da.get(k))[:600]}\n   vs {str(db.get(k))[:600]}")
    return "\n".join(out)


def move_leadership(trio: Trio, old: Master, timeout: float = 10.0) -> Master:
    """Transfer leadership away from `old`. A transfer is best-effort: when the target lost
    the forced election (the old leader appended an entry meanwhile, so its log is longer),
    `old` may win again, and the transfer is asked for again."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        transfer_until_accepted(old)
        try:
            new = wait_for(
                lambda: next((m for m in trio.live() if m is not old and m.is_leader()), None),
                1.5,
                interval=0.005,
                what="a new leader",
            )
        except TimeoutError:
            continue
        assert new is not None
        return new
    raise TimeoutError(f"leadership never moved away from {old.cfg.id}")


def test_deposed_leader_fenced_writes_are_rejected(trio: Trio) -> None:
    old = trio.leader()
    old_term = old.fenced_term()
    assert old_term > 0
    # While it leads, its fenced writes apply.
    res = old.propose(C.ApplyPlan(term=old_term))
    assert "error" not in res

    # Hand leadership to another replica and let the new leader fence its term.
    new = move_leadership(trio, old)
    new_term = new.fenced_term()
    assert new_term > old_term
    assert old.fenced_term() == 0, "a follower must not hand out a term to its loops"

    # The deposed leader's loops still hold old_term: everything they decided is void.
    for cmd in (
        C.ApplyPlan(term=old_term),
        C.MachineLost(name="x", term=old_term),
        C.ReplaceTasks(job="j", tasks=[], reason="updated", term=old_term),
        C.SetRollout(job="j", version=1, status="", term=old_term),
        C.GcJobs(names=["j"], term=old_term),
    ):
        with pytest.raises(ProposeError) as e:
            old.propose(cmd)
        assert e.value.code == "stale-leader", (type(cmd).__name__, e.value.message)
    # The new leader's own decisions still apply.
    assert "error" not in new.propose(C.ApplyPlan(term=new_term))


def test_transfer_leadership_moves_the_leader_within_2s(trio: Trio) -> None:
    """What a graceful stop should cost (see test_failover's SIGTERM test)."""
    old = trio.leader()
    for i in range(20):
        submit(old, f"pre{i}")
    t0 = time.monotonic()
    new = move_leadership(trio, old)
    took = time.monotonic() - t0
    print(f"leadership moved {old.cfg.id} -> {new.cfg.id} in {took * 1000:.0f} ms")
    assert took < 2.0


def test_replica_behind_log_compaction_catches_up_by_snapshot(trio: Trio) -> None:
    leader = trio.leader()
    # Stop a follower, write past it, and compact the log on the survivors.
    idx = next(i for i, m in enumerate(trio.ms) if m is not None and m is not leader)
    lagging = trio.ms[idx]
    assert lagging is not None
    behind = lagging.fsm.raftLastApplied
    stop_master(lagging)
    trio.ms[idx] = None
    for i in range(60):
        submit(leader, f"job{i}")
    first_before = {m.cfg.id: m.fsm.getStatus()["log_len"] for m in trio.live()}
    for m in trio.live():
        m.fsm.forceLogCompaction()
    wait_for(
        lambda: all(m.fsm.getStatus()["log_len"] < first_before[m.cfg.id] for m in trio.live()),
        20,
        what="log compaction on the survivors",
    )
    # The leader no longer holds the entries the lagging replica needs: only a snapshot helps.
    assert leader.fsm.raftLastApplied - leader.fsm.getStatus()["log_len"] > behind
    assert os.path.getsize(os.path.join(leader.cfg.data_dir, "raft.snapshot")) > 0

    back = new_master(trio.base, idx, trio.rafts, trio.tuning)
    trio.ms[idx] = back
    wait_for(
        lambda: back.ready() and set(back.store.jobs) == set(leader.store.jobs),
        30,
        what="lagging replica caught up",
    )

    # Same state: once both applied the same index, the store digests agree.
    def same_state() -> bool:
        with back.store.lock, leader.store.lock:
            return (
                back.store.applied_index == leader.store.applied_index
                and back.store.digest() == leader.store.digest()
            )

    try:
        wait_for(same_state, 10, what="equal digests")
    except TimeoutError:
        print(state_diff(leader, back))
        raise
    # It keeps following: a new write reaches it too.
    submit(leader, "after")
    wait_for(lambda: "after" in back.store.jobs, 10, what="write after catch-up")


def test_follower_held_off_the_cpu_reads_heartbeats_before_campaigning(trio: Trio) -> None:
    """A follower whose Raft thread does not run for longer than an election timeout (a
    saturated machine) finds the leader's heartbeats waiting in its socket: it must read them
    and stay a follower, not campaign and depose a healthy leader (a term change)."""
    leader = trio.leader()
    follower = next(m for m in trio.live() if m is not leader)
    fsm = follower.fsm
    terms = {m.cfg.id: m.fsm.term() for m in trio.live()}
    elections = fsm.elections_started
    hold_s = 3 * trio.tuning.raft_max_timeout
    stalled = threading.Event()
    resumed = threading.Event()
    real_tick = fsm._onTick

    def tick_after_a_stall(timeToWait: float = 0.0) -> None:
        if not stalled.is_set():
            stalled.set()
            time.sleep(hold_s)  # the thread held off the CPU: this is the fault itself
            real_tick(timeToWait)
            resumed.set()
            return
        real_tick(timeToWait)

    fsm._onTick = tick_after_a_stall  # type: ignore[method-assign]
    try:
        assert resumed.wait(hold_s + 10), "the follower's Raft thread never came back"
        # A few more rounds of heartbeats: a campaign would have shown by now.
        applied = leader.fsm.applied_index()
        submit(leader, "after-stall")
        wait_for(lambda: follower.fsm.applied_index() > applied, 10, what="follower applies again")
    finally:
        fsm._onTick = real_tick  # type: ignore[method-assign]
    assert fsm.tick_stalls >= 1, "the stall was not noticed"
    assert fsm.elections_started == elections, "the starved follower campaigned"
    assert {m.cfg.id: m.fsm.term() for m in trio.live()} == terms
    assert leader.is_leader()


def test_followers_wait_out_a_leader_that_runs_late(trio: Trio) -> None:
    """A leader whose Raft thread runs later and later (its machine saturated) is healthy:
    followers learn its cadence and wait longer instead of campaigning at each late
    heartbeat (each election would pause the cell's writes)."""
    leader = trio.leader()
    fsm = leader.fsm
    terms = {m.cfg.id: m.fsm.term() for m in trio.live()}
    elections = [m.fsm.elections_started for m in trio.live()]
    # From under the 0.3-0.6 s election timeout to past it: the followers must learn.
    stalls = [0.2, 0.25, 0.3, 0.4, 0.5, 0.6, 0.7]
    pending = list(stalls)
    done = threading.Event()
    real_tick = fsm._onTick
    calm_until = [0.0]

    def late_tick(timeToWait: float = 0.0) -> None:
        now = time.monotonic()
        if pending and now >= calm_until[0]:
            time.sleep(pending.pop(0))  # held off the CPU: the fault itself
            calm_until[0] = time.monotonic() + 0.3  # some normal heartbeats in between
            if not pending:
                done.set()
        real_tick(timeToWait)

    fsm._onTick = late_tick  # type: ignore[method-assign]
    try:
        assert done.wait(30), "the stalls never ran"
        submit(leader, "after-late-ticks")
    finally:
        fsm._onTick = real_tick  # type: ignore[method-assign]
    assert [m.fsm.elections_started for m in trio.live()] == elections
    assert {m.cfg.id: m.fsm.term() for m in trio.live()} == terms
    followers = [m for m in trio.live() if m is not leader]
    assert all(m.fsm.heartbeat_gap >= 0.5 for m in followers), [
        m.fsm.heartbeat_gap for m in followers
    ]
