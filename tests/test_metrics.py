"""Metric definitions (DESIGN section 6) on synthetic event logs."""

from __future__ import annotations

import pytest

from caslab import metrics

MS = 1_000_000


def op(ts_ms, session, cas, ok=True, lat_ms=2, **extra):
    return {"ts": ts_ms * MS, "ev": "op", "session": session, "cas": cas, "ok": ok, "lat_us": lat_ms * 1000,
            "op": extra.pop("op_name", "read"), **extra}


def base_events():
    return [
        op(0, "a", "cas1"), op(0, "b", "cas2"), op(0, "c", "cas1"),
        {"ts": 100 * MS, "ev": "fault", "kind": "poweroff", "targets": ["cas1"], "elements": ["cas1"]},
        # a: reset at 130 ms, reconnects to cas2 at 160 ms
        {"ts": 130 * MS, "ev": "down", "session": "a", "reason": "reset"},
        {"ts": 150 * MS, "ev": "logon", "session": "a", "cas": "cas2", "reauth": True},
        op(160, "a", "cas2"),
        # b: unaffected, one late op (collateral)
        op(200, "b", "cas2", lat_ms=900),
        # c: never recovers
        {"ts": 1100 * MS, "ev": "down", "session": "c", "reason": "timeout"},
        {"ts": 5000 * MS, "ev": "measure_end"},
    ]


def test_session_outcomes_follow_the_definitions():
    out = metrics.session_outcomes(base_events(), late_ms=500)
    assert out["sessions"] == 3 and out["affected"] == 2
    assert out["recovered"] == 1 and out["unrecovered"] == 1
    assert out["collateral"] == 1
    assert out["reconnect_ms"] == [60.0]
    assert out["reauth"] == 1
    assert out["timelines"]["a"]["cas_at_fault"] == "cas1"


def test_late_threshold_decides_collateral():
    out = metrics.session_outcomes(base_events(), late_ms=1000)
    assert out["collateral"] == 0


def test_message_integrity_counts_acked_but_missing():
    events = base_events() + [
        op(10, "a", "cas1", op_name="send", msg_id="m1"), op(20, "a", "cas1", op_name="send", msg_id="m2"),
        op(30, "a", "cas1", ok=False, op_name="send", msg_id="m3"),
        {"ts": 6000 * MS, "ev": "mailbox_contents", "db": "DB1", "server": "mbx1", "msg_ids": ["m1", "m3"]},
    ]
    assert metrics.message_integrity(events) == {"acked": 2, "stored": 1, "lost": 1}


def test_percentiles_are_nearest_rank():
    values = [float(v) for v in range(1, 101)]
    assert metrics.percentile(values, 50) == 50 and metrics.percentile(values, 99) == 99
    assert metrics.percentile(values, 100) == 100 and metrics.percentile([], 50) is None
    assert metrics.distribution([5.0])["p99"] == 5.0


def test_confidence_interval_contains_the_mean_and_shrinks():
    wide = metrics.confidence_interval([10.0, 20.0, 30.0])
    narrow = metrics.confidence_interval([19.0, 20.0, 21.0])
    assert wide[0] < 20 < wide[1] and narrow[0] < 20 < narrow[1]
    assert narrow[1] - narrow[0] < wide[1] - wide[0]
    assert metrics.confidence_interval([1.0]) is None


def test_summary_aggregates_repetitions():
    events = [dict(e, scenario="s1", rep=r) for r in (0, 1) for e in base_events()]
    summary = metrics.summarize(events, [{"id": "s1", "label": "x", "mode": "sdn-nlb"}], 500, 35)
    s = summary["scenarios"][0]
    assert s["repetitions"] == 2 and s["sessions"] == 6 and s["affected"] == 4
    assert s["reconnect_ms"]["n"] == 2 and s["reconnect_ms"]["p50"] == 60.0
    assert s["fidelity_ok"] is True


@pytest.mark.parametrize("idle,ok", [(20.0, False), (60.0, True)])
def test_low_cpu_idle_is_flagged(idle, ok):
    events = [dict(e, scenario="s1", rep=0) for e in base_events()]
    events.append({"ts": 50 * MS, "ev": "cpu", "idle_pct": idle, "scenario": "s1", "rep": 0})
    s = metrics.summarize(events, [{"id": "s1", "label": "x", "mode": "m"}], 500, 35)["scenarios"][0]
    assert s["fidelity_ok"] is ok and s["cpu_idle_pct"] == idle
