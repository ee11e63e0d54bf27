"""The Link stream's pure parts: the master's session (borgmaster/linkstream.py) and the
Borglet's bookkeeping of what it sent and holds (borglet/link.py UpState, DownState)."""

from __future__ import annotations

import asyncio
import threading
import time

from google.protobuf import struct_pb2

from borglet.checkpoint import Written
from borglet.config import BorgletConfig
from borglet.hollow import HollowMachine
from borglet.link import STATE_RETRY_S, USAGE_EVERY_S, DownState, StreamLink, UpState, shard_of
from borgmaster.linkstream import (
    MAX_LINK_TASKS,
    LinkSession,
    desired_delta,
    heartbeat_s,
    merge_report,
    relay_chunks,
    signature,
    wait_serving,
)
from proto.borg.v1 import borg_pb2 as pb


def obs(job: str, index: int, inc: str, state: str = "running") -> pb.ObservedTask:
    return pb.ObservedTask(job=job, index=index, incarnation=inc, state=state, exit_code=-1)


def hello(machine: str, *tasks: pb.ObservedTask) -> pb.LinkUp:
    up = pb.LinkUp(seq=1)
    up.hello.machine = machine
    up.hello.address = "127.1.0.1:1"
    up.hello.tasks.extend(tasks)
    return up


def test_a_session_holds_the_full_observed_set_from_hello_and_changes() -> None:
    s = LinkSession(machine="m1")
    reported, err = merge_report(s, hello("m1", obs("a", 0, "x"), obs("a", 1, "y")))
    assert reported and not err
    assert not s.hello.tasks  # the registration alone; the tasks live in `observed`
    up = pb.LinkUp(seq=2, changed=[obs("a", 0, "x", "failed")])
    up.gone.append(pb.TaskKey(job="a", index=1, incarnation="y"))
    assert merge_report(s, up) == (True, "")
    report = s.report()
    assert [(t.job, t.index, t.state) for t in report.tasks] == [("a", 0, "failed")]
    assert report.machine == "m1" and report.address == "127.1.0.1:1"
    assert merge_report(s, pb.LinkUp()) == (False, "")  # a heartbeat reports nothing
    assert not s.want_full_report


def test_a_session_refuses_another_machine_old_seqs_and_too_many_tasks() -> None:
    s = LinkSession(machine="m1")
    assert "machine" in merge_report(s, hello("m2"))[1]
    assert merge_report(s, hello("m1"))[1] == ""
    assert "seq" in merge_report(s, pb.LinkUp(seq=1, changed=[obs("a", 0, "x")]))[1]
    many = pb.LinkUp(seq=5, changed=[obs("a", i, "x") for i in range(MAX_LINK_TASKS + 1)])
    assert "at most" in merge_report(s, many)[1]


def test_removing_a_task_the_session_does_not_hold_asks_for_a_full_report() -> None:
    s = LinkSession(machine="m1")
    merge_report(s, hello("m1"))
    up = pb.LinkUp(seq=2)
    up.gone.append(pb.TaskKey(job="a", index=0, incarnation="x"))
    merge_report(s, up)
    assert s.want_full_report
    merge_report(s, _hello_seq("m1", 3))
    assert not s.want_full_report


def _hello_seq(machine: str, seq: int) -> pb.LinkUp:
    up = hello(machine)
    up.seq = seq
    return up


def test_desired_delta_sends_only_changes_and_everything_when_full() -> None:
    a, b, c = ("j", 0, "x"), ("j", 1, "y"), ("j", 2, "z")
    sent = {a: signature(1, {}, []), b: signature(1, {"http": 80}, [])}
    now = {a: signature(1, {}, []), b: signature(2, {"http": 80}, []), c: signature(1, {}, [])}
    assert desired_delta(sent, now, full=False) == ([b, c], [])
    assert desired_delta(now, {a: now[a]}, full=False) == ([], [b, c])
    assert desired_delta(sent, now, full=True) == ([a, b, c], [])


def test_relay_chunks_split_by_size_and_keep_every_report() -> None:
    items = [(pb.SyncRequest(machine=f"m{i}", address="x" * 1000), []) for i in range(50)]
    chunks = relay_chunks(items, limit=10_000)  # type: ignore[arg-type]
    assert len(chunks) > 1
    assert [r.machine for c in chunks for r, _ in c] == [f"m{i}" for i in range(50)]
    assert relay_chunks([]) == []


def test_heartbeats_stretch_with_the_cell_between_1_and_8_s() -> None:
    assert heartbeat_s(10) == 1.0
    assert heartbeat_s(200) == 4.0
    assert heartbeat_s(100_000) == 8.0


def report(job: str, index: int, inc: str, state: str, cpu: float = 0.0) -> dict[str, object]:
    return {"job": job, "index": index, "incarnation": inc, "state": state, "cpu_seconds": cpu}


def test_the_borglet_sends_hello_then_only_changes_then_heartbeats() -> None:
    up = UpState()
    reg = pb.SyncRequest(machine="m1", address="a:1")
    first = up.delta([report("j", 0, "x", "running", cpu=1.0)], reg, 0.0, full=True)
    assert first.HasField("hello") and len(first.hello.tasks) == 1 and first.seq == 1
    # usage that moved alone is no change: a heartbeat, with no seq to acknowledge
    beat = up.delta([report("j", 0, "x", "running", cpu=5.0)], reg, 1.0, full=False)
    assert beat == pb.LinkUp()
    nxt = up.delta([report("j", 0, "x", "killed"), report("j", 1, "y", "running")], reg, 2.0, False)
    assert not nxt.HasField("hello") and nxt.seq == 2
    assert sorted(o.index for o in nxt.changed) == [0, 1]
    assert up.finished_and_acked(1) == frozenset()  # its end is not recorded yet
    assert up.finished_and_acked(2) == frozenset({("j", 0, "x")})
    gone = up.delta([report("j", 1, "y", "running")], reg, 3.0, False)
    assert [(g.job, g.index) for g in gone.gone] == [("j", 0)] and not gone.changed
    # a changed registration (e.g. a GPU turned unhealthy) is a new hello with everything
    moved = up.delta(
        [report("j", 1, "y", "running", cpu=8.0)], pb.SyncRequest(machine="m1"), 4.0, False
    )
    assert moved.HasField("hello") and len(moved.hello.tasks) == 1
    # usage that moved goes up once USAGE_EVERY_S passed, and only for tasks where it moved
    reg = pb.SyncRequest(machine="m1")
    two = [report("j", 1, "y", "running", cpu=9.0), report("j", 2, "z", "running")]
    assert [o.index for o in up.delta(two, reg, 5.0, False).changed] == [2]
    assert up.delta(two, reg, 6.0, False) == pb.LinkUp()
    # a task's first measurement goes up at once; its next moves wait for the period
    two[1] = report("j", 2, "z", "running", cpu=1.0)
    assert [(o.index, o.cpu_seconds) for o in up.delta(two, reg, 7.0, False).changed] == [(2, 1.0)]
    two[1] = report("j", 2, "z", "running", cpu=2.0)
    assert up.delta(two, reg, 8.0, False) == pb.LinkUp()
    later = up.delta(two, reg, 0.5 + USAGE_EVERY_S, False)
    assert [(o.index, o.cpu_seconds) for o in later.changed] == [(1, 9.0), (2, 2.0)]


def spec_struct(name: str) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update({"name": name, "user": "u", "command": "sleep 1", "replicas": 2})
    return s


def test_the_borglet_builds_its_desired_set_from_pushes_with_specs_sent_once() -> None:
    ds = DownState()
    d1 = pb.LinkDown(generation=3, full=True, acked_seq=1)
    d1.specs["web@1"].CopyFrom(spec_struct("web"))
    d1.upserts.extend(
        [
            pb.DesiredTask(job="web", index=i, incarnation=f"i{i}", version=1, spec_ref="web@1")
            for i in range(2)
        ]
    )
    ds.apply(d1)
    assert sorted(ds.desired) == [("web", 0, "i0"), ("web", 1, "i1")]
    d2 = pb.LinkDown(generation=4, acked_seq=2)  # no spec again: referenced
    d2.upserts.append(
        pb.DesiredTask(job="web", index=2, incarnation="i2", version=1, spec_ref="web@1")
    )
    d2.removes.append(pb.TaskKey(job="web", index=0, incarnation="i0"))
    ds.apply(d2)
    assert sorted(ds.desired) == [("web", 1, "i1"), ("web", 2, "i2")]
    assert ds.desired[("web", 2, "i2")].spec.name == "web"
    assert ds.generation == 4 and ds.acked == 2
    d3 = pb.LinkDown(generation=5)
    d3.upserts.append(pb.DesiredTask(job="db", index=0, incarnation="z", spec_ref="db@1"))
    ds.apply(d3)  # a reference to a spec never sent: refused, not run without a spec
    assert ("db", 0, "z") not in ds.desired


def test_machines_spread_over_replicas_the_same_way_in_every_process() -> None:
    masters = ["a:1", "b:1", "c:1"]
    picks = [shard_of(f"hollow-{i:05d}", masters) for i in range(300)]
    assert picks == [shard_of(f"hollow-{i:05d}", masters) for i in range(300)]
    assert all(picks.count(r) > 60 for r in range(3))


def test_a_hollow_machine_forgets_a_killed_task_once_its_end_is_acknowledged() -> None:
    m = HollowMachine("h-00000", "127.1.0.1:1", "127.1.0.1:2", 1.0, 1 << 30, {})
    held: dict[tuple[str, int, str], pb.DesiredTask] = {}
    down = pb.LinkDown(generation=1, full=True)
    down.upserts.append(pb.DesiredTask(job="j", index=0, incarnation="x"))
    m.on_down(down, held, 0.0)
    up = UpState()
    up.delta(m.report_dicts(), m.hello(), 0.0, True)
    gone = pb.LinkDown(generation=2)
    gone.removes.append(pb.TaskKey(job="j", index=0, incarnation="x"))
    m.on_down(gone, held, 1.0)
    killed = up.delta(m.report_dicts(), m.hello(), 1.0, False)
    assert [o.state for o in killed.changed] == ["killed"]
    m.forget_acked(up.last_state, 1)
    assert ("j", 0, "x") in m.tasks  # the kill is not recorded yet
    m.forget_acked(up.last_state, killed.seq)
    assert not m.tasks
    assert [g.index for g in up.delta(m.report_dicts(), m.hello(), 2.0, False).gone] == [0]


class Replica:
    """A replica's judgement for `wait_serving`: caught up after `catch_up` checks, and
    applied as far as `applied` (growing by `step` per check)."""

    def __init__(self, catch_up: int, applied: int, step: int) -> None:
        self.checks = 0
        self.catch_up = catch_up
        self.applied = applied
        self.step = step

    def __call__(self, min_index: int) -> str:
        self.checks += 1
        self.applied += self.step
        if self.checks < self.catch_up:
            return "no leader known"
        return "" if self.applied >= min_index else f"applied {self.applied} < {min_index}"


def test_a_link_is_served_only_once_the_replica_applied_what_the_borglet_acted_on() -> None:
    # a restarted replica replaying its log: served once it reaches the Borglet's index
    r = Replica(catch_up=3, applied=0, step=10)
    assert asyncio.run(wait_serving(r, "m", 100, wait_s=5)) == ""
    assert r.applied >= 100 and r.checks >= 10
    # never caught up with a leader: refused at the deadline, with the reason
    never = Replica(catch_up=10**9, applied=0, step=0)
    assert asyncio.run(wait_serving(never, "m", 0, wait_s=0.2)) == "no leader known"
    # caught up but below the Borglet's index for good (a cell restored from a backup):
    # served at the deadline, its state is the truth now
    restored = Replica(catch_up=0, applied=5, step=0)
    assert asyncio.run(wait_serving(restored, "m", 100, wait_s=0.2)) == ""
    assert restored.checks > 2


class Host:
    def __init__(self) -> None:
        self.state = Written.YES
        self.asked: list[float] = []

    def state_written(self, wait_s: float) -> Written:
        self.asked.append(wait_s)
        return self.state

    def reports(self) -> list[dict[str, object]]:
        return []

    def offered_gpus(self) -> list[str]:
        return []

    def on_desired(self, desired: object, reported: object, cell: str) -> None:
        self.desired = desired


def link_config(name: str = "m", data_dir: str = "/x") -> BorgletConfig:
    """A Borglet's configuration for its link alone (one master, nothing listens)."""
    return BorgletConfig(
        name=name,
        masters=["127.1.0.1:1"],
        grpc="127.1.0.2:1",
        http="",
        data_dir=data_dir,
        cpu=1,
        memory=1 << 30,
    )


def stream_link(host: Host) -> StreamLink:
    return StreamLink(link_config(), host, [])


def test_the_borglet_asks_for_the_index_of_the_last_desired_set_it_acted_on() -> None:
    link = stream_link(Host())
    assert link.hello().min_index == 0
    up, down = UpState(), DownState()
    link._on_down(pb.LinkDown(generation=1, full=True, as_of_index=40), up, down)
    assert link.hello().min_index == 40
    # a later stream's older message (a lagging replica) never lowers it
    link._on_down(pb.LinkDown(generation=1, full=True, as_of_index=7), up, DownState())
    assert link.hello().min_index == 40


def test_the_borglet_keeps_contact_while_its_state_file_is_being_written() -> None:
    """A large table takes a while to write: the stream carries contacts meanwhile (the
    master's liveness), and a report only once the file holds it."""
    host = Host()
    link = stream_link(host)
    link._heartbeat_s = 0.01
    ups = link._ups(UpState(), threading.Event())
    assert next(ups).HasField("hello")
    host.state = Written.WRITING
    link.poke()
    contacts = [next(ups), next(ups), next(ups)]
    assert contacts == [pb.LinkUp()] * 3  # contact, no report, no seq
    assert host.asked[-3:] == [0.01] * 3  # each waits at most a heartbeat for the write
    host.state = Written.YES
    assert next(ups) == pb.LinkUp()  # written: the (unchanged) report goes, nothing new
    # a state file that cannot be written: contact, then a pause before the next try
    host.state = Written.FAILED
    link.poke()
    t0 = time.monotonic()
    assert next(ups) == pb.LinkUp()
    host.state = Written.YES
    assert next(ups) == pb.LinkUp() and time.monotonic() - t0 >= STATE_RETRY_S * 0.9
