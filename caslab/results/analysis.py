"""A finished (or interrupted) run folder, analysed: manifest + events (+ captures) ->
typed outcomes. The one place the report, ``caslab compare`` and the CLI table get
numbers from; none of them computes a metric of its own.

The capture cross-check belongs here too: it is a second measurement of the same
reconnect times, read from the client links' pcaps and compared with the events.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from caslab.results import metrics
from caslab.results.metrics import FaultSummary, RunOutcome, RunParams, ScenarioSummary, Trace
from labcommon.catalogue import CAPABILITY_MISSING, WAN_FIREWALL
from labcommon.events import read_events


@dataclass
class Analysis:
    run_dir: Path
    manifest: dict[str, Any]
    runs: dict[tuple[str, int], RunOutcome]
    scenarios: list[ScenarioSummary]
    traces: dict[str, Trace]

    @property
    def complete(self) -> bool:
        return bool(self.manifest.get("complete"))

    @property
    def rows(self) -> list[FaultSummary]:
        """Every (scenario, fault) row of the results tables, in spec order."""
        return [row for s in self.scenarios for row in s.faults]

    @property
    def http_rows(self) -> list[Any]:
        """Every (scenario, fault, HTTP protocol) row of the HTTP table, in spec order."""
        return [row for s in self.scenarios for row in s.http]

    def summary(self) -> dict[str, Any]:
        """summary.json."""
        return {"experiment": self.manifest["spec"]["experiment"]["name"], "complete": self.complete,
                "scenarios": [metrics.to_dict(s) for s in self.scenarios]}

    def runs_of(self, scenario_id: str) -> list[RunOutcome]:
        return [run for (sid, _), run in sorted(self.runs.items()) if sid == scenario_id]

    def reconnects(self, scenario_id: str, fault_index: int = 0) -> tuple[list[float], int]:
        """Reconnect times of the affected sessions of one fault (all repetitions), and how
        many affected sessions never recovered."""
        values, never = [], 0
        for run in self.runs_of(scenario_id):
            for fault in run.faults:
                if fault.index != fault_index:
                    continue
                values += fault.reconnect_ms
                never += fault.count("unrecovered")
        return sorted(values), never

    def probe_bins(self, scenario_id: str, kind: str, bin_s: float = 0.25) -> list[tuple[float, float]]:
        """Probe availability of the scenario's first repetition (computed by the metrics)."""
        runs = self.runs_of(scenario_id)
        return runs[0].probe_availability.get(kind, []) if runs else []

    def recovery_curve(self, scenario_id: str, fault_index: int = 0) -> tuple[list[float], int]:
        """When each affected session was served again (ms after the fault; undisturbed
        sessions, never cut off, count at 0), and the number of affected sessions."""
        times, affected = [], 0
        for run in self.runs_of(scenario_id):
            for fault in run.faults:
                if fault.index != fault_index:
                    continue
                for s in fault.sessions:
                    if not s.affected:
                        continue
                    affected += 1
                    if s.recovered:
                        times.append(s.reconnect_ms)
                    elif s.undisturbed:
                        times.append(0.0)
        return sorted(times), affected


def run_params(meta: dict[str, Any], spec: dict[str, Any]) -> RunParams:
    """Thresholds of one scenario (its own sweep values apply)."""
    resolved = {section: dict(spec.get(section, {})) for section in ("clients", "metrics")}
    for key, value in meta.get("params", {}).items():
        section, name = key.split(".")
        if section in resolved:
            resolved[section][name] = value
    m, c = resolved["metrics"], resolved["clients"]
    stall = m.get("stall_ms") or (c["interval_ms"] + c["op_timeout_ms"])
    return RunParams(late_ms=m["late_ms"], stall_ms=stall, min_cpu_idle_pct=m["min_cpu_idle_pct"])


def captures_on(meta: dict[str, Any], spec: dict[str, Any]) -> bool:
    """Whether the scenario asked for client-link captures (probe.capture, or its sweep value)."""
    return bool(meta.get("params", {}).get("probe.capture", spec.get("probe", {}).get("capture", True)))


def load_events(run_dir: Path) -> list[dict]:
    return list(read_events(run_dir / "events.jsonl"))


def analyze(run_dir: Path, with_captures: bool = True) -> Analysis:
    run_dir = Path(run_dir)
    manifest = json.loads((run_dir / "manifest.json").read_text())
    spec = manifest["spec"]
    by_run: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ev in load_events(run_dir):
        by_run[(ev.get("scenario", ""), ev.get("rep", 0))].append(ev)
    runs, scenarios, traces = {}, [], {}
    for meta in manifest["scenarios"]:
        params = run_params(meta, spec)
        keys = sorted(k for k in by_run if k[0] == meta["id"])
        for key in keys:
            run = metrics.analyze_run(by_run[key], params, *key)
            if with_captures:
                run.capture_check = capture_check(run_dir, key, by_run[key], run, captures_on(meta, spec))
            runs[key] = run
        notices = sorted({e["detail"] for k in keys for e in by_run[k] if e["ev"] == CAPABILITY_MISSING})
        notices += [f"{e['detail']}: {e['dropped']} packets dropped (repetition {k[1] + 1})"
                    for k in keys for e in by_run[k] if e["ev"] == WAN_FIREWALL]
        scenarios.append(metrics.summarize_scenario(meta, [runs[k] for k in keys], params.min_cpu_idle_pct, notices))
        if keys:
            traces[meta["id"]] = trace_of(by_run[keys[0]], runs[keys[0]], spec)
    return Analysis(run_dir, manifest, runs, scenarios, traces)


def trace_of(events: list[dict], run: RunOutcome, spec: dict[str, Any]) -> Trace:
    first = run.faults[0] if run.faults else None
    noticed = [first.detection_ms] if first and first.detection_ms is not None else []
    return metrics.session_trace(events, run.t0_ns, first.label if first else "no fault", 1.0,
                                 spec["timing"]["observe_s"], run.sessions, noticed)


def capture_check(run_dir: Path, key: tuple[str, int], events: list[dict], run: RunOutcome,
                  captured: bool = True) -> dict[str, Any]:
    """Reconnect times on the wire against the events' (first fault of the run: drops in
    its window, reconnects by the measurement's end): {status, rep, ...}. ``status`` says
    what happened, never a silent None: ``ok`` (``caslab.results.capture.cross_check``'s
    reconnect comparison, one-sided sessions included), ``error`` (the capture could not be read or matched: ``error`` says why),
    ``not_captured`` (the spec turned captures off), ``no_fault`` or ``no_sessions`` (no
    Outlook session to check: HTTP clients only)."""
    from caslab.results import capture

    rep = {"rep": key[1]}
    if not run.faults:
        return {"status": "no_fault", **rep}
    if not run.faults[0].sessions:
        return {"status": "no_sessions", **rep}
    pcaps = sorted((run_dir / "raw" / f"{key[0]}-r{key[1] + 1}").glob("*.pcap"))
    if not captured and not pcaps:
        return {"status": "not_captured", **rep}
    if not pcaps:
        return {"status": "error", "error": "captures were on, but the run folder holds no client-link pcap", **rep}
    fault = run.faults[0]
    reference = {s.session: s.reconnect_ms for s in fault.sessions if s.affected}
    quiet = [s.session for s in fault.sessions if not s.affected and not s.disrupted]
    try:
        result = capture.cross_check(events, pcaps, reference, fault.t_ns, window_end_ns=fault.window_end_ns,
                                     quiet=quiet)
    except capture.CaptureError as exc:
        return {"status": "error", "error": str(exc), **rep}
    return {"status": "ok", **rep, **result["reconnect"]}
