"""BorgScheduler: feasibility, scoring, priorities and preemption, fast enough for a whole cell.

One `schedule()` call is one pass over a read-only `Snapshot`; it returns a `Plan` and keeps no
state between calls, so the same snapshot and seed always give the same plan. The pass:

1. Builds per-machine resource vectors (numpy, one row per resource) once, and from then on
   updates them incrementally as it places tasks ("incremental free-resource vectors").
2. Serves pending tasks from high to low priority, round-robin among the jobs of one priority
   (so one huge job cannot starve the others of its priority).
3. Groups tasks into equivalence classes (same job, version and requirements): a class scans
   machines once, in a random order fixed by the seed, keeps the feasible machines it found as
   scored candidates, and every task of the class picks the best candidate.
4. Scans only until `sample_size` feasible machines are found ("relaxed randomization"; four
   times that when under half the eligible machines it looked at have room), and scans further only
   when the candidates run out, so a placement costs about the same in a
   1k and a 50k machine cell.
5. Caches each candidate's score with the machine's version and re-scores only candidates whose
   machine changed since ("score caching").
6. When no machine fits, looks for the machine where evicting the fewest, lowest-priority
   preemptible tasks makes room (SPEC.md bands), evicts them in the plan and places the task.

Each trick can be switched off in the constructor to measure it (bench/scheduler.py).

Feasibility is one ordered filter table, `FILTERS` (state, taint, constraint,
distinct-machines, spread, resources): placing ANDs its steps' masks and `explain` counts the
machines each step removes, so "why pending?" is the decision's own account.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from borgmaster.commands import Placement
from borgmaster.model import MACHINE_UP, JobSpec
from borgmaster.scheduler.core import Plan, Preemption, Snapshot, TaskRequest
from borgmaster.scheduler.filters import (
    DISTINCT,
    EPS,
    RESOURCES,
    AttrIndex,
    constraint_name,
    distinct_machines,
    first_blocking_taint,
    spread_limit,
    state_counts,
    static_signature,
)
from borgmaster.scheduler.preempt import (
    PROD_LOW,
    Candidate,
    choose_victims,
    victim_ceiling,
    victims_cost,
)
from borgmaster.scheduler.scores import (
    POLICIES,
    combine,
    combine_one,
    fit_score,
    fit_scores,
    spread_scores,
)
from borgmaster.scheduler.table import CellTable, req_tuple

NO_FEASIBLE = "no-feasible-machine"
SCARCE_SAMPLE = 4  # sample_size multiplier where under half the eligible machines have room
# Victims that tasks below production priority may evict per pass, per 1000 machines (at least
# one): Borg's own cell evicted a median of 7 tasks a minute on 12.5k machines (0.56 per 1000;
# clusterdata-2011-2, first 5.7 hours), so about one pass a minute at this rate stays there.
NONPROD_PREEMPT_RATE = 0.4
CPU, RAM, DISK, GPU, PORTS = range(5)
NEG = -np.inf


def gang_reason(n: int, fit: int, failures: list[tuple[str, int, str]], job: str) -> str:
    """`no-feasible-machine: gang of N: only M fit`, with why the first task of the gang that
    found no machine did not (`(gpu 3)`), when it said."""
    why = ""
    for j, _, r in failures:
        if j == job:
            head = f"{NO_FEASIBLE}: "
            why = r[len(head) :] if r.startswith(head) else r
            break
    detail = f"gang of {n}: only {fit} fit" + (f" ({why})" if why else "")
    return f"{NO_FEASIBLE}: {detail}"


def format_reason(rejected: dict[str, int], machines: int) -> str:
    """`no-feasible-machine: ram 9812, constraint rack!=r1 120, draining 3`: machines rejected
    per filter, largest count first (ties by name)."""
    if machines == 0:
        return f"{NO_FEASIBLE}: no machines in the cell"
    parts = [f"{k} {v}" for k, v in sorted(rejected.items(), key=lambda kv: (-kv[1], kv[0]))]
    return f"{NO_FEASIBLE}: " + ", ".join(parts)


def _req_vector(spec: JobSpec) -> np.ndarray:
    """The task's request in the rows of the cell table's columns (cpu, ram, disk, gpu, ports)."""
    return np.array(req_tuple(spec.requirements), dtype=np.float64)


@dataclass
class _JobState:
    """What one job holds in the cell during a pass: tasks per machine, per failure domain and
    per spread value (running tasks from the snapshot plus tasks placed by this pass)."""

    name: str
    spec: JobSpec
    distinct: bool
    used_mask: np.ndarray | None  # machines holding a task of the job (distinct jobs only)
    dom: np.ndarray  # per machine: failure-domain code
    dom_is_machine: bool  # no machine has the domain attribute: each machine is its own domain
    dom_counts: dict[int, int] = field(default_factory=dict)
    spread_codes: np.ndarray | None = None  # hard spread: per machine, code of its value
    spread_lim: int = 0
    spread_counts: dict[int, int] = field(default_factory=dict)
    spread_full: set[int] = field(default_factory=set)
    classes: list[_Class] = field(default_factory=list)


@dataclass
class _Class:
    """An equivalence class: tasks that share feasibility and scores, and their candidates."""

    job: _JobState
    spec: JobSpec
    req: np.ndarray
    dims: list[int]  # resources its feasibility compares
    names: list[str]  # their names (`cpu`, `ram`, ...)
    static: np.ndarray  # machines passing state, taint and constraint filters
    slack: np.ndarray | None  # per resource and machine, capacity beyond 100% it may use
    offset: int  # where in the pass's machine permutation its scan starts
    scanned: int = 0
    eligible: int = 0  # scanned machines that pass the state, taint and constraint filters
    found: int = 0
    size: int = 0
    cidx: np.ndarray = field(default_factory=lambda: np.empty(16, dtype=np.int64))
    cver: np.ndarray = field(default_factory=lambda: np.empty(16, dtype=np.int64))
    cscore: np.ndarray = field(default_factory=lambda: np.empty(16, dtype=np.float64))
    live: int = 0  # candidates with a finite score
    reql: list[float] = field(default_factory=list)  # req as plain floats
    # The per-pass filter steps that apply to the class's job, and their one-machine tests.
    steps: tuple[FilterStep, ...] = ()
    ones: tuple[Callable[[_Pass, _Class, int, list[float]], bool], ...] = ()
    failed: str | None = None


# --- the filter table -------------------------------------------------------------------------

# Machines a step looks at: indices into the cell, or all of them.
Machines = np.ndarray | slice
ALL: slice = slice(None)
# What a step returns: its named checks in order, each with the mask of machines passing it.
Checks = list[tuple[str, np.ndarray]]


@dataclass(frozen=True)
class FilterStep:
    """One named step of the filter chain, like a kube-scheduler Filter plugin.

    The same steps place a task (`_Pass.static_mask` and `_Pass.feasible` AND their masks)
    and explain it (`_Pass.rejections` counts, under the first named check that fails, the
    machines each removes), so `borgcfg why` cannot drift from the decision.

    name: the step, as docs/scheduler.md lists it.
    per_machine: the step depends only on the machines and the job's spec (state, taints,
        constraints): it runs over the whole cell once per spec signature, and the result is
        cached with the cell table. The other steps depend on what the pass has placed so far
        and run over the machines a scan looks at.
    room: evicting lower-priority tasks can make the machine pass (resources only), so the
        preemption search relaxes this step and keeps the others.
    checks: (pass, spec, class, machines, free) -> named checks in order. Per-machine steps
        get no class and always look at every machine.
    one: for the per-pass steps, the same test for one machine in plain floats (the score
        cache's fast path, a few candidates per placement); a unit test checks it agrees
        with `checks`.
    applies: whether a per-pass step can reject anything for a job (distinct-machines and
        spread only for jobs that ask): a class keeps only the steps that apply, so placing
        skips the others' calls (explaining runs them all; they return no check).
    """

    name: str
    per_machine: bool
    checks: Callable[[_Pass, JobSpec, _Class | None, Machines, np.ndarray], Checks]
    one: Callable[[_Pass, _Class, int, list[float]], bool] | None = None
    room: bool = False
    applies: Callable[[_JobState], bool] = lambda js: True


def _state_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """A machine that is not up takes nothing; rejected under its state (`draining`, `lost`)."""
    return list(p.not_in_state.items())


def _taint_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """Up machines with a NoSchedule/NoExecute taint the task does not tolerate, by the name
    of the first such taint (`taint gpu=true`)."""
    blocked: dict[str, np.ndarray] = {}
    for i in p.tainted:
        name = first_blocking_taint(p.t.taints[i], spec.tolerations)
        if name:
            ok = blocked.get(name)
            if ok is None:
                ok = blocked[name] = np.ones(p.n, dtype=bool)
            ok[i] = False
    return list(blocked.items())


def _constraint_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """One check per constraint, in the spec's order (`constraint rack!=r1`)."""
    return [(constraint_name(con), p.attrs.constraint_mask(con)) for con in spec.constraints]


def _distinct_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """Distinct-machines jobs: not where the job already has a task (placed or planned)."""
    assert c is not None
    used = c.job.used_mask
    return [] if used is None else [(DISTINCT, ~used[idx])]


def _distinct_one(p: _Pass, c: _Class, m: int, col: list[float]) -> bool:
    used = c.job.used_mask
    return used is None or not used[m]


def _spread_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """Hard spread: not on a value of the attribute that holds its share of the job."""
    assert c is not None
    js = c.job
    if not js.spread_full or js.spread_codes is None:
        return []
    full = np.fromiter(js.spread_full, dtype=np.int64)
    return [(f"spread {spec.spread}", ~np.isin(js.spread_codes[idx], full))]


def _spread_one(p: _Pass, c: _Class, m: int, col: list[float]) -> bool:
    js = c.job
    codes = js.spread_codes
    return not (js.spread_full and codes is not None and int(codes[m]) in js.spread_full)


def _resource_checks(
    p: _Pass, spec: JobSpec, c: _Class | None, idx: Machines, free: np.ndarray
) -> Checks:
    """Enough free cpu, ram, disk, gpu and named ports (capacity minus used minus this pass's
    placements, plus the overcommit slack for non-production tasks): `fits_columns`."""
    assert c is not None
    return list(zip(c.names, fits_columns(c.req, free, idx, c.dims, c.slack), strict=True))


def _resource_one(p: _Pass, c: _Class, m: int, col: list[float]) -> bool:
    slack = c.slack
    req = c.reql
    for d in c.dims:
        have = col[d] if slack is None else col[d] + float(slack[d, m])
        if have < req[d] - EPS:
            return False
    return True


def fits_columns(
    req: np.ndarray,
    free: np.ndarray,
    idx: Machines,
    dims: Sequence[int],
    slack: np.ndarray | None = None,
) -> list[np.ndarray]:
    """Per resource in `dims`, which machines `idx` have `req` free (`Resources.fits` over
    numpy columns: the same tolerance, `EPS`, on every resource)."""
    if slack is None:
        return [free[d, idx] >= req[d] - EPS for d in dims]
    return [free[d, idx] + slack[d, idx] >= req[d] - EPS for d in dims]


FILTERS: tuple[FilterStep, ...] = (
    FilterStep("state", True, _state_checks),
    FilterStep("taint", True, _taint_checks),
    FilterStep("constraint", True, _constraint_checks),
    FilterStep(DISTINCT, False, _distinct_checks, _distinct_one, applies=lambda js: js.distinct),
    FilterStep(
        "spread", False, _spread_checks, _spread_one, applies=lambda js: js.spread_codes is not None
    ),
    FilterStep("resources", False, _resource_checks, _resource_one, room=True),
)
"""The filter chain, in the order "why pending?" attributes rejections (docs/scheduler.md)."""
PER_MACHINE = tuple(f for f in FILTERS if f.per_machine)
PER_PASS = tuple(f for f in FILTERS if not f.per_machine)
assert all(f.one is not None for f in PER_PASS), "every per-pass step needs its one-machine test"


class BorgScheduler:
    """The Borg-grade scheduler behind the `Scheduler` protocol.

    policy: "hybrid" (Borg's default, least stranded resources), "best" (best fit) or
        "spread" (E-PVM-style worst fit).
    seed: fixes the random machine order (relaxed randomization and tie-breaks).
    eqclass, sample, score_cache, incremental: the speed tricks, each switchable for benchmarks.
    sample_size: feasible machines to score per equivalence class before picking (x4 for a
        class that finds room on under half of the eligible machines it looks at).
    preemption: whether tasks may evict lower-priority ones (SPEC.md bands).
    fit_weight, spread_weight: weights of the fit score and of soft spread across domains.
    failure_domain: machine attribute used for soft spread when a job has no `spread`
        (machines without it are each their own domain).
    max_ports: named ports a machine can hand out (the `ports` filter).
    preempt_candidates: machines examined, in random order, when looking for victims.
    nonprod_overcommit: e.g. {"cpu": 1.25, "ram": 1.1}: tasks below production priority may
        be placed until a machine's allocations reach capacity times this factor, standing in
        for Borg's reclamation (non-prod tasks scheduled against reclaimed resources). The
        store's plan re-check knows nothing of it, so the master must leave it unset (1.0).
    """

    def __init__(
        self,
        policy: str = "hybrid",
        seed: int = 0,
        *,
        eqclass: bool = True,
        sample: bool = True,
        score_cache: bool = True,
        incremental: bool = True,
        sample_size: int = 200,
        preemption: bool = True,
        fit_weight: float = 1.0,
        spread_weight: float = 0.25,
        failure_domain: str = "rack",
        max_ports: int = 1000,
        preempt_candidates: int = 64,
        nonprod_overcommit: dict[str, float] | None = None,
        nonprod_preempt_rate: float | None = NONPROD_PREEMPT_RATE,
    ) -> None:
        if policy not in POLICIES:
            raise ValueError(f"unknown scheduling policy {policy!r} (one of {', '.join(POLICIES)})")
        self.policy = policy
        self.seed = seed
        self.eqclass = eqclass
        self.sample = sample
        self.score_cache = score_cache
        self.incremental = incremental
        self.sample_size = max(1, sample_size)
        self.preemption = preemption
        self.fit_weight = fit_weight
        self.spread_weight = spread_weight
        self.failure_domain = failure_domain
        self.max_ports = max_ports
        self.preempt_candidates = max(1, preempt_candidates)
        self.nonprod_overcommit = dict(nonprod_overcommit or {})
        self.nonprod_preempt_rate = nonprod_preempt_rate
        for r, f in self.nonprod_overcommit.items():
            if r not in RESOURCES or f < 1.0:
                raise ValueError(f"overcommit {r}={f}: need a resource name and a factor >= 1")

    def preempt_budget(self, machines: int) -> int | None:
        """Victims non-production tasks may evict in one pass (None: no limit)."""
        rate = self.nonprod_preempt_rate
        if rate is None:
            return None
        return max(1, round(rate * machines / 1000)) if rate > 0 else 0

    def schedule(self, snapshot: Snapshot, new_id: Callable[[], str]) -> Plan:
        """Place what can be placed (evicting lower-priority tasks where allowed).

        Gangs (`gang: true`): a gang job's pending tasks are placed in this pass all
        together or not at all. A pass that places only part of a gang is run again
        without that gang (the same seed, so the others place as they would have), until
        every gang in the plan is whole; the gangs left out fail with `gang of N: only M
        fit`. Rerunning rather than undoing means a partial gang never keeps the room (or
        the preemptions) it took from the tasks after it."""
        plan = _Pass(self, snapshot).run(new_id)
        gangs: dict[str, int] = {}
        for t in snapshot.pending:
            if t.spec.gang:
                gangs[t.job] = gangs.get(t.job, 0) + 1
        if not gangs:
            return plan
        out: dict[str, str] = {}  # gangs left out, and why
        while True:
            placed: dict[str, int] = {}
            for p in plan.placements:
                if p.job in gangs:
                    placed[p.job] = placed.get(p.job, 0) + 1
            short = [j for j, n in gangs.items() if j not in out and placed.get(j, 0) < n]
            if not short:
                break
            for j in short:
                out[j] = gang_reason(gangs[j], placed.get(j, 0), plan.failures, j)
            pending = [t for t in snapshot.pending if t.job not in out]
            plan = _Pass(
                self,
                Snapshot(snapshot.machines, pending, snapshot.running, snapshot.table),
            ).run(new_id)
        plan.failures += [(t.job, t.index, out[t.job]) for t in snapshot.pending if t.job in out]
        return plan

    def explain(self, snapshot: Snapshot, job: str, index: int) -> tuple[dict[str, int], int]:
        """Why task job/index is pending: machines rejected per filter, and how many fit.

        Counts each machine once, under the first filter that rejects it, in the order of
        the filter table `FILTERS` (state, taints, constraints, distinct-machines, spread,
        then cpu, ram, disk, gpu, ports): the steps a pass places with. Raises KeyError if
        the task is not among the snapshot's pending tasks.
        """
        for t in snapshot.pending:
            if t.job == job and t.index == index:
                return self.explain_request(snapshot, t)
        raise KeyError(f"{job}/{index} is not pending")

    def explain_request(self, snapshot: Snapshot, task: TaskRequest) -> tuple[dict[str, int], int]:
        """`explain` for any task, pending or not (a running task: where it would fit now),
        through the same filter table."""
        return _Pass(self, snapshot).explain(task)


def explain(
    snapshot: Snapshot, job: str, index: int, scheduler: BorgScheduler | None = None
) -> tuple[dict[str, int], int]:
    """`BorgScheduler.explain` with default options (for the master's ExplainTask RPC)."""
    return (scheduler or BorgScheduler()).explain(snapshot, job, index)


class _Pass:
    """One scheduling pass: the cell as numpy vectors, job states and equivalence classes."""

    def __init__(self, s: BorgScheduler, snap: Snapshot) -> None:
        self.s = s
        self.snap = snap
        t = self.t = snap.table if snap.table is not None else CellTable.from_snapshot(snap)
        n = self.n = t.n
        self.names = t.names
        self.index = t.index
        cap = np.empty((5, n), dtype=np.float64)
        cap[:4] = t.cap[:, :n]
        cap[PORTS, :] = s.max_ports
        used = t.used[:, :n]
        # Placed tasks: preemption candidates, spread/distinct counts (read-only but for
        # r_alive, which evictions in this pass clear).
        nr = t.nrows
        self.r_m = t.r_m[:nr]
        self.r_prio = t.r_prio[:nr]
        self.r_req = t.r_req[:, :nr]
        self.r_alive = t.r_alive[:nr].copy()
        self.run_by_job = t.by_job
        self.cap = cap
        self.capl: list[list[float]] = cap.tolist()
        self.free = cap - used
        self.base_free = self.free.copy()
        self.placed_m: list[int] = []
        self.placed_req: list[np.ndarray] = []
        machines = t.derived("machines")
        if machines is None:
            machines = t.remember(
                "machines",
                (
                    np.array([st == MACHINE_UP for st in t.state], dtype=bool),
                    state_counts(t.state),
                    [i for i in range(n) if t.taints[i] and t.state[i] == MACHINE_UP],
                    AttrIndex(t.attrs),
                ),
            )
        self.up: np.ndarray = machines[0]
        # Machines not up, by state (rejected whatever the task), and up machines with taints.
        self.down: dict[str, int] = machines[1]
        self.tainted: list[int] = machines[2]
        self.attrs: AttrIndex = machines[3]
        # Per state that is not up, the machines not in it (the `state` filter step's checks).
        self.not_in_state: dict[str, np.ndarray] = t.derived("not_in_state") or t.remember(
            "not_in_state",
            {st: np.array([x != st for x in t.state], dtype=bool) for st in self.down},
        )
        self.mver = np.zeros(n, dtype=np.int64)
        self.rng = np.random.default_rng(s.seed)
        self.perm = self.rng.permutation(n).astype(np.int64)
        self.perm2 = np.concatenate([self.perm, self.perm])
        self.rank = np.empty(n, dtype=np.int64)
        self.rank[self.perm] = np.arange(n, dtype=np.int64)
        # Per machine set, not per pass: kept with the table until a machine changes.
        self.static_cache: dict[tuple[Any, ...], np.ndarray] = t.derived("static") or t.remember(
            "static", {}
        )
        self.dom_cache: dict[str, tuple[np.ndarray, bool]] = t.derived("dom") or t.remember(
            "dom", {}
        )
        self.jobs: dict[str, _JobState] = {}
        self.classes: dict[tuple[Any, ...], _Class] = {}
        self.pre_cache: dict[int, np.ndarray] = {}
        self.level_cache: dict[int, list[int]] = {}
        self.level_rows: dict[int, np.ndarray] = {}  # placed tasks of priority <= p
        self.k = self.s.sample_size if self.s.sample else max(1, n)
        self.slack: np.ndarray | None = None
        # Whether some machine is, or may get, over capacity: then a task must be checked
        # even for resources it does not ask for. Without overcommit, placements never take
        # a machine over capacity, so only machines over it from the start (capacity shrunk)
        # can be.
        self.may_be_over = bool((self.free[:4] < -EPS).any())
        if any(f > 1.0 for f in s.nonprod_overcommit.values()):
            self.may_be_over = True
            self.slack = np.zeros((5, n), dtype=np.float64)
            for r, f in s.nonprod_overcommit.items():
                d = RESOURCES.index(r)
                self.slack[d] = cap[d] * (f - 1.0)

    # --- cell state -------------------------------------------------------------------------

    def cur_free(self) -> np.ndarray:
        """Free resources now. Incremental mode keeps `free` up to date on every placement;
        otherwise it is recomputed from the snapshot and this pass's placements each time."""
        if self.s.incremental or not self.placed_m:
            return self.free
        f = self.base_free.copy()
        np.subtract.at(f.T, np.array(self.placed_m), np.array(self.placed_req))
        return f

    def static_mask(self, spec: JobSpec) -> np.ndarray:
        """Machines passing the per-machine filter steps (state, taints, constraints); shared by
        equal signatures and kept with the table until a machine changes."""
        sig = static_signature(spec)
        got = self.static_cache.get(sig)
        if got is None:
            got = np.ones(self.n, dtype=bool)
            for step in PER_MACHINE:
                for _, ok in step.checks(self, spec, None, ALL, self.free):
                    got &= ok
            self.static_cache[sig] = got
        return got

    def domains(self, attr: str) -> tuple[np.ndarray, bool]:
        got = self.dom_cache.get(attr)
        if got is None:
            codes, values = self.attrs.codes(attr)
            present = self.attrs.present(attr)
            own = len(values) + np.arange(self.n, dtype=np.int64)
            got = self.dom_cache[attr] = (np.where(present, codes, own), not bool(present.any()))
        return got

    def job_state(self, spec: JobSpec) -> _JobState:
        js = self.jobs.get(spec.name)
        if js is not None:
            return js
        dom, dom_is_machine = self.domains(spec.spread or self.s.failure_domain)
        distinct = distinct_machines(spec)
        js = _JobState(
            name=spec.name,
            spec=spec,
            distinct=distinct,
            used_mask=np.zeros(self.n, dtype=bool) if distinct else None,
            dom=dom,
            dom_is_machine=dom_is_machine,
        )
        if spec.spread:
            codes, _ = self.attrs.codes(spec.spread)
            static = self.static_mask(spec)
            values = int(np.unique(codes[static]).size) if static.any() else 1
            js.spread_codes = codes
            js.spread_lim = spread_limit(spec.replicas, values)
        rows = self.run_by_job.get(spec.name)
        if rows:
            # The job's placed tasks, counted in bulk (no class of the job exists yet, so
            # there is nothing to invalidate).
            ks = np.fromiter(rows, dtype=np.int64, count=len(rows))
            ms = self.r_m[ks[self.r_alive[ks]]]
            if ms.size:
                if js.used_mask is not None:
                    js.used_mask[ms] = True
                d, n = np.unique(dom[ms], return_counts=True)
                js.dom_counts = dict(zip(d.tolist(), n.tolist(), strict=True))
                if js.spread_codes is not None:
                    v, n = np.unique(js.spread_codes[ms], return_counts=True)
                    js.spread_counts = dict(zip(v.tolist(), n.tolist(), strict=True))
                    js.spread_full = {x for x, c in js.spread_counts.items() if c >= js.spread_lim}
        self.jobs[spec.name] = js
        return js

    def _count(self, js: _JobState, m: int, delta: int) -> None:
        """A task of the job arrives on (+1) or leaves (-1) machine m."""
        if js.used_mask is not None:
            js.used_mask[m] = delta > 0
        d = int(js.dom[m])
        js.dom_counts[d] = js.dom_counts.get(d, 0) + delta
        if not js.dom_is_machine:
            self._invalidate(js, js.dom, d)
        if js.spread_codes is not None:
            v = int(js.spread_codes[m])
            c = js.spread_counts[v] = js.spread_counts.get(v, 0) + delta
            was_full = v in js.spread_full
            if c >= js.spread_lim:
                js.spread_full.add(v)
            else:
                js.spread_full.discard(v)
            if was_full != (v in js.spread_full):
                self._invalidate(js, js.spread_codes, v)

    def _invalidate(self, js: _JobState, codes: np.ndarray, value: int) -> None:
        """Mark the job's candidates on machines with codes[m] == value for re-scoring."""
        for c in js.classes:
            if c.size:
                hit = codes[c.cidx[: c.size]] == value
                c.cver[: c.size][hit] = -1

    # --- equivalence classes -------------------------------------------------------------

    def class_of(self, t: TaskRequest) -> _Class:
        spec = t.spec
        r = spec.requirements
        key: tuple[Any, ...] = (
            t.job,
            t.version,
            spec.priority >= PROD_LOW,  # only whether it may use the overcommit
            r.cpu,
            r.ram,
            r.disk,
            r.gpu,
            len(r.ports),
        )
        if not self.s.eqclass:
            key = (t.job, t.index, t.version)
        c = self.classes.get(key)
        if c is None:
            js = self.job_state(spec)
            req = _req_vector(spec)
            # Every resource the store's re-check compares, even unrequested ones (a machine
            # already over capacity in one takes nothing more) where a machine can be over
            # capacity at all, and ports if asked.
            dims = [d for d in (CPU, RAM, DISK, GPU) if req[d] > 0 or self.may_be_over]
            dims += [PORTS] if req[PORTS] > 0 else []
            c = _Class(
                job=js,
                spec=spec,
                req=req,
                dims=dims,
                names=[RESOURCES[d] for d in dims],
                reql=req.tolist(),
                steps=tuple(f for f in PER_PASS if f.applies(js)),
                ones=tuple(f.one for f in PER_PASS if f.one is not None and f.applies(js)),
                static=self.static_mask(spec),
                slack=self.slack if spec.priority < PROD_LOW else None,
                offset=int(self.rng.integers(self.n)) if self.n else 0,
            )
            js.classes.append(c)
            self.classes[key] = c
        return c

    def feasible(
        self,
        c: _Class,
        idx: Machines,
        free: np.ndarray,
        steps: Sequence[FilterStep] | None = None,
    ) -> np.ndarray:
        """Which of machines `idx` pass every filter step for class c: the cached per-machine
        mask, then the per-pass `steps` (None: those that apply to the class's job, all that
        can reject anything when placing)."""
        ok = c.static[idx].copy() if isinstance(idx, slice) else c.static[idx]
        for step in c.steps if steps is None else steps:
            for _, passing in step.checks(self, c.spec, c, idx, free):
                ok &= passing
        return ok

    def score(self, c: _Class, idx: np.ndarray, free: np.ndarray) -> np.ndarray:
        fc, fr = free[CPU, idx], free[RAM, idx]
        cc, cr = self.cap[CPU, idx], self.cap[RAM, idx]
        if c.slack is not None:
            fc, fr = fc + c.slack[CPU, idx], fr + c.slack[RAM, idx]
            cc, cr = cc + c.slack[CPU, idx], cr + c.slack[RAM, idx]
        fit = fit_scores(self.s.policy, fc, fr, cc, cr, float(c.req[CPU]), float(c.req[RAM]))
        if self.s.spread_weight <= 0:
            return fit
        counts = c.job.dom_counts
        if counts:
            get = counts.get
            n = np.fromiter((get(d, 0) for d in c.job.dom[idx].tolist()), np.float64, len(idx))
        else:
            n = np.zeros(len(idx), dtype=np.float64)
        return combine(fit, spread_scores(n), self.s.fit_weight, self.s.spread_weight)

    def one(self, c: _Class, m: int, free: np.ndarray) -> float:
        """Feasibility and score of one machine in plain floats (NEG if infeasible): the
        cheap path for the one or two candidates a placement changes."""
        if not c.static[m]:
            return NEG
        col = free[:, m].tolist()
        for ok in c.ones:
            if not ok(self, c, m, col):
                return NEG
        slack = c.slack
        req = c.reql
        js = c.job
        fc, fr, cc, cr = col[CPU], col[RAM], self.capl[CPU][m], self.capl[RAM][m]
        if slack is not None:
            s0, s1 = float(slack[CPU, m]), float(slack[RAM, m])
            fc, fr, cc, cr = fc + s0, fr + s1, cc + s0, cr + s1
        fit = fit_score(self.s.policy, fc, fr, cc, cr, req[CPU], req[RAM])
        if self.s.spread_weight <= 0:
            return fit
        n = float(js.dom_counts.get(int(js.dom[m]), 0)) if js.dom_counts else 0.0
        return combine_one(fit, n, self.s.fit_weight, self.s.spread_weight)

    def refresh(self, c: _Class, free: np.ndarray) -> None:
        """Re-check and re-score candidates whose machine changed (all of them without the
        score cache)."""
        size = c.size
        if not size:
            return
        if self.s.score_cache:
            stale = np.flatnonzero(self.mver[c.cidx[:size]] != c.cver[:size])
            if not stale.size:
                return
        else:
            stale = np.arange(size)
        if stale.size <= 8:
            for j in stale.tolist():
                m = int(c.cidx[j])
                old = c.cscore[j] > NEG
                new = self.one(c, m, free)
                c.cscore[j] = new
                c.cver[j] = self.mver[m]
                c.live += int(new > NEG) - int(old)
        else:
            idx = c.cidx[stale]
            ok = self.feasible(c, idx, free)
            sc = np.full(len(idx), NEG)
            if ok.any():
                sc[ok] = self.score(c, idx[ok], free)
            c.live += int(np.count_nonzero(ok)) - int(np.count_nonzero(c.cscore[stale] > NEG))
            c.cscore[stale] = sc
            c.cver[stale] = self.mver[idx]
        if size > 32 and c.live * 2 < size:
            keep = np.flatnonzero(c.cscore[:size] > NEG)
            n = len(keep)
            c.cidx[:n] = c.cidx[keep]
            c.cver[:n] = c.cver[keep]
            c.cscore[:n] = c.cscore[keep]
            c.size = n

    def scan(self, c: _Class, want: int, free: np.ndarray) -> None:
        """Examine the next machines of the class's random order until `want` more feasible
        ones are found (or every machine has been seen)."""
        n = self.n
        while want > 0 and c.scanned < n:
            ratio = max(c.found / c.scanned, 1 / 64) if c.scanned else 1.0
            chunk = min(n - c.scanned, max(256, int(want * 2 / ratio)))
            start = c.offset + c.scanned
            idx = self.perm2[start : start + chunk]
            c.scanned += chunk
            c.eligible += int(np.count_nonzero(c.static[idx]))
            good = idx[self.feasible(c, idx, free)]
            if not good.size:
                continue
            c.found += len(good)
            want -= len(good)
            self._append(c, good, self.score(c, good, free))

    def _append(self, c: _Class, idx: np.ndarray, sc: np.ndarray) -> None:
        need = c.size + len(idx)
        if need > len(c.cidx):
            cap = max(need, 2 * len(c.cidx))
            for name in ("cidx", "cver", "cscore"):
                old = getattr(c, name)
                new = np.empty(cap, dtype=old.dtype)
                new[: c.size] = old[: c.size]
                setattr(c, name, new)
        c.cidx[c.size : need] = idx
        c.cver[c.size : need] = self.mver[idx]
        c.cscore[c.size : need] = sc
        c.size = need
        c.live += len(idx)

    def want(self, c: _Class) -> int:
        """Candidates a class keeps: `sample_size`, or four times that where room is scarce
        (under half the machines it looked at that pass its state, taint and constraint
        filters have room), where the choice matters most (t=0 of the trace: 92-98% placed
        across seeds at a flat 200, 98-99% with this)."""
        if c.found * 2 < c.eligible:
            return self.k * SCARCE_SAMPLE
        return self.k

    def pick(self, c: _Class) -> int | None:
        """The best feasible machine for the next task of class c, or None."""
        free = self.cur_free()
        self.refresh(c, free)
        k = self.want(c)
        if c.live < k and c.scanned < self.n:
            self.scan(c, k - c.live, free)
            wider = self.want(c)  # the scan may have shown that room is scarce
            if wider > k and c.live < wider and c.scanned < self.n:
                self.scan(c, wider - c.live, free)
        if not c.live:
            return None
        sc = c.cscore[: c.size]
        best = sc[int(sc.argmax())]
        hits = np.flatnonzero(sc == best)
        if len(hits) == 1:
            return int(c.cidx[hits[0]])
        ms = c.cidx[hits]
        return int(ms[np.argmin(self.rank[ms])])

    def place(self, c: _Class, m: int) -> None:
        self.free[:, m] -= c.req
        if not self.s.incremental:
            self.placed_m.append(m)
            self.placed_req.append(c.req)
        self.mver[m] += 1
        self._count(c.job, m, +1)

    # --- preemption ----------------------------------------------------------------------

    def preemptible(self, ceiling: int) -> np.ndarray:
        """Per machine, resources held by live placed tasks with priority below `ceiling`."""
        got = self.pre_cache.get(ceiling)
        if got is None:
            got = np.zeros((5, self.n), dtype=np.float64)
            sel = self.r_alive & (self.r_prio < ceiling)
            if sel.any():
                where = self.r_m[sel]
                for d in range(5):
                    got[d] = np.bincount(where, weights=self.r_req[d, sel], minlength=self.n)
            self.pre_cache[ceiling] = got
        return got

    def levels(self, ceiling: int) -> list[int]:
        """Distinct priorities of placed tasks below `ceiling`, lowest first."""
        got = self.level_cache.get(ceiling)
        if got is None:
            sel = self.r_alive & (self.r_prio < ceiling)
            got = self.level_cache[ceiling] = np.unique(self.r_prio[sel]).tolist()
        return got

    def preempt_for(
        self, c: _Class, prio: int, budget: int | None = None
    ) -> tuple[int, list[int]] | None:
        """A machine and the placed tasks (rows of the cell table) to evict there, at most
        `budget` of them (None: no limit), or None.

        Victims cost what they are: their priority first, then their number. So the search is
        global, not over a sample: it finds the lowest victim priority `p` at which any machine
        can make room (all of its tasks of priority <= p counted), then, among machines that
        can at that level, one where a single victim suffices (the lowest-priority and then
        largest such task, which leaves the most room for the tasks that follow), else the
        fewest victims on the `preempt_candidates` machines closest to fitting (stopping at
        the first where two victims of priority p suffice). A machine that fits without
        any victim (room freed by an eviction earlier in this pass) is taken first.
        """
        ceiling = victim_ceiling(prio)
        levels = self.levels(ceiling)
        free = self.cur_free()
        # Every filter step but the ones evicting can change (resources): checked below.
        base = self.feasible(c, ALL, free, [f for f in c.steps if not f.room])
        have = free if c.slack is None else free + c.slack
        short = c.req[:, None] - have  # per resource and machine, what is missing
        dims = c.dims
        ok = base.copy()
        for d in dims:
            ok &= short[d] <= EPS
        if ok.any():
            ms = np.flatnonzero(ok)
            return int(ms[np.argmin(self.rank[ms])]), []
        if budget is not None and budget <= 0:
            return None
        for p in levels:
            pre = self.preemptible(p + 1)
            ok = base.copy()
            for d in dims:
                ok &= pre[d] >= short[d] - EPS
            if ok.any():
                break
        else:
            return None
        # One victim of priority <= p on a machine that can make room at level p.
        rows = self.level_rows.get(p)
        if rows is None:
            rows = self.level_rows[p] = np.flatnonzero(self.r_alive & (self.r_prio <= p))
        rows = rows[self.r_alive[rows]]
        rows = rows[ok[self.r_m[rows]]]
        if rows.size:
            rm = self.r_m[rows]
            fits = np.ones(rows.size, dtype=bool)
            for d in dims:
                fits &= self.r_req[d, rows] >= short[d, rm] - EPS
            rows, rm = rows[fits], rm[fits]
            if rows.size:
                size = np.zeros(rows.size, dtype=np.float64)
                for d in (CPU, RAM):
                    cap = self.cap[d, rm]
                    size += np.divide(
                        self.r_req[d, rows], cap, out=np.zeros(rows.size), where=cap > 0
                    )
                one = np.lexsort((self.rank[rm], -size, self.r_prio[rows]))[0]
                return int(rm[one]), [int(rows[one])]
        # Several victims: greedy on the machines closest to fitting.
        ms = np.flatnonzero(ok)
        gap = np.zeros(ms.size, dtype=np.float64)
        for d in dims:
            cap = self.cap[d, ms]
            gap += np.divide(np.maximum(short[d, ms], 0), cap, out=np.zeros(ms.size), where=cap > 0)
        ms = ms[np.lexsort((self.rank[ms], gap))][: self.s.preempt_candidates]
        best: tuple[tuple[int, int, int], int, int, list[int]] | None = None
        for m in ms.tolist():
            need = [float(short[d, m]) for d in dims]
            cands = [
                Candidate(k, int(self.r_prio[k]), tuple(float(self.r_req[d, k]) for d in dims))
                for k in sorted(self.t.machine_rows().get(m, ()))
                if self.r_alive[k] and self.r_prio[k] < ceiling
            ]
            victims = choose_victims(need, cands)
            if victims is None or (budget is not None and len(victims) > budget):
                continue
            key = (victims_cost(victims), int(self.rank[m]))
            if best is None or key < (best[0], best[1]):
                best = (key[0], key[1], m, [v.key for v in victims])
                if key[0][:2] == (p, 2):
                    break  # no single victim exists: two of priority p cannot be beaten
        if best is None:
            return None
        return best[2], best[3]

    def evict(self, victims: list[int]) -> None:
        for k in victims:
            m = int(self.r_m[k])
            self.r_alive[k] = False
            self.free[:, m] += self.r_req[:, k]
            if not self.s.incremental:
                self.placed_m.append(m)
                self.placed_req.append(-self.r_req[:, k])
            self.mver[m] += 1
            prio = int(self.r_prio[k])
            for ceiling, arr in self.pre_cache.items():
                if prio < ceiling:
                    arr[:, m] -= self.r_req[:, k]
            js = self.jobs.get(self.t.r_job[k])
            if js is not None:
                self._count(js, m, -1)

    # --- "why pending?" ------------------------------------------------------------------

    def rejections(self, c: _Class) -> tuple[dict[str, int], int]:
        """Machines rejected per named check of the filter table (each machine under the
        first check it fails, in table order), and how many pass them all: the same steps
        `static_mask` and `feasible` place with."""
        out: dict[str, int] = {}
        remaining = np.ones(self.n, dtype=bool)
        free = self.cur_free()
        for step in FILTERS:
            for name, ok in step.checks(self, c.spec, None if step.per_machine else c, ALL, free):
                k = int(np.count_nonzero(remaining & ~ok))
                if k:
                    out[name] = out.get(name, 0) + k
                remaining &= ok
        return out, int(np.count_nonzero(remaining))

    def explain(self, t: TaskRequest) -> tuple[dict[str, int], int]:
        return self.rejections(self.class_of(t))

    # --- the pass ------------------------------------------------------------------------

    def run(self, new_id: Callable[[], str]) -> Plan:
        plan = Plan()
        budget = self.s.preempt_budget(self.n)
        for t in _queue(self.snap.pending):
            c = self.class_of(t)
            if c.failed is not None:
                plan.failures.append((t.job, t.index, c.failed))
                continue
            m = self.pick(c)
            if m is None and self.s.preemption:
                prod = t.priority >= PROD_LOW
                got = self.preempt_for(c, t.priority, None if prod else budget)
                if got is not None:
                    m, victims = got
                    if not prod and budget is not None:
                        budget -= len(victims)
                    for k in victims:
                        plan.preemptions.append(
                            Preemption(
                                job=self.t.r_job[k],
                                index=self.t.r_index[k],
                                incarnation=self.t.r_inc[k],
                                machine=self.names[m],
                            )
                        )
                    self.evict(victims)
            if m is None:
                rejected, _ = self.rejections(c)
                c.failed = format_reason(rejected, self.n)
                plan.failures.append((t.job, t.index, c.failed))
                continue
            self.place(c, m)
            plan.placements.append(
                Placement(
                    job=t.job,
                    index=t.index,
                    machine=self.names[m],
                    incarnation=new_id(),
                    version=t.version,
                )
            )
        return plan


def _queue(pending: Sequence[TaskRequest]) -> list[TaskRequest]:
    """High to low priority; within a priority, round-robin over jobs (by name), each job's
    tasks by index."""
    by_prio: dict[int, dict[str, list[TaskRequest]]] = {}
    for t in pending:
        by_prio.setdefault(t.priority, {}).setdefault(t.job, []).append(t)
    out: list[TaskRequest] = []
    for prio in sorted(by_prio, reverse=True):
        jobs = [sorted(ts, key=lambda t: t.index) for _, ts in sorted(by_prio[prio].items())]
        i = 0
        while jobs:
            out.extend(ts[i] for ts in jobs)
            i += 1
            jobs = [ts for ts in jobs if len(ts) > i]
    return out
