"""Statistics the lab reports: nearest-rank percentiles (every value shown was observed),
distributions with their n, Student's t confidence intervals over repetitions, and
Welch's t for the difference of two runs' means (``caslab compare``).

A tail percentile is left out (None) where its nearest rank is n, i.e. where it is
simply the maximum: p95 below 20 values, p99 below ``P99_MIN_N`` = 100. Printing it would
claim a tail the data cannot show; every table shows the maximum beside ``n``.
Definitions: docs/METRICS.md section 11.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

def t95(dof: float) -> float:
    """Two-sided 95 % Student's t quantile for any degrees of freedom (no table, no 1.96)."""
    return t_quantile(0.975, dof)


def tail_rank_shown(pct: int, n: int) -> bool:
    """A tail percentile is shown only where its nearest rank is below n (else it is the
    maximum): p95 from n >= 20, p99 from n >= 100."""
    return n > 0 and -(-pct * n // 100) < n


def percentile(values: list[float], pct: int) -> float | None:
    """Nearest-rank percentile, rank ceil(pct * n / 100) in exact integer arithmetic (no
    interpolation: every value reported was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-pct * len(ordered) // 100))
    return ordered[rank - 1]


P99_MIN_N = 100


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


@dataclass
class Distribution:
    """n, nearest-rank p50 / p95 / p99, max and both means of some values (ms unless
    said): ``mean_pooled`` over every value, ``mean_of_repetitions`` over the
    per-repetition means, which ``ci95_of_repetition_means`` brackets."""

    n: int = 0
    p50: float | None = None
    p95: float | None = None                  # None where it would be the maximum (n < 20)
    p99: float | None = None                  # None where it would be the maximum (n < 100)
    max: float | None = None
    mean_pooled: float | None = None          # mean of all values of all repetitions
    ci95_of_repetition_means: list[float] | None = None  # Student's t, >= 2 repetitions
    mean_of_repetitions: float | None = None  # the point that interval belongs to

    @classmethod
    def of(cls, values: list[float], rep_means: list[float] | None = None) -> "Distribution":
        n = len(values)
        return cls(n, _round(percentile(values, 50)),
                   _round(percentile(values, 95)) if tail_rank_shown(95, n) else None,
                   _round(percentile(values, 99)) if tail_rank_shown(99, n) else None,
                   _round(max(values) if values else None),
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
    """Nearest-rank median (p50), rounded like every statistic."""
    return _round(percentile(values, 50))


# ---------------------------------------------------------------- Student's t, Welch's test

def _betacf(a: float, b: float, x: float) -> float:
    """Continued fraction of the incomplete beta function (modified Lentz)."""
    tiny, qab, qap, qam = 1e-300, a + b, a + 1, a - 1
    c, d = 1.0, 1 - qab * x / qap
    d = 1 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 300):
        m2 = 2 * m
        for aa in (m * (b - m) * x / ((qam + m2) * (a + m2)), -(a + m) * (qab + m) * x / ((a + m2) * (qap + m2))):
            d = 1 + aa * d
            d = 1 / (d if abs(d) > tiny else tiny)
            c = 1 + aa / c
            c = c if abs(c) > tiny else tiny
            h *= d * c
        if abs(d * c - 1) < 1e-14:
            break
    return h


def _betainc(a: float, b: float, x: float) -> float:
    """Regularized incomplete beta I_x(a, b)."""
    if x <= 0:
        return 0.0
    if x >= 1:
        return 1.0
    front = math.exp(math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x))
    if x < (a + 1) / (a + b + 2):
        return front * _betacf(a, b, x) / a
    return 1 - front * _betacf(b, a, 1 - x) / b


def t_cdf(t: float, dof: float) -> float:
    """P(T <= t) for Student's t with ``dof`` (possibly fractional) degrees of freedom."""
    tail = 0.5 * _betainc(dof / 2, 0.5, dof / (dof + t * t))
    return 1 - tail if t > 0 else tail


def t_quantile(p: float, dof: float) -> float:
    """The t with P(T <= t) = p (0.5 < p < 1), by bisection."""
    low, high = 0.0, 1e6
    for _ in range(200):
        mid = (low + high) / 2
        if t_cdf(mid, dof) < p:
            low = mid
        else:
            high = mid
    return (low + high) / 2


@dataclass
class Welch:
    """Difference of two means (b - a) over repetitions, with Welch's 95 % CI and p-value."""

    diff: float
    ci95: list[float] | None
    dof: float | None
    p: float | None
    n_a: int
    n_b: int


def welch(a: list[float], b: list[float]) -> Welch | None:
    """Welch's t on two samples (each a run's per-repetition means); None if either mean is
    missing. A CI needs two values on each side; with no spread at all it is a point."""
    if not a or not b:
        return None
    diff = statistics.fmean(b) - statistics.fmean(a)
    if len(a) < 2 or len(b) < 2:
        return Welch(round(diff, 1), None, None, None, len(a), len(b))
    va, vb = statistics.variance(a) / len(a), statistics.variance(b) / len(b)
    se2 = va + vb
    if se2 == 0:
        return Welch(round(diff, 1), [round(diff, 1), round(diff, 1)], None, None, len(a), len(b))
    dof = se2 ** 2 / (va ** 2 / (len(a) - 1) + vb ** 2 / (len(b) - 1))
    half = t_quantile(0.975, dof) * math.sqrt(se2)
    p = 2 * (1 - t_cdf(abs(diff) / math.sqrt(se2), dof))
    return Welch(round(diff, 1), [round(diff - half, 1), round(diff + half, 1)], round(dof, 2), round(p, 4),
                 len(a), len(b))
