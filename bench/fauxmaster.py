"""Fauxmaster: replay Google's clusterdata-2011-2 sample through the real scheduler.

    python -m bench.fauxmaster --trace ../shared/traces/google2011 [--until SECONDS] [--json]
        [--interval SECONDS] [--policy hybrid] [--seed 1] [--no-eqclass] [--no-sample]
        [--no-cache] [--no-incremental] [--out FILE]

As in the Borg paper's Fauxmaster, the scheduler code is the real one (`BorgScheduler`); what
is simulated is the rest of the master. Instead of Raft and `borgmaster.store.Store`, plans are
applied to an in-process table (`FauxCell`): building ~144k `Job`/`Task` objects and encoded
Raft commands would measure the store, not the scheduler. `FauxCell.apply` does what the
store's `ApplyPlan` does: evict the plan's victims (they go back to pending with reason
`preempted`), then re-check every placement (task still pending, machine known and up, room for
cpu, ram and disk) and commit the ones that still fit; the rest stay pending for the next pass.

Trace mapping (see docs/scheduler.md):
- machines: machine_events ADD (and UPDATE) rows give CPUs and memory normalised to the largest
  machine; 1.0 CPU = 32 cores and 1.0 memory = 128 GiB. The trace has no machine disk: every
  machine gets 1.0 = 1 TiB, the unit task disk requests are scaled by. REMOVE takes a machine
  away and sends its tasks back to pending.
- tasks: SUBMIT makes a task pending with its job's priority, requests and different-machine
  restriction (`distinct_machines`); missing requests count as 0. SCHEDULE rows are Borg's own
  decisions and are ignored (we decide). EVICT/FAIL/FINISH/KILL/LOST end the task (the trace
  resubmits it with a later SUBMIT when Borg did). UPDATE rows are ignored.
- priorities 0-11 map onto SPEC.md bands: 0-1 free (0, 50), 2-8 batch (100 + 14 * (p - 2)),
  9-10 production (200, 250), 11 monitoring (300).
- `--until 0` places everything submitted at time 0 (the cell's initial workload) in one pass;
  later events are applied in time order and a pass runs every `--interval` trace seconds.

Figures compared with Borg on the same window: `trace_evictions` (EVICT rows replayed: Borg's
own evictions), `preempted` (ours), and per trace hour (`hours`): placed, pending (and pending
production tasks) at the hour's end, preemptions and Borg's evictions in the hour, pass time
p50/p99 (a pass: snapshot, plan, apply), wall time and `speedup` (trace seconds per wall
second; the first hour also `speedup_with_t0`, counting the initial t=0 pass). `t0` holds the
figures right after the t=0 pass.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np

from borgmaster.model import MACHINE_LOST, MACHINE_UP, JobSpec, Requirements, Resources
from borgmaster.scheduler.borg import BorgScheduler
from borgmaster.scheduler.core import Plan, Snapshot, TaskRequest
from borgmaster.scheduler.table import CellTable, req_tuple

CORES = 32.0  # 1.0 normalised CPU
RAM = 128 << 30  # 1.0 normalised memory, bytes
DISK = 1 << 40  # 1.0 normalised disk, bytes
SUBMIT, SCHEDULE, EVICT, FAIL, FINISH, KILL, LOST = range(7)
M_ADD, M_REMOVE, M_UPDATE = range(3)
HOUR_US = 3_600_000_000


def band_priority(p: int) -> int:
    """Trace priority 0..11 to a SPEC.md priority 0..399."""
    if p <= 1:
        return 50 * p
    if p <= 8:
        return 100 + 14 * (p - 2)
    if p <= 10:
        return 200 + 50 * (p - 9)
    return 300


def _f(s: str) -> float:
    return float(s) if s else 0.0


@dataclass
class FauxMachine:
    name: str
    capacity: Resources
    up: bool = True


@dataclass
class FauxTask:
    job: str
    index: int
    spec: JobSpec
    machine: str = ""
    incarnation: str = ""
    reason: str = ""


class FauxCell:
    """The master's state, in process: machines, tasks, and the scheduler's `CellTable`,
    which it keeps up to date event by event (so a pass does not rebuild the cell)."""

    def __init__(self, overcommit: dict[str, float] | None = None) -> None:
        # Non-prod tasks may fill machines to capacity x factor (the scheduler's
        # nonprod_overcommit), standing in for Borg's reclamation.
        self.oc_cpu = (overcommit or {}).get("cpu", 1.0)
        self.oc_ram = (overcommit or {}).get("ram", 1.0)
        self.machines: dict[str, FauxMachine] = {}
        self.tasks: dict[tuple[str, int], FauxTask] = {}
        self.pending: dict[tuple[str, int], FauxTask] = {}
        self.table = CellTable()
        self.preempted = 0
        self.preempted_by_prio: dict[int, int] = {}
        self.rejected = 0

    def snapshot(self) -> Snapshot:
        pending = [
            TaskRequest(job=t.job, index=t.index, version=1, spec=t.spec)
            for t in self.pending.values()
        ]
        return Snapshot(machines=[], pending=pending, table=self.table)

    def unplace(self, t: FauxTask, reason: str) -> None:
        """Take a task off its machine; it waits again."""
        self.table.remove(t.job, t.index)
        t.machine = ""
        t.incarnation = ""
        t.reason = reason
        self.pending[(t.job, t.index)] = t

    def apply(self, plan: Plan) -> int:
        """Commit a plan the way the store's ApplyPlan does: evict, then re-check each
        placement against the current table and commit the ones that still fit."""
        for v in plan.preemptions:
            t = self.tasks.get((v.job, v.index))
            if t is not None and t.incarnation == v.incarnation and t.machine:
                self.unplace(t, "preempted")
                self.preempted += 1
                prio = t.spec.priority
                self.preempted_by_prio[prio] = self.preempted_by_prio.get(prio, 0) + 1
        placed = 0
        tab = self.table
        cap, used = tab.cap, tab.used
        for p in plan.placements:
            t = self.pending.get((p.job, p.index))
            m = self.machines.get(p.machine)
            if t is None or m is None or not m.up:
                self.rejected += 1
                continue
            i = tab.index[m.name]
            r = t.spec.requirements
            oc_cpu, oc_ram = (self.oc_cpu, self.oc_ram) if t.spec.priority < 200 else (1.0, 1.0)
            fits = (
                used[0, i] + r.cpu <= cap[0, i] * oc_cpu + 1e-9
                and used[1, i] + r.ram <= cap[1, i] * oc_ram + 1.0
                and used[2, i] + r.disk <= cap[2, i]
                and used[3, i] + r.gpu <= cap[3, i]
            )
            if not fits:
                self.rejected += 1
                continue
            tab.place(t.job, t.index, m.name, t.spec.priority, req_tuple(r), p.incarnation)
            t.machine, t.incarnation, t.reason = m.name, p.incarnation, ""
            del self.pending[(t.job, t.index)]
            placed += 1
        for job, index, reason in plan.failures:
            ft = self.pending.get((job, index))
            if ft is not None:
                ft.reason = reason
        return placed

    def add_machine(self, name: str, cpu: float, ram: float) -> None:
        cap = Resources(cpu=cpu * CORES, ram=int(ram * RAM), disk=DISK, gpu=0)
        m = self.machines.get(name)
        if m is None:
            self.machines[name] = FauxMachine(name=name, capacity=cap)
        else:
            m.capacity, m.up = cap, True
        self.table.set_machine(name, cap, state=MACHINE_UP)

    def remove_machine(self, name: str) -> None:
        m = self.machines.get(name)
        if m is None:
            return
        m.up = False
        self.table.set_state(name, MACHINE_LOST)
        for key in self.table.on_machine(name):
            self.unplace(self.tasks[key], "machine-lost")

    def submit(self, t: FauxTask) -> None:
        old = self.tasks.get((t.job, t.index))
        if old is not None:
            self.end(old.job, old.index)
        self.tasks[(t.job, t.index)] = t
        self.pending[(t.job, t.index)] = t

    def end(self, job: str, index: int) -> None:
        t = self.tasks.pop((job, index), None)
        if t is None:
            return
        if t.machine:
            self.unplace(t, "")
        self.pending.pop((job, index), None)

    def placed(self) -> int:
        return len(self.tasks) - len(self.pending)

    def utilization(self) -> dict[str, float]:
        tab = self.table
        up = np.array([s == MACHINE_UP for s in tab.state], dtype=bool)
        n = tab.n
        cap_cpu = float(tab.cap[0, :n][up].sum()) or 1.0
        cap_ram = float(tab.cap[1, :n][up].sum()) or 1.0
        return {
            "cpu": round(float(tab.used[0, :n][up].sum()) / cap_cpu, 4),
            "ram": round(float(tab.used[1, :n][up].sum()) / cap_ram, 4),
        }


def _rows(path: str) -> Iterator[list[str]]:
    with gzip.open(path, "rt", newline="") as f:
        yield from csv.reader(f)


def machine_events(trace: str) -> Iterator[tuple[int, int, str, float, float]]:
    d = os.path.join(trace, "machine_events")
    for name in sorted(os.listdir(d)):
        for r in _rows(os.path.join(d, name)):
            yield int(r[0]), int(r[2]), f"m{r[1]}", _f(r[4]), _f(r[5])


def task_events(trace: str) -> Iterator[list[str]]:
    d = os.path.join(trace, "task_events")
    for name in sorted(os.listdir(d)):
        yield from _rows(os.path.join(d, name))


class Replay:
    """Feeds trace events into a FauxCell and runs scheduler passes."""

    def __init__(self, trace: str, sched: BorgScheduler) -> None:
        self.trace = trace
        self.sched = sched
        self.cell = FauxCell(sched.nonprod_overcommit)
        self.specs: dict[tuple[str, int, float, float, float, bool], JobSpec] = {}
        self.ids = itertools.count()
        self.submitted = 0
        self.schedule_s = 0.0
        self.passes = 0
        self.trace_evictions = 0  # EVICT rows replayed (Borg's own evictions in the window)
        self.pass_s: list[float] = []  # wall time of each pass after t=0: snapshot, plan, apply
        self.t0: dict[str, Any] = {}
        self.hours: list[dict[str, Any]] = []
        self._hour: dict[str, Any] = {}

    def spec(self, r: list[str]) -> JobSpec:
        job = f"j{r[2]}"
        prio = band_priority(int(r[8]) if r[8] else 0)
        cpu, ram, disk = _f(r[9]), _f(r[10]), _f(r[11])
        distinct = r[12] == "1"
        key = (job, prio, cpu, ram, disk, distinct)
        s = self.specs.get(key)
        if s is None:
            s = JobSpec(
                name=job,
                priority=prio,
                requirements=Requirements(
                    cpu=cpu * CORES, ram=int(ram * RAM), disk=int(disk * DISK)
                ),
            )
            if distinct:
                setattr(s, "distinct_machines", True)  # noqa: B010 - field proposed, not in model yet
            self.specs[key] = s
        return s

    def task_event(self, r: list[str]) -> None:
        kind = int(r[5])
        job, index = f"j{r[2]}", int(r[3])
        if kind == SUBMIT:
            self.cell.submit(FauxTask(job=job, index=index, spec=self.spec(r)))
            self.submitted += 1
        elif kind in (EVICT, FAIL, FINISH, KILL, LOST):
            if kind == EVICT:
                self.trace_evictions += 1
            self.cell.end(job, index)

    def schedule(self) -> int:
        if not self.cell.pending:
            return 0
        w0 = time.perf_counter()
        snap = self.cell.snapshot()
        t0 = time.process_time()
        plan = self.sched.schedule(snap, lambda: f"i{next(self.ids)}")
        self.schedule_s += time.process_time() - t0
        self.passes += 1
        placed = self.cell.apply(plan)
        if self.t0:
            self.pass_s.append(time.perf_counter() - w0)
        return placed

    def _mark(self, at: int, wall0: float) -> None:
        """Figures at trace time `at` (seconds): the end of t=0's pass or of an hour."""
        cell = self.cell
        now = time.perf_counter()
        fig: dict[str, Any] = {
            "placed": cell.placed(),
            "pending": len(cell.pending),
            "pending_pct": round(100 * len(cell.pending) / max(1, len(cell.tasks)), 2),
            "pending_prod": sum(1 for t in cell.pending.values() if t.spec.priority >= 200),
        }
        if not self.t0:
            self.t0 = {**fig, "wall_s": round(now - wall0, 3), "utilization": cell.utilization()}
        else:
            h = self._hour
            passes = self.pass_s[h["passes"] :]
            wall = now - h["wall"]
            self.hours.append(
                {
                    "from_s": h["at"],
                    "to_s": at,
                    **fig,
                    "preempted": cell.preempted - h["preempted"],
                    "trace_evictions": self.trace_evictions - h["evictions"],
                    "passes": len(passes),
                    "pass_p50_ms": _pct_ms(passes, 50),
                    "pass_p99_ms": _pct_ms(passes, 99),
                    "wall_s": round(wall, 3),
                    "speedup": round((at - h["at"]) / wall, 1) if wall > 0 else 0.0,
                }
            )
            if h["at"] == 0:  # the first hour with the t=0 pass (the initial load) in it
                w = wall + self.t0["wall_s"]
                self.hours[-1]["speedup_with_t0"] = round(at / w, 1) if w > 0 else 0.0
        self._hour = {
            "at": at,
            "wall": now,
            "passes": len(self.pass_s),
            "preempted": cell.preempted,
            "evictions": self.trace_evictions,
        }

    def run(self, until: float, interval: float) -> None:
        until_us = int(until * 1e6)
        step = max(1, int(interval * 1e6))
        mev = machine_events(self.trace)
        tev = task_events(self.trace)
        nm = next(mev, None)
        nt = next(tev, None)
        next_pass = 0
        wall0 = time.perf_counter()
        while True:
            tm = nm[0] if nm is not None else None
            tt = int(nt[0]) if nt is not None else None
            now = min(x for x in (tm, tt, until_us + 1) if x is not None)
            while now > next_pass:
                # Everything up to next_pass is in: place what waits, then move on.
                self.schedule()
                if next_pass == 0:
                    self._mark(0, wall0)
                elif next_pass % HOUR_US == 0:
                    self._mark(next_pass // 1_000_000, wall0)
                next_pass += step
            if now > until_us:
                break
            if tm is not None and tm == now and nm is not None:
                _, kind, name, cpu, ram = nm
                if kind in (M_ADD, M_UPDATE) and cpu > 0 and ram > 0:
                    self.cell.add_machine(name, cpu, ram)
                elif kind == M_REMOVE:
                    self.cell.remove_machine(name)
                nm = next(mev, None)
            elif nt is not None:
                self.task_event(nt)
                nt = next(tev, None)
        # A final retry pass for placements a stale plan lost (as the leader would).
        if self.cell.rejected:
            self.schedule()
        last = (next_pass - step) // 1_000_000
        if self._hour and last > self._hour["at"]:
            self._mark(last, wall0)  # a last partial hour


def _pct_ms(xs: list[float], p: int) -> float:
    if not xs:
        return 0.0
    s = sorted(xs)
    return round(1000 * s[min(len(s) - 1, (len(s) * p) // 100)], 1)


def _factors(text: str) -> dict[str, float]:
    """`cpu=1.25,ram=1.1` (or `none`) to {"cpu": 1.25, "ram": 1.1}."""
    if text.strip().lower() in ("", "none"):
        return {}
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        if not sep or key.strip() not in ("cpu", "ram"):
            raise ValueError(f"expected cpu=F,ram=F, got {part!r}")
        out[key.strip()] = float(value)
        if out[key.strip()] < 1.0:
            raise ValueError(f"factor {value} is below 1.0")
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description="Replay clusterdata-2011-2 through BorgScheduler.")
    ap.add_argument("--trace", required=True, help="directory with machine_events/, task_events/")
    ap.add_argument("--until", type=float, default=0.0, help="trace seconds to replay (0: t=0)")
    ap.add_argument("--interval", type=float, default=60.0, help="trace seconds between passes")
    ap.add_argument("--policy", default="hybrid", choices=("hybrid", "best", "spread"))
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--sample-size", type=int, default=200)
    ap.add_argument("--no-eqclass", action="store_true")
    ap.add_argument("--no-sample", action="store_true")
    ap.add_argument("--no-cache", action="store_true")
    ap.add_argument("--no-incremental", action="store_true")
    ap.add_argument("--no-preemption", action="store_true")
    ap.add_argument(
        "--overcommit",
        default="cpu=1.25,ram=1.2",
        help="non-prod overcommit factors standing in for reclamation ('none' for 1.0)",
    )
    ap.add_argument("--json", action="store_true", help="print one JSON line")
    ap.add_argument("--out", help="also write the JSON to this file")
    a = ap.parse_args(argv)
    for sub in ("machine_events", "task_events"):
        if not os.path.isdir(os.path.join(a.trace, sub)):
            print(
                f"error: {a.trace} has no {sub}/ (expected the google2011 sample)", file=sys.stderr
            )
            return 1
    if a.until < 0 or a.interval <= 0:
        print("error: --until must be >= 0 and --interval > 0", file=sys.stderr)
        return 2
    try:
        overcommit = _factors(a.overcommit)
    except ValueError as e:
        print(f"error: --overcommit: {e}", file=sys.stderr)
        return 2
    sched = BorgScheduler(
        a.policy,
        seed=a.seed,
        eqclass=not a.no_eqclass,
        sample=not a.no_sample,
        score_cache=not a.no_cache,
        incremental=not a.no_incremental,
        sample_size=a.sample_size,
        preemption=not a.no_preemption,
        nonprod_overcommit=overcommit,
    )
    replay = Replay(a.trace, sched)
    t0 = time.perf_counter()
    c0 = time.process_time()
    try:
        replay.run(a.until, a.interval)
    except (OSError, ValueError, IndexError) as e:
        print(f"error: cannot read the trace: {e}", file=sys.stderr)
        return 1
    wall = time.perf_counter() - t0
    cpu = time.process_time() - c0
    cell = replay.cell
    placed = cell.placed()
    doc: dict[str, Any] = {
        "machines": sum(1 for m in cell.machines.values() if m.up),
        "tasks": len(cell.tasks),
        "placed": placed,
        "pending": len(cell.pending),
        "preempted": cell.preempted,
        "trace_evictions": replay.trace_evictions,
        "preempted_by_priority": dict(sorted(cell.preempted_by_prio.items())),
        "speedup": round(a.until / wall, 1) if wall > 0 and a.until > 0 else None,
        "pass_p50_ms": _pct_ms(replay.pass_s, 50),
        "pass_p99_ms": _pct_ms(replay.pass_s, 99),
        "t0": replay.t0,
        "hours": replay.hours,
        "wall_s": round(wall, 3),
        "placements_per_s": round(placed / wall) if wall > 0 else 0,
        "utilization": cell.utilization(),
        "cpu_s": round(cpu, 3),
        "schedule_s": round(replay.schedule_s, 3),
        "passes": replay.passes,
        "submitted": replay.submitted,
        "rejected_at_apply": cell.rejected,
        "until_s": a.until,
        "options": {
            "policy": a.policy,
            "eqclass": not a.no_eqclass,
            "sample": not a.no_sample,
            "score_cache": not a.no_cache,
            "incremental": not a.no_incremental,
            "preemption": not a.no_preemption,
            "sample_size": a.sample_size,
            "seed": a.seed,
            "overcommit": overcommit,
        },
    }
    line = json.dumps(doc)
    if a.out:
        with open(a.out, "w") as f:
            f.write(line + "\n")
    if a.json:
        print(line)
    else:
        print(
            f"{placed}/{doc['tasks']} tasks placed ({placed / max(1, doc['tasks']):.1%}) on "
            f"{doc['machines']} machines in {doc['wall_s']} s (scheduler {doc['schedule_s']} s, "
            f"{doc['passes']} passes), {cell.preempted} preempted, utilization cpu "
            f"{doc['utilization']['cpu']:.1%} ram {doc['utilization']['ram']:.1%}"
        )
        if a.until > 0:
            print(
                f"trace window 0-{a.until:g} s: {replay.trace_evictions} EVICT rows in the "
                f"trace, {cell.preempted} preempted here; speedup {doc['speedup']}x real time, "
                f"pass p50 {doc['pass_p50_ms']} ms p99 {doc['pass_p99_ms']} ms"
            )
            print(
                "  hour      placed  pending  pend%  preempted  borg_evict  p50ms  p99ms  speedup"
            )
            for h in replay.hours:
                print(
                    f"  {h['from_s']:>5}-{h['to_s']:<5} {h['placed']:>7} {h['pending']:>8} "
                    f"{h['pending_pct']:>6} {h['preempted']:>10} {h['trace_evictions']:>11} "
                    f"{h['pass_p50_ms']:>6} {h['pass_p99_ms']:>6} {h['speedup']:>8}"
                    + (f" ({h['speedup_with_t0']} with t=0)" if "speedup_with_t0" in h else "")
                )
    return 0


if __name__ == "__main__":
    sys.exit(main())
