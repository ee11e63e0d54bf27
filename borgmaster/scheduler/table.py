"""The cell in columns: what a scheduler pass reads, kept up to date between passes.

A list `Snapshot` (MachineView / PlacedTask objects) costs O(cell) to build and O(cell) to
turn into the vectors a pass works on: at 12.5k machines and 140k placed tasks that is most of
a pass. A `CellTable` holds the same data as numpy columns, and its owner updates it as the
cell changes (a machine added or lost, a task placed or taken off), so a pass over it costs
what changed plus a few vector copies. The Fauxmaster keeps one for the trace replay; the
master hands the scheduler list snapshots, which `CellTable.from_snapshot` turns into a table
for that one pass (the same code path, at the cost of the conversion).

A pass only reads the table (it copies what it changes); derived data that depends only on
the machines (attribute codes, the up mask) is memoised per `machine_gen`, which every change
to a machine's state, attributes or taints bumps.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np

from borgmaster.model import MACHINE_UP, Requirements, Resources, Taint

if TYPE_CHECKING:
    from borgmaster.scheduler.core import Snapshot

# Rows of `cap` (4) and `used` / task requests (5: the last counts named ports).
NRES = 5


def req_tuple(r: Requirements) -> tuple[float, float, float, float, float]:
    return (float(r.cpu), float(r.ram), float(r.disk), float(r.gpu), float(len(r.ports)))


@dataclass
class CellTable:
    """Machines and placed tasks as columns (see the module docstring).

    Machines are rows 0..n-1 in the order they were added (never removed: a machine that goes
    away changes state). Placed tasks are rows of the `r_*` columns; a task taken off leaves a
    dead row (`r_alive` False) that the next placement reuses.
    """

    names: list[str] = field(default_factory=list)
    index: dict[str, int] = field(default_factory=dict)
    state: list[str] = field(default_factory=list)
    attrs: list[dict[str, str]] = field(default_factory=list)
    taints: list[list[Taint]] = field(default_factory=list)
    cap: np.ndarray = field(default_factory=lambda: np.zeros((4, 64), dtype=np.float64))
    used: np.ndarray = field(default_factory=lambda: np.zeros((NRES, 64), dtype=np.float64))
    # Placed tasks.
    r_job: list[str] = field(default_factory=list)
    r_index: list[int] = field(default_factory=list)
    r_inc: list[str] = field(default_factory=list)
    r_m: np.ndarray = field(default_factory=lambda: np.full(256, -1, dtype=np.int64))
    r_prio: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=np.int64))
    r_req: np.ndarray = field(default_factory=lambda: np.zeros((NRES, 256), dtype=np.float64))
    r_alive: np.ndarray = field(default_factory=lambda: np.zeros(256, dtype=bool))
    rows: dict[tuple[str, int], int] = field(default_factory=dict)
    by_job: dict[str, set[int]] = field(default_factory=dict)
    by_machine: dict[int, set[int]] = field(default_factory=dict)
    spare: list[int] = field(default_factory=list)
    machine_gen: int = 0
    # False while `by_machine` has not been built (a table made from a list snapshot builds
    # it only if a pass looks for victims).
    by_machine_ready: bool = True
    memo: dict[str, Any] = field(default_factory=dict)
    # Whether `used` already counts the placed tasks (kept by place/remove) or comes from
    # the caller (`from_snapshot`: MachineView.used, except named ports).
    _derived_gen: int = -1

    @property
    def n(self) -> int:
        return len(self.names)

    @property
    def nrows(self) -> int:
        return len(self.r_job)

    # --- machines ------------------------------------------------------------------------

    def set_machine(
        self,
        name: str,
        capacity: Resources,
        *,
        state: str = MACHINE_UP,
        attrs: dict[str, str] | None = None,
        taints: list[Taint] | None = None,
    ) -> int:
        """Add a machine, or change a known one's capacity, state, attributes or taints."""
        i = self.index.get(name)
        if i is None:
            i = len(self.names)
            if i >= self.cap.shape[1]:
                grow = max(64, 2 * i)
                self.cap = _grow(self.cap, grow)
                self.used = _grow(self.used, grow)
            self.names.append(name)
            self.index[name] = i
            self.state.append(state)
            self.attrs.append(dict(attrs or {}))
            self.taints.append(list(taints or []))
            self.by_machine[i] = set()
        else:
            self.state[i] = state
            if attrs is not None:
                self.attrs[i] = dict(attrs)
            if taints is not None:
                self.taints[i] = list(taints)
        self.cap[:, i] = (capacity.cpu, capacity.ram, capacity.disk, capacity.gpu)
        self.machine_gen += 1
        return i

    def set_state(self, name: str, state: str) -> None:
        i = self.index[name]
        if self.state[i] != state:
            self.state[i] = state
            self.machine_gen += 1

    # --- placed tasks --------------------------------------------------------------------

    def place(
        self,
        job: str,
        index: int,
        machine: str,
        priority: int,
        req: tuple[float, float, float, float, float],
        incarnation: str = "",
    ) -> int:
        """A task now holds `req` on `machine` (adds it to the machine's used resources)."""
        m = self.index[machine]
        if self.spare:
            k = self.spare.pop()
            self.r_job[k], self.r_index[k], self.r_inc[k] = job, index, incarnation
        else:
            k = len(self.r_job)
            if k >= len(self.r_m):
                grow = 2 * k
                self.r_m = _grow(self.r_m, grow, -1)
                self.r_prio = _grow(self.r_prio, grow)
                self.r_req = _grow(self.r_req, grow)
                self.r_alive = _grow(self.r_alive, grow, False)
            self.r_job.append(job)
            self.r_index.append(index)
            self.r_inc.append(incarnation)
        self.r_m[k] = m
        self.r_prio[k] = priority
        self.r_req[:, k] = req
        self.r_alive[k] = True
        self.used[:, m] += req
        self.rows[(job, index)] = k
        self.by_job.setdefault(job, set()).add(k)
        self.machine_rows().setdefault(m, set()).add(k)
        return k

    def remove(self, job: str, index: int) -> bool:
        """The task no longer holds resources (ended, preempted, its machine went away)."""
        k = self.rows.pop((job, index), None)
        if k is None:
            return False
        m = int(self.r_m[k])
        self.used[:, m] -= self.r_req[:, k]
        self.r_alive[k] = False
        self.r_m[k] = -1
        rows = self.by_job.get(job)
        if rows is not None:
            rows.discard(k)
            if not rows:
                del self.by_job[job]
        self.machine_rows()[m].discard(k)
        self.spare.append(k)
        return True

    def on_machine(self, name: str) -> list[tuple[str, int]]:
        i = self.index.get(name)
        if i is None:
            return []
        return [(self.r_job[k], self.r_index[k]) for k in self.machine_rows().get(i, ())]

    def machine_rows(self) -> dict[int, set[int]]:
        """Per machine, the rows of the tasks placed there."""
        if not self.by_machine_ready:
            rows: dict[int, set[int]] = {}
            for k, m in enumerate(self.r_m[: self.nrows].tolist()):
                if m >= 0:
                    rows.setdefault(m, set()).add(k)
            self.by_machine = rows
            self.by_machine_ready = True
        return self.by_machine

    # --- derived, memoised per machine_gen -----------------------------------------------

    def derived(self, key: str) -> Any:
        if self._derived_gen != self.machine_gen:
            self.memo.clear()
            self._derived_gen = self.machine_gen
        return self.memo.get(key)

    def remember(self, key: str, value: Any) -> Any:
        self.derived(key)
        self.memo[key] = value
        return value

    # --- from a list snapshot --------------------------------------------------------------

    @classmethod
    def from_snapshot(cls, snap: Snapshot) -> CellTable:
        """A table for one pass over a list snapshot: machines with the callers' `used`, plus
        the named ports of the placed tasks (which MachineView.used does not count)."""
        ms = snap.machines
        run = snap.running
        n = len(ms)
        names = [m.name for m in ms]
        index = {name: i for i, name in enumerate(names)}
        cap = np.zeros((4, max(1, n)), dtype=np.float64)
        used = np.zeros((NRES, max(1, n)), dtype=np.float64)
        if n:
            caps = [m.capacity for m in ms]
            useds = [m.used for m in ms]
            cap[:, :n] = np.array([(c.cpu, c.ram, c.disk, c.gpu) for c in caps]).T
            used[:4, :n] = np.array([(u.cpu, u.ram, u.disk, u.gpu) for u in useds]).T
        nr = len(run)
        size = max(1, nr)
        r_m = np.full(size, -1, dtype=np.int64)
        r_prio = np.zeros(size, dtype=np.int64)
        r_req = np.zeros((NRES, size), dtype=np.float64)
        if nr:
            get = index.get
            r_m[:nr] = np.fromiter((get(t.machine, -1) for t in run), np.int64, nr)
            r_prio[:nr] = np.fromiter((t.priority for t in run), np.int64, nr)
            reqs: dict[int, tuple[float, float, float, float, float]] = {}
            rows = []
            for t in run:
                rq = t.requirements
                got = reqs.get(id(rq))
                if got is None:
                    got = reqs[id(rq)] = req_tuple(rq)
                rows.append(got)
            r_req[:, :nr] = np.array(rows, dtype=np.float64).T
        r_alive = r_m >= 0
        if nr and r_alive.any():
            np.add.at(used[4], r_m[r_alive], r_req[4, r_alive])
        by_job: dict[str, set[int]] = {}
        for k, t in enumerate(run):
            job = by_job.get(t.job)
            if job is None:
                by_job[t.job] = {k}
            else:
                job.add(k)
        return cls(
            names=names,
            index=index,
            state=[m.state for m in ms],
            attrs=[m.attrs for m in ms],
            taints=[m.taints for m in ms],
            cap=cap,
            used=used,
            r_job=[t.job for t in run],
            r_index=[t.index for t in run],
            r_inc=[t.incarnation for t in run],
            r_m=r_m,
            r_prio=r_prio,
            r_req=r_req,
            r_alive=r_alive,
            by_job=by_job,
            by_machine_ready=False,
        )


def _grow(a: np.ndarray, size: int, fill: Any = 0) -> np.ndarray:
    shape = (*a.shape[:-1], size)
    out = np.full(shape, fill, dtype=a.dtype)
    out[..., : a.shape[-1]] = a
    return out
