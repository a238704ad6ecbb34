"""Metric definitions (docs/ARCHITECTURE.md, "Metrics") on synthetic event logs: the
numbers must follow the definitions whatever a session logged, or failed to log."""

from __future__ import annotations

import pytest

from caslab import metrics
from caslab.metrics import stats
from caslab.metrics import RunParams, analyze_run, summarize_scenario
from labcommon.catalogue import problems

MS = 1_000_000
PARAMS = RunParams(late_ms=500, stall_ms=400, min_cpu_idle_pct=35)


def op(ts_ms, session, cas, ok=True, lat_ms=2, **extra):
    return {"ts": int(ts_ms * MS), "src": session.split("-")[0], "ev": "op", "session": session, "cas": cas, "ok": ok,
            "lat_us": int(lat_ms * 1000), "op": extra.pop("op_name", "read"), **extra}


def steady(session, cas, start_ms, end_ms, every_ms=50):
    return [op(t, session, cas) for t in range(start_ms, end_ms, every_ms)]


def fault(ts_ms, elements, kind="poweroff", index=0, affects="on_elements"):
    return {"ts": ts_ms * MS, "src": "runner", "ev": "fault", "kind": kind, "targets": elements, "elements": elements,
            "label": f"{kind} {','.join(elements)}", "index": index, "affects": affects}


def frame(*events, end_ms=2000, sessions=("cl1-s0", "cl1-s1", "cl1-s2")):
    base = [{"ts": 0, "src": "cl1", "ev": "client_up", "sessions": list(sessions), "target": {}},
            {"ts": 1 * MS, "src": "runner", "ev": "clients_ready", "sessions": len(sessions)},
            {"ts": 10 * MS, "src": "runner", "ev": "measure_start", "observe_s": 2.0},
            {"ts": end_ms * MS, "src": "runner", "ev": "measure_end"},
            {"ts": end_ms * MS + 1, "src": "runner", "ev": "scenario_end", "ok": True}]
    return sorted(base + [e for group in events for e in (group if isinstance(group, list) else [group])],
                  key=lambda e: e["ts"])


def by_session(run, index=0):
    return {s.session: s for s in run.faults[index].sessions}


def base_run():
    """a: on cas1, reset at 130 ms, back on cas2 at 160 ms; b: on cas2, unaffected, one late
    op; c: on cas1 and never recovers (timeout at 1100 ms, nothing after)."""
    return frame(
        steady("cl1-s0", "cas1", 0, 100), steady("cl1-s1", "cas2", 0, 2000), steady("cl1-s2", "cas1", 0, 100),
        fault(100, ["cas1"]),
        {"ts": 130 * MS, "src": "cl1", "ev": "down", "session": "cl1-s0", "reason": "reset"},
        {"ts": 140 * MS, "src": "cl1", "ev": "connect_ok", "session": "cl1-s0", "addr": "10.1.0.100", "lport": 5,
         "laddr": "10.1.10.1"},
        {"ts": 150 * MS, "src": "cl1", "ev": "logon", "session": "cl1-s0", "cas": "cas2", "db": "DB1", "reauth": True,
         "resumed": False, "prompt": True},
        steady("cl1-s0", "cas2", 160, 2000),
        op(200, "cl1-s1", "cas2", lat_ms=900),
        {"ts": 1100 * MS, "src": "cl1", "ev": "down", "session": "cl1-s2", "reason": "timeout"},
        {"ts": 120 * MS, "src": "nlb", "ev": "lb_member", "member": "cas1", "reason": "port_down", "alive": False,
         "accepts_new": False},
    )


def test_synthetic_events_follow_the_catalogue():
    for e in base_run():
        assert not problems(e), (e, problems(e))


def test_session_outcomes_follow_the_definitions():
    run = analyze_run(base_run(), PARAMS)
    f = run.faults[0]
    s = by_session(run)
    assert [x.affected for x in s.values()] == [True, False, True]
    assert s["cl1-s0"].recovered and s["cl1-s0"].reconnect_ms == 60.0 and s["cl1-s0"].cas_after == "cas2"
    assert s["cl1-s0"].reauth == 1 and s["cl1-s0"].prompts == 1 and s["cl1-s0"].address == "10.1.10.1"
    assert s["cl1-s1"].collateral and not s["cl1-s1"].affected, "a late operation hurt an unaffected session"
    assert s["cl1-s2"].unrecovered and s["cl1-s2"].stalled and s["cl1-s2"].reconnect_ms is None
    assert f.count("affected") == 2 and f.count("recovered") == 1 and f.count("unrecovered") == 1
    assert f.detection_ms == 20.0
    assert s["cl1-s0"].phases == {"lb_noticed": 20.0, "client_saw": 30.0, "connected": 40.0, "logged_on": 50.0,
                                  "first_op": 60.0}


def test_late_threshold_decides_collateral():
    run = analyze_run(base_run(), RunParams(late_ms=1000, stall_ms=400))
    assert not by_session(run)["cl1-s1"].collateral


def test_a_silent_affected_session_is_never_recovered():
    """It logged no drop and no failure: it simply stopped. Silence is not recovery."""
    events = frame(steady("cl1-s0", "cas1", 0, 100), steady("cl1-s1", "cas2", 0, 2000),
                   steady("cl1-s2", "cas2", 0, 2000), fault(100, ["cas1"]))
    s = by_session(analyze_run(events, PARAMS))["cl1-s0"]
    assert s.affected and s.stalled and s.disrupted and s.unrecovered and not s.recovered
    assert s.dropped_ms is None, "it never logged a drop"


def test_a_session_that_never_logged_anything_is_stalled_collateral():
    events = frame(steady("cl1-s0", "cas2", 0, 2000), steady("cl1-s1", "cas2", 0, 2000), fault(100, ["cas1"]))
    s = by_session(analyze_run(events, PARAMS))["cl1-s2"]
    assert s.stalled and s.collateral and not s.affected


def test_a_dead_client_process_stalls_its_sessions():
    events = frame(steady("cl1-s0", "cas2", 0, 600), steady("cl1-s1", "cas2", 0, 600), steady("cl1-s2", "cas1", 0, 600),
                   fault(100, ["cas3"]),
                   {"ts": 600 * MS, "src": "runner", "ev": "process_exit", "name": "cl1", "host": "cl1",
                    "returncode": -9})
    run = analyze_run(events, PARAMS)
    assert all(s.stalled and s.collateral for s in run.faults[0].sessions)
    assert run.process_exits and run.process_exits[0]["name"] == "cl1"
    summary = summarize_scenario({"id": "s1", "label": "x", "mode": "m"}, [run], 35, [])
    assert not summary.trustworthy and "died" in summary.untrustworthy_reasons[0]


def test_an_affected_session_that_stalls_then_works_reconnects_at_the_stall_end():
    events = frame(steady("cl1-s0", "cas1", 0, 100), op(900, "cl1-s0", "cas1"), steady("cl1-s0", "cas1", 950, 2000),
                   steady("cl1-s1", "cas2", 0, 2000), steady("cl1-s2", "cas2", 0, 2000), fault(100, ["cas1"]))
    s = by_session(analyze_run(events, PARAMS))["cl1-s0"]
    assert s.affected and s.stalled and s.recovered and s.reconnect_ms == 800.0


def test_each_fault_is_measured_from_its_own_instant():
    """A controller crash that disrupts nobody affects nobody; a later poweroff is measured
    from its own instant, for the sessions on its CAS only."""
    events = frame(
        steady("cl1-s0", "cas1", 0, 1000), steady("cl1-s1", "cas2", 0, 1000),
        steady("cl1-s2", "cas2", 0, 3000), steady("cl1-s0", "cas2", 1040, 3000), steady("cl1-s1", "cas3", 1050, 3000),
        fault(200, ["controller"], kind="controller-crash", index=0, affects="disrupted"),
        fault(1000, ["cas1"], index=1),
        {"ts": 1010 * MS, "src": "cl1", "ev": "down", "session": "cl1-s0", "reason": "reset"},
        end_ms=3000)
    run = analyze_run(events, PARAMS)
    assert run.faults[0].count("affected") == 0 and run.faults[0].count("collateral") == 0
    second = by_session(run, 1)
    assert [k for k, s in second.items() if s.affected] == ["cl1-s0"]
    assert second["cl1-s0"].reconnect_ms == 40.0
    rows = summarize_scenario({"id": "s1", "label": "x", "mode": "sdn-nlb"}, [run], 35, []).faults
    assert [(r.fault_index, r.affected, r.reconnect_ms.p50) for r in rows] == [(0, 0, None), (1, 1, 40.0)]


def test_a_fault_near_the_end_of_the_window():
    """A session cut off 50 ms before the window closes, with no success after, is not
    recovered; one with a success 10 ms before the end is."""
    events = frame(steady("cl1-s0", "cas1", 0, 1950), steady("cl1-s1", "cas1", 0, 1950),
                   steady("cl1-s2", "cas2", 0, 2000), fault(1950, ["cas1"]),
                   {"ts": 1960 * MS, "src": "cl1", "ev": "down", "session": "cl1-s1", "reason": "reset"},
                   op(1990, "cl1-s1", "cas2"))
    s = by_session(analyze_run(events, PARAMS))
    assert s["cl1-s0"].affected and not s["cl1-s0"].recovered
    assert s["cl1-s1"].recovered and s["cl1-s1"].reconnect_ms == 40.0
    assert not s["cl1-s2"].affected and not s["cl1-s2"].collateral


def test_goodput_before_and_after_the_fault():
    """Whole seconds only: [500, 1500) before the fault, two after it (s0 stopped at 1000)."""
    events = frame(steady("cl1-s0", "cas1", 0, 1000), steady("cl1-s1", "cas2", 0, 3500),
                   steady("cl1-s2", "cas2", 0, 3500), fault(1500, ["cas1"]), end_ms=3500)
    g = analyze_run(events, PARAMS).goodput
    assert g.first_bin == -1 and g.all_sessions == [50, 40, 40] and g.unaffected == [40, 40, 40]
    assert g.pre_fault == 50 and g.dip == 0.8 and g.dip_unaffected == 1.0


def test_message_integrity_counts_acked_but_missing():
    events = base_run() + [
        op(10, "cl1-s0", "cas1", op_name="send", msg_id="m1"), op(20, "cl1-s0", "cas1", op_name="send", msg_id="m2"),
        op(30, "cl1-s0", "cas1", ok=False, op_name="send", msg_id="m3"),
        {"ts": 6000 * MS, "src": "runner", "ev": "mailbox_contents", "db": "DB1", "server": "mbx1", "active": True,
         "msg_ids": ["m1", "m3"]},
    ]
    assert metrics.message_integrity(events) == {"acked": 2, "stored": 1, "lost": 1, "recovered": 0}


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert metrics.percentile(values, 50) == 50 and metrics.percentile(values, 99) == 99
    assert metrics.percentile(values, 100) == 100 and metrics.percentile([], 50) is None
    assert metrics.Distribution.of([5.0]).max == 5.0


def test_p99_needs_a_hundred_values():
    """Below 100 values the nearest-rank p99 is the maximum: it is left out, never faked."""
    assert metrics.Distribution.of([float(v) for v in range(1, 100)]).p99 is None
    hundred = metrics.Distribution.of([float(v) for v in range(1, 101)])
    assert hundred.n == 100 and hundred.p99 == 99.0 and hundred.max == 100.0


def test_student_t_matches_the_table_and_known_values():
    for dof, quantile in stats.T95.items():
        assert abs(stats.t_quantile(0.975, dof) - quantile) < 1e-3
    assert abs(stats.t_cdf(1.0, 1) - 0.75) < 1e-9  # Cauchy
    assert abs(stats.t_cdf(0.0, 7.5) - 0.5) < 1e-12


def test_welch_difference_and_interval():
    w = stats.welch([1.0, 2.0, 3.0], [4.0, 5.0, 6.0])
    assert w.diff == 3.0 and w.dof == 4.0 and w.ci95 == [0.7, 5.3] and abs(w.p - 0.0213) < 1e-4
    unequal = stats.welch([10.0, 12.0, 11.0, 13.0], [30.0, 10.0, 50.0])
    assert unequal.ci95[0] < unequal.diff < unequal.ci95[1] and 2 < unequal.dof < 3  # dominated by b's spread
    assert stats.welch([1.0], [2.0, 3.0]).ci95 is None and stats.welch([], [1.0]) is None


def test_confidence_interval_contains_the_mean_and_shrinks():
    wide = metrics.confidence_interval([10.0, 20.0, 30.0])
    narrow = metrics.confidence_interval([19.0, 20.0, 21.0])
    assert wide[0] < 20 < wide[1] and narrow[0] < 20 < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert metrics.confidence_interval([1.0]) is None


def test_the_mean_point_and_its_interval_describe_the_same_quantity():
    d = metrics.Distribution.of([1.0, 1.0, 1.0, 10.0], rep_means=[1.0, 4.0])
    assert d.mean == 3.2 and d.mean_of_repetitions == 2.5
    assert d.ci95_mean[0] < d.mean_of_repetitions < d.ci95_mean[1]


def test_summary_aggregates_repetitions():
    runs = [analyze_run(base_run(), PARAMS, "s1", r) for r in (0, 1)]
    s = summarize_scenario({"id": "s1", "label": "x", "mode": "sdn-nlb"}, runs, 35, [])
    row = s.faults[0]
    assert s.repetitions == 2 and s.sessions == 6 and row.affected == 4
    assert row.reconnect_ms.n == 2 and row.reconnect_ms.p50 == 60.0
    assert s.fidelity_ok is True and s.trustworthy


@pytest.mark.parametrize("idle,ok", [(20.0, False), (60.0, True)])
def test_low_cpu_idle_is_flagged_untrustworthy(idle, ok):
    events = base_run() + [{"ts": 50 * MS, "src": "runner", "ev": "cpu", "idle_pct": idle}]
    s = summarize_scenario({"id": "s1", "label": "x", "mode": "m"}, [analyze_run(events, PARAMS)], 35, [])
    assert s.fidelity_ok is ok and s.cpu_idle_pct == idle and s.trustworthy is ok
    assert s.faults[0].trustworthy is ok
