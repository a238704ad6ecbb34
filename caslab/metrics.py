"""Metrics computed from the event log alone (definitions: shared DESIGN.md section 6).

Per client session, with ``t_fault`` the instant of the first fault of a run:

* affected     the session's CAS at ``t_fault`` (its last successful operation) or its
               mailbox database is an element the fault failed (a controller fault
               affects every session);
* disrupted    a failed operation or a dropped connection after ``t_fault``;
* reconnect    first successful operation after the session's first drop after
               ``t_fault``, minus ``t_fault``;
* recovered    affected and (not disrupted, or reconnected before the window closed);
* unrecovered  affected, disrupted and no success before the window closed;
* collateral   not affected, yet a failed, dropped or late (> late_ms) operation;
* re-auth      a logon after ``t_fault`` that needed credentials again;
* messages     acked by the system vs stored in each database's active copy at the end;
* probe gap    longest run of failed scapy SYN probes to the array address (ms).

Everything is deterministic: the same events give byte-identical summaries.
"""

from __future__ import annotations

import math
import statistics
from collections import defaultdict
from typing import Any, Iterable

T95 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262,
       10: 2.228, 15: 2.131, 20: 2.086, 30: 2.042}


def t95(dof: int) -> float:
    if dof in T95:
        return T95[dof]
    keys = sorted(k for k in T95 if k <= dof)
    return T95[keys[-1]] if dof < 30 else 1.96


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (no interpolation: every value reported was observed)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(pct / 100 * len(ordered)))
    return ordered[rank - 1]


def distribution(values: list[float]) -> dict[str, Any]:
    rounded = lambda v: None if v is None else round(v, 1)  # noqa: E731
    return {"n": len(values), "p50": rounded(percentile(values, 50)), "p95": rounded(percentile(values, 95)),
            "p99": rounded(percentile(values, 99)), "max": rounded(max(values) if values else None),
            "mean": rounded(statistics.fmean(values) if values else None)}


def confidence_interval(samples: list[float]) -> list[float] | None:
    """95 % CI of the mean of per-repetition values (Student's t)."""
    if len(samples) < 2:
        return None
    mean = statistics.fmean(samples)
    half = t95(len(samples) - 1) * statistics.stdev(samples) / math.sqrt(len(samples))
    return [round(mean - half, 1), round(mean + half, 1)]


def _runs(events: Iterable[dict]) -> dict[tuple[str, int], list[dict]]:
    runs: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for ev in events:
        runs[(ev.get("scenario", ""), ev.get("rep", 0))].append(ev)
    return runs


def session_outcomes(events: list[dict], late_ms: float) -> dict[str, Any]:
    """Metrics of one run (one scenario repetition) from its events."""
    faults = [e for e in events if e["ev"] == "fault"]
    fault = next((e for e in faults if e["elements"]), faults[0] if faults else None)  # the first that fails something
    end = next((e["ts"] for e in events if e["ev"] == "measure_end"), None)
    if end is None:
        end = max((e["ts"] for e in events), default=0)
    by_session: dict[str, list[dict]] = defaultdict(list)
    for ev in events:
        if "session" in ev and ev["ev"] in ("op", "down", "logon", "connect_ok", "connect_fail"):
            by_session[ev["session"]].append(ev)
    t_fault = fault["ts"] if fault else None
    elements = set(fault["elements"]) if fault else set()
    out = {"sessions": len(by_session), "affected": 0, "recovered": 0, "unrecovered": 0, "collateral": 0,
           "disrupted": 0, "reauth": 0, "reconnect_ms": [], "timelines": {}, "t_fault": t_fault,
           "fault": (fault.get("label") or f"{fault['kind']} {','.join(fault['targets'])}") if fault else "none"}
    for sid in sorted(by_session):
        evs = by_session[sid]
        result = _one_session(evs, t_fault, end, elements, late_ms)
        out["timelines"][sid] = result
        for key in ("affected", "recovered", "unrecovered", "collateral", "disrupted"):
            out[key] += int(result[key])
        out["reauth"] += result["reauth"]
        if result["reconnect_ms"] is not None and result["affected"]:
            out["reconnect_ms"].append(result["reconnect_ms"])
    out["messages"] = message_integrity(events)
    out["detection_ms"] = detection_ms(events, t_fault)
    out["cpu"] = cpu_idle(events)
    out["probe_gap_ms"] = probe_gap_ms(events)
    return out


def probe_gap_ms(events: list[dict]) -> float | None:
    """Longest run of failed SYN probes: first failure to the next success (ms)."""
    probes = sorted((e["ts"], bool(e.get("ok"))) for e in events if e["ev"] == "probe")
    if not probes:
        return None
    longest, gap_start = 0, None
    for ts, ok in probes:
        if not ok and gap_start is None:
            gap_start = ts
        elif ok and gap_start is not None:
            longest = max(longest, ts - gap_start)
            gap_start = None
    if gap_start is not None:
        longest = max(longest, probes[-1][0] - gap_start)
    return round(longest / 1e6, 1)


def _one_session(evs: list[dict], t_fault, end, elements: set[str], late_ms: float) -> dict[str, Any]:
    before = [e for e in evs if t_fault is None or e["ts"] < t_fault]
    after = [e for e in evs if t_fault is not None and t_fault <= e["ts"] <= end]
    cas_at_fault = next((e.get("cas") for e in reversed(before) if e["ev"] == "op" and e.get("ok")), None)
    db = next((e.get("db") for e in evs if e["ev"] == "logon" and e.get("db")), None)
    on = {cas_at_fault, f"db:{db}", "controller"}
    affected = t_fault is not None and bool(on & elements)
    first_drop = next((e["ts"] for e in after if e["ev"] == "down" or (e["ev"] == "op" and not e.get("ok"))), None)
    late = any(e["ev"] == "op" and e.get("lat_us", 0) > late_ms * 1000 for e in after)
    disrupted = first_drop is not None
    reconnect = None
    if disrupted:
        ok_after = next((e for e in after if e["ev"] == "op" and e.get("ok") and e["ts"] > first_drop), None)
        if ok_after is not None:
            reconnect = (ok_after["ts"] - t_fault) / 1e6
    reauth = sum(1 for e in after if e["ev"] == "logon" and e.get("reauth"))
    return {
        "cas_at_fault": cas_at_fault, "affected": affected, "disrupted": disrupted,
        "recovered": affected and (not disrupted or reconnect is not None),
        "unrecovered": affected and disrupted and reconnect is None,
        "collateral": (not affected) and t_fault is not None and (disrupted or late),
        "reconnect_ms": reconnect, "reauth": reauth,
    }


def message_integrity(events: list[dict]) -> dict[str, int]:
    acked = {e["msg_id"] for e in events if e["ev"] == "op" and e.get("op") == "send" and e.get("ok")}
    stored_by_db: dict[str, set[str]] = defaultdict(set)
    for e in events:  # what the user would see: the copy that is active at the end
        if e["ev"] == "mailbox_contents" and e.get("active", True):
            stored_by_db[e["db"]].update(e["msg_ids"])
    stored = set().union(*stored_by_db.values()) if stored_by_db else set()
    return {"acked": len(acked), "stored": len(acked & stored), "lost": len(acked - stored)}


def detection_ms(events: list[dict], t_fault) -> float | None:
    """First load-balancer reaction after the fault (member marked down), if the mode logs one."""
    if t_fault is None:
        return None
    for e in events:
        if e["ts"] >= t_fault and e["ev"] in ("nlb_member", "lb_member_down") and not e.get("accepts_new", True):
            return round((e["ts"] - t_fault) / 1e6, 1)
    return None


def cpu_idle(events: list[dict]) -> dict[str, float | None]:
    samples = [e["idle_pct"] for e in events if e["ev"] == "cpu"]
    return {"mean": round(statistics.fmean(samples), 1) if samples else None,
            "min": min(samples) if samples else None}


def summarize(events: Iterable[dict], scenarios_meta: list[dict[str, Any]], late_ms: float,
              min_idle_pct: float) -> dict[str, Any]:
    """summary.json: one entry per scenario, aggregated over its repetitions."""
    runs = _runs(events)
    out = []
    for meta in scenarios_meta:
        reps = sorted(rep for (sid, rep) in runs if sid == meta["id"])
        per_rep = [session_outcomes(runs[(meta["id"], rep)], late_ms) for rep in reps]
        all_reconnects = [v for r in per_rep for v in r["reconnect_ms"]]
        rep_means = [statistics.fmean(r["reconnect_ms"]) for r in per_rep if r["reconnect_ms"]]
        cpu_means = [r["cpu"]["mean"] for r in per_rep if r["cpu"]["mean"] is not None]
        cpu_mean = round(statistics.fmean(cpu_means), 1) if cpu_means else None
        recon = distribution(all_reconnects)
        recon["ci95_mean"] = confidence_interval(rep_means)
        entry = {
            "id": meta["id"], "label": meta["label"], "mode": meta["mode"], "params": meta.get("params", {}),
            "fault": per_rep[0]["fault"] if per_rep else "none", "repetitions": len(per_rep),
            "sessions": sum(r["sessions"] for r in per_rep), "affected": sum(r["affected"] for r in per_rep),
            "recovered": sum(r["recovered"] for r in per_rep), "unrecovered": sum(r["unrecovered"] for r in per_rep),
            "collateral": sum(r["collateral"] for r in per_rep), "disrupted": sum(r["disrupted"] for r in per_rep),
            "reauth": sum(r["reauth"] for r in per_rep), "reconnect_ms": recon,
            "messages": {k: sum(r["messages"][k] for r in per_rep) for k in ("acked", "stored", "lost")},
            "detection_ms": distribution([r["detection_ms"] for r in per_rep if r["detection_ms"] is not None]),
            "cpu_idle_pct": cpu_mean, "fidelity_ok": cpu_mean is None or cpu_mean >= min_idle_pct,
            "notices": sorted({e["detail"] for (sid, _), evs in runs.items() if sid == meta["id"]
                               for e in evs if e["ev"] == "capability_missing"}),
            "probe_gap_ms": max((r["probe_gap_ms"] for r in per_rep if r["probe_gap_ms"] is not None), default=None),
            "per_repetition": [{k: r[k] for k in ("sessions", "affected", "recovered", "unrecovered", "collateral",
                                                  "reauth", "detection_ms")} |
                               {"reconnect_ms": distribution(r["reconnect_ms"]), "cpu_idle_pct": r["cpu"]["mean"]}
                               for r in per_rep],
        }
        out.append(entry)
    return {"scenarios": out}
