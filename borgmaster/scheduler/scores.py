"""Scores: how good a feasible machine is for a task, normalised to 0..100 (higher is better).

Like kube-scheduler's Score plugins, each score is normalised to 0..100 and the scheduler
combines them with weights, so adding a score never rescales the others. The fit scores look at
cpu and ram only (the two resources that strand each other in practice), as fractions of the
machine's capacity left *after* placing the task:

- `best`: best fit, 100 * (1 - mean free fraction). Packs tightly and keeps big holes for big
  tasks, but fills machines to the brim, which hurts bursty load.
- `spread` (E-PVM-style): worst fit, 100 * mean free fraction. Spreads load evenly, which
  leaves every machine a little free and strands room that a large task would need.
- `hybrid` (Borg's default): 100 * (1 - max free fraction). That is best fit minus half the
  cpu/ram imbalance, so it prefers machines where the task uses up both resources together
  and so minimises *stranded* resources (cpu left with no ram to go with it, or vice versa).

Soft spread across failure domains scores 100 / (1 + tasks of the job already in the domain).
"""

from __future__ import annotations

import numpy as np

POLICIES = ("best", "spread", "hybrid")


def fit_scores(
    policy: str,
    free_cpu: np.ndarray,
    free_ram: np.ndarray,
    cap_cpu: np.ndarray,
    cap_ram: np.ndarray,
    req_cpu: float,
    req_ram: float,
) -> np.ndarray:
    """Fit score of each machine (arrays of equal length) for a task asking req_cpu/req_ram."""
    with np.errstate(divide="ignore", invalid="ignore"):
        fc = np.where(cap_cpu > 0, (free_cpu - req_cpu) / cap_cpu, 0.0)
        fr = np.where(cap_ram > 0, (free_ram - req_ram) / cap_ram, 0.0)
    fc = np.clip(fc, 0.0, 1.0)
    fr = np.clip(fr, 0.0, 1.0)
    if policy == "best":
        return 100.0 * (1.0 - (fc + fr) * 0.5)
    if policy == "spread":
        return 100.0 * (fc + fr) * 0.5
    if policy == "hybrid":
        return 100.0 * (1.0 - np.maximum(fc, fr))
    raise ValueError(f"unknown scheduling policy {policy!r} (one of {', '.join(POLICIES)})")


def spread_scores(counts: np.ndarray) -> np.ndarray:
    """Soft spread: fewer tasks of the job in the machine's failure domain is better."""
    return 100.0 / (1.0 + counts)


def combine(
    fit: np.ndarray, spread: np.ndarray, fit_weight: float, spread_weight: float
) -> np.ndarray:
    """Weighted mean of normalised scores, still 0..100."""
    total = fit_weight + spread_weight
    if total <= 0:
        return np.zeros_like(fit)
    return (fit * fit_weight + spread * spread_weight) / total


def fit_score(
    policy: str,
    free_cpu: float,
    free_ram: float,
    cap_cpu: float,
    cap_ram: float,
    req_cpu: float,
    req_ram: float,
) -> float:
    """`fit_scores` for one machine in plain floats: the same operations in the same order,
    so the same result to the bit (a pass mixes both paths and must stay deterministic)."""
    fc = (free_cpu - req_cpu) / cap_cpu if cap_cpu > 0 else 0.0
    fr = (free_ram - req_ram) / cap_ram if cap_ram > 0 else 0.0
    fc = min(max(fc, 0.0), 1.0)
    fr = min(max(fr, 0.0), 1.0)
    if policy == "best":
        return 100.0 * (1.0 - (fc + fr) * 0.5)
    if policy == "spread":
        return 100.0 * (fc + fr) * 0.5
    if policy == "hybrid":
        return 100.0 * (1.0 - max(fc, fr))
    raise ValueError(f"unknown scheduling policy {policy!r} (one of {', '.join(POLICIES)})")


def combine_one(fit: float, count: float, fit_weight: float, spread_weight: float) -> float:
    """`combine(fit, spread_scores(count))` for one machine."""
    total = fit_weight + spread_weight
    if total <= 0:
        return 0.0
    return (fit * fit_weight + (100.0 / (1.0 + count)) * spread_weight) / total
