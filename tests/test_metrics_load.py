"""The recovery load (docs/METRICS.md section 8) on hand-made readings: what the cores did
while a failover's sessions reconnected, against the same span before the fault."""

from __future__ import annotations

from caslab.results.metrics.load import readings, recovery_load as load_of, summarize

MS = 1_000_000
T = 10_000 * MS          # the fault


def recovery_load(events: list[dict], t_fault: int, reconnects_ms: list[float], earliest: int):
    return load_of(readings(events), t_fault, reconnects_ms, earliest)


def reading(ms: float, idle: int, total: int, pressure_us: int | None = 0) -> dict:
    return {"ev": "load", "ts": T + int(ms * MS), "idle_ticks": idle, "total_ticks": total, "tick_ms": 10.0,
            "pressure_us": pressure_us}


def two_cores(busy_before: int, busy_during: int, pressure_during_us: int) -> list[dict]:
    """Readings every 100 ms on two cores (20 ticks each): before the fault ``busy_before``
    ticks of 20 busy, after it ``busy_during``."""
    out, idle, total, pressure = [], 1000, 2000, 0
    for k in range(-4, 5):
        out.append(reading(100 * k, idle, total, pressure))
        busy = busy_before if k < 0 else busy_during
        idle, total = idle + 20 - busy, total + 20
        pressure += 0 if k < 0 else pressure_during_us
    return out


def test_a_cpu_bound_recovery_adds_work_the_spare_cores_need_its_whole_span_for():
    # before: 10 of 20 ticks busy (one core); during 200 ms: 20 of 20 (both), tasks waiting all along
    load = recovery_load(two_cores(10, 20, 100_000), T, [150.0, 200.0], T - 10_000 * MS)
    assert (load.span_ms, load.reconnected) == (200.0, 2)
    assert (load.busy_before_pct, load.busy_pct) == (50.0, 100.0)
    assert (load.pressure_before_pct, load.pressure_pct) == (0.0, 100.0)
    assert load.extra_cpu_ms == 200.0           # 400 ms of CPU in 200 ms, against 200 before
    assert load.extra_cpu_ms_per_reconnect == 100.0
    assert load.cpu_bound_ms == 200.0           # 200 ms of work on the one spare core: the whole span


def test_an_idle_recovery_is_not_cpu_bound():
    load = recovery_load(two_cores(4, 4, 0), T, [200.0], T - 10_000 * MS)
    assert (load.busy_pct, load.pressure_pct, load.extra_cpu_ms, load.cpu_bound_ms) == (20.0, 0.0, 0.0, 0.0)


def test_the_span_before_never_starts_before_the_measurement_window():
    # the window opened 100 ms before the fault: the span before is those 100 ms, not 200
    events = two_cores(10, 20, 0) + [reading(-150, 0, 0)]   # a reading the window must not reach
    load = recovery_load(events, T, [200.0], T - 100 * MS)
    assert load.busy_before_pct == 50.0


def test_readings_that_do_not_cover_the_span_give_no_figures_but_the_span():
    load = recovery_load(two_cores(10, 20, 0), T, [900.0], T - 10_000 * MS)   # readings end at +400 ms
    assert (load.span_ms, load.busy_pct, load.extra_cpu_ms) == (900.0, None, None)


def test_no_recovered_session_gives_no_span():
    load = recovery_load(two_cores(10, 20, 0), T, [], T - 10_000 * MS)
    assert (load.span_ms, load.reconnected, load.busy_pct) == (None, 0, None)


def test_a_kernel_without_pressure_counters_still_gives_the_busy_share():
    events = [dict(e, pressure_us=None) for e in two_cores(10, 20, 0)]
    load = recovery_load(events, T, [200.0], T - 10_000 * MS)
    assert (load.busy_pct, load.pressure_pct, load.pressure_before_pct) == (100.0, None, None)


def test_the_rows_figures_are_medians_over_the_repetitions_that_have_them():
    loads = [recovery_load(two_cores(10, 20, 100_000), T, [200.0], T - 10_000 * MS),
             recovery_load(two_cores(4, 4, 0), T, [200.0], T - 10_000 * MS),
             recovery_load(two_cores(4, 4, 0), T, [], T - 10_000 * MS)]
    row = summarize(loads)
    assert row["repetitions"] == 2
    assert row["busy_pct"] == 60.0               # (100 + 20) / 2
    assert row["cpu_bound_ms"] == 100.0          # (200 + 0) / 2


def test_a_fault_before_the_measurement_window_has_no_span_before_it():
    # found by the differential test: the span before was [start, fault), an inverted interval
    load = recovery_load(two_cores(10, 20, 0), T, [200.0], T + 50 * MS)
    assert (load.busy_pct, load.busy_before_pct, load.extra_cpu_ms, load.cpu_bound_ms) == (100.0, None, None, None)
