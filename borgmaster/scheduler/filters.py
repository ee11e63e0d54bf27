"""Feasibility filters and the names they report for "why pending?".

Each filter rejects a machine for a task and has a short, stable name: `cpu`, `ram`, `disk`,
`gpu`, `ports`, the machine state (`draining`, `lost`), `constraint rack!=r1`,
`taint gpu=true`, `spread rack` and `distinct-machines`. The names are what `borgcfg why`
and a pending task's `reason` count, so they are part of the user-facing contract.

Filters come in two shapes: vectorised masks over every machine (numpy, used by the scheduler's
scans and by `explain`) and the small pure predicates they are built from (used by tests and
by code that looks at one machine).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from borgmaster.model import MACHINE_UP, Constraint, JobSpec, Taint, Toleration

# Resource dimensions in the scheduler's vectors, in the order "why pending?" tests them.
RESOURCES = ("cpu", "ram", "disk", "gpu", "ports")
# Comparison slack for float cpu so 0.1 + 0.2 cores fit in 0.3.
EPS = 1e-9

DISTINCT = "distinct-machines"


def distinct_machines(spec: JobSpec) -> bool:
    """The trace's "different machine" restriction: at most one task of the job per machine.

    JobSpec has no field for it yet (proposed: `distinct_machines: bool = False`); reading it
    with getattr keeps this working before and after the field is added.
    """
    return bool(getattr(spec, "distinct_machines", False))


def _values(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [v.strip() for v in value.split(",") if v.strip()]
    if isinstance(value, list | tuple | set | frozenset):
        return [str(v) for v in value]
    return [str(value)]


def constraint_name(c: Constraint) -> str:
    """`constraint rack!=r1`, `constraint rack in r1,r2`, `constraint ssd exists`."""
    if c.op in ("==", "!="):
        return f"constraint {c.attr}{c.op}{c.value}"
    if c.op in ("in", "not-in"):
        return f"constraint {c.attr} {c.op} {','.join(_values(c.value))}"
    return f"constraint {c.attr} {c.op}"


def constraint_ok(c: Constraint, attrs: dict[str, str]) -> bool:
    """Whether a machine with `attrs` satisfies one constraint (an unknown op never does)."""
    have = attrs.get(c.attr)
    if c.op == "exists":
        return have is not None
    if c.op == "==":
        return have is not None and have == str(c.value)
    if c.op == "!=":
        return have is None or have != str(c.value)
    if c.op == "in":
        return have is not None and have in _values(c.value)
    if c.op == "not-in":
        return have is None or have not in _values(c.value)
    return False


def taint_name(t: Taint) -> str:
    return f"taint {t.key}={t.value}"


def first_blocking_taint(taints: Sequence[Taint], tolerations: Sequence[Toleration]) -> str | None:
    """Name of the first NoSchedule taint the task does not tolerate, or None (NoExecute
    rejects too: nothing evicts here, but a machine that would evict a task must not get one;
    `TaintEffect.rejects`)."""
    for t in taints:
        if t.effect.rejects and not t.tolerated_by(tolerations):
            return taint_name(t)
    return None


def spread_limit(replicas: int, values: int) -> int:
    """Hard spread: at most ceil(replicas / values) tasks of a job per attribute value."""
    return max(1, math.ceil(max(1, replicas) / max(1, values)))


def static_signature(spec: JobSpec) -> tuple[Any, ...]:
    """What the static (per pass, task-independent) filters depend on: state, constraints and
    taints. Jobs with equal signatures share one cached machine mask."""
    cons = tuple((c.attr, c.op, tuple(_values(c.value))) for c in spec.constraints)
    tols = tuple((t.key, t.value) for t in spec.tolerations)
    return (cons, tols)


class AttrIndex:
    """Machine attributes as integer codes per attribute, built lazily, so a constraint or a
    spread count is one numpy comparison instead of a Python loop over machines."""

    def __init__(self, attrs: list[dict[str, str]]) -> None:
        self._attrs = attrs
        self._codes: dict[str, tuple[np.ndarray, list[str]]] = {}

    def codes(self, attr: str) -> tuple[np.ndarray, list[str]]:
        """Per machine the code of its value; code 0 is "absent" (value "")."""
        got = self._codes.get(attr)
        if got is None:
            values: list[str] = [""]
            index: dict[str, int] = {"": 0}
            out = np.zeros(len(self._attrs), dtype=np.int64)
            for i, a in enumerate(self._attrs):
                v = a.get(attr)
                if v is None:
                    continue
                code = index.get(v)
                if code is None:
                    code = index[v] = len(values)
                    values.append(v)
                out[i] = code
            got = self._codes[attr] = (out, values)
        return got

    def present(self, attr: str) -> np.ndarray:
        """Mask of machines that have the attribute (an empty-string value counts as present)."""
        return np.fromiter((attr in a for a in self._attrs), dtype=bool, count=len(self._attrs))

    def constraint_mask(self, c: Constraint) -> np.ndarray:
        """Machines satisfying `c`, vectorised over the attribute's value codes."""
        codes, values = self.codes(c.attr)
        present = self.present(c.attr)
        ok_values = np.fromiter(
            (constraint_ok(c, {c.attr: v}) for v in values), dtype=bool, count=len(values)
        )
        absent_ok = constraint_ok(c, {})
        return np.where(present, ok_values[codes], absent_ok)


def state_counts(states: Sequence[str]) -> dict[str, int]:
    """Machines rejected for their state (anything but up), by state name."""
    out: dict[str, int] = {}
    for s in states:
        if s != MACHINE_UP:
            out[s] = out.get(s, 0) + 1
    return out
