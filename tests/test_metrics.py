"""Metric definitions (docs/METRICS.md) on synthetic event logs: the
numbers must follow the definitions whatever a session logged, or failed to log."""

from __future__ import annotations

import pytest

from caslab.results import metrics
from caslab.results.metrics import stats
from caslab.results.metrics import RunParams, analyze_run, summarize_scenario
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
    assert not summary.trustworthy and any("died" in r for r in summary.untrustworthy_reasons)


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
    assert metrics.message_integrity(events) == {"acked": 2, "stored": 1, "lost": 1, "unreplicated": 0, "recovered": 0}


def test_message_integrity_counts_sends_acknowledged_on_one_copy():
    """A sync send the passive copy did not confirm is acked, stored, and counted as held by one
    copy (RPC and HTTP alike); a failed send naming copies counts nowhere."""
    events = base_run() + [
        op(10, "cl1-s0", "cas1", op_name="send", msg_id="m1", unreplicated=["10.0.2.12:7000"]),
        op(20, "cl1-s0", "cas1", op_name="send", msg_id="m2"),
        op(25, "cl1-s0", "cas1", ok=False, op_name="send", msg_id="m4", unreplicated=["10.0.2.12:7000"]),
        {"ts": 30 * MS, "src": "cl1", "ev": "http_request", "session": "cl1-owa0", "protocol": "owa", "cmd": "send",
         "ok": True, "status": 200, "lat_us": 900, "cas": "cas1", "msg_id": "m3", "unreplicated": ["10.0.2.12:7000"]},
        {"ts": 6000 * MS, "src": "runner", "ev": "mailbox_contents", "db": "DB1", "server": "mbx1", "active": True,
         "msg_ids": ["m1", "m2", "m3"]},
    ]
    assert metrics.message_integrity(events) == {"acked": 3, "stored": 3, "lost": 0, "unreplicated": 2, "recovered": 0}


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


T95_TABLE = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 9: 2.262, 10: 2.228, 15: 2.131, 20: 2.086,
             30: 2.042, 31: 2.040, 40: 2.021, 60: 2.000, 120: 1.980}


def test_student_t_matches_the_table_and_known_values():
    """Every degree of freedom gets its own quantile: 31 and 120 are not 1.96."""
    for dof, quantile in T95_TABLE.items():
        assert abs(stats.t95(dof) - quantile) < 1e-3, dof
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
    assert d.mean_pooled == 3.2 and d.mean_of_repetitions == 2.5
    assert d.ci95_of_repetition_means[0] < d.mean_of_repetitions < d.ci95_of_repetition_means[1]


def test_summary_aggregates_repetitions():
    cpu = [{"ts": 50 * MS, "src": "runner", "ev": "cpu", "idle_pct": 70.0}]
    runs = [analyze_run(base_run() + cpu, PARAMS, "s1", r) for r in (0, 1)]
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


# ---------------------------------------------------------------- issue 16's findings, one test each

def down(ts_ms, session, reason="reset"):
    return {"ts": int(ts_ms * MS), "src": session.split("-")[0], "ev": "down", "session": session, "reason": reason}


def cpu(ts_ms, idle):
    return {"ts": int(ts_ms * MS), "src": "runner", "ev": "cpu", "idle_pct": idle}


def test_a_victim_noticed_after_a_second_fault_belongs_to_the_first():
    """s2's client only times out after the controller crash: the poweroff owns its outage,
    and the controller crash, which disrupted nobody, affects nobody."""
    events = frame(steady("cl1-s0", "cas2", 0, 2000), steady("cl1-s2", "cas1", 0, 100),
                   fault(100, ["cas1"]), fault(300, ["controller"], "controller-crash", 1, "disrupted"),
                   down(500, "cl1-s2", "timeout"), steady("cl1-s2", "cas2", 600, 2000), cpu(50, 80))
    run = analyze_run(events, PARAMS)
    first, second = by_session(run, 0)["cl1-s2"], by_session(run, 1)["cl1-s2"]
    assert first.affected and first.recovered and first.reconnect_ms == 500.0 and first.dropped_ms == 400.0
    assert not second.affected and not second.collateral and not second.disrupted
    assert run.faults[1].count("affected") == 0


def test_a_controller_crash_first_then_a_poweroff_keeps_each_outage_with_its_cause():
    events = frame(steady("cl1-s0", "cas2", 0, 2000), steady("cl1-s2", "cas1", 0, 300),
                   fault(100, ["controller"], "controller-crash", 0, "disrupted"), fault(300, ["cas1"], index=1),
                   down(330, "cl1-s2"), steady("cl1-s2", "cas2", 360, 2000))
    run = analyze_run(events, PARAMS)
    assert run.faults[0].count("affected") == 0
    victim = by_session(run, 1)["cl1-s2"]
    assert victim.affected and victim.recovered and victim.reconnect_ms == 60.0


def test_a_success_after_the_measurement_is_no_recovery():
    events = frame(steady("cl1-s0", "cas1", 0, 100), fault(100, ["cas1"]), down(130, "cl1-s0"),
                   op(2100, "cl1-s0", "cas2"))
    s = by_session(analyze_run(events, PARAMS))["cl1-s0"]
    assert s.affected and not s.recovered and s.unrecovered and s.reconnect_ms is None


def test_a_stall_reconnects_at_the_first_success_not_at_the_end_of_the_longest_gap():
    """Silent from the fault, served at 1000 ms, then silent to the end: 900 ms, not 1900."""
    events = frame(steady("cl1-s0", "cas1", 0, 100), fault(100, ["cas1"]), op(1000, "cl1-s0", "cas2"))
    s = by_session(analyze_run(events, PARAMS))["cl1-s0"]
    assert s.affected and s.stalled and s.recovered and s.reconnect_ms == 900.0


def test_recovered_always_equals_n_and_a_drained_session_is_undisturbed():
    events = frame(steady("cl1-s0", "cas1", 0, 2000), steady("cl1-s1", "cas1", 0, 100),
                   fault(100, ["cas1"], "drain"), down(400, "cl1-s1"), steady("cl1-s1", "cas2", 450, 2000))
    run = analyze_run(events, PARAMS)
    s = by_session(run)
    assert s["cl1-s0"].affected and s["cl1-s0"].undisturbed and not s["cl1-s0"].recovered
    assert not s["cl1-s0"].unrecovered
    assert s["cl1-s1"].recovered and s["cl1-s1"].reconnect_ms == 350.0
    row = summarize_scenario({"id": "s", "label": "x", "mode": "m"}, [run], 35, []).faults[0]
    assert row.recovered == row.reconnect_ms.n == 1 and row.undisturbed == 1 and row.unrecovered == 0


def test_detection_is_bounded_by_the_faults_window():
    events = frame(steady("cl1-s0", "cas2", 0, 2000), fault(100, ["cas1"]), fault(300, ["cas1"], "drain", 1),
                   {"ts": 350 * MS, "src": "nlb", "ev": "lb_member", "member": "cas1", "reason": "drain",
                    "alive": True, "accepts_new": False})
    run = analyze_run(events, PARAMS)
    assert run.faults[0].detection_ms is None and run.faults[1].detection_ms == 50.0


def _reconnect(session, t_saw, t_conn, t_logon, t_op, cas="cas2"):
    return [down(t_saw, session),
            {"ts": int(t_conn * MS), "src": "cl1", "ev": "connect_ok", "session": session, "addr": "v", "lport": 1,
             "laddr": "a"},
            {"ts": int(t_logon * MS), "src": "cl1", "ev": "logon", "session": session, "cas": cas, "db": "DB1",
             "reauth": False, "resumed": True},
            op(t_op, session, cas)]


def test_phases_come_from_one_subset_in_causal_order_and_add_up():
    """s0 and s1 have every milestone in order; s2 was served before the NLB noticed: left out."""
    sessions = ("cl1-s0", "cl1-s1", "cl1-s2")
    events = frame(*[steady(s, "cas1", 0, 100) for s in sessions], fault(100, ["cas1"]),
                   {"ts": 110 * MS, "src": "nlb", "ev": "lb_member", "member": "cas1", "reason": "port_down",
                    "alive": False, "accepts_new": False},
                   _reconnect("cl1-s0", 120, 130, 140, 150), _reconnect("cl1-s1", 115, 300, 320, 330),
                   _reconnect("cl1-s2", 101, 102, 103, 105), sessions=sessions)
    events = [e for e in events if not (e["ev"] == "lb_member")] + [
        {"ts": 110 * MS, "src": "nlb", "ev": "lb_member", "member": "cas1", "reason": "port_down", "alive": False,
         "accepts_new": False}]
    row = summarize_scenario({"id": "s", "label": "x", "mode": "m"}, [analyze_run(events, PARAMS)], 35, []).faults[0]
    assert row.recovered == 3 and row.phases_n == 2
    medians = [row.phases_ms[p] for p in metrics.PHASES]
    assert medians == sorted(medians), "milestones in causal order"
    assert medians[-1] == 50.0, "the last milestone is the subset's median reconnect (nearest rank)"


@pytest.mark.parametrize("n,shown", [(19, False), (20, True)])
def test_p95_is_hidden_where_it_is_the_maximum(n, shown):
    d = metrics.Distribution.of([float(v) for v in range(1, n + 1)])
    assert (d.p95 is not None) is shown and d.max == float(n)


def test_trust_needs_evidence_from_every_repetition():
    meta = {"id": "s", "label": "x", "mode": "m"}
    without = summarize_scenario(meta, [analyze_run(base_run(), PARAMS)], 35, [])
    assert without.fidelity_ok is None and not without.trustworthy
    low, high = (analyze_run(base_run() + [cpu(50, v)], PARAMS, "s", r) for r, v in ((0, 10.0), (1, 61.0)))
    mixed = summarize_scenario(meta, [low, high], 35, [])
    assert mixed.fidelity_ok is False and not mixed.trustworthy and mixed.cpu_idle_by_repetition == [10.0, 61.0]
    empty = summarize_scenario(meta, [], 35, [])
    assert not empty.trustworthy and empty.fidelity_ok is None and empty.untrustworthy_reasons


def test_cpu_samples_outside_the_window_are_not_evidence():
    run = analyze_run(base_run() + [cpu(5, 90.0), cpu(2500, 90.0)], PARAMS)
    assert run.cpu_idle["samples"] == 0 and run.cpu_idle["mean"] is None


def test_acknowledged_http_sends_count_and_a_dismounted_database_stores_nothing():
    events = [{"ts": 10, "src": "cl1", "ev": "op", "session": "cl1-s0", "op": "send", "ok": True, "lat_us": 1,
               "cas": "cas1", "msg_id": "m1"},
              {"ts": 11, "src": "cl1", "ev": "http_request", "session": "cl1-owa0", "protocol": "owa", "cmd": "send",
               "ok": True, "status": 200, "lat_us": 1, "cas": "cas1", "msg_id": "h1"},
              {"ts": 20, "src": "runner", "ev": "db_dismounted", "db": "DB1", "previous": "mbx1", "missing": 0,
               "reason": "x"},
              {"ts": 30, "src": "runner", "ev": "mailbox_contents", "db": "DB1", "server": "mbx1", "active": True,
               "msg_ids": ["m1", "h1"]}]
    assert metrics.message_integrity(events) == {"acked": 2, "stored": 0, "lost": 2, "unreplicated": 0, "recovered": 0}
    mounted = events[:2] + events[3:]
    assert metrics.message_integrity(mounted) == {"acked": 2, "stored": 2, "lost": 0, "unreplicated": 0, "recovered": 0}
