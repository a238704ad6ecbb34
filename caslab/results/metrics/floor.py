"""The lab's own floor: what one idle session costs before any fault (docs/METRICS.md
section 8, "floor").

``caslab bench floor`` runs one session on an otherwise idle lab and kills its CAS; the
reconnect of that one session (its phases) is the failover floor. These are the steady
figures beside it, each the nearest-rank median of successes in ``[start, first fault)``
(``[start, end]`` if there is no fault), pooled over the runs given:

* ``datapath_rtt_ms``  SYN probe to SYN-ACK through the VIP (``probe.rtt_us``, ok only);
* ``app_probe_ms``     resolve, connect, logon and one operation (``app_probe.lat_us``, ok);
* ``op_ms``            one Outlook operation of the session (``op.lat_us``, ok).
"""

from __future__ import annotations

from typing import Any

from caslab.results.metrics.stats import median
from labcommon.catalogue import APP_PROBE, FAULT, MEASURE_END, MEASURE_START, OP, PROBE

FIGURES = {"datapath_rtt_ms": (PROBE, "rtt_us"), "app_probe_ms": (APP_PROBE, "lat_us"), "op_ms": (OP, "lat_us")}


def steady_values(events: list[dict]) -> dict[str, list[float]]:
    """Each figure's successful samples (ms) of one run, between its start and first fault."""
    start = next((e["ts"] for e in events if e["ev"] == MEASURE_START), None)
    first_fault = min((e["ts"] for e in events if e["ev"] == FAULT), default=None)
    end = next((e["ts"] for e in events if e["ev"] == MEASURE_END), None)
    out: dict[str, list[float]] = {name: [] for name in FIGURES}
    for e in events:
        if (start is not None and e["ts"] < start) or (first_fault is not None and e["ts"] >= first_fault) \
                or (first_fault is None and end is not None and e["ts"] > end):
            continue
        for name, (kind, field) in FIGURES.items():
            if e["ev"] == kind and e.get("ok") is True and isinstance(e.get(field), int):
                out[name].append(e[field] / 1000)
    return out


def idle_floor(runs_events: list[list[dict]]) -> dict[str, Any]:
    """The pooled medians (and their n) over several runs' events."""
    pooled: dict[str, list[float]] = {name: [] for name in FIGURES}
    for events in runs_events:
        for name, values in steady_values(events).items():
            pooled[name] += values
    return {name: {"median": median(values), "n": len(values)} for name, values in pooled.items()}
