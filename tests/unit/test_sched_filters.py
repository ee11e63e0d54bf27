"""BorgScheduler filters: each one rejects what it should and is named in "why pending?"."""

from __future__ import annotations

import itertools

from borgmaster.model import (
    MACHINE_DRAINING,
    MACHINE_LOST,
    Constraint,
    JobSpec,
    Requirements,
    Resources,
    Taint,
    TaintEffect,
    Toleration,
)
from borgmaster.scheduler import BorgScheduler, MachineView, Plan, Snapshot, TaskRequest
from borgmaster.scheduler.borg import format_reason
from borgmaster.scheduler.filters import constraint_name, constraint_ok, spread_limit

GiB = 1 << 30


def mv(
    name: str,
    cpu: float = 4,
    ram: int = 8 * GiB,
    gpu: int = 0,
    attrs: dict[str, str] | None = None,
    taints: list[Taint] | None = None,
    state: str = "up",
    used: Resources | None = None,
) -> MachineView:
    return MachineView(
        name=name,
        capacity=Resources(cpu=cpu, ram=ram, disk=100 * GiB, gpu=gpu),
        used=used or Resources(),
        attrs=attrs or {},
        taints=taints or [],
        state=state,
    )


def reqs(job: str, n: int = 1, **kw: object) -> list[TaskRequest]:
    r = kw.pop("requirements", Requirements(cpu=1, ram=GiB))
    spec = JobSpec(name=job, replicas=n, requirements=r, **kw)  # type: ignore[arg-type]
    return [TaskRequest(job=job, index=i, version=1, spec=spec) for i in range(n)]


def run(ms: list[MachineView], pending: list[TaskRequest], **kw: object) -> Plan:
    c = itertools.count()
    return BorgScheduler(**kw).schedule(  # type: ignore[arg-type]
        Snapshot(machines=ms, pending=pending), lambda: f"i{next(c)}"
    )


def placed(plan: Plan) -> dict[int, str]:
    return {p.index: p.machine for p in plan.placements}


def test_cpu_filter_rejects_small_machines() -> None:
    plan = run([mv("small", cpu=0.5), mv("big", cpu=8)], reqs("a"))
    assert placed(plan) == {0: "big"}


def test_ram_disk_gpu_filters_and_reason_counts() -> None:
    ms = [mv("m1", ram=GiB // 2), mv("m2", ram=GiB // 2), mv("m3")]
    r = Requirements(cpu=1, ram=GiB, gpu=1)
    plan = run(ms, reqs("a", requirements=r))
    assert plan.placements == []
    [(_, _, reason)] = plan.failures
    # ram is tested before gpu: each machine counts once, under its first failing filter.
    assert reason == "no-feasible-machine: ram 2, gpu 1"


def test_gpu_task_goes_to_gpu_machine() -> None:
    plan = run([mv("cpu-only"), mv("gpu", gpu=2)], reqs("a", requirements=Requirements(gpu=1)))
    assert placed(plan) == {0: "gpu"}


def test_disk_filter() -> None:
    r = Requirements(cpu=0.1, ram=1, disk=200 * GiB)
    plan = run([mv("m1")], reqs("a", requirements=r))
    assert plan.failures[0][2] == "no-feasible-machine: disk 1"


def test_ports_filter_caps_named_ports_per_machine() -> None:
    r = Requirements(cpu=0.1, ram=1, ports=["http", "grpc"])
    plan = run([mv("m1", cpu=64, ram=64 * GiB)], reqs("a", 3, requirements=r), max_ports=4)
    assert len(plan.placements) == 2
    assert plan.failures[0][2] == "no-feasible-machine: ports 1"


def test_draining_and_lost_machines_rejected_with_their_names() -> None:
    ms = [mv("d1", state=MACHINE_DRAINING), mv("d2", state=MACHINE_DRAINING)]
    ms.append(mv("l", state=MACHINE_LOST))
    plan = run(ms, reqs("a"))
    assert plan.failures == [("a", 0, "no-feasible-machine: draining 2, lost 1")]


def test_no_machines_reason() -> None:
    assert run([], reqs("a")).failures == [("a", 0, "no-feasible-machine: no machines in the cell")]


def test_constraint_ops() -> None:
    attrs = {"rack": "r1", "ssd": "yes"}
    assert constraint_ok(Constraint("rack", "==", "r1"), attrs)
    assert not constraint_ok(Constraint("rack", "!=", "r1"), attrs)
    assert constraint_ok(Constraint("rack", "!=", "r1"), {})
    assert constraint_ok(Constraint("rack", "in", ["r1", "r2"]), attrs)
    assert not constraint_ok(Constraint("rack", "in", ["r2"]), attrs)
    assert constraint_ok(Constraint("rack", "not-in", ["r2"]), attrs)
    assert not constraint_ok(Constraint("rack", "not-in", ["r1"]), attrs)
    assert constraint_ok(Constraint("ssd", "exists"), attrs)
    assert not constraint_ok(Constraint("gpu", "exists"), attrs)
    assert not constraint_ok(Constraint("rack", "~=", "r1"), attrs)


def test_constraint_names() -> None:
    assert constraint_name(Constraint("rack", "!=", "r1")) == "constraint rack!=r1"
    assert constraint_name(Constraint("zone", "in", ["a", "b"])) == "constraint zone in a,b"
    assert constraint_name(Constraint("ssd", "exists")) == "constraint ssd exists"


def test_constraint_filter_and_reason() -> None:
    ms = [mv(f"m{i}", attrs={"rack": "r1"}) for i in range(3)] + [mv("m9", attrs={"rack": "r2"})]
    ok = run(ms, reqs("a", constraints=[Constraint("rack", "!=", "r1")]))
    assert placed(ok) == {0: "m9"}
    ms[-1].used = Resources(cpu=4)
    bad = run(ms, reqs("a", constraints=[Constraint("rack", "!=", "r1")]))
    assert bad.failures[0][2] == "no-feasible-machine: constraint rack!=r1 3, cpu 1"


def test_in_and_exists_constraints_select_machines() -> None:
    ms = [mv("a", attrs={"zone": "z1"}), mv("b", attrs={"zone": "z2", "ssd": ""}), mv("c")]
    got = run(ms, reqs("x", constraints=[Constraint("zone", "in", ["z2", "z3"])]))
    assert placed(got) == {0: "b"}
    got = run(ms, reqs("x", constraints=[Constraint("ssd", "exists")]))
    assert placed(got) == {0: "b"}
    got = run(ms, reqs("x", constraints=[Constraint("zone", "not-in", ["z1", "z2"])]))
    assert placed(got) == {0: "c"}


def test_taint_rejects_without_toleration() -> None:
    taint = [Taint("gpu", "true", TaintEffect.NO_SCHEDULE)]
    plan = run([mv("g", taints=taint)], reqs("a"))
    assert plan.failures[0][2] == "no-feasible-machine: taint gpu=true 1"


def test_toleration_matches_key_and_value() -> None:
    taint = [Taint("gpu", "true", TaintEffect.NO_SCHEDULE)]
    ok = run([mv("g", taints=taint)], reqs("a", tolerations=[Toleration("gpu", "true")]))
    assert placed(ok) == {0: "g"}
    any_value = run([mv("g", taints=taint)], reqs("a", tolerations=[Toleration("gpu")]))
    assert placed(any_value) == {0: "g"}
    wrong = run([mv("g", taints=taint)], reqs("a", tolerations=[Toleration("gpu", "false")]))
    assert wrong.placements == []


def test_prefer_no_schedule_taint_does_not_reject() -> None:
    taint = [Taint("old", "1", TaintEffect.PREFER_NO_SCHEDULE)]
    assert placed(run([mv("m", taints=taint)], reqs("a"))) == {0: "m"}


def test_hard_spread_at_most_ceil_replicas_over_values() -> None:
    ms = [mv(f"m{r}{i}", cpu=64, ram=64 * GiB, attrs={"rack": r}) for r in "ab" for i in range(2)]
    plan = run(ms, reqs("a", 5, spread="rack"))
    per_rack: dict[str, int] = {}
    for m in placed(plan).values():
        per_rack[m[1]] = per_rack.get(m[1], 0) + 1
    assert spread_limit(5, 2) == 3
    assert len(plan.placements) == 5
    assert max(per_rack.values()) <= 3


def test_hard_spread_counts_running_tasks_and_names_reason() -> None:
    from borgmaster.scheduler import PlacedTask

    ms = [mv("a1", attrs={"rack": "a"}), mv("b1", attrs={"rack": "b"})]
    ms[1].used = Resources(cpu=4)
    running = [PlacedTask("a", 0, "a1", 100, Requirements(cpu=1, ram=GiB), "x")]
    pending = reqs("a", 2, spread="rack")[1:]  # replicas 2: at most 1 per rack
    c = itertools.count()
    plan = BorgScheduler().schedule(
        Snapshot(machines=ms, pending=pending, running=running), lambda: f"i{next(c)}"
    )
    assert plan.placements == []
    assert plan.failures[0][2] == "no-feasible-machine: cpu 1, spread rack 1"


def test_spread_machines_without_attribute_share_one_value() -> None:
    ms = [mv("x1", cpu=64, ram=64 * GiB), mv("x2", cpu=64, ram=64 * GiB)]
    ms.append(mv("r1", cpu=64, ram=64 * GiB, attrs={"rack": "r1"}))
    plan = run(ms, reqs("a", 4, spread="rack"))
    # two values ("" and r1): at most 2 per value
    on_blank = sum(1 for m in placed(plan).values() if m.startswith("x"))
    assert len(plan.placements) == 4 and on_blank == 2


def test_distinct_machines_one_task_per_machine() -> None:
    pending = reqs("a", 3, requirements=Requirements(cpu=0.1, ram=1))
    pending[0].spec.distinct_machines = True  # type: ignore[attr-defined]
    plan = run([mv("m1"), mv("m2")], pending)
    assert sorted(placed(plan).values()) == ["m1", "m2"]
    assert plan.failures[0][2] == "no-feasible-machine: distinct-machines 2"


def test_format_reason_orders_by_count() -> None:
    got = format_reason({"draining": 3, "ram": 9812, "constraint rack!=r1": 120}, 10000)
    assert got == "no-feasible-machine: ram 9812, constraint rack!=r1 120, draining 3"


def test_explain_counts_and_feasible() -> None:
    ms = [mv("a", ram=GiB // 2), mv("b", state=MACHINE_DRAINING), mv("c"), mv("d")]
    pending = reqs("j", 2)
    rejected, feasible = BorgScheduler().explain(Snapshot(ms, pending), "j", 1)
    assert rejected == {"ram": 1, "draining": 1}
    assert feasible == 2


def test_explain_unknown_task_raises_key_error() -> None:
    import pytest

    with pytest.raises(KeyError):
        BorgScheduler().explain(Snapshot([mv("a")], reqs("j")), "j", 7)
