"""Pure decisions of a scheduler pass: what the scheduler sees, what is held back, and what
to propose. No clock (times are passed in), no proposals, no metrics, no locks taken: the
shell (`scheduling.py`) holds the store's lock around `prepare_pass`, runs the scheduler,
proposes the command `plan_command` returns and records the metrics.

Hold-back is the "at most one copy per index" rule (see copies.py): a pending task whose
previous incarnation a Borglet still reports alive (or may still run, on a machine a new
leader has not heard from yet) is kept out of the pass, with a reason recorded for it.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Any

from borgmaster import commands as C
from borgmaster.copies import LiveCopies
from borgmaster.metrics import waiting_since_ms
from borgmaster.model import MACHINE_LOST, Requirements, Resources
from borgmaster.scheduler import MachineView, PlacedTask, Plan, Snapshot, TaskRequest
from borgmaster.store import ACTIVE_STATES, Store
from cfg.model import Reason, reason_word

TaskIndex = tuple[str, int]


def held_reason(where: str) -> str:
    return f"{Reason.HELD.value} on {where} to stop"


def build_snapshot(
    store: Store, only: set[TaskIndex] | None = None, cache: PlacedCache | None = None
) -> tuple[Snapshot, dict[TaskIndex, str]]:
    """What the scheduler sees (caller holds the store lock), and current pending reasons.
    `only` limits the pending tasks to those keys; `cache` is the leader's `PlacedCache`."""
    keys = store.pending if only is None else (store.pending & only)
    if only is not None:
        # A gang is placed whole: one of its tasks in the pass brings all its pending ones.
        gangs = {j for j, _ in keys if store.jobs[j].spec.gang}
        if gangs:
            keys = keys | {k for k in store.pending if k[0] in gangs}
    pending = []
    reasons = {}
    for key in sorted(keys):
        t = store.tasks[key]
        j = store.jobs[t.job]
        pending.append(TaskRequest(job=t.job, index=t.index, version=j.version, spec=j.spec))
        reasons[key] = t.reason
    running, used = _placed(store, cache)
    machines = [
        MachineView(
            name=m.name,
            capacity=m.capacity,
            used=used.get(m.name) or Resources(),
            attrs=dict(m.attrs),
            taints=list(m.taints),
            state=m.state,
        )
        for m in store.machines.values()
    ]
    return Snapshot(machines=machines, pending=pending, running=running), reasons


class PlacedCache:
    """The leader's memo of `_placed`, per machine: a machine's placed tasks and usage are
    reused while its `Store.machine_generation` stands (the store bumps it on every change to
    the machine's task set, a task's state leaving `ACTIVE_STATES`, a placement or reset,
    and a snapshot load), and while every job version they came from still has the same
    priority and requirements (a job update). At 100,000 placed tasks a pass walked them all
    under the store lock, 0.2-0.4 s, for every pass even of one task; with the memo a pass
    re-reads only the machines that changed. Local and disposable: never replicated."""

    def __init__(self) -> None:
        self.machines: dict[str, tuple[int, list[PlacedTask], Resources]] = {}
        self.specs: dict[tuple[str, int], tuple[int, Requirements]] = {}
        self.tasks: object = None  # the store's task table the memo was made from

    def clear(self) -> None:
        self.machines = {}
        self.specs = {}

    def check_specs(self, store: Store) -> None:
        """Forget everything if the store loaded a snapshot (new tables) or a job version the
        memo used changed priority or spec."""
        if self.tasks is not store.tasks:
            self.clear()
            self.tasks = store.tasks
            return
        for (job, version), (prio, req) in self.specs.items():
            j = store.jobs.get(job)
            if j is None or j.spec.priority != prio or j.spec_for(version).requirements is not req:
                self.clear()
                return


def _placed(
    store: Store, cache: PlacedCache | None = None
) -> tuple[list[PlacedTask], dict[str, Resources]]:
    """Every placed, unfinished task, and what they hold per machine (`Store.used` of every
    machine, summed in the same order), in one walk over the tasks with each job version's
    spec looked up once: at 100,000 tasks on 10,000 machines the two walks and per-task
    lookups held the store lock 0.4-1.2 s for every pass, even a pass of one task. With a
    `cache`, machines unchanged since the last pass are not walked again."""
    tasks, jobs = store.tasks, store.jobs
    if cache is not None:
        cache.check_specs(store)
        of_version = cache.specs
        before = cache.machines
        gens = store.machine_generation
    else:
        of_version = {}
        before = {}
        gens = {}
    after: dict[str, tuple[int, list[PlacedTask], Resources]] = {}
    running: list[PlacedTask] = []
    used: dict[str, Resources] = {}
    for name, keys_on in store.tasks_by_machine.items():
        gen = gens.get(name, -1)
        hit = before.get(name)
        if hit is not None and hit[0] == gen:
            after[name] = hit
            running.extend(hit[1])
            used[name] = replace(hit[2])  # the scheduler's own copy, as `Store.used` gives
            continue
        r = Resources()
        mine: list[PlacedTask] = []
        for k in keys_on:
            t = tasks[k]
            if t.state not in ACTIVE_STATES:
                continue
            got = of_version.get((t.job, t.version))
            if got is None:
                job = jobs[t.job]
                got = (job.spec.priority, job.spec_for(t.version).requirements)
                of_version[(t.job, t.version)] = got
            prio, req = got
            mine.append(PlacedTask(t.job, t.index, t.machine, prio, req, t.incarnation))
            r.cpu += req.cpu
            r.ram += req.ram
            r.disk += req.disk
            r.gpu += req.gpu
        running.extend(mine)
        used[name] = r
        if cache is not None and gen >= 0:
            after[name] = (gen, mine, replace(r))
    if cache is not None:
        cache.machines = after
    return running, used


def still_learning(
    now: float,
    leader_since: float | None,
    machine_timeout_s: float,
    copies: LiveCopies,
    machines: Iterable[MachineView],
) -> bool:
    """A new leader (for one machine timeout at most) that has not yet heard from every
    machine that is not lost: a replaced task's old copy may still run on one of them.
    `now` and `leader_since` are the same monotonic clock's readings."""
    return (
        leader_since is not None
        and now - leader_since < machine_timeout_s
        and not copies.heard_from(m.name for m in machines if m.state != MACHINE_LOST)
    )


_MAY_HAVE_A_COPY = frozenset({Reason.UPDATED, Reason.DRAINED, Reason.PREEMPTED, Reason.HELD})


def may_have_a_copy(reason: str) -> bool:
    """A pending task whose last copy may still run: replaced (rollout, drain), preempted, or
    already held back for its previous copy (reasons the store and the scheduler record)."""
    return reason_word(reason) in _MAY_HAVE_A_COPY


@dataclass
class HoldBack:
    """The pass without its held tasks, the held keys, and the reasons to record for them
    (only those whose recorded reason differs, so a steady hold writes nothing)."""

    snapshot: Snapshot
    held: set[TaskIndex] = field(default_factory=set)
    reasons: list[list[Any]] = field(default_factory=list)


def hold_back(
    snap: Snapshot, reasons: dict[TaskIndex, str], copies: LiveCopies, learning: bool
) -> HoldBack:
    """Take out of the pass every pending task whose index still has a live copy on a
    machine that is not lost (or, while `learning`, may have one on a silent machine)."""
    if not snap.pending:
        return HoldBack(snap)
    lost = {m.name for m in snap.machines if m.state == MACHINE_LOST}
    keep: list[TaskRequest] = []
    out = HoldBack(snap)
    for tr in snap.pending:
        key = (tr.job, tr.index)
        where = copies.elsewhere(key, lost)
        if not where and learning and may_have_a_copy(reasons.get(key, "")):
            where = "an unreported machine"
        if not where:
            keep.append(tr)
            continue
        out.held.add(key)
        why = held_reason(where)
        if reasons.get(key) != why:
            out.reasons.append([tr.job, tr.index, why])
    # A gang is placed whole: while one of its tasks is held, the others wait with it (held
    # too, so they are looked at again when the copy goes).
    held_gangs = {j for j, _ in out.held} & {t.job for t in keep if t.spec.gang}
    if held_gangs:
        out.held |= {(t.job, t.index) for t in keep if t.job in held_gangs}
        keep = [t for t in keep if t.job not in held_gangs]
    if len(keep) != len(snap.pending):
        out.snapshot = Snapshot(machines=snap.machines, pending=keep, running=snap.running)
    return out


@dataclass
class PassInput:
    """One pass, decided under the store's lock: what the scheduler sees, the pending
    reasons recorded now, the held tasks, and when each task in the pass began waiting."""

    snapshot: Snapshot
    reasons: dict[TaskIndex, str]
    held: set[TaskIndex]
    held_reasons: list[list[Any]]
    waiting_since: dict[TaskIndex, int]
    # GPU devices per machine not held by a placed task (in the machine's order), and the
    # devices each placed task holds (a preemption frees them): for `assign_gpus`. Only
    # filled when a task of the pass asks for GPUs.
    gpus_free: dict[str, list[str]] = field(default_factory=dict)
    gpus_held: dict[tuple[str, int, str], list[str]] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return not self.snapshot.pending and not self.held_reasons

    def keys(self) -> set[TaskIndex]:
        return {(t.job, t.index) for t in self.snapshot.pending}


def prepare_pass(
    store: Store,
    only: set[TaskIndex] | None,
    copies: LiveCopies,
    *,
    now: float,
    leader_since: float | None,
    machine_timeout_s: float,
    placed: PlacedCache | None = None,
) -> PassInput:
    """The scheduler's input for the pending tasks in `only` (None: all of them), with the
    held ones taken out. `now` and `leader_since` are monotonic readings; `placed` is the
    leader's memo of the placed tasks (`PlacedCache`). Caller holds the
    store lock."""
    snap, reasons = build_snapshot(store, only, placed)
    learning = bool(snap.pending) and still_learning(
        now, leader_since, machine_timeout_s, copies, snap.machines
    )
    hb = hold_back(snap, reasons, copies, learning)
    waiting = {
        (t.job, t.index): waiting_since_ms(store.tasks[(t.job, t.index)])
        for t in hb.snapshot.pending
    }
    inp = PassInput(hb.snapshot, reasons, hb.held, hb.reasons, waiting)
    if any(t.spec.requirements.gpu > 0 for t in hb.snapshot.pending):
        for m in store.machines.values():
            held = store.gpus_held(m.name)
            inp.gpus_free[m.name] = [g for g in m.gpu_devices() if g not in held]
        for keys_on in store.tasks_by_machine.values():
            for k in keys_on:
                t = store.tasks[k]
                if t.gpus and t.state in ACTIVE_STATES:
                    inp.gpus_held[(t.job, t.index, t.incarnation)] = list(t.gpus)
    return inp


def assign_gpus(inp: PassInput, plan: Plan) -> list[C.Placement]:
    """The plan's placements with their GPU devices chosen: whole devices, the lowest free
    ones of the machine (those a preemption of this plan frees included), never one that
    another task or an earlier placement holds. The scheduler counts GPUs; this names them,
    so the choice travels in the Raft command and every replica and Borglet sees the same.
    A placement that finds too few (the count and the names disagree, e.g. a device that
    turned unhealthy a moment ago) keeps what it found and the store rejects it."""
    if not inp.gpus_free:
        return list(plan.placements)
    free = {m: list(gs) for m, gs in inp.gpus_free.items()}
    for p in plan.preemptions:
        got = inp.gpus_held.get((p.job, p.index, p.incarnation))
        if got:
            free.setdefault(p.machine, []).extend(got)
    specs = {(t.job, t.index): t.spec for t in inp.snapshot.pending}
    out = []
    for pl in plan.placements:
        spec = specs.get((pl.job, pl.index))
        want = spec.requirements.gpu if spec is not None else 0
        if want > 0:
            pool = free.get(pl.machine, [])
            pool.sort(key=_device_order)
            take, free[pl.machine] = pool[:want], pool[want:]
            pl = C.Placement(pl.job, pl.index, pl.machine, pl.incarnation, pl.version, take)
        out.append(pl)
    return out


def _device_order(g: str) -> tuple[int, str]:
    """Devices by index (numeric ids first, numerically), so "10" follows "9"."""
    return (int(g), "") if g.isdigit() else (1 << 30, g)


def plan_command(inp: PassInput, plan: Plan, term: int) -> C.ApplyPlan | None:
    """The command that records `plan`: placements, preemptions, and the pending reasons
    that changed (new failures and held tasks). None when it would change nothing."""
    failures = [C.PlanFailure(j, i, r) for j, i, r in plan.failures if inp.reasons.get((j, i)) != r]
    failures += [C.PlanFailure(j, i, r) for j, i, r in inp.held_reasons]
    if not plan.placements and not failures and not plan.preemptions:
        return None
    return C.ApplyPlan(
        placements=assign_gpus(inp, plan),
        failures=failures,
        preemptions=[
            C.Preemption(p.job, p.index, p.incarnation, p.machine, p.reason)
            for p in plan.preemptions
        ],
        term=term,
    )


MAX_PLAN_BYTES = 8 << 20
"""A plan larger than this (encoded) is committed as several ApplyPlan entries
(`split_plan`): one Raft entry may be at most 16 MiB (proposer.MAX_ENTRY_BYTES), and a pass
placing 100k tasks encodes to ~11 MiB with long names."""

MAX_PLAN_PLACEMENTS = 5000
"""At most this many placements per ApplyPlan entry: every replica applies an entry on its
Raft thread, and 100,000 placements in one took 1.3-1.7 s there (no heartbeats meanwhile:
an election). 5,000 apply in 0.15-0.3 s on a loaded 2-core machine."""


def split_plan(
    cmd: C.ApplyPlan,
    max_bytes: int = MAX_PLAN_BYTES,
    max_placements: int = MAX_PLAN_PLACEMENTS,
    gangs: frozenset[str] | set[str] = frozenset(),
) -> list[C.ApplyPlan]:
    """`cmd` as commands of at most `max_bytes` and `max_placements` each, the placements
    grouped by machine (each machine's in their order): the first carries every preemption
    (victims go first, as within one plan) and failure with the first placements, the others
    the rest of the placements. The placements of a job in `gangs` stay in one command (the
    store applies a gang whole or not at all), even past `max_placements`. Each is
    re-checked by the store on its own, as any plan is, so a later part that does not
    commit leaves its tasks pending for the next pass. A single plan when it fits."""
    n = len(cmd.placements)
    if n < 2 or (n <= max_placements and len(C.encode(cmd)) <= max_bytes):
        return [cmd]
    units: list[list[C.Placement]] = []
    gang_unit: dict[str, list[C.Placement]] = {}
    for pl in cmd.placements:
        if pl.job in gangs:
            unit = gang_unit.get(pl.job)
            if unit is None:
                unit = gang_unit[pl.job] = []
                units.append(unit)
            unit.append(pl)
        else:
            units.append([pl])
    # Machine by machine (stable: each machine's placements keep their order, all the store
    # compares them with): a part then completes its machines' task sets, and each machine
    # hears once. In plan order, 20 parts of 5,000 spread over 10,000 machines touched every
    # machine ~10 times: ten pushes of one task each instead of one of ten, and 100,000
    # tasks took 65 s to reach their machines.
    units.sort(key=lambda u: u[0].machine)
    per_placement = max(1, len(C.encode(cmd)) // n)
    step = max(1, min(max_placements, max_bytes // per_placement))
    while True:
        chunks: list[list[C.Placement]] = []
        cur: list[C.Placement] = []
        for unit in units:
            if cur and len(cur) + len(unit) > step:
                chunks.append(cur)
                cur = []
            cur.extend(unit)
        if cur:
            chunks.append(cur)
        out = [
            C.ApplyPlan(
                placements=chunk,
                failures=cmd.failures if i == 0 else [],
                preemptions=cmd.preemptions if i == 0 else [],
                term=cmd.term,
            )
            for i, chunk in enumerate(chunks)
        ]
        if all(len(C.encode(c)) <= max_bytes for c in out) or step == 1:
            return out
        step = max(1, step // 2)


def failed_keys(plan: Plan) -> set[TaskIndex]:
    """Tasks that found no machine: they wait for capacity, not for the next pass."""
    return {(j, i) for j, i, _ in plan.failures}
