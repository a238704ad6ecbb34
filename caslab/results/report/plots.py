"""The report's figures, drawn from the analysis (caslab/results/analysis.py): no metric is
computed here, every number comes from the typed outcomes.

    verdict.png            share of affected sessions served again over time (log axis),
                           never-recovered visible: the answer, first
    timeline-<id>.png      each session around the fault (a heat map above 200 sessions),
                           with a zoomed panel and the load balancer's detection
    reconnect-cdf.png      reconnect times incl. the never-recovered, at the window's edge
    reconnect-means.png    mean of the repetitions' means with its 95 % CI
    goodput.png            successful operations per second, and CPU idle, around the fault
    phases.png             where a reconnect's time goes: median milestones in causal order,
                           one panel and time axis per scenario
    probes.png             SYN and application probes answered around the fault

Every figure is written as PNG and SVG.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from caslab.results.analysis import Analysis
from caslab.results.metrics import PHASE_LABELS, PHASES
from caslab.results.metrics.summary import headline_fault
from caslab.results.report.style import STATUS_COLOURS, plt, save, scenario_styles

HEATMAP_ABOVE = 200  # sessions: above this a timeline is a heat map, not one row each


def window_ms(analysis: Analysis) -> float:
    return analysis.manifest["spec"]["timing"]["observe_s"] * 1000


def make_all(analysis: Analysis, out: Path) -> list[str]:
    """Draw every figure that has data; returns the PNG names in report order."""
    styles = scenario_styles(analysis.scenarios)
    names: list[str] = []
    for draw in (plot_verdict, plot_cdf, plot_means, plot_phases, plot_goodput, plot_probes):
        name = draw(analysis, styles, out)
        if name:
            names.append(name)
    for scenario in analysis.scenarios:
        trace = analysis.traces.get(scenario.id)
        if trace is not None and trace.sessions:  # no Outlook session (HTTP clients only): no timeline
            names.append(plot_timeline(analysis, scenario, out))
    return names


def _legend(ax, **kwargs) -> None:
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=7, **kwargs)


def plot_verdict(analysis: Analysis, styles, out: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    edge = window_ms(analysis)
    drawn = False
    for s in analysis.scenarios:
        times, affected = analysis.recovery_curve(s.id, headline_fault(s))
        if not affected:
            continue
        drawn = True
        xs = [1.0] + [max(t, 1.0) for t in times] + [edge]
        ys = [0.0] + [100 * (i + 1) / affected for i in range(len(times))] + [100 * len(times) / affected]
        never = affected - len(times)
        label = f"{s.label}: {len(times)}/{affected} served again" + (f", {never} never" if never else "")
        st = styles[s.id]
        ax.step(xs, ys, where="post", color=st["color"], linestyle=st["linestyle"], linewidth=2, label=label)
        if never:
            ax.plot([edge], [100 * len(times) / affected], marker=st["marker"], color=st["color"], markersize=7)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.set_xlim(1, edge * 1.05)
    ax.set_ylim(-3, 103)
    ax.axvline(edge, color="grey", linewidth=0.8)
    ax.annotate("end of window", (edge, 2), rotation=90, fontsize=7, ha="right", va="bottom", color="grey")
    ax.set_xlabel("time since the fault (ms, log scale)")
    ax.set_ylabel("affected sessions served again (%)")
    ax.set_title("How fast each design served its affected users again")
    ax.grid(True, which="both", alpha=0.25)
    _legend(ax, loc="upper left")
    fig.tight_layout()
    return save(fig, out / "verdict.png")[0]


def plot_cdf(analysis: Analysis, styles, out: Path) -> str | None:
    fig, ax = plt.subplots(figsize=(8, 4.2))
    edge = window_ms(analysis)
    drawn = False
    for s in analysis.scenarios:
        values, never = analysis.reconnects(s.id, headline_fault(s))
        total = len(values) + never
        if not total:
            continue
        drawn = True
        st = styles[s.id]
        n_text = f"n={total}"
        if values:
            ys = [0.0] + [(i + 1) / total for i in range(len(values))]
            ax.step([values[0]] + values + [edge], ys + [ys[-1]], where="post", color=st["color"],
                    linestyle=st["linestyle"], linewidth=1.8,
                    label=f"{s.label} ({n_text}{', never recovered: ' + str(never) if never else ''})")
        else:
            ax.plot([], [], color=st["color"], linestyle=st["linestyle"],
                    label=f"{s.label} ({n_text}, never recovered: {never})")
        if never:
            ax.plot([edge], [len(values) / total], marker=st["marker"], color=st["color"], markersize=7)
    if not drawn:
        plt.close(fig)
        return None
    ax.set_xscale("log")
    ax.axvline(edge, color="grey", linewidth=0.8)
    ax.set_ylim(-0.03, 1.03)
    ax.set_xlabel("reconnect time of affected sessions (ms, log scale); markers at the window's end: never recovered")
    ax.set_ylabel("fraction of affected sessions")
    ax.set_title("Reconnect time CDF (levels off at the recovered fraction)")
    ax.grid(True, which="both", alpha=0.25)
    _legend(ax, loc="upper left")
    fig.tight_layout()
    return save(fig, out / "reconnect-cdf.png")[0]


def plot_means(analysis: Analysis, styles, out: Path) -> str | None:
    """The point is the mean of the repetitions' means, the bar that mean's 95 % CI."""
    rows = [(s, next((r for r in s.faults if r.fault_index == headline_fault(s)), None)) for s in analysis.scenarios]
    rows = [(s, r) for s, r in rows if r is not None and (r.reconnect_ms.n or r.unrecovered)]
    if not rows:
        return None
    edge = window_ms(analysis)
    fig, ax = plt.subplots(figsize=(8, 4.2))
    for x, (s, r) in enumerate(rows):
        st = styles[s.id]
        d = r.reconnect_ms
        point = d.mean_of_repetitions if d.mean_of_repetitions is not None else d.mean_pooled
        if point is not None:
            ci = d.ci95_of_repetition_means
            low, high = (max(point - max(ci[0], 0.1), 0), max(ci[1] - point, 0)) if ci else (0, 0)
            ax.errorbar([x], [point], yerr=[[low], [high]], fmt=st["marker"], capsize=6, color=st["color"])
            ax.annotate(f"{point:.0f} ms ({r.repetitions} rep{'s' if r.repetitions != 1 else ''}, n={d.n}"
                        f"{'' if ci else ', no CI'})", (x, point), textcoords="offset points", xytext=(8, 4),
                        fontsize=7)
        if r.unrecovered:
            ax.plot([x], [edge], marker="^", color=st["color"], markersize=8)
            ax.annotate(f"{r.unrecovered} never recovered", (x, edge), textcoords="offset points", xytext=(8, -10),
                        fontsize=7)
    ax.set_xticks(range(len(rows)))
    ax.set_xticklabels([s.label for s, _ in rows], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(rows) - 0.5)
    ax.set_yscale("log")
    ax.axhline(edge, color="grey", linewidth=0.8)
    ax.set_ylabel("reconnect time (ms, log): mean of repetition means, 95 % CI")
    ax.set_title("Mean reconnect time per scenario (triangles: never recovered, at the window's end)")
    ax.grid(True, axis="y", which="both", alpha=0.25)
    fig.tight_layout()
    return save(fig, out / "reconnect-means.png")[0]


def plot_phases(analysis: Analysis, styles, out: Path) -> str | None:
    """A waterfall per scenario: one lane per milestone in causal order (``PHASES``), each
    bar from the previous milestone to this one, never sorted by value, so a milestone
    whose median lies before the previous one shows as a bar drawn backwards (hatched).
    Each scenario has its own panel and time axis: a 24 ms reconnect and a 10 s one are
    both readable. The panel names the sessions the medians were taken over
    (``phases_n`` where the summary gives it)."""
    rows = []
    for s in analysis.scenarios:
        row = next((r for r in s.faults if r.fault_index == headline_fault(s)), None)
        if row and any(row.phases_ms.get(p) is not None for p in PHASES):
            rows.append((s, row))
    if not rows:
        return None
    fig, axes = plt.subplots(len(rows), 1, figsize=(9, 1.6 * len(rows) + 0.9), squeeze=False)
    for ax, (s, row) in zip(axes[:, 0], rows):
        backwards = _phase_lanes(ax, row.phases_ms)
        n = getattr(row, "phases_n", None)
        subset = (f"medians over n = {n} sessions with every milestone" if n is not None
                  else "medians over the affected sessions that dropped")
        warn = "; hatched: a median before the previous milestone's" if backwards else ""
        ax.set_title(f"{s.label}: {subset}{warn}", fontsize=8, loc="left")
        ax.grid(True, axis="x", alpha=0.25)
    axes[-1, 0].set_xlabel("ms after the fault (each panel its own scale)")
    fig.suptitle("Where a reconnect's time goes: milestones in causal order", fontsize=10)
    fig.tight_layout()
    return save(fig, out / "phases.png")[0]


PHASE_SHADES = ["#999999", "#D55E00", "#E69F00", "#56B4E9", "#009E73"]


def _phase_lanes(ax, phases_ms: dict) -> bool:
    """One lane per milestone (top: the first), a bar from the previous milestone to this
    one, labelled with the milestone's time. Returns whether one lay before the previous."""
    start, end, backwards = 0.0, 1.0, False
    for i, phase in enumerate(PHASES):
        value = phases_ms.get(phase)
        if value is None:
            continue
        width = value - start
        ax.barh(i, width, left=start, color=PHASE_SHADES[i], height=0.7, hatch="///" if width < 0 else None,
                edgecolor="white" if width >= 0 else "black")
        ax.annotate(_ms_text(value), (max(value, start), i), xytext=(3, 0), textcoords="offset points",
                    fontsize=7, va="center")
        backwards = backwards or width < 0
        start, end = value, max(end, value)
    ax.set_yticks(range(len(PHASES)))
    ax.set_yticklabels([PHASE_LABELS[p] for p in PHASES], fontsize=7)
    ax.set_ylim(len(PHASES) - 0.5, -0.5)
    ax.set_xlim(0, end * 1.15)
    return backwards


def _ms_text(value: float) -> str:
    return f"{value:.0f} ms" if abs(value) >= 10 else f"{value:.1f} ms"


def plot_goodput(analysis: Analysis, styles, out: Path) -> str | None:
    series = [(s, s.goodput) for s in analysis.scenarios if any(s.goodput.get("ops_per_s") or [])]
    if not series:
        return None
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.5), sharex=True, gridspec_kw={"height_ratios": [3, 1.3]})
    for s, g in series:
        st = styles[s.id]
        xs = [g["first_second"] + i for i in range(len(g["ops_per_s"]))]
        top.step(xs, g["ops_per_s"], where="post", color=st["color"], linestyle=st["linestyle"], label=s.label)
        top.step(xs, g["unaffected_ops_per_s"], where="post", color=st["color"], linestyle=st["linestyle"],
                 alpha=0.45, linewidth=0.9)
        run = analysis.runs_of(s.id)[0]
        cpu = run.cpu_series
        if cpu:
            bottom.plot(np.linspace(xs[0], xs[-1] + 1, len(cpu)), cpu, color=st["color"], linestyle=st["linestyle"],
                        linewidth=0.9)
    threshold = analysis.manifest["spec"]["metrics"]["min_cpu_idle_pct"]
    bottom.axhline(threshold, color="#D55E00", linewidth=0.8)
    bottom.annotate(f"fidelity threshold {threshold:g} %", (0, threshold), fontsize=7, color="#D55E00",
                    xytext=(2, 2), textcoords="offset points")
    for ax in (top, bottom):
        ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
        ax.grid(True, alpha=0.25)
    top.set_ylabel("successful operations / s")
    top.set_title("Goodput around the fault (thin: unaffected sessions only; mean over repetitions)")
    bottom.set_ylabel("CPU idle %")
    bottom.set_ylim(0, 100)
    bottom.set_xlabel("seconds relative to the fault")
    _legend(top, loc="lower left")
    fig.tight_layout()
    return save(fig, out / "goodput.png")[0]


def plot_probes(analysis: Analysis, styles, out: Path, bin_s: float = 0.25) -> str | None:
    """bin_s must match the metrics' bins (caslab.results.metrics.runs.availability)."""
    from labcommon.catalogue import APP_PROBE, PROBE

    panels = [(PROBE, "SYN probes to the array address"), (APP_PROBE, "application probes through the array name")]
    found = {kind: [] for kind, _ in panels}
    for s in analysis.scenarios:
        for kind, _ in panels:
            bins = analysis.probe_bins(s.id, kind, bin_s)
            if bins:
                found[kind].append((s, bins))
    panels = [(k, t) for k, t in panels if found[k]]
    if not panels:
        return None
    fig, axes = plt.subplots(len(panels), 1, figsize=(8, 3.2 * len(panels)), sharex=True, squeeze=False)
    for ax, (kind, title) in zip(axes[:, 0], panels):
        for s, bins in found[kind]:
            st = styles[s.id]
            ax.step([b[0] for b in bins], [b[1] for b in bins], where="post", color=st["color"],
                    linestyle=st["linestyle"], label=s.label)
        ax.axvline(0, color="grey", linestyle="--", linewidth=0.8)
        ax.set_ylim(-5, 105)
        ax.set_ylabel(f"answered (% per {bin_s:g} s)")
        ax.set_title(title)
        ax.grid(True, alpha=0.25)
        _legend(ax, loc="lower left")
    axes[-1, 0].set_xlabel("seconds relative to the fault (first repetition)")
    fig.tight_layout()
    return save(fig, out / "probes.png")[0]


def plot_timeline(analysis: Analysis, scenario, out: Path) -> str:
    """Sessions over the whole window (left) and zoomed into -0.2 .. 1 s (right): one row
    per session, or above HEATMAP_ABOVE sessions a heat map; the fault and the load
    balancer's detection marked in both."""
    trace = analysis.traces[scenario.id]
    sessions = sorted(trace.sessions)
    heat = len(sessions) > HEATMAP_ABOVE
    height = 6.0 if heat else min(0.12 * len(sessions) + 2.2, 14)
    fig, (ax, zoom) = plt.subplots(1, 2, figsize=(12, height), sharey=True, gridspec_kw={"width_ratios": [3, 1]})
    draw = _timeline_heatmap if heat else _timeline_rows
    interval = analysis.manifest["spec"]["clients"]["interval_ms"]  # a bin shorter than it is empty by design
    bins = (max(100, interval), max(20, interval))
    draw(ax, trace, sessions, (-trace.before_ms, trace.after_ms), bins[0])
    draw(zoom, trace, sessions, (-200.0, 1000.0), bins[1])
    for axis in (ax, zoom):
        _timeline_markers(axis, trace)
    ax.set_xlabel("seconds relative to the fault" + (f" ({bins[0]:g} ms bins)" if heat else ""))
    zoom.set_xlabel("zoom: -0.2 .. 1 s" + (f" ({bins[1]:g} ms bins)" if heat else ""))
    ax.set_ylabel(f"client sessions ({len(sessions)})" if heat or len(sessions) > 40 else "client session")
    if not heat and len(sessions) <= 40:
        ax.set_yticks(range(len(sessions)))
        ax.set_yticklabels(sessions, fontsize=6)
    elif not heat:
        ax.set_yticks([])
    fig.suptitle(f"Client sessions around the fault: {scenario.label} (first repetition); fault: {trace.fault_label}",
                 fontsize=10)
    handles, labels = ax.get_legend_handles_labels()
    if heat:
        handles = [plt.Rectangle((0, 0), 1, 1, facecolor=c, edgecolor="#999999") for c in HEAT_COLOURS[1:] + HEAT_COLOURS[:1]] + handles
        labels = ["all ok", "some failed", "failed / dropped", "no operation"] + labels
    fig.legend(handles, labels, loc="upper left", bbox_to_anchor=(0.80, 0.98), fontsize=7)
    fig.tight_layout(rect=(0, 0, 0.80, 1))
    return save(fig, out / f"timeline-{scenario.id}.png")[0]


def _timeline_markers(ax, trace) -> None:
    ax.axvline(0, color="#E69F00", linestyle="--", label=f"fault: {trace.fault_label}")
    for noticed in trace.lb_noticed_ms:
        ax.axvline(noticed / 1000, color="#0072B2", linestyle=":", linewidth=1.2,
                   label=f"load balancer noticed (+{noticed:.0f} ms)")


def _timeline_rows(ax, trace, sessions, span_ms: tuple[float, float], _bin_ms: float) -> None:
    row = {sid: i for i, sid in enumerate(sessions)}
    small = len(sessions) > 40
    for status, colour in STATUS_COLOURS.items():
        points = [(t / 1000, row[sid]) for sid in sessions for t, st in trace.sessions[sid]
                  if st == status and span_ms[0] <= t <= span_ms[1]]
        if points:
            xs, ys = zip(*points)
            ax.scatter(xs, ys, s=(4 if small else 6) if status == "ok" else 16, c=colour,
                       marker="|" if status == "ok" else "x", label=status, linewidths=0.8)
    ax.set_xlim(span_ms[0] / 1000, span_ms[1] / 1000)
    ax.set_ylim(len(sessions) - 0.5, -0.5)


HEAT_COLOURS = ["#FFFFFF", "#009E73", "#E69F00", "#D55E00"]


def _timeline_heatmap(ax, trace, sessions, span_ms: tuple[float, float], bin_ms: float) -> None:
    """Sessions x time bins: green where every operation succeeded, orange where some
    failed, vermillion where all failed or the session dropped, white where nothing happened."""
    from matplotlib.colors import ListedColormap

    edges = np.arange(span_ms[0], span_ms[1] + bin_ms, bin_ms)
    grid = np.zeros((len(sessions), len(edges) - 1))
    for i, sid in enumerate(sessions):
        ok = np.histogram([t for t, st in trace.sessions[sid] if st == "ok"], edges)[0]
        bad = np.histogram([t for t, st in trace.sessions[sid] if st != "ok"], edges)[0]
        grid[i] = np.where(bad == 0, np.where(ok > 0, 1, 0), np.where(ok > 0, 2, 3))
    ax.imshow(grid, aspect="auto", interpolation="nearest", cmap=ListedColormap(HEAT_COLOURS), vmin=0, vmax=3,
              extent=(edges[0] / 1000, edges[-1] / 1000, len(sessions), 0))
    ax.set_xlim(span_ms[0] / 1000, span_ms[1] / 1000)
