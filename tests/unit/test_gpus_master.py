"""GPUs on the master: devices named in the placement (leader's choice, store's check), never
shared; gangs placed whole or not at all, in the scheduler and in the store."""

from __future__ import annotations

import itertools
from typing import Any

from borgmaster import commands as C
from borgmaster import planner
from borgmaster.copies import LiveCopies
from borgmaster.link import gpus_problem
from borgmaster.model import JobSpec, Machine, Requirements, Resources
from borgmaster.planner import PassInput, assign_gpus
from borgmaster.scheduler import (
    BorgScheduler,
    MachineView,
    PlacedTask,
    Plan,
    Preemption,
    Snapshot,
    TaskRequest,
)
from borgmaster.store import Store
from proto.borg.v1 import borg_pb2 as pb

GiB = 1 << 30


class Cell:
    def __init__(self) -> None:
        self.store = Store()
        self.index = 0

    def apply(self, cmd: C.Command) -> dict[str, Any]:
        self.index += 1
        return self.store.apply(C.encode(cmd), self.index)

    def machine(self, name: str, gpus: list[str], cpu: float = 8.0) -> None:
        m = Machine(
            name=name,
            address=f"{name}:1",
            capacity=Resources(cpu=cpu, ram=8 * GiB, disk=GiB, gpu=len(gpus)),
            gpus=gpus,
        )
        assert self.apply(C.RegisterMachine(ts_ms=1, machine=m)) == {"ok": True}

    def submit(self, name: str, replicas: int, gpu: int, **kw: Any) -> None:
        spec = JobSpec(
            name=name,
            replicas=replicas,
            command=["x"],
            requirements=Requirements(cpu=1, ram=GiB, gpu=gpu),
            **kw,
        )
        self.apply(C.SubmitJob(ts_ms=2, spec=spec))

    def place(self, *pls: tuple[str, int, str, list[str] | None]) -> dict[str, Any]:
        return self.apply(
            C.ApplyPlan(
                ts_ms=5,
                placements=[C.Placement(j, i, m, f"{j}-{i}", 1, g) for j, i, m, g in pls],
            )
        )


def test_placement_records_devices_and_sync_sees_them() -> None:
    c = Cell()
    c.machine("m1", ["0", "1", "2"])
    c.submit("train", 1, gpu=2)
    assert c.place(("train", 0, "m1", ["0", "2"]))["placed"] == 1
    t = c.store.tasks[("train", 0)]
    assert t.gpus == ["0", "2"]
    assert c.store.gpus_held("m1") == {"0", "2"}
    assert [x.gpus for x in c.store.desired_for("m1")] == [["0", "2"]]


def test_devices_are_never_shared_wrong_counts_and_unknown_devices_rejected() -> None:
    c = Cell()
    c.machine("m1", ["0", "1"])
    c.submit("a", 1, gpu=1)
    c.submit("b", 3, gpu=1)
    assert c.place(("a", 0, "m1", ["1"]))["placed"] == 1
    # b/0 asks for a device a/0 holds; b/1 names one the machine does not offer; b/2 names
    # two devices for a one-GPU task.
    res = c.place(("b", 0, "m1", ["1"]), ("b", 1, "m1", ["7"]), ("b", 2, "m1", ["0", "0"]))
    assert res["placed"] == 0 and res["rejected"] == 3
    # Within one plan, two placements may not take the same device either.
    res = c.place(("b", 0, "m1", ["0"]), ("b", 1, "m1", ["0"]))
    assert (res["placed"], res["rejected"]) == (1, 1)
    assert c.store.tasks[("b", 1)].state == "pending"


def test_finished_task_frees_its_devices_and_snapshot_keeps_them() -> None:
    c = Cell()
    c.machine("m1", ["0"])
    c.submit("a", 1, gpu=1, kind="batch")
    c.submit("b", 1, gpu=1)
    c.place(("a", 0, "m1", ["0"]))
    snap = c.store.snapshot_bytes()
    other = Store()
    other.load_snapshot(snap)
    assert other.tasks[("a", 0)].gpus == ["0"]
    assert other.machines["m1"].gpus == ["0"]
    t = c.store.tasks[("a", 0)]
    c.apply(
        C.TaskUpdates(
            ts_ms=6,
            machine="m1",
            updates=[C.TaskUpdate("a", 0, t.incarnation, "succeeded", exit_code=0)],
        )
    )
    assert c.store.gpus_held("m1") == set()
    assert c.place(("b", 0, "m1", ["0"]))["placed"] == 1


def test_placement_wire_keeps_v1_form_without_devices() -> None:
    v1 = C.Placement("j", 0, "m", "inc", 1)
    assert "gpus" not in v1.to_wire()
    withg = C.Placement("j", 0, "m", "inc", 1, ["0", "3"])
    cmd = C.ApplyPlan(ts_ms=1, placements=[v1, withg])
    back = C.decode(C.encode(cmd))
    assert isinstance(back, C.ApplyPlan)
    assert [p.gpus for p in back.placements] == [None, ["0", "3"]]


def test_machine_without_named_devices_offers_one_per_counted_gpu() -> None:
    m = Machine(name="m", capacity=Resources(gpu=2))
    assert m.gpu_devices() == ["0", "1"]
    assert "gpus" not in m.to_dict()


def _inp(pending: list[TaskRequest], free: dict[str, list[str]], held: Any = None) -> PassInput:
    return PassInput(Snapshot([], pending), {}, set(), [], {}, gpus_free=free, gpus_held=held or {})


def test_assign_gpus_takes_lowest_free_and_what_preemptions_free() -> None:
    spec = JobSpec(name="t", replicas=3, requirements=Requirements(gpu=2))
    pending = [TaskRequest("t", i, 1, spec) for i in range(3)]
    plan = Plan(
        placements=[C.Placement("t", i, "m1", f"i{i}", 1) for i in range(3)],
        preemptions=[Preemption("v", 0, "vinc", "m1")],
    )
    inp = _inp(pending, {"m1": ["10", "2", "9"]}, {("v", 0, "vinc"): ["0"]})
    got = assign_gpus(inp, plan)
    assert [p.gpus for p in got] == [["0", "2"], ["9", "10"], []]


def sched(ms: list[MachineView], pending: list[TaskRequest], running: Any = ()) -> Plan:
    c = itertools.count()
    snap = Snapshot(ms, pending, list(running))
    return BorgScheduler().schedule(snap, lambda: f"i{next(c)}")


def gpu_machine(name: str, gpus: int, used: int = 0) -> MachineView:
    return MachineView(
        name=name,
        capacity=Resources(cpu=16, ram=64 * GiB, disk=GiB, gpu=gpus),
        used=Resources(cpu=used, ram=used * GiB, gpu=used),
    )


def tasks(job: str, n: int, gpu: int = 1, gang: bool = True, prio: int = 100) -> list[TaskRequest]:
    spec = JobSpec(
        name=job,
        replicas=n,
        priority=prio,
        gang=gang,
        requirements=Requirements(cpu=1, ram=GiB, gpu=gpu),
    )
    return [TaskRequest(job, i, 1, spec) for i in range(n)]


def test_gang_that_does_not_fit_whole_places_nothing_and_says_why() -> None:
    ms = [gpu_machine("m1", 2), gpu_machine("m2", 1)]
    plan = sched(ms, tasks("gang", 4, prio=120) + tasks("solo", 3, gang=False))
    # The gang's partial placements are not kept, and the room they would have taken goes
    # to the others: solo gets all three devices.
    assert sorted(p.job for p in plan.placements) == ["solo"] * 3
    reasons = {(j, i): r for j, i, r in plan.failures}
    assert reasons[("gang", 0)].startswith("no-feasible-machine: gang of 4: only 3 fit")
    assert {r for (j, _), r in reasons.items() if j == "gang"} == {reasons[("gang", 0)]}


def test_gang_that_fits_is_placed_whole() -> None:
    ms = [gpu_machine("m1", 2), gpu_machine("m2", 2)]
    plan = sched(ms, tasks("gang", 4))
    assert sorted(p.index for p in plan.placements) == [0, 1, 2, 3]
    assert not plan.failures


def test_preemption_only_for_a_whole_gang() -> None:
    one = Requirements(cpu=1, ram=GiB, gpu=1)
    low = [PlacedTask("low", i, f"m{i}", 50, one, f"l{i}") for i in range(2)]
    ms = [gpu_machine("m0", 1, used=1), gpu_machine("m1", 1, used=1)]
    # Three GPUs wanted, two could be freed: no victim is evicted for part of a gang.
    plan = sched(ms, tasks("gang", 3, prio=200), low)
    assert not plan.placements and not plan.preemptions
    # Two wanted: both victims go and the gang is placed.
    plan = sched(ms, tasks("gang", 2, prio=200), low)
    assert sorted(p.job for p in plan.preemptions) == ["low", "low"]
    assert len(plan.placements) == 2


def test_store_applies_a_gang_whole_or_not_at_all() -> None:
    c = Cell()
    c.machine("m1", ["0", "1"])
    c.submit("g", 3, gpu=1, gang=True)
    # A stale plan: the third placement names a device the machine does not have.
    res = c.place(("g", 0, "m1", ["0"]), ("g", 1, "m1", ["1"]), ("g", 2, "m1", ["2"]))
    assert (res["placed"], res["rejected"]) == (0, 3)
    assert {t.state for t in c.store.job_tasks("g")} == {"pending"}
    c.machine("m1", ["0", "1", "2"])
    res = c.place(("g", 0, "m1", ["0"]), ("g", 1, "m1", ["1"]), ("g", 2, "m1", ["2"]))
    assert res["placed"] == 3


def test_a_gang_waits_whole_while_one_of_its_tasks_is_held() -> None:
    c = Cell()
    c.machine("m1", ["0", "1"])
    c.submit("g", 2, gpu=1, gang=True)
    c.submit("solo", 1, gpu=0)
    copies = LiveCopies()
    copies.observe("m1", [("g", 0, "old", "running")])
    snap, reasons = planner.build_snapshot(c.store)
    hb = planner.hold_back(snap, reasons, copies, learning=False)
    assert [(t.job, t.index) for t in hb.snapshot.pending] == [("solo", 0)]
    assert hb.held == {("g", 0), ("g", 1)}
    assert [r[:2] for r in hb.reasons] == [["g", 0]]  # g/1 only waits with it


def test_a_changed_device_offer_lets_waiting_tasks_be_looked_at_again() -> None:
    c = Cell()
    c.machine("m1", ["0"])
    gen = c.store.capacity_generation
    c.machine("m1", ["0"])
    assert c.store.capacity_generation == gen
    c.machine("m1", ["1"])  # same count, another device: room a waiting task may use
    assert c.store.capacity_generation > gen


def test_turning_gang_on_applies_in_place() -> None:
    c = Cell()
    c.machine("m1", ["0", "1"])
    c.submit("g", 2, gpu=1)
    c.place(("g", 0, "m1", ["0"]), ("g", 1, "m1", ["1"]))
    c.submit("g", 2, gpu=1, gang=True)
    job = c.store.jobs["g"]
    assert job.spec.gang and job.version == 1
    assert [t.state for t in c.store.job_tasks("g")] == ["assigned", "assigned"]


def test_a_sync_may_offer_only_distinct_device_indices_it_counts() -> None:
    def sync(gpus: list[str], count: int) -> pb.SyncRequest:
        return pb.SyncRequest(machine="m", capacity=pb.Resources(gpu=count), gpus=gpus)

    assert gpus_problem(sync([], 2)) is None  # an older Borglet: counted, not named
    assert gpus_problem(sync(["0", "1"], 2)) is None
    assert gpus_problem(sync(["0", "<b>"], 2)) == "gpus: '<b>' is not a device index"
    assert gpus_problem(sync(["1", "1"], 2)) == "gpus: a device is listed twice"
    assert gpus_problem(sync(["0"], 2)) == "gpus: 1 devices named but capacity.gpu is 2"
    assert gpus_problem(sync([str(i) for i in range(65)], 65)) == (
        "gpus: at most 64 devices, not 65"
    )


def test_a_gang_placing_one_task_twice_is_rejected_whole() -> None:
    c = Cell()
    c.machine("m1", ["0", "1", "2"])
    c.submit("g", 2, gpu=1, gang=True)
    res = c.place(("g", 0, "m1", ["0"]), ("g", 0, "m1", ["1"]))
    assert (res["placed"], res["rejected"]) == (0, 2)
    assert c.store.gpus_held("m1") == set()


def test_a_gang_plan_missing_a_waiting_task_is_rejected_whole() -> None:
    c = Cell()
    c.machine("m1", ["0", "1", "2"])
    c.submit("g", 3, gpu=1, gang=True)
    res = c.place(("g", 0, "m1", ["0"]), ("g", 1, "m1", ["1"]))
    assert (res["placed"], res["rejected"]) == (0, 2)
    # A pass over only some of a gang's pending tasks looks at all of them.
    snap, _ = planner.build_snapshot(c.store, only={("g", 2)})
    assert sorted(t.index for t in snap.pending) == [0, 1, 2]
