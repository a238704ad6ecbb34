"""What each session did around the first fault, for the timeline plots: the metrics pick
the instants and the statuses, the report only draws them."""

from __future__ import annotations

from dataclasses import dataclass, field

from labcommon.catalogue import DOWN, OP


@dataclass
class Trace:
    """Per session: (ms after the zero, status) with status ok / failed / down."""

    zero_ns: int
    fault_label: str
    before_ms: float
    after_ms: float
    sessions: dict[str, list[tuple[float, str]]] = field(default_factory=dict)
    lb_noticed_ms: list[float] = field(default_factory=list)


def session_trace(events: list[dict], zero_ns: int, fault_label: str, before_s: float, after_s: float,
                  sessions: list[str], lb_noticed_ms: list[float]) -> Trace:
    trace = Trace(zero_ns, fault_label, before_s * 1000, after_s * 1000, {sid: [] for sid in sessions},
                  lb_noticed_ms)
    for e in events:
        if e["ev"] not in (OP, DOWN) or "session" not in e:
            continue
        t = (e["ts"] - zero_ns) / 1e6
        if -trace.before_ms <= t <= trace.after_ms:
            status = "down" if e["ev"] == DOWN else ("ok" if e.get("ok") else "failed")
            trace.sessions.setdefault(e["session"], []).append((round(t, 3), status))
    return trace
