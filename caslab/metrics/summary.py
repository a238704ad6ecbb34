"""Scenario summaries: each fault's outcome aggregated over a scenario's repetitions.

``summarize`` turns the runs of every scenario into ``ScenarioSummary`` objects (one
``FaultSummary`` row per fault); ``summary.json`` is their ``to_dict``. A scenario whose
fidelity check failed, or whose run is incomplete, or whose client processes died, is
marked ``trustworthy: false`` with the reasons, and every table shows it.
"""

from __future__ import annotations

import statistics
from typing import Any

from caslab.metrics.outcomes import PHASES, FaultSummary, ProtocolSummary, RunOutcome, ScenarioSummary
from caslab.metrics.stats import Distribution, median


def summarize_scenario(meta: dict[str, Any], runs: list[RunOutcome], min_idle_pct: float,
                       notices: list[str]) -> ScenarioSummary:
    cpu_means = [r.cpu_idle["mean"] for r in runs if r.cpu_idle["mean"] is not None]
    cpu_mean = round(statistics.fmean(cpu_means), 1) if cpu_means else None
    cpu_min = min((r.cpu_idle["min"] for r in runs if r.cpu_idle["min"] is not None), default=None)
    fidelity_ok = cpu_mean is None or cpu_mean >= min_idle_pct
    exits = [dict(x, rep=r.rep) for r in runs for x in r.process_exits]
    reasons = []
    if not fidelity_ok:
        reasons.append(f"CPU idle averaged {cpu_mean} % (< {min_idle_pct:g} %): the machine, not the design, "
                       f"may have set these numbers")
    if any(not r.complete for r in runs):
        reasons.append("a repetition did not complete")
    if exits:
        reasons.append(f"{len(exits)} lab process(es) died during the run: {sorted({x['name'] for x in exits})}")
    messages = {k: sum(r.messages[k] for r in runs) for k in ("acked", "stored", "lost")}
    probe_gap = max((r.probe_gap_ms for r in runs if r.probe_gap_ms is not None), default=None)
    app_gap = max((r.app_probe_gap_ms for r in runs if r.app_probe_gap_ms is not None), default=None)
    capture = merge_capture_checks([r.capture_check for r in runs])
    sessions = sum(len(r.sessions) for r in runs)
    rows = [fault_row(meta, runs, i, messages, probe_gap, app_gap, capture, cpu_mean, fidelity_ok, not reasons,
                      len(exits))
            for i in range(max((len(r.faults) for r in runs), default=0))]
    scenario_cost = cost_summary(runs)
    for row in rows:
        row.cpu_ms_per_op = scenario_cost.get("cpu_ms_per_op")
    return ScenarioSummary(
        id=meta["id"], label=meta["label"], mode=meta["mode"], params=meta.get("params", {}), repetitions=len(runs),
        sessions=sessions, faults=rows, goodput=goodput_summary(runs), cpu_idle_pct=cpu_mean,
        cpu_idle_min_pct=cpu_min, fidelity_ok=fidelity_ok, trustworthy=not reasons, untrustworthy_reasons=reasons,
        notices=notices, messages=messages, probe_gap_ms=probe_gap, app_probe_gap_ms=app_gap, capture_check=capture,
        process_exits=exits, cost=scenario_cost, http=protocol_rows(meta, runs, not reasons))


def cost_summary(runs: list[RunOutcome]) -> dict[str, Any]:
    """The lab's CPU per successful operation over all repetitions, by kind of process."""
    ops = sum(r.cost.get("ops", 0) for r in runs)
    totals: dict[str, float] = {}
    for r in runs:
        for kind, ms in r.cost.get("cpu_ms", {}).items():
            totals[kind] = totals.get(kind, 0.0) + ms
    if not totals or not ops:
        return {}
    return {"ops": ops, "cpu_ms_per_op": round(sum(totals.values()) / ops, 3),
            "per_op_by_kind": {k: round(v / ops, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}}


def fault_row(meta: dict[str, Any], runs: list[RunOutcome], index: int, messages, probe_gap, app_gap, capture,
              cpu_mean, fidelity_ok, trustworthy, deaths) -> FaultSummary:
    faults = [r.faults[index] for r in runs if index < len(r.faults)]
    sessions = [s for f in faults for s in f.sessions]
    reconnects = [v for f in faults for v in f.reconnect_ms]
    rep_means = [statistics.fmean(f.reconnect_ms) for f in faults if f.reconnect_ms]
    phases = {p: median([s.phases[p] for s in sessions if s.phases and s.phases.get(p) is not None])
              for p in PHASES}
    first = faults[0]
    dips = [r.goodput.dip_unaffected for r in runs if r.goodput.dip_unaffected is not None]
    return FaultSummary(
        scenario=meta["id"], label=meta["label"], mode=meta["mode"], fault_index=first.index, fault=first.label,
        kind=first.kind, repetitions=len(faults), sessions=len(sessions),
        affected=sum(s.affected for s in sessions), recovered=sum(s.recovered for s in sessions),
        unrecovered=sum(s.unrecovered for s in sessions), collateral=sum(s.collateral for s in sessions),
        disrupted=sum(s.disrupted for s in sessions), stalled=sum(s.stalled for s in sessions),
        reauth=sum(s.reauth for s in sessions if s.affected), prompts=sum(s.prompts for s in sessions if s.affected),
        reconnect_ms=Distribution.of(reconnects, rep_means),
        detection_ms=Distribution.of([f.detection_ms for f in faults if f.detection_ms is not None]),
        phases_ms=phases, messages=messages, probe_gap_ms=probe_gap, app_probe_gap_ms=app_gap, capture_check=capture,
        cpu_idle_pct=cpu_mean, fidelity_ok=fidelity_ok, trustworthy=trustworthy, goodput_dip_unaffected=min(dips) if dips else None,
        client_deaths=deaths)


def protocol_rows(meta: dict[str, Any], runs: list[RunOutcome], trustworthy: bool) -> list[ProtocolSummary]:
    """One row per (fault, HTTP protocol, internal or Internet clients) over the repetitions."""
    rows = []
    indexes = sorted({f.index for r in runs for f in r.http}, key=lambda i: (i < 0, i))
    for index in indexes:
        faults = [f for r in runs for f in r.http if f.index == index]
        for protocol, external in sorted({(s.protocol, s.external) for f in faults for s in f.sessions}):
            def mine(s) -> bool:
                return s.protocol == protocol and s.external == external
            sessions = [s for f in faults for s in f.sessions if mine(s)]
            rep_means = [statistics.fmean(v) for f in faults
                         if (v := [s.reconnect_ms for s in f.sessions if mine(s) and s.affected
                                   and s.reconnect_ms is not None])]
            rows.append(ProtocolSummary(
                scenario=meta["id"], label=meta["label"], mode=meta["mode"], fault_index=index, fault=faults[0].label,
                protocol=protocol, clients="Internet" if external else "internal", repetitions=len(faults),
                sessions=len(sessions), configured=sum(s.configured for s in sessions),
                requests=sum(s.requests for s in sessions), failed=sum(s.failed for s in sessions),
                affected=sum(s.affected for s in sessions), disrupted=sum(s.disrupted for s in sessions),
                recovered=sum(s.recovered for s in sessions),
                unrecovered=sum(s.affected and not s.recovered for s in sessions),
                relogins=sum(s.relogins for s in sessions), prompts=sum(s.prompts for s in sessions),
                pings_lost=sum(s.pings_lost for s in sessions),
                pings_reestablished=sum(s.pings_reestablished for s in sessions),
                disconnects=sum(s.disconnects for s in sessions),
                reconnect_ms=Distribution.of([s.reconnect_ms for s in sessions
                                              if s.affected and s.reconnect_ms is not None], rep_means),
                reestablish_ms=Distribution.of([s.reestablish_ms for s in sessions if s.reestablish_ms is not None]),
                latency_ms=Distribution.of([v for s in sessions for v in s.latencies_ms]), trustworthy=trustworthy))
    return rows


def goodput_summary(runs: list[RunOutcome]) -> dict[str, Any]:
    """Per-second goodput averaged over repetitions (bins aligned on the first fault)."""
    if not runs:
        return {}
    first = max(r.goodput.first_bin for r in runs)
    size = min(r.goodput.first_bin + len(r.goodput.all_sessions) for r in runs) - first
    size = max(size, 0)

    def mean_series(attr: str) -> list[float]:
        series = [getattr(r.goodput, attr)[first - r.goodput.first_bin:][:size] for r in runs]
        return [round(statistics.fmean(col), 1) for col in zip(*series)] if size else []

    pre = [r.goodput.pre_fault for r in runs if r.goodput.pre_fault is not None]
    dips = [r.goodput.dip for r in runs if r.goodput.dip is not None]
    dips_u = [r.goodput.dip_unaffected for r in runs if r.goodput.dip_unaffected is not None]
    return {"first_second": first, "ops_per_s": mean_series("all_sessions"),
            "unaffected_ops_per_s": mean_series("unaffected"),
            "pre_fault_ops_per_s": round(statistics.fmean(pre), 1) if pre else None,
            "dip": min(dips) if dips else None, "dip_unaffected": min(dips_u) if dips_u else None}


def merge_capture_checks(checks: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    compared = [c for c in checks if c and c.get("n")]
    if not compared:
        return None
    return {"n": sum(c["n"] for c in compared),
            "median_abs_diff_ms": round(statistics.median(c["median_abs_diff_ms"] for c in compared), 3),
            "max_abs_diff_ms": round(max(c["max_abs_diff_ms"] for c in compared), 3)}
