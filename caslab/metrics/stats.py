"""Statistics the lab reports: nearest-rank percentiles (every value shown was observed),
distributions with their n, and Student's t confidence intervals over repetitions."""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(dof: int) -> float:
    """Two-sided 95 % Student's t quantile (table values; 1.96 beyond 30 degrees of freedom)."""
    if dof in T95:
        return T95[dof]
    if dof > 30:
        return 1.96
    return T95[max(k for k in T95 if k <= dof)]


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every value reported was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Distribution:
    """n, nearest-rank p50 / p95 / p99, max and mean of some values (ms unless said)."""

    n: int = 0
    p50: float | None = None
    p95: float | None = None
    p99: float | None = None
    max: float | None = None
    mean: float | None = None
    ci95_mean: list[float] | None = None   # 95 % CI of the per-repetition means (>= 2 repetitions)
    mean_of_repetitions: float | None = None  # the point that interval belongs to

    @classmethod
    def of(cls, values: list[float], rep_means: list[float] | None = None) -> "Distribution":
        return cls(len(values), _round(percentile(values, 50)), _round(percentile(values, 95)),
                   _round(percentile(values, 99)), _round(max(values) if values else None),
                   _round(statistics.fmean(values) if values else None),
                   confidence_interval(rep_means or []),
                   _round(statistics.fmean(rep_means)) if rep_means else None)


def confidence_interval(samples: list[float]) -> list[float] | None:
    """95 % CI of the mean of per-repetition values (Student's t)."""
    if len(samples) < 2:
        return None
    mean = statistics.fmean(samples)
    half = t95(len(samples) - 1) * statistics.stdev(samples) / math.sqrt(len(samples))
    return [round(mean - half, 1), round(mean + half, 1)]


def median(values: list[float]) -> float | None:
    return _round(statistics.median(values), 1) if values else None
