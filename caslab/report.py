"""Results from raw events: summary.json, summary.csv, plots, report.md and report.html.

``caslab report DIR`` calls ``write_report`` on a finished run's folder and regenerates
everything byte-identically from ``events.jsonl`` and ``manifest.json``: the event log
is the only input, so a report can always be rebuilt and checked.
"""

from __future__ import annotations

import base64
import csv
import io
import json
import statistics
from collections import defaultdict
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from jinja2 import Environment, FileSystemLoader, select_autoescape  # noqa: E402

from caslab import metrics  # noqa: E402
from caslab.events import read_events  # noqa: E402

PNG_META = {"Software": None}
CSV_COLUMNS = ["label", "mode", "fault", "repetitions", "sessions", "affected", "recovered", "unrecovered",
               "collateral", "reauth", "reconnect_p50_ms", "reconnect_p95_ms", "reconnect_p99_ms",
               "reconnect_max_ms", "ci95_low_ms", "ci95_high_ms", "detection_p50_ms", "messages_acked",
               "messages_lost", "probe_gap_ms", "capture_max_diff_ms", "cpu_idle_pct", "fidelity_ok"]
TEMPLATES = Path(__file__).parent / "templates"
CAPTIONS = {
    "timeline": "Each client session as a row around the fault (first repetition): green ticks are "
                "successful operations, red crosses failed ones, black crosses dropped connections.",
    "reconnect-cdf.png": "Distribution of reconnect times of the affected sessions, all repetitions.",
    "reconnect-bars.png": "Mean reconnect time per scenario with the 95 % confidence interval over repetitions.",
    "probe-availability.png": "Share of scapy SYN probes to the array address that were answered, per 0.25 s.",
}


def caption(name: str) -> str:
    return CAPTIONS["timeline"] if name.startswith("timeline-") else CAPTIONS.get(name, name)


def format_ci(ci: list[float] | None) -> str:
    return "n/a" if not ci else f"[{max(ci[0], 0):g}, {ci[1]:g}]"


def load_events(run_dir: Path) -> list[dict]:
    return list(read_events(run_dir / "events.jsonl"))


def write_report(run_dir: Path) -> dict[str, Any]:
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    events = load_events(run_dir)
    spec = manifest["spec"]
    summary = metrics.summarize(events, manifest["scenarios"], spec["metrics"]["late_ms"],
                                spec["metrics"]["min_cpu_idle_pct"])
    add_capture_checks(run_dir, events, manifest, summary)
    summary["experiment"] = spec["experiment"]["name"]
    summary["complete"] = manifest.get("complete", False)
    (run_dir / "summary.json").write_text(json.dumps(summary, indent=2, sort_keys=True) + "\n")
    write_csv(run_dir / "summary.csv", summary)
    plots = make_plots(run_dir, events, manifest, summary)
    context = {"summary": summary, "manifest": manifest, "plots": plots}
    env = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=select_autoescape(["html"]),
                      trim_blocks=True, lstrip_blocks=True, finalize=lambda v: "-" if v is None else v)
    env.filters["caption"] = caption
    env.filters["ci"] = format_ci
    embedded = {name: base64.b64encode((run_dir / name).read_bytes()).decode() for name in plots}
    (run_dir / "report.md").write_text(env.get_template("report.md.j2").render(**context))
    (run_dir / "report.html").write_text(env.get_template("report.html.j2").render(embedded=embedded, **context))
    return summary


def add_capture_checks(run_dir: Path, events: list[dict], manifest: dict, summary: dict) -> None:
    """Cross-check reconnect times from client events against the client-link captures."""
    from caslab import capture

    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ev in events:
        runs[(ev.get("scenario", ""), ev.get("rep", 0))].append(ev)
    late = manifest["spec"]["metrics"]["late_ms"]
    for scenario in summary["scenarios"]:
        checks = []
        for (sid, rep), evs in sorted(runs.items()):
            pcaps = sorted((run_dir / "raw" / f"{sid}-r{rep + 1}").glob("*.pcap"))
            if sid != scenario["id"] or not pcaps:
                continue
            try:
                checks.append(capture.cross_check(evs, pcaps, late)["reconnect"])
            except Exception:  # noqa: BLE001 - a damaged capture must not stop the report
                continue
        compared = [c for c in checks if c.get("n")]
        scenario["capture_check"] = None if not compared else {
            "n": sum(c["n"] for c in compared),
            "median_abs_diff_ms": round(statistics.median(c["median_abs_diff_ms"] for c in compared), 3),
            "max_abs_diff_ms": round(max(c["max_abs_diff_ms"] for c in compared), 3)}


def csv_row(s: dict[str, Any]) -> list[Any]:
    r = s["reconnect_ms"]
    ci = r.get("ci95_mean") or [None, None]
    return [s["label"], s["mode"], s["fault"], s["repetitions"], s["sessions"], s["affected"], s["recovered"],
            s["unrecovered"], s["collateral"], s["reauth"], r["p50"], r["p95"], r["p99"], r["max"], ci[0], ci[1],
            s["detection_ms"]["p50"], s["messages"]["acked"], s["messages"]["lost"], s.get("probe_gap_ms"),
            (s.get("capture_check") or {}).get("max_abs_diff_ms"), s["cpu_idle_pct"], s["fidelity_ok"]]


def write_csv(path: Path, summary: dict[str, Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for scenario in summary["scenarios"]:
        writer.writerow(["" if v is None else v for v in csv_row(scenario)])
    path.write_text(buffer.getvalue())


def _save(fig, path: Path) -> None:
    fig.savefig(path, dpi=100, metadata=PNG_META)
    plt.close(fig)


def make_plots(run_dir: Path, events: list[dict], manifest: dict, summary: dict) -> list[str]:
    names = []
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ev in events:
        runs[(ev.get("scenario", ""), ev.get("rep", 0))].append(ev)
    for meta in manifest["scenarios"]:
        if (meta["id"], 0) in runs:
            name = f"timeline-{meta['id']}.png"
            after = manifest["spec"]["timing"]["observe_s"]
            plot_timeline(run_dir / name, runs[(meta["id"], 0)], meta["label"], after_s=after)
            names.append(name)
    if any(ev["ev"] == "probe" for ev in events):
        plot_probe_availability(run_dir / "probe-availability.png", runs, manifest)
        names.append("probe-availability.png")
    if any(s["reconnect_ms"]["n"] for s in summary["scenarios"]):
        plot_cdf(run_dir / "reconnect-cdf.png", runs, manifest, summary)
        plot_bars(run_dir / "reconnect-bars.png", summary)
        names += ["reconnect-cdf.png", "reconnect-bars.png"]
    return names


def plot_timeline(path: Path, events: list[dict], label: str, before_s: float = 1.0, after_s: float = 8.0) -> None:
    """Each client session as a row: successful and failed operations around t_fault."""
    fault = next((e for e in events if e["ev"] == "fault" and e["elements"]),
                 next((e for e in events if e["ev"] == "fault"), None))
    t0 = fault["ts"] if fault else min(e["ts"] for e in events)
    sessions = sorted({e["session"] for e in events if e["ev"] == "op"})
    row = {sid: i for i, sid in enumerate(sessions)}
    fig, ax = plt.subplots(figsize=(10, max(3, 0.22 * len(sessions) + 1.5)))
    series = {"ok": ([], [], "tab:green"), "down": ([], [], "black"), "failed": ([], [], "tab:red")}
    for e in events:
        if "session" not in e or e["session"] not in row:
            continue
        x = (e["ts"] - t0) / 1e9
        if not -before_s <= x <= after_s:
            continue
        if e["ev"] == "op":
            key = "ok" if e.get("ok") else "failed"
        elif e["ev"] == "down":
            key = "down"
        else:
            continue
        series[key][0].append(x)
        series[key][1].append(row[e["session"]])
    for key, (xs, ys, color) in series.items():
        ax.scatter(xs, ys, s=6 if key == "ok" else 18, c=color, marker="|" if key == "ok" else "x", label=key)
    if fault:
        ax.axvline(0, color="tab:orange", linestyle="--",
                   label="fault: " + (fault.get("label") or f"{fault['kind']} {','.join(fault['targets'])}"))
    ax.set_yticks(range(len(sessions)))
    ax.set_yticklabels(sessions, fontsize=7)
    ax.set_ylabel("client session")
    ax.set_xlabel("seconds relative to fault")
    ax.set_title(f"Client sessions around the fault: {label} (first repetition)")
    ax.set_xlim(-before_s, after_s)
    ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=7)
    fig.tight_layout()
    _save(fig, path)


def plot_probe_availability(path: Path, runs, manifest: dict, bin_s: float = 0.25) -> None:
    """Share of SYN probes to the array address answered, per time bin around the fault
    (first repetition of each scenario)."""
    fig, ax = plt.subplots(figsize=(9, 4.5))
    for meta in manifest["scenarios"]:
        events = runs.get((meta["id"], 0), [])
        fault = next((e for e in events if e["ev"] == "fault" and e["elements"]),
                     next((e for e in events if e["ev"] == "fault"), None))
        probes = [e for e in events if e["ev"] == "probe"]
        if not probes:
            continue
        t0 = fault["ts"] if fault else probes[0]["ts"]
        bins: dict[int, list[bool]] = defaultdict(list)
        for e in probes:
            bins[int((e["ts"] - t0) / 1e9 // bin_s)].append(bool(e.get("ok")))
        keys = sorted(bins)
        ax.step([k * bin_s for k in keys], [100 * sum(bins[k]) / len(bins[k]) for k in keys], where="post",
                label=meta["label"])
    ax.axvline(0, color="tab:orange", linestyle="--", label="fault")
    ax.set_ylim(-5, 105)
    ax.set_xlabel("seconds relative to fault")
    ax.set_ylabel(f"SYN probes answered (% per {bin_s:g} s)")
    ax.set_title("Availability of the array address seen by SYN probes")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    _save(fig, path)


def plot_cdf(path: Path, runs, manifest: dict, summary: dict) -> None:
    fig, ax = plt.subplots(figsize=(8, 4.5))
    late = manifest["spec"]["metrics"]["late_ms"]
    for meta in manifest["scenarios"]:
        values = sorted(v for (sid, _), evs in sorted(runs.items()) if sid == meta["id"]
                        for v in metrics.session_outcomes(evs, late)["reconnect_ms"])
        if values:
            ys = [0.0] + [(i + 1) / len(values) for i in range(len(values))]
            ax.step([values[0]] + values, ys, where="post", label=meta["label"])
    ax.set_xscale("log")
    ax.set_xlabel("reconnect time of affected sessions (ms, log scale)")
    ax.set_ylabel("fraction of sessions")
    ax.set_title("Reconnect time CDF per HA mode")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    _save(fig, path)


def plot_bars(path: Path, summary: dict) -> None:
    """Mean reconnect time per scenario as a point with its 95 % CI (log axis: modes differ
    by orders of magnitude, and bars on a log axis would mislead)."""
    scenarios = [s for s in summary["scenarios"] if s["reconnect_ms"]["n"]]
    fig, ax = plt.subplots(figsize=(8, 4.5))
    for x, s in enumerate(scenarios):
        r = s["reconnect_ms"]
        ci = r["ci95_mean"]
        low, high = (max(r["mean"] - max(ci[0], 0.1), 0), max(ci[1] - r["mean"], 0)) if ci else (0, 0)
        ax.errorbar([x], [r["mean"]], yerr=[[low], [high]], fmt="o", capsize=6, color="tab:blue")
        ax.annotate(f"{r['mean']:.0f} ms", (x, r["mean"]), textcoords="offset points", xytext=(8, 4), fontsize=8)
    ax.set_xticks(range(len(scenarios)))
    ax.set_xticklabels([s["label"] for s in scenarios], rotation=20, ha="right", fontsize=8)
    ax.set_xlim(-0.5, len(scenarios) - 0.5)
    ax.set_yscale("log")
    ax.set_ylabel("mean reconnect time (ms, log) with 95 % CI")
    ax.set_title("Mean reconnect time of affected sessions per scenario")
    ax.grid(True, axis="y", which="both", alpha=0.3)
    fig.tight_layout()
    _save(fig, path)
