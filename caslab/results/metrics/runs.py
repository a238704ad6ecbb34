"""One run's outcome from its events: every fault's sessions, goodput, CPU, probes, mail.

Inputs are the events of one scenario repetition (as merged in ``events.jsonl``) and the
thresholds of ``RunParams``; nothing else. The same events give the same outcome.
Definitions: docs/METRICS.md (sections 2, 8 and 9 here; 3-7 in ``sessions``).
"""

from __future__ import annotations

import statistics
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

from labcommon.catalogue import (
    APP_PROBE, CLIENTS_READY, CPU, DB_ACTIVE, DB_DISMOUNTED, FAULT, HTTP_REQUEST, LB_MEMBER,
    MAILBOX_CONTENTS, MEASURE_END, MEASURE_START, OP, PROBE, PROCESS_CPU, PROCESS_EXIT, SCENARIO_END,
)

from caslab.results.metrics.load import readings, recovery_load
from caslab.results.metrics.nlb import convergence, flooding
from caslab.results.metrics.addresses import by_address
from caslab.results.metrics.databases import database_outages, dumpster
from caslab.results.metrics.http import http_faults
from caslab.results.metrics.outcomes import FaultRun, Goodput, RunOutcome
from caslab.results.metrics.sessions import FaultWindow, member_down_times, outages, session_fault, tracks

NS = 1_000_000_000
PRE_FAULT_S = 5  # goodput's pre-fault level: at most this many whole seconds before the fault


@dataclass(frozen=True)
class RunParams:
    late_ms: float = 500
    stall_ms: float = 1500
    min_cpu_idle_pct: float = 35


def analyze_run(events: list[dict], params: RunParams, scenario: str = "", rep: int = 0) -> RunOutcome:
    """One run's outcome (docs/METRICS.md sections 2-9)."""
    events = sorted(events, key=lambda e: e["ts"])
    start = next((e["ts"] for e in events if e["ev"] == MEASURE_START), events[0]["ts"] if events else 0)
    end_event = next((e for e in events if e["ev"] == MEASURE_END), None)
    end = end_event["ts"] if end_event else max((e["ts"] for e in events), default=start)
    complete = end_event is not None and any(e["ev"] == SCENARIO_END and e.get("ok") for e in events)
    session_tracks = tracks(events, params.late_ms, end)
    windows = fault_windows(events, end)
    downs = member_down_times(events)
    stall_ns = int(params.stall_ms * 1e6)
    by_session = {sid: outages(track, windows, start, end, stall_ns) for sid, track in session_tracks.items()}
    fault_events = [e for e in events if e["ev"] == FAULT]
    load_series = readings(events)
    faults = []
    for window, fe in zip(windows, fault_events):
        sessions = [session_fault(track, window, by_session[track.sid], end, downs)
                    for track in sorted(session_tracks.values(), key=lambda t: t.sid)]
        faults.append(FaultRun(window.index, fe["kind"], fe.get("label", fe["kind"]), window.t,
                               sorted(window.elements), window.affects, window.end,
                               detection_ms(events, window.t, window.end, set(window.elements)),
                               sessions, convergence=convergence(events, window.t, window.end),
                               databases=database_outages(events, window.t, end, set(window.elements))))
        faults[-1].load = recovery_load(load_series, window.t, faults[-1].reconnect_ms, start)
    http_windows = [(f.index, f.label, f.t_ns, f.window_end_ns, set(f.elements)) for f in faults] \
        or [(-1, "no fault", start, end, set())]
    t0 = fault_events[0]["ts"] if fault_events else start
    ever_affected = {s.session for f in faults for s in f.sessions if s.affected}
    return RunOutcome(
        scenario=scenario, rep=rep, complete=complete, t0_ns=t0, sessions=sorted(session_tracks), faults=faults,
        goodput=goodput(events, t0, end, ever_affected), cpu_idle=cpu_idle(events, start, end, t0),
        cpu_series=[e["idle_pct"] for e in events if e["ev"] == CPU and start <= e["ts"] <= end],
        probe_gap_ms=failed_run_ms(events, PROBE, start, end), app_probe_gap_ms=failed_run_ms(events, APP_PROBE, start, end),
        messages=message_integrity(events, end),
        process_exits=[{k: e.get(k) for k in ("name", "host", "returncode")} | {"at_ms": round((e["ts"] - t0) / 1e6, 1)}
                       for e in events if e["ev"] == PROCESS_EXIT],
        probe_availability={kind: availability(events, kind, t0) for kind in (PROBE, APP_PROBE)},
        cost=cost(events, start, end), never_served=never_served(session_tracks, start, end),
        flood=flooding(events),
        by_address=by_address(events, start, end), http=http_faults(events, http_windows, end))


def fault_windows(events: list[dict], end: int) -> list[FaultWindow]:
    """Every fault with its window [t_i, e_i) (docs/METRICS.md section 2)."""
    fault_events = [e for e in events if e["ev"] == FAULT]
    out = []
    for i, fe in enumerate(fault_events):
        window_end = max(fe["ts"], min(fault_events[i + 1]["ts"], end)) if i + 1 < len(fault_events) else end
        out.append(FaultWindow(i, fe.get("index", i), fe["ts"], window_end, frozenset(fe.get("elements", [])),
                               fe.get("affects", "on_elements")))
    return out


def never_served(session_tracks, start: int, end: int) -> int:
    """Sessions without a single successful operation in the measurement window."""
    return sum(1 for t in session_tracks.values() if not any(start <= ts <= end for ts in t.ok_ts))


def cost(events: list[dict], start: int, end: int) -> dict[str, Any]:
    """CPU the lab's processes used in the window, per kind, and per successful operation."""
    by_kind: dict[str, float] = defaultdict(float)
    for e in events:
        if e["ev"] == PROCESS_CPU:
            by_kind[e["kind"]] += e["cpu_ms"]
    ops = sum(1 for e in events if e["ev"] == OP and e.get("ok") and start <= e["ts"] <= end)
    if not by_kind:
        return {}
    total = sum(by_kind.values())
    return {"cpu_ms": {k: round(v, 1) for k, v in sorted(by_kind.items())}, "ops": ops,
            "cpu_ms_per_op": round(total / ops, 3) if ops else None,
            "per_op_by_kind": {k: round(v / ops, 3) for k, v in sorted(by_kind.items())} if ops else {}}


def detection_ms(events: list[dict], t_fault: int, window_end: int, elements: set[str]) -> float | None:
    """First load-balancer reaction inside the fault's window: a failed member stops taking
    new connections."""
    for e in events:
        if t_fault <= e["ts"] < window_end and e["ev"] == LB_MEMBER and not e.get("accepts_new", True) \
                and e.get("member") in elements:
            return round((e["ts"] - t_fault) / 1e6, 3)
    return None


def goodput(events: list[dict], t0: int, end: int, affected: set[str]) -> Goodput:
    """Successful operations per whole second around t0, for all and for unaffected sessions."""
    ready = next((e["ts"] for e in events if e["ev"] == CLIENTS_READY), None)
    earliest = max(t0 - PRE_FAULT_S * NS, ready if ready is not None else t0)
    first_bin = -((t0 - earliest) // NS)
    last_bin = (end - t0) // NS  # bins [first_bin, last_bin) are whole seconds
    size = max(0, last_bin - first_bin)
    all_counts, unaffected = [0] * size, [0] * size
    for e in events:
        if e["ev"] != OP or not e.get("ok"):
            continue
        k = (e["ts"] - t0) // NS - first_bin
        if 0 <= k < size:
            all_counts[k] += 1
            if e["session"] not in affected:
                unaffected[k] += 1
    pre = -first_bin
    out = Goodput(first_bin=first_bin, all_sessions=all_counts, unaffected=unaffected)
    if pre > 0 and size > pre:
        level, level_unaffected = statistics.fmean(all_counts[:pre]), statistics.fmean(unaffected[:pre])
        out.pre_fault, out.pre_fault_unaffected = round(level, 1), round(level_unaffected, 1)
        if level:  # the dip divides by the level itself, not by its rounded display
            out.dip = round(min(all_counts[pre:]) / level, 3)
        if level_unaffected:
            out.dip_unaffected = round(min(unaffected[pre:]) / level_unaffected, 3)
    return out


def cpu_idle(events: list[dict], start: int, end: int, t0: int) -> dict[str, float | None]:
    window = [e for e in events if e["ev"] == CPU and start <= e["ts"] <= end]
    values = [e["idle_pct"] for e in window]
    pre = [e["idle_pct"] for e in window if e["ts"] < t0]
    return {"mean": statistics.fmean(values) if values else None,  # unrounded: the fidelity check compares it
            "min": min(values) if values else None,
            "pre_fault": round(statistics.fmean(pre), 1) if pre else None, "samples": len(values)}


def failed_run_ms(events: list[dict], kind: str, start: int, end: int) -> float | None:
    """Longest run of failed probes of one kind: first failure to the next success (ms)."""
    probes = [(e["ts"], bool(e.get("ok"))) for e in events if e["ev"] == kind and start <= e["ts"] <= end]
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


def availability(events: list[dict], kind: str, t0: int, bin_s: float = 0.25) -> list[tuple[float, float]]:
    """Share of probes of one kind answered, per time bin relative to t0: (start s, %)."""
    bins: dict[int, list[bool]] = defaultdict(list)
    for e in events:
        if e["ev"] == kind:
            bins[int((e["ts"] - t0) / 1e9 // bin_s)].append(bool(e.get("ok")))
    return [(round(k * bin_s, 3), round(100 * sum(v) / len(v), 1)) for k, v in sorted(bins.items())]


def message_integrity(events: list[dict], end: int | None = None) -> dict[str, int]:
    """Acknowledged sends (RPC and HTTP) against what the active copy of each database that is
    available at the end holds (docs/METRICS.md section 8)."""
    end = max((e["ts"] for e in events), default=0) if end is None else end
    acks = [e for e in events if e["ts"] <= end and e.get("ok") and e.get("msg_id")
            and ((e["ev"] == OP and e.get("op") == "send") or (e["ev"] == HTTP_REQUEST and e.get("cmd") == "send"))]
    acked = {e["msg_id"] for e in acks}
    unreplicated = {e["msg_id"] for e in acks if e.get("unreplicated")}
    last_state: dict[str, str] = {}
    for e in sorted(events, key=lambda x: x["ts"]):
        if e["ev"] in (DB_ACTIVE, DB_DISMOUNTED):
            last_state[e["db"]] = e["ev"]
    stored_by_db: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["ev"] == MAILBOX_CONTENTS and e.get("active", True) and last_state.get(e["db"]) != DB_DISMOUNTED:
            stored_by_db[e["db"]].update(e["msg_ids"])
    stored = set().union(*stored_by_db.values()) if stored_by_db else set()
    return {"acked": len(acked), "stored": len(acked & stored), "lost": len(acked - stored),
            "unreplicated": len(unreplicated), "recovered": dumpster(events)["recovered"]}
