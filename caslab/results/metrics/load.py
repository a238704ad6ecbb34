"""What a failover's recovery cost the machine: how busy the cores were, and how long
runnable tasks waited for one, while the affected sessions reconnected, against the same
span just before the fault (docs/METRICS.md section 8).

Why it is measured: at a site's size the reconnect times are set by queues, not by any
one step of the failover (docs/SCALING.md). If the cores were busy through the recovery
and tasks waited for them, the recovery is CPU-bound: it cannot end before the extra
CPU work it brought (the affected clients' reconnects and logons, the CAS and mailbox
work they cause, the NLB's resets) has run on the spare cores. ``cpu_bound_ms`` is that
lower bound; when it is close to the recovery span, faster failover needs less work per
reconnect or more cores, not a quicker NLB.

Inputs are the ``load`` events (raw cumulative counters every 25 ms, from the runner) of
one run, as ``readings``; the spans are widened to the readings around them, and the
figures are over the span actually covered.
"""

from __future__ import annotations

import bisect
import statistics
from dataclasses import dataclass

from labcommon.catalogue import LOAD


@dataclass
class RecoveryLoad:
    """One fault of one run: the recovery span and what the cores did in it."""

    span_ms: float | None = None             # fault -> the last recovered session's reconnect
    reconnected: int = 0                     # recovered sessions in the span
    busy_pct: float | None = None            # of all cores, during the span
    busy_before_pct: float | None = None     # of all cores, over as long a span just before the fault
    pressure_pct: float | None = None        # share of the span in which some runnable task waited for a CPU
    pressure_before_pct: float | None = None
    extra_cpu_ms: float | None = None        # CPU used in the span beyond the rate before the fault
    extra_cpu_ms_per_reconnect: float | None = None
    cpu_bound_ms: float | None = None        # extra_cpu_ms / the cores left spare before the fault


@dataclass(frozen=True)
class Reading:
    ts: int
    idle: int
    total: int
    tick_ms: float
    pressure_us: int | None


@dataclass(frozen=True)
class Usage:
    """The counters' change between two readings."""

    elapsed_ms: float
    busy_ms: float      # CPU time, all cores
    cores_ms: float     # CPU time available, all cores
    pressure_ms: float | None

    @property
    def busy_pct(self) -> float | None:
        return round(100 * self.busy_ms / self.cores_ms, 1) if self.cores_ms > 0 else None

    @property
    def pressure_pct(self) -> float | None:
        if self.pressure_ms is None or self.elapsed_ms <= 0:
            return None
        return round(min(100.0, 100 * self.pressure_ms / self.elapsed_ms), 1)


def readings(events: list[dict]) -> list[Reading]:
    """A run's ``load`` events in time order (read once per run, used by every fault)."""
    return [Reading(e["ts"], e["idle_ticks"], e["total_ticks"], e["tick_ms"], e.get("pressure_us"))
            for e in sorted((e for e in events if e["ev"] == LOAD), key=lambda e: e["ts"])]


def usage(series: list[Reading], start: int, end: int) -> Usage | None:
    """The counters from the last reading at or before ``start`` to the first at or after
    ``end`` (None when the readings do not cover both ends, or the interval is empty: a
    fault at or before the measurement window's start has no span before it)."""
    if end <= start:
        return None
    stamps = [r.ts for r in series]
    i = bisect.bisect_right(stamps, start) - 1
    j = bisect.bisect_left(stamps, end)
    if i < 0 or j >= len(series) or j <= i:
        return None
    a, b = series[i], series[j]
    cores_ms = (b.total - a.total) * b.tick_ms
    busy_ms = cores_ms - (b.idle - a.idle) * b.tick_ms
    pressure = None if a.pressure_us is None or b.pressure_us is None else (b.pressure_us - a.pressure_us) / 1000
    return Usage((b.ts - a.ts) / 1e6, busy_ms, cores_ms, pressure)


def recovery_load(series: list[Reading], t_fault: int, reconnects_ms: list[float], earliest: int) -> RecoveryLoad:
    """The recovery span after ``t_fault`` (to the last of ``reconnects_ms``) against as
    long a span before it (not before ``earliest``, the measurement window's start), from
    the run's ``readings``."""
    if not reconnects_ms:
        return RecoveryLoad()
    span_ns = round(max(max(reconnects_ms), 1.0) * 1e6)  # ts are integer ns
    out = RecoveryLoad(span_ms=round(span_ns / 1e6, 1), reconnected=len(reconnects_ms))
    during = usage(series, t_fault, t_fault + span_ns)
    before = usage(series, max(earliest, t_fault - span_ns), t_fault)
    if during is None or during.elapsed_ms <= 0:
        return out
    out.busy_pct, out.pressure_pct = during.busy_pct, during.pressure_pct
    if before is None or before.elapsed_ms <= 0:
        return out
    out.busy_before_pct, out.pressure_before_pct = before.busy_pct, before.pressure_pct
    busy_rate_before = before.busy_ms / before.elapsed_ms  # cores busy, on average
    extra = during.busy_ms - busy_rate_before * during.elapsed_ms
    out.extra_cpu_ms = round(extra, 1)
    out.extra_cpu_ms_per_reconnect = round(extra / out.reconnected, 2)
    spare_cores = during.cores_ms / during.elapsed_ms - busy_rate_before
    if spare_cores > 0:
        out.cpu_bound_ms = round(max(0.0, extra) / spare_cores, 1)
    return out


FIGURES = ("span_ms", "busy_pct", "busy_before_pct", "pressure_pct", "pressure_before_pct", "extra_cpu_ms",
           "extra_cpu_ms_per_reconnect", "cpu_bound_ms")


def summarize(loads: list[RecoveryLoad]) -> dict[str, float | int | None]:
    """Each figure's median over the repetitions that have it, and how many did."""
    out: dict[str, float | int | None] = {}
    for name in FIGURES:
        values = [v for load in loads if (v := getattr(load, name)) is not None]
        out[name] = round(statistics.median(values), 1) if values else None
    out["repetitions"] = sum(1 for load in loads if load.busy_pct is not None)
    return out
