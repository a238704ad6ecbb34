"""``caslab compare``: renders caslab.results.metrics.compare's comparison as a terminal table.
Nothing is computed here."""

from __future__ import annotations

from caslab.results.metrics.compare import ScenarioComparison, Side, compare  # noqa: F401 (re-exported)
from caslab.spec.plan_view import table


def _ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def _side(s: Side | None) -> list[str]:
    if s is None:
        return ["(not in this run)", "", ""]
    if s.mean_ms is None:
        mean = f"- ({s.repetitions} reps)"
    else:
        ci = f" [{_ms(s.ci95_ms[0])}, {_ms(s.ci95_ms[1])}]" if s.ci95_ms else " (no CI: needs 2+ reps)"
        mean = f"{_ms(s.mean_ms)}{ci} ({s.repetitions} reps)"
    return [f"{s.recovered}/{s.affected} recovered, {s.unrecovered} never", f"{_ms(s.p50_ms)} (n={s.n})", mean]


def _difference(c: ScenarioComparison) -> str:
    d = c.difference
    if c.a and c.b and c.a.fault != c.b.fault:
        return f"- (different faults: {c.a.fault} / {c.b.fault})"
    if d is None:
        return "-"
    if d.ci95 is None:
        return f"{d.diff:+.1f} (no CI: needs 2+ repetitions in each run)"
    test = f", Welch dof {d.dof:g}, p={d.p:g}" if d.dof is not None else " (no spread in either run)"
    return f"{d.diff:+.1f} [{d.ci95[0]:+.1f}, {d.ci95[1]:+.1f}]{test}"


def render(comparisons: list[ScenarioComparison], run_a: str, run_b: str) -> str:
    rows = []
    for c in comparisons:
        for name, s in (("A", c.a), ("B", c.b)):
            rows.append([c.label if name == "A" else "", name, s.fault if s else ""] + _side(s)
                        + [_difference(c) if name == "B" else ""])
    header = ["scenario", "run", "fault", "affected sessions", "reconnect p50 ms", "mean of rep. means ms [95 % CI]",
              "B - A mean ms [95 % CI]"]
    return "\n".join([f"A: {run_a}", f"B: {run_b}", "", table(header, rows), "",
                      "Means are of the repetitions' mean reconnect times of each scenario's headline fault; "
                      "the difference's interval is Welch's t over those repetition means. Sessions that never "
                      "recovered have no reconnect time and are counted beside it."])
