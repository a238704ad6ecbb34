"""Two runs side by side (``caslab compare RUN_A RUN_B``): per scenario, both runs'
headline figures and the difference of their mean reconnect times with a 95 % interval.

Scenarios are matched by label (mode and sweep point). The difference is Welch's t over
repetitions: each run contributes the per-repetition means of its headline fault's
reconnect times (the quantity its own mean-with-CI describes), so runs with different
numbers of repetitions or different spreads compare fairly. Sessions that never
recovered have no reconnect time; their counts are shown beside the means, never hidden.
"""

from __future__ import annotations

import statistics
from dataclasses import dataclass
from typing import Any

from caslab.results.metrics.outcomes import FaultSummary
from caslab.results.metrics.stats import Welch, welch
from caslab.results.metrics.summary import headline_fault


@dataclass
class Side:
    """One run's figures for one scenario."""

    fault: str
    repetitions: int
    affected: int
    recovered: int
    unrecovered: int
    p50_ms: float | None
    n: int
    mean_ms: float | None           # mean of the repetitions' means
    ci95_ms: list[float] | None     # that mean's 95 % CI (Student's t)
    rep_means: list[float]


@dataclass
class ScenarioComparison:
    label: str
    a: Side | None
    b: Side | None
    difference: Welch | None        # b - a


def side(analysis: Any, scenario: Any) -> Side:
    index = headline_fault(scenario)
    row: FaultSummary = next(r for r in scenario.faults if r.fault_index == index)
    rep_means = []
    for run in analysis.runs_of(scenario.id):
        values = [v for f in run.faults if f.index == index for v in f.reconnect_ms]
        if values:
            rep_means.append(statistics.fmean(values))
    d = row.reconnect_ms
    return Side(row.fault, row.repetitions, row.affected, row.recovered, row.unrecovered, d.p50, d.n,
                d.mean_of_repetitions, d.ci95_of_repetition_means, rep_means)


def compare(a: Any, b: Any) -> list[ScenarioComparison]:
    """Every scenario label of either run (A's order first), with a fault to compare."""
    by_label_a = {s.label: s for s in a.scenarios if s.faults}
    by_label_b = {s.label: s for s in b.scenarios if s.faults}
    labels = list(by_label_a) + [label for label in by_label_b if label not in by_label_a]
    out = []
    for label in labels:
        sa = side(a, by_label_a[label]) if label in by_label_a else None
        sb = side(b, by_label_b[label]) if label in by_label_b else None
        diff = welch(sa.rep_means, sb.rep_means) if sa and sb else None
        out.append(ScenarioComparison(label, sa, sb, diff))
    return out
