"""Scenario summaries: each fault's outcome aggregated over a scenario's repetitions.

``summarize`` turns the runs of every scenario into ``ScenarioSummary`` objects (one
``FaultSummary`` row per fault); ``summary.json`` is their ``to_dict``. A scenario whose
fidelity check failed or is unknown (no CPU sample), or that has no repetition, or whose
run is incomplete, or whose lab processes died, is marked ``trustworthy: false`` with the
reasons, and every table shows it. Definitions: docs/METRICS.md sections 10-12.
"""

from __future__ import annotations

import statistics
from typing import Any

from caslab.results.metrics import addresses
from caslab.results.metrics.outcomes import (
    PHASES, FaultSummary, ProtocolSummary, RunOutcome, ScenarioSummary, aggregates,
)
from caslab.results.metrics.sessions import in_causal_order
from caslab.results.metrics.stats import Distribution, median


def repetition_fidelity(run: RunOutcome, min_idle_pct: float) -> bool | None:
    """None without a CPU sample in the window (unknown), else its mean idle passed."""
    if not run.cpu_idle.get("samples") or run.cpu_idle.get("mean") is None:
        return None
    return run.cpu_idle["mean"] >= min_idle_pct


def scenario_fidelity(runs: list[RunOutcome], min_idle_pct: float) -> bool | None:
    """True only with evidence: every repetition has samples and passed (METRICS.md 12)."""
    verdicts = [repetition_fidelity(r, min_idle_pct) for r in runs]
    if any(v is False for v in verdicts):
        return False
    if not verdicts or any(v is None for v in verdicts):
        return None
    return True


def untrusted_reasons(runs: list[RunOutcome], min_idle_pct: float, exits: list[dict[str, Any]]) -> list[str]:
    """Every reason a scenario's numbers are not to be trusted (empty: trusted)."""
    if not runs:
        return ["no repetition ran: there is nothing to trust"]
    reasons = []
    for r in runs:
        verdict = repetition_fidelity(r, min_idle_pct)
        if verdict is None:
            reasons.append(f"repetition {r.rep + 1}: no CPU sample in its window (fidelity unknown)")
        elif not verdict:
            reasons.append(f"repetition {r.rep + 1}: CPU idle averaged {r.cpu_idle['mean']:.1f} % (< {min_idle_pct:g} %): "
                           f"the machine, not the design, may have set these numbers")
    if any(not r.complete for r in runs):
        reasons.append("a repetition did not complete")
    if exits:
        reasons.append(f"{len(exits)} lab process(es) died during the run: {sorted({x['name'] for x in exits})}")
    return reasons


def summarize_scenario(meta: dict[str, Any], runs: list[RunOutcome], min_idle_pct: float,
                       notices: list[str]) -> ScenarioSummary:
    cpu_means = [r.cpu_idle["mean"] for r in runs if r.cpu_idle.get("mean") is not None]
    cpu_mean = round(statistics.fmean(cpu_means), 1) if cpu_means else None
    cpu_min = min((r.cpu_idle["min"] for r in runs if r.cpu_idle.get("min") is not None), default=None)
    fidelity_ok = scenario_fidelity(runs, min_idle_pct)
    exits = [dict(x, rep=r.rep) for r in runs for x in r.process_exits]
    reasons = untrusted_reasons(runs, min_idle_pct, exits)
    messages = {k: sum(r.messages.get(k, 0) for r in runs)
                for k in ("acked", "stored", "lost", "unreplicated", "recovered")}
    probe_gap = max((r.probe_gap_ms for r in runs if r.probe_gap_ms is not None), default=None)
    app_gap = max((r.app_probe_gap_ms for r in runs if r.app_probe_gap_ms is not None), default=None)
    capture = merge_capture_checks([r.capture_check for r in runs])
    sessions = sum(len(r.sessions) for r in runs)
    rows = [fault_row(meta, runs, i, messages, probe_gap, app_gap, capture, cpu_mean, fidelity_ok, not reasons,
                      len(exits))
            for i in range(max((len(r.faults) for r in runs), default=0))]
    scenario_cost = cost_summary(runs)
    flood = flood_summary(runs)
    for row in rows:
        row.cpu_ms_per_op = scenario_cost.get("cpu_ms_per_op")
        row.never_served = sum(r.never_served for r in runs)
        row.flooded_bytes, row.flood_kbit_s = flood.get("cluster_bytes"), flood.get("kbit_s")
        row.heartbeat_bytes = flood.get("heartbeat_bytes")
    return ScenarioSummary(
        id=meta["id"], label=meta["label"], mode=meta["mode"], params=meta.get("params", {}), repetitions=len(runs),
        sessions=sessions, faults=rows, goodput=goodput_summary(runs), cpu_idle_pct=cpu_mean,
        cpu_idle_min_pct=cpu_min, fidelity_ok=fidelity_ok, trustworthy=not reasons, untrustworthy_reasons=reasons,
        notices=notices, messages=messages, probe_gap_ms=probe_gap, app_probe_gap_ms=app_gap, capture_check=capture,
        process_exits=exits, cost=scenario_cost, never_served=sum(r.never_served for r in runs), flood=flood,
        by_address=[{"label": meta["label"], **row} for row in addresses.merge([r.by_address for r in runs])],
        http=protocol_rows(meta, runs, not reasons),
        cpu_idle_by_repetition=[None if r.cpu_idle.get("mean") is None else round(r.cpu_idle["mean"], 1) for r in runs])


def flood_summary(runs: list[RunOutcome]) -> dict[str, Any]:
    """Windows NLB's flooding, the mean over repetitions (each a whole measurement window)."""
    floods = [r.flood for r in runs if r.flood]
    if not floods:
        return {}
    out: dict[str, Any] = {"repetitions": len(floods), "hosts": floods[0]["hosts"]}
    unread = sorted({h for f in floods for h in f.get("unmeasured", [])})
    if unread:  # a repetition with unknown counters makes the mean unknown
        return out | {"cluster_bytes": None, "cluster_frames": None, "heartbeat_bytes": None, "kbit_s": None,
                      "unmeasured": unread, "window_ms": None}
    for key in ("cluster_bytes", "cluster_frames", "heartbeat_bytes"):
        out[key] = round(statistics.fmean(f[key] for f in floods))
    rates = [f["kbit_s"] for f in floods if f["kbit_s"] is not None]
    out["kbit_s"] = round(statistics.fmean(rates), 1) if rates else None
    out["window_ms"] = round(statistics.fmean(f["window_ms"] for f in floods), 1)
    return out


def headline_fault(scenario: ScenarioSummary) -> int:
    """The fault a scenario's figures and headlines show: the first that affected anyone
    (else the first)."""
    for row in scenario.faults:
        if row.affected:
            return row.fault_index
    return scenario.faults[0].fault_index if scenario.faults else 0


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
    """One fault over the repetitions: its declared aggregates (outcomes.FaultSummary) from
    its sessions and runs, the phase split, and the scenario's own figures."""
    faults = [r.faults[index] for r in runs if index < len(r.faults)]
    sessions = [s for f in faults for s in f.sessions]
    subset = [s.phases for s in sessions if s.recovered and in_causal_order(s.phases, PHASES)]
    first = faults[0]
    dips = [r.goodput.dip_unaffected for r in runs if r.goodput.dip_unaffected is not None]
    return FaultSummary(
        scenario=meta["id"], label=meta["label"], mode=meta["mode"], fault_index=first.index, fault=first.label,
        kind=first.kind, **aggregates(sessions, faults),
        phases_n=len(subset), phases_ms={p: median([m[p] for m in subset]) for p in PHASES},
        messages=messages, probe_gap_ms=probe_gap, app_probe_gap_ms=app_gap,
        capture_check=capture if index == 0 else None,  # the wire is read for each run's first fault only
        cpu_idle_pct=cpu_mean, fidelity_ok=fidelity_ok, trustworthy=trustworthy,
        goodput_dip_unaffected=min(dips) if dips else None, client_deaths=deaths)


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

            def per_repetition(values_of) -> list[float]:
                """Each repetition's mean (repetitions with at least one value)."""
                return [statistics.fmean(v) for f in faults if (v := [x for s in f.sessions if mine(s)
                                                                       for x in values_of(s)])]
            reconnects = lambda s: [s.reconnect_ms] if s.affected and s.reconnect_ms is not None else []  # noqa: E731
            reestablished = lambda s: [s.reestablish_ms] if s.reestablish_ms is not None else []  # noqa: E731
            latencies = lambda s: s.latencies_ms  # noqa: E731
            rows.append(ProtocolSummary(
                scenario=meta["id"], label=meta["label"], mode=meta["mode"], fault_index=index, fault=faults[0].label,
                protocol=protocol, clients="Internet" if external else "internal", repetitions=len(faults),
                sessions=len(sessions), configured=sum(s.configured for s in sessions),
                requests=sum(s.requests for s in sessions), failed=sum(s.failed for s in sessions),
                affected=sum(s.affected for s in sessions), disrupted=sum(s.disrupted for s in sessions),
                recovered=sum(s.recovered for s in sessions), undisturbed=sum(s.undisturbed for s in sessions),
                unrecovered=sum(s.affected and not s.recovered and not s.undisturbed for s in sessions),
                relogins=sum(s.relogins for s in sessions), prompts=sum(s.prompts for s in sessions),
                pings_lost=sum(s.pings_lost for s in sessions),
                pings_reestablished=sum(s.pings_reestablished for s in sessions),
                disconnects=sum(s.disconnects for s in sessions),
                reconnect_ms=Distribution.of([x for s in sessions for x in reconnects(s)], per_repetition(reconnects)),
                reestablish_ms=Distribution.of([x for s in sessions for x in reestablished(s)],
                                               per_repetition(reestablished)),
                latency_ms=Distribution.of([x for s in sessions for x in latencies(s)], per_repetition(latencies)),
                trustworthy=trustworthy))
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
    """The capture cross-check of a scenario's repetitions (``caslab.results.analysis.capture_check``
    per repetition), pooled: ``n`` sessions compared, the median and largest |wire - events|
    reconnect difference over all of them, and ``one_sided`` sessions (``only_events`` /
    ``only_wire``, listed with their repetition), which are disagreements. ``status``:
    ``ok`` when every repetition was checked, ``error`` when any capture could not be read
    or matched (``errors`` says which and why; the numbers cover the others),
    ``not_captured`` / ``no_fault`` / ``no_sessions`` when no repetition had anything to
    check (the first such status of the repetitions). None only
    when no repetition was checked at all (an analysis without captures)."""
    checked = [c for c in checks if c is not None]
    if not checked:
        return None
    done = [c for c in checked if c.get("status") == "ok"]
    errors = [f"repetition {c.get('rep', 0) + 1}: {c.get('error')}" for c in checked if c.get("status") == "error"]
    if errors:
        status = "error"
    elif done:
        status = "ok"
    else:
        status = checked[0].get("status")
    diffs = sorted(d for c in done for d in c.get("abs_diffs_ms", []))
    sides = {side: [{"rep": c.get("rep", 0), "session": sid} for c in done for sid in c.get(side, [])]
             for side in ("only_events", "only_wire")}
    out: dict[str, Any] = {
        "status": status, "repetitions": len(done), "n": len(diffs),
        "median_abs_diff_ms": round(statistics.median(diffs), 3) if diffs else None,
        "max_abs_diff_ms": round(max(diffs), 3) if diffs else None,
        "one_sided": sum(len(v) for v in sides.values()), **sides,
        "not_compared": sum(c.get("not_compared", 0) for c in done)}
    if errors:
        out["errors"] = errors
    return out
