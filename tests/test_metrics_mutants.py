"""Pure tests that pin down what docs/METRICS.md defines, where mutation testing found the
other pure tests silent (tools/mutation.sh, docs/MUTATION.md).

Each test builds its input by hand (events, or the per-run outcomes the aggregation
reads) and states the expected numbers as METRICS.md defines them. Times are offset by
odd nanoseconds so that rounding (3 decimals per session, 1 for statistics) shows.
"""

from __future__ import annotations

import statistics

from caslab.results.capture import compare as capture_compare
from caslab.results.metrics import stats
from caslab.results.metrics import analyze_run, summarize_scenario
from caslab.results.metrics.compare import compare as compare_runs
from caslab.results.metrics.databases import database_outages, dumpster
from caslab.results.metrics.http import http_faults
from caslab.results.metrics.nlb import convergence, flooding
from caslab.results.metrics.outcomes import FaultRun, Goodput, HttpFaultRun, RunOutcome, aggregates
from caslab.results.metrics import summary as summary_mod
from caslab.results.metrics.trace import session_trace
from caslab.results.metrics.addresses import by_address, merge as merge_addresses
from labcommon.catalogue import problems

from tests.test_metrics import MS, PARAMS, fault, frame, op, steady

META = {"id": "s1", "label": "x", "mode": "m"}


def outcome(rep: int = 0, **fields) -> RunOutcome:
    """A run outcome with nothing in it but ``fields`` (the aggregation reads only those)."""
    base = dict(scenario="s1", rep=rep, complete=True, t0_ns=0, sessions=[], faults=[], goodput=Goodput(),
                cpu_idle={"mean": 80.0, "min": 70.0, "pre_fault": 80.0, "samples": 3}, cpu_series=[],
                probe_gap_ms=None, app_probe_gap_ms=None, messages={}, process_exits=[])
    return RunOutcome(**(base | fields))


# ---------------------------------------------------------------- HTTP sessions (section 9)

T = 1_000_123_457          # the first fault (ns), not a whole ms
T2 = T + 2_000 * MS        # the second fault: the first's window is [T, T2)
END = T + 3_000 * MS


def req(ts, session, cmd, ok=True, cas="cas1", lat_us=2_000, **extra):
    protocol = {"owa": "owa", "eas": "eas", "oa": "oa"}[session.split("-")[1][:-1]]
    return {"ts": ts, "src": session.split("-")[0], "ev": "http_request", "session": session, "protocol": protocol,
            "cmd": cmd, "ok": ok, "status": 200 if ok else None, "lat_us": lat_us, "cas": cas if ok else None, **extra}


def http_logon(ts, session, reauth, prompt):
    return {"ts": ts, "src": session.split("-")[0], "ev": "http_logon", "session": session, "protocol": "owa",
            "cas": "cas2", "reauth": reauth, "prompt": prompt}


def http_events():
    """owa0: on cas1, a reply from cas1 right after the fault, a failed request, two
    re-logins, served on cas2; eas0: a lost Ping re-established by one that started exactly
    when it ended; eas1: never served before the fault, a Ping lost at the fault instant and
    one at the second fault's instant; oa0: on cas1, served at the fault instant, never
    dropped (undisturbed); h2-owa0: an Internet user on cas2, configured by autodiscover."""
    return [
        {"ts": 0, "src": "h1", "ev": "http_client_up", "external": False,
         "sessions": {"h1-owa0": "owa", "h1-eas0": "eas", "h1-eas1": "eas", "h1-oa0": "oa"}},
        {"ts": 0, "src": "h2", "ev": "http_client_up", "external": True, "sessions": {"h2-owa0": "owa"}},
        {"ts": 5 * MS, "src": "h2", "ev": "http_autodiscover", "session": "h2-owa0", "protocol": "owa", "ok": True,
         "via": "dns", "url": "https://mail/owa", "lat_us": 10, "cas": "cas2"},
        {"ts": 6 * MS, "src": "h1", "ev": "http_autodiscover", "session": "h1-oa0", "protocol": "oa", "ok": False,
         "via": "site", "url": None, "lat_us": 10, "cas": None, "reason": "connect"},
        req(T - 500 * MS, "h1-owa0", "read"),
        req(T + 50 * MS, "h1-owa0", "read", lat_us=1_500),
        req(T + 100_123_456, "h1-owa0", "read", ok=False),
        http_logon(T, "h1-owa0", True, False),
        http_logon(T + 150 * MS, "h1-owa0", True, True),
        http_logon(T + 160 * MS, "h1-owa0", False, False),
        req(T + 200_234_567, "h1-owa0", "read", cas="cas2", lat_us=3_333),
        http_logon(T2, "h1-owa0", True, True),
        req(END + 1, "h1-owa0", "read", ok=False),            # after the end: nothing
        req(T - 50 * MS, "h1-eas0", "ping", lat_us=100_000),
        req(T + 300_111_111, "h1-eas0", "ping", ok=False, lat_us=350_000),
        req(T + 900 * MS, "h1-eas0", "ping", cas="cas2", lat_us=650_000),       # started before the loss ended
        req(T + 950 * MS, "h1-eas0", "sync", cas="cas2", lat_us=12_500),
        req(T + 1_300_111_111, "h1-eas0", "ping", cas="cas2", lat_us=1_000_000),  # started when it ended
        req(T, "h1-eas1", "ping", ok=False, lat_us=60_000),
        req(T + 500 * MS, "h1-eas1", "sync", cas="cas2", lat_us=4_000),
        req(T2, "h1-eas1", "ping", ok=False, lat_us=60_000),
        req(T - 5 * MS, "h1-oa0", "read"),
        req(T, "h1-oa0", "read", cas="cas1", lat_us=7_000),
        req(T2, "h1-oa0", "read", cas="cas1", lat_us=9_000),
        {"ts": T2 + 10 * MS, "src": "h1", "ev": "http_down", "session": "h1-oa0", "protocol": "oa", "reason": "eof"},
        req(T - 5 * MS, "h2-owa0", "read", cas="cas2"),
        req(T + 5 * MS, "h2-owa0", "read", cas="cas2"),
    ]


WINDOWS = [(0, "poweroff cas1", T, T2, {"cas1"}), (1, "poweroff cas2", T2, END, {"cas2"})]


def test_http_events_follow_the_catalogue():
    for e in http_events():
        assert not problems(e), (e, problems(e))


def test_http_session_under_a_fault_follows_section_9():
    first, second = http_faults(http_events(), WINDOWS, END)
    assert (first.index, first.label, first.t_ns, first.window_end_ns) == (0, "poweroff cas1", T, T2)
    s = {x.session: x for x in first.sessions}
    assert list(s) == ["h1-eas0", "h1-eas1", "h1-oa0", "h1-owa0", "h2-owa0"]
    owa = s["h1-owa0"]
    assert (owa.protocol, owa.external, owa.configured, owa.cas_at_fault) == ("owa", False, False, "cas1")
    assert owa.affected and owa.disrupted and owa.recovered and not owa.undisturbed
    assert owa.dropped_ms == 100.123 and owa.reconnect_ms == 200.235, "served again after the drop, not before"
    assert (owa.relogins, owa.prompts, owa.disconnects) == (2, 1, 0)
    assert (owa.requests, owa.failed) == (3, 1) and owa.latencies_ms == [1.5, 3.333]
    assert (owa.pings_lost, owa.pings_reestablished, owa.reestablish_ms) == (0, 0, None)
    eas = s["h1-eas0"]
    assert eas.affected and eas.dropped_ms == 300.111 and eas.recovered and eas.reconnect_ms == 900.0
    assert (eas.pings_lost, eas.pings_reestablished, eas.reestablish_ms) == (1, 1, 300.111)
    assert eas.latencies_ms == [12.5], "a long-poll's hold is no latency"
    eas1 = s["h1-eas1"]
    assert eas1.cas_at_fault is None and not eas1.affected and eas1.disrupted and not eas1.recovered
    assert eas1.dropped_ms == 0.0 and eas1.reconnect_ms is None and not eas1.undisturbed
    assert (eas1.pings_lost, eas1.pings_reestablished, eas1.reestablish_ms) == (1, 0, None)
    oa = s["h1-oa0"]
    assert oa.affected and not oa.disrupted and oa.undisturbed and not oa.recovered and oa.dropped_ms is None
    assert oa.reconnect_ms is None and oa.requests == 1 and oa.latencies_ms == [7.0] and oa.disconnects == 0
    ext = s["h2-owa0"]
    assert ext.external and ext.configured and ext.cas_at_fault == "cas2"
    assert not ext.affected and not ext.undisturbed and not ext.recovered and ext.requests == 1
    t = {x.session: x for x in second.sessions}
    assert (t["h1-owa0"].relogins, t["h1-owa0"].prompts) == (1, 1)
    assert t["h1-oa0"].disconnects == 1 and t["h1-oa0"].requests == 1 and t["h1-oa0"].latencies_ms == [9.0]
    assert t["h1-eas1"].pings_lost == 1 and t["h1-eas1"].affected, "its last success before T2 was on cas2"
    assert not t["h1-owa0"].disrupted, "the request after the end does not count"


def test_http_summary_rows_per_protocol_and_site():
    runs = [analyze_run(_with_window(http_events()), PARAMS, "s1", rep)
            for rep in (0, 1)]
    summary = summarize_scenario(META, runs, 35, [])
    rows = {(r.fault_index, r.protocol, r.clients): r for r in summary.http}
    assert list(rows) == [(0, "eas", "internal"), (0, "oa", "internal"), (0, "owa", "internal"),
                          (0, "owa", "Internet"), (1, "eas", "internal"), (1, "oa", "internal"),
                          (1, "owa", "internal"), (1, "owa", "Internet")]
    eas = rows[(0, "eas", "internal")]
    assert (eas.scenario, eas.label, eas.mode, eas.fault) == ("s1", "x", "m", "poweroff cas1")
    assert (eas.repetitions, eas.sessions, eas.configured, eas.requests, eas.failed) == (2, 4, 0, 12, 4)
    assert (eas.affected, eas.disrupted, eas.recovered, eas.undisturbed, eas.unrecovered) == (2, 4, 2, 0, 0)
    assert (eas.relogins, eas.prompts, eas.pings_lost, eas.pings_reestablished, eas.disconnects) == (0, 0, 4, 2, 0)
    assert (eas.reconnect_ms.n, eas.reconnect_ms.p50, eas.reconnect_ms.mean_of_repetitions) == (2, 900.0, 900.0)
    assert eas.reconnect_ms.ci95_of_repetition_means == [900.0, 900.0]
    assert (eas.reestablish_ms.n, eas.reestablish_ms.max) == (2, 300.1)
    assert (eas.latency_ms.n, eas.latency_ms.max) == (4, 12.5) and eas.trustworthy is False
    owa = rows[(0, "owa", "internal")]
    assert (owa.relogins, owa.prompts, owa.recovered, owa.unrecovered, owa.requests) == (4, 2, 2, 0, 6)
    oa = rows[(0, "oa", "internal")]
    assert (oa.undisturbed, oa.unrecovered, oa.recovered, oa.configured) == (2, 0, 0, 0)
    ext = rows[(0, "owa", "Internet")]
    assert (ext.configured, ext.affected, ext.unrecovered, ext.clients) == (2, 0, 0, "Internet")
    oa1 = rows[(1, "oa", "internal")]
    assert (oa1.disconnects, oa1.disrupted, oa1.affected, oa1.unrecovered) == (2, 2, 0, 0)
    eas1 = rows[(1, "eas", "internal")]
    assert (eas1.affected, eas1.unrecovered, eas1.fault) == (4, 4, "poweroff cas2")


def _with_window(http):
    """The HTTP events inside a run (measurement from 0 to END, faults at T and T2)."""
    return sorted(http + [
        {"ts": 0, "src": "runner", "ev": "measure_start", "observe_s": 3.0},
        fault(0, ["cas1"]) | {"ts": T, "label": "poweroff cas1"},
        fault(0, ["cas2"], index=1) | {"ts": T2, "label": "poweroff cas2"},
        {"ts": END, "src": "runner", "ev": "measure_end"},
        {"ts": END + 1, "src": "runner", "ev": "scenario_end", "ok": True}], key=lambda e: e["ts"])


def test_a_run_without_faults_has_one_http_window_the_whole_measurement():
    events = [e for e in _with_window(http_events()) if e["ev"] != "fault"]
    (window,) = analyze_run(events, PARAMS).http
    assert (window.index, window.label, window.t_ns, window.window_end_ns) == (-1, "no fault", 0, END)
    assert http_faults([e for e in events if e["ev"] != "http_client_up"], [(-1, "x", 0, END, set())]) == []


# ---------------------------------------------------------------- over repetitions (sections 8, 10, 12)

def test_cost_per_operation_over_all_repetitions():
    runs = [outcome(0, cost={"cpu_ms": {"cas": 100.0, "client": 50.0}, "ops": 30}),
            outcome(1, cost={"cpu_ms": {"cas": 21.3, "ovs": 70.5}, "ops": 7}), outcome(2, cost={})]
    got = summary_mod.cost_summary(runs)
    assert got["ops"] == 37 and got["cpu_ms_per_op"] == round(241.8 / 37, 3) == 6.535
    assert list(got["per_op_by_kind"].items()) == [("cas", 3.278), ("ovs", 1.905), ("client", 1.351)]
    assert summary_mod.cost_summary([outcome(0, cost={"cpu_ms": {"cas": 5.0}, "ops": 0})]) == {}
    assert summary_mod.cost_summary([outcome(0, cost={"ops": 9})]) == {}
    summary = summarize_scenario(META, runs, 35, [])
    assert summary.cost == got


def test_cost_of_one_run_counts_only_the_windows_operations():
    events = frame(steady("cl1-s0", "cas1", 0, 2000, every_ms=100), op(5, "cl1-s1", "cas1"),
                   op(2500, "cl1-s1", "cas1"), op(500, "cl1-s1", "cas1", ok=False),
                   [{"ts": 2000 * MS, "src": "runner", "ev": "process_cpu", "name": n, "kind": k, "cpu_ms": v,
                     "window_ms": 1990.0} for n, k, v in (("cas1", "cas", 40.1), ("cas2", "cas", 0.5),
                                                           ("ovs-vswitchd", "ovs", 10.0))])
    cost = analyze_run(events, PARAMS).cost
    ops = 19   # in [10 ms, 2000 ms]: 100 .. 1900 ms; not the ones at 0 and 5 ms, 2500 ms, nor the failed one
    assert cost == {"cpu_ms": {"cas": 40.6, "ovs": 10.0}, "ops": ops, "cpu_ms_per_op": round(50.6 / ops, 3),
                    "per_op_by_kind": {"cas": round(40.6 / ops, 3), "ovs": round(10.0 / ops, 3)}}
    assert list(cost["cpu_ms"]) == ["cas", "ovs"]
    no_ops = [e for e in events if e["ev"] != "op"]
    assert analyze_run(no_ops, PARAMS).cost == {"cpu_ms": {"cas": 40.6, "ovs": 10.0}, "ops": 0,
                                                "cpu_ms_per_op": None, "per_op_by_kind": {}}
    assert analyze_run([e for e in events if e["ev"] != "process_cpu"], PARAMS).cost == {}


FLOOD_A = {"hosts": 2, "window_ms": 1000.0, "cluster_bytes": 1001, "cluster_frames": 11, "heartbeat_bytes": 301,
           "kbit_s": 8.0}
FLOOD_B = {"hosts": 2, "window_ms": 2001.0, "cluster_bytes": 2000, "cluster_frames": 20, "heartbeat_bytes": 400,
           "kbit_s": 8.4}


def test_flooding_is_the_mean_over_repetitions():
    got = summary_mod.flood_summary([outcome(0, flood=FLOOD_A), outcome(1, flood=FLOOD_B), outcome(2)])
    assert got == {"repetitions": 2, "hosts": 2, "cluster_bytes": 1500, "cluster_frames": 16, "heartbeat_bytes": 350,
                   "kbit_s": 8.2, "window_ms": 1500.5}
    one_rate = summary_mod.flood_summary([outcome(0, flood=FLOOD_A), outcome(1, flood=FLOOD_B | {"kbit_s": None})])
    assert one_rate["kbit_s"] == 8.0
    assert summary_mod.flood_summary([outcome(0, flood=FLOOD_A | {"kbit_s": None})])["kbit_s"] is None
    unknown = summary_mod.flood_summary([outcome(0, flood=FLOOD_A), outcome(1, flood=FLOOD_B | {"unmeasured": ["h3"]})])
    assert unknown == {"repetitions": 2, "hosts": 2, "cluster_bytes": None, "cluster_frames": None,
                       "heartbeat_bytes": None, "kbit_s": None, "unmeasured": ["h3"], "window_ms": None}
    assert summary_mod.flood_summary([outcome(0)]) == {}
    summary = summarize_scenario(META, [outcome(0, flood=FLOOD_A, faults=[_fault_run()])], 35, [])
    row = summary.faults[0]
    assert (row.flooded_bytes, row.flood_kbit_s, row.heartbeat_bytes) == (1001, 8.0, 301)


def _flood(host, port, cluster, frames, heartbeat, window_ms=1500.0):
    return {"ts": 1, "src": "runner", "ev": "wnlb_flood", "host": host, "port": port, "cluster_frames": frames,
            "cluster_bytes": cluster, "heartbeat_frames": 1, "heartbeat_bytes": heartbeat, "port_tx_bytes": 1,
            "window_ms": window_ms}


def test_flooding_of_one_run():
    rows = [_flood("cl1", "s1-eth1", 1000, 10, 100, 1500.0), _flood("r1", "s1-eth9", 500, 5, 50, 2000.0)]
    for e in rows:
        assert not problems(e), problems(e)
    assert flooding(rows) == {"hosts": 2, "window_ms": 2000.0, "cluster_bytes": 1500, "cluster_frames": 15,
                              "heartbeat_bytes": 150, "kbit_s": 6.0, "per_host": {"cl1": 1000, "r1:s1-eth9": 500}}
    unread = flooding(rows + [_flood("cl2", "s1-eth2", None, None, None)])
    assert unread == {"hosts": 3, "window_ms": 2000.0, "cluster_bytes": None, "cluster_frames": None,
                      "heartbeat_bytes": None, "kbit_s": None, "unmeasured": ["cl2"]}
    assert flooding([_flood("cl1", "p", 7, 1, 1, 0.0)])["kbit_s"] is None
    assert flooding([]) == {}


def _fault_run(index=0, sessions=(), **fields):
    base = dict(index=index, kind="poweroff", label=f"poweroff {index}", t_ns=0, elements=["cas1"],
                affects="on_elements", window_end_ns=1, detection_ms=None, sessions=list(sessions))
    return FaultRun(**(base | fields))


def test_goodput_is_averaged_over_repetitions_aligned_on_the_fault():
    a = Goodput(first_bin=-2, all_sessions=[10, 12, 3, 11], unaffected=[5, 6, 4, 5], pre_fault=11.0,
                pre_fault_unaffected=5.5, dip=0.273, dip_unaffected=0.727)
    b = Goodput(first_bin=-1, all_sessions=[13, 1, 9, 10, 10], unaffected=[6, 2, 6, 6, 6], pre_fault=13.0,
                pre_fault_unaffected=6.0, dip=0.077, dip_unaffected=0.333)
    c = Goodput(first_bin=-1, all_sessions=[14, 2, 9], unaffected=[7, 2, 6], pre_fault=None, dip=None)
    got = summary_mod.goodput_summary([outcome(0, goodput=a), outcome(1, goodput=b), outcome(2, goodput=c)])
    assert got == {"first_second": -1, "ops_per_s": [13.0, 2.0, 9.7], "unaffected_ops_per_s": [6.3, 2.7, 5.7],
                   "pre_fault_ops_per_s": 12.0, "dip": 0.077, "dip_unaffected": 0.333}
    disjoint = summary_mod.goodput_summary([outcome(0, goodput=Goodput(first_bin=-3, all_sessions=[1])),
                                            outcome(1, goodput=Goodput(first_bin=0, all_sessions=[1]))])
    assert disjoint == {"first_second": 0, "ops_per_s": [], "unaffected_ops_per_s": [], "pre_fault_ops_per_s": None,
                        "dip": None, "dip_unaffected": None}
    assert summary_mod.goodput_summary([]) == {}
    row = summarize_scenario(META, [outcome(0, goodput=a, faults=[_fault_run()]),
                                    outcome(1, goodput=b, faults=[_fault_run()])], 35, []).faults[0]
    assert row.goodput_dip_unaffected == 0.333


def test_capture_checks_pool_the_repetitions_differences():
    ok0 = {"status": "ok", "rep": 0, "abs_diffs_ms": [0.5, 0.11111], "only_events": ["a"], "only_wire": [],
           "not_compared": 1}
    ok1 = {"status": "ok", "rep": 1, "abs_diffs_ms": [1.23456, 0.33333, 0.2], "only_events": [], "only_wire": ["b"],
           "not_compared": 2}
    got = summary_mod.merge_capture_checks([None, {"status": "no_fault", "rep": 2}, ok0, ok1])
    assert got == {"status": "ok", "repetitions": 2, "n": 5, "median_abs_diff_ms": 0.333, "max_abs_diff_ms": 1.235,
                   "one_sided": 2, "only_events": [{"rep": 0, "session": "a"}],
                   "only_wire": [{"rep": 1, "session": "b"}], "not_compared": 3}
    broken = summary_mod.merge_capture_checks([ok0, {"status": "error", "rep": 1, "error": "unreadable"}])
    assert broken["status"] == "error" and broken["errors"] == ["repetition 2: unreadable"] and broken["n"] == 2
    assert summary_mod.merge_capture_checks([{"status": "not_captured"}, {"status": "no_fault"}]) == {
        "status": "not_captured", "repetitions": 0, "n": 0, "median_abs_diff_ms": None, "max_abs_diff_ms": None,
        "one_sided": 0, "only_events": [], "only_wire": [], "not_compared": 0}
    assert summary_mod.merge_capture_checks([None, None]) is None


def test_databases_of_a_fault_over_repetitions():
    a = _fault_run(databases={"DB1": {"unmounted_ms": 120.5, "missing": 2, "dismounted": False},
                              "DB2": {"unmounted_ms": None, "missing": None, "dismounted": True}})
    b = _fault_run(databases={"DB1": {"unmounted_ms": 300.0, "missing": 3, "dismounted": False},
                              "DB2": {"unmounted_ms": None, "missing": None, "dismounted": True}})
    keys = ("db_unmounted_ms", "dbs_dismounted", "copy_missing")

    def database_row(faults):
        got = aggregates([], faults)
        return {k: got[k] for k in keys}
    assert database_row([a, b]) == {"db_unmounted_ms": 300.0, "dbs_dismounted": 2, "copy_missing": 5}
    assert database_row([_fault_run()]) == {"db_unmounted_ms": None, "dbs_dismounted": 0, "copy_missing": None}
    row = summarize_scenario(META, [outcome(0, faults=[a]), outcome(1, faults=[b])], 35, []).faults[0]
    assert (row.db_unmounted_ms, row.dbs_dismounted, row.copy_missing) == (300.0, 2, 5)


def _db_role(ts, db, active, missing=None):
    e = {"ts": ts, "src": "mbx2", "ev": "db_role", "db": db, "server": "mbx2", "active": active}
    return e if missing is None else e | {"missing": missing}


def test_a_failed_database_is_unmounted_until_a_copy_mounts_in_the_window():
    events = [_db_role(50, "DB1", True), _db_role(100 * MS, "DB1", False), _db_role(100 * MS + 123_456_789, "DB1", True, 4),
              _db_role(200 * MS, "DB1", True, 9), _db_role(100 * MS, "DB3", True), _db_role(999 * MS, "DB2", True)]
    got = database_outages(events, 100 * MS, 999 * MS, {"db:DB1", "db:DB2", "cas1"})
    assert got == {"DB1": {"unmounted_ms": 123.5, "missing": 4, "dismounted": False},
                   "DB2": {"unmounted_ms": None, "missing": None, "dismounted": True}}
    at_instant = database_outages(events, 100 * MS, 999 * MS, {"db:DB3"})
    assert at_instant == {"DB3": {"unmounted_ms": 0.0, "missing": None, "dismounted": False}}
    resubmits = [{"ts": 1, "src": "runner", "ev": "dumpster_resubmit", "db": "DB1", "cas": c, "resubmitted": n,
                  "recovered": r} for c, n, r in (("cas1", 5, 2), ("cas2", 3, 1))]
    assert dumpster(resubmits) == {"resubmitted": 8, "recovered": 3}


def test_scenario_aggregates_and_trust_reasons():
    exits = [{"name": "cl1", "host": "cl1", "returncode": -9, "at_ms": 5.0}]
    runs = [outcome(0, cpu_idle={"mean": 80.0, "min": 61.5, "pre_fault": 80.0, "samples": 4}, sessions=["a", "b"],
                    messages={"acked": 3, "stored": 2, "lost": 1, "recovered": 1}, probe_gap_ms=12.5,
                    app_probe_gap_ms=None, never_served=1, faults=[_fault_run()]),
            outcome(1, cpu_idle={"mean": 30.0, "min": 20.0, "pre_fault": 30.0, "samples": 2}, sessions=["a"],
                    messages={"acked": 1, "stored": 1, "lost": 0}, probe_gap_ms=40.0, app_probe_gap_ms=7.0,
                    complete=False, process_exits=exits, never_served=2, faults=[_fault_run(), _fault_run(1)]),
            outcome(2, cpu_idle={"mean": None, "min": None, "pre_fault": None, "samples": 0}, sessions=[],
                    faults=[_fault_run()])]
    s = summarize_scenario(META, runs, 35, ["a notice"])
    assert (s.id, s.label, s.mode, s.params, s.repetitions, s.sessions, s.notices) == \
        ("s1", "x", "m", {}, 3, 3, ["a notice"])
    assert (s.cpu_idle_pct, s.cpu_idle_min_pct, s.cpu_idle_by_repetition) == (55.0, 20.0, [80.0, 30.0, None])
    assert s.fidelity_ok is False and not s.trustworthy
    assert s.untrustworthy_reasons == [
        "repetition 2: CPU idle averaged 30.0 % (< 35 %): the machine, not the design, may have set these numbers",
        "repetition 3: no CPU sample in its window (fidelity unknown)",
        "a repetition did not complete", "1 lab process(es) died during the run: ['cl1']"]
    assert s.messages == {"acked": 4, "stored": 3, "lost": 1, "unreplicated": 0, "recovered": 1}
    assert (s.probe_gap_ms, s.app_probe_gap_ms, s.never_served) == (40.0, 7.0, 3)
    assert s.process_exits == [exits[0] | {"rep": 1}]
    assert [r.fault_index for r in s.faults] == [0, 1] and s.faults[1].repetitions == 1
    row = s.faults[0]
    assert (row.repetitions, row.cpu_idle_pct, row.fidelity_ok, row.trustworthy, row.client_deaths) == \
        (3, 55.0, False, False, 1)
    assert (row.messages, row.probe_gap_ms, row.app_probe_gap_ms, row.never_served) == (s.messages, 40.0, 7.0, 3)
    trusted = summarize_scenario(META, runs[:1], 35, [])
    assert trusted.trustworthy and trusted.fidelity_ok is True and trusted.untrustworthy_reasons == []
    assert trusted.faults[0].trustworthy and trusted.app_probe_gap_ms is None
    edge = summarize_scenario(META, [outcome(0, cpu_idle={"mean": 35.0, "min": 35.0, "samples": 1})], 35, [])
    assert edge.fidelity_ok is True, "a mean idle of exactly the threshold passes (at least)"
    no_mean = outcome(0, cpu_idle={"mean": None, "min": None, "samples": 2})
    assert summary_mod.repetition_fidelity(no_mean, 35) is None


def test_convergence_over_repetitions():
    from caslab.results.metrics.nlb import Convergence
    a = _fault_run(convergence=Convergence(converged_ms=100.0, took_ms=40.0, restarts=1, buckets_moved=20,
                                           conns_broken=3, conns_departed=1))
    b = _fault_run(convergence=Convergence(converged_ms=300.0, took_ms=60.0, restarts=0, buckets_moved=30,
                                           conns_broken=0, conns_departed=4))
    c = _fault_run(convergence=Convergence())
    row = summarize_scenario(META, [outcome(i, faults=[f]) for i, f in enumerate((a, b, c))], 35, []).faults[0]
    assert (row.convergence_ms.n, row.convergence_ms.p50, row.convergence_ms.max) == (2, 100.0, 300.0)
    assert (row.convergence_took_ms, row.convergence_restarts, row.buckets_moved) == (40.0, 1, 30)
    assert (row.conns_broken, row.conns_departed) == (3, 5)
    none = summarize_scenario(META, [outcome(0, faults=[c])], 35, []).faults[0]
    assert (none.convergence_took_ms, none.convergence_restarts, none.buckets_moved, none.conns_broken,
            none.conns_departed) == (None, None, None, None, None)
    zero = summarize_scenario(META, [outcome(0, faults=[_fault_run(convergence=Convergence(
        restarts=0, buckets_moved=0, conns_broken=0, conns_departed=0))])], 35, []).faults[0]
    assert (zero.convergence_restarts, zero.buckets_moved, zero.conns_broken, zero.conns_departed) == (0, 0, 0, 0)


# ---------------------------------------------------------------- statistics (section 11)

def test_welch_follows_welch_satterthwaite_with_the_exact_t_quantile():
    a, b = [10.0, 12.0, 14.0], [20.0, 25.0, 31.0]
    va, vb = 4.0 / 3, (((20 - 25.333333333333332) ** 2 + (25 - 25.333333333333332) ** 2
                        + (31 - 25.333333333333332) ** 2) / 2) / 3
    se2 = va + vb
    dof = se2 ** 2 / (va ** 2 / 2 + vb ** 2 / 2)
    w = stats.welch(a, b)
    diff = 25.333333333333332 - 12.0
    half = stats.t_quantile(0.975, dof) * se2 ** 0.5
    assert (w.diff, w.dof, w.n_a, w.n_b) == (round(diff, 1), round(dof, 2), 3, 3)
    assert w.ci95 == [round(diff - half, 1), round(diff + half, 1)]
    assert abs(stats.t_cdf(half / se2 ** 0.5, dof) - 0.975) < 1e-9
    assert w.p == round(2 * (1 - stats.t_cdf(diff / se2 ** 0.5, dof)), 4) and 0 < w.p < 0.05
    reverse = stats.welch(b, a)
    assert reverse.diff == -w.diff and reverse.p == w.p and reverse.ci95 == [-w.ci95[1], -w.ci95[0]]
    point = stats.welch([5.0, 5.0], [7.5, 7.5])
    assert (point.diff, point.ci95, point.dof, point.p, point.n_a, point.n_b) == (2.5, [2.5, 2.5], None, None, 2, 2)
    single = stats.welch([5.0], [7.26, 9.0])
    assert (single.diff, single.ci95, single.dof, single.p, single.n_a, single.n_b) == (3.1, None, None, None, 1, 2)
    assert stats.welch([], [1.0]) is None and stats.welch([1.0], []) is None


def test_student_t_cdf_and_quantile_agree_at_known_points():
    assert abs(stats.t_cdf(-1.0, 1) - 0.25) < 1e-9, "Cauchy, left tail"
    assert abs(stats.t_cdf(12.706204736, 1) - 0.975) < 1e-9
    assert abs(stats.t_cdf(1.959963985, 1e7) - 0.975) < 1e-6, "a huge dof is the normal"
    q = stats.t_quantile(0.975, 2.5)  # a fractional dof (Welch) lies between its neighbours
    assert 3.182 < q < 4.303 and abs(stats.t_cdf(q, 2.5) - 0.975) < 1e-9
    assert abs(stats.t_quantile(0.995, 4) - 4.6041) < 1e-3
    assert stats._betainc(2, 3, 0.0) == 0.0 and stats._betainc(2, 3, 1.0) == 1.0
    assert abs(stats._betainc(2, 3, 0.4) - 0.5248) < 1e-9     # 1 - sum_{k<2} C(4,k) .4^k .6^(4-k)
    assert abs(stats._betainc(3, 2, 0.9) - 0.9477) < 1e-9     # the other branch of the continued fraction


def test_distribution_fields_and_rounding():
    d = stats.Distribution.of([1.04, 2.06, 3.0, 10.14], [2.16, 4.04])
    assert (d.n, d.p50, d.p95, d.p99, d.max) == (4, 2.1, None, None, 10.1)
    assert d.mean_pooled == round((1.04 + 2.06 + 3.0 + 10.14) / 4, 1) == 4.1
    assert d.mean_of_repetitions == 3.1
    half = stats.t95(1) * ((2.16 - 3.1) ** 2 * 2) ** 0.5 / 2 ** 0.5
    assert d.ci95_of_repetition_means == [round(3.1 - half, 1), round(3.1 + half, 1)]
    assert stats.Distribution.of([]) == stats.Distribution(0)
    assert stats.Distribution.of([4.0], [4.0]).ci95_of_repetition_means is None, "one repetition: no interval"
    assert stats.percentile([3.0, 1.0, 2.0], 1) == 1.0 and stats.percentile([3.0, 1.0, 2.0], 34) == 2.0
    assert stats.median([1.25, 9.0]) == 1.2 and stats.median([]) is None
    assert [stats.tail_rank_shown(99, n) for n in (0, 99, 100)] == [False, False, True]
    twenty = stats.Distribution.of([float(v) for v in range(20, 0, -1)])
    assert (twenty.p50, twenty.p95, twenty.p99, twenty.max) == (10.0, 19.0, None, 20.0)


# ---------------------------------------------------------------- one run (sections 2 and 8)

def probe(ts_ms, ok, kind="probe"):
    if kind == "probe":
        return {"ts": int(ts_ms * MS), "src": "probe-cl1", "ev": "probe", "seq": 1, "sport": 1, "isn": 1, "ok": ok,
                "result": "synack" if ok else "timeout"}
    return {"ts": int(ts_ms * MS), "src": "appprobe-cl1", "ev": "app_probe", "seq": 1, "ok": ok,
            "stage": "done" if ok else "connect", "lat_us": 1, "cas": "cas1" if ok else None}


def test_probe_gaps_are_runs_of_failures_inside_the_window():
    probes = [probe(5, False), probe(20, True), probe(30, False), probe(40, False), probe(55.5, True),
              probe(60, False), probe(62, False), probe(70, True), probe(80, False), probe(95.25, False),
              probe(2500, True)]
    events = frame(steady("cl1-s0", "cas1", 0, 2000), probes, [probe(20, True, "app")])
    run = analyze_run(events, PARAMS)
    assert run.probe_gap_ms == 25.5, "30 -> 55.5 ms; the failure at 5 ms is before the window"
    assert run.app_probe_gap_ms == 0.0, "probes, none failed"
    tail = analyze_run(frame(steady("cl1-s0", "cas1", 0, 2000), [probe(100, True), probe(120, False),
                                                                  probe(1900.04, False)]), PARAMS)
    assert tail.probe_gap_ms == 1780.0 and tail.app_probe_gap_ms is None, "still failing at the last probe"
    first = analyze_run(frame(steady("cl1-s0", "cas1", 0, 2000), [probe(10, False), probe(30, True)]), PARAMS)
    assert first.probe_gap_ms == 20.0, "a run of failures may start at the first probe (at the window's start)"
    edge = analyze_run(frame(steady("cl1-s0", "cas1", 0, 2000), [probe(2000, False)]), PARAMS)
    assert edge.probe_gap_ms == 0.0, "a probe at the window's end counts"


def test_probe_availability_per_quarter_second():
    events = [probe(900, True), probe(1050, False), probe(1200, True), probe(1300, True), probe(1310, False),
              probe(1320, True), probe(1000, True, "app")]
    got = analyze_run(frame(fault(1000, ["cas1"]), events, end_ms=3000), PARAMS).probe_availability
    assert got["probe"] == [(-0.25, 100.0), (0.0, 50.0), (0.25, 66.7)]
    assert got["app_probe"] == [(0.0, 100.0)]


def cpu(ts_ms, idle):
    return {"ts": int(ts_ms * MS), "src": "runner", "ev": "cpu", "idle_pct": idle}


def test_cpu_idle_of_a_run():
    events = frame(fault(100, ["cas1"]), [cpu(5, 1.0), cpu(10, 50.05), cpu(60, 70.0), cpu(100, 20.0),
                                          cpu(2000, 41.0), cpu(2001, 1.0)])
    run = analyze_run(events, PARAMS)
    assert run.cpu_idle == {"mean": statistics.fmean([50.05, 70.0, 20.0, 41.0]), "min": 20.0, "pre_fault": 60.0,
                            "samples": 4}, "the run's mean unrounded (the fidelity check compares it)"
    assert run.cpu_series == [50.05, 70.0, 20.0, 41.0]
    assert analyze_run(frame(fault(100, ["cas1"])), PARAMS).cpu_idle == {"mean": None, "min": None,
                                                                         "pre_fault": None, "samples": 0}


def test_detection_is_the_first_failed_member_in_the_window():
    def member(ts_ns, name, accepts_new=False):
        return {"ts": ts_ns, "src": "nlb", "ev": "lb_member", "member": name, "reason": "port_down", "alive": False,
                "accepts_new": accepts_new}
    events = frame(steady("cl1-s0", "cas1", 0, 2000), fault(100, ["cas1"]), fault(900, ["cas2"], index=1),
                   member(90 * MS, "cas1"), member(110 * MS, "cas1", True), member(120 * MS, "cas3"),
                   member(130 * MS + 260_000, "cas1"), member(900 * MS, "cas2"), member(950 * MS, "cas1"))
    run = analyze_run(events, PARAMS)
    assert [f.detection_ms for f in run.faults] == [30.26, 0.0]
    alone = analyze_run(frame(fault(100, ["cas1"]), member(2000 * MS, "cas1"), member(100 * MS, "cas9")), PARAMS)
    assert alone.faults[0].detection_ms is None, "at the window's end, or another member: no detection"


def test_the_window_and_the_faults():
    events = frame(steady("cl1-s0", "cas1", 0, 2000),
                   fault(100, ["cas1"], affects="disrupted") | {"label": "crash"},
                   {k: v for k, v in fault(700, ["cas2", "db:DB1"], kind="stop").items() if k not in ("index", "label",
                                                                                                    "affects")},
                   fault(2500, ["cas3"], index=7),
                   {"ts": 50 * MS, "src": "runner", "ev": "fault_undone", "kind": "x", "targets": [], "index": 0},
                   {"ts": 300 * MS, "src": "runner", "ev": "fault_undone", "kind": "x", "targets": [], "index": 1},
                   {"ts": 800 * MS, "src": "runner", "ev": "fault_undone", "kind": "x", "targets": [], "index": 1},
                   {"ts": 400 * MS, "src": "runner", "ev": "fault_undone", "kind": "x", "targets": [], "index": 0},
                   {"ts": 2600 * MS, "src": "runner", "ev": "process_exit", "name": "cas2", "host": "cas2",
                    "returncode": 1})
    run = analyze_run(events, PARAMS, "sc", 3)
    assert (run.scenario, run.rep, run.complete, run.t0_ns) == ("sc", 3, True, 100 * MS)
    f = run.faults
    assert [(x.index, x.kind, x.label, x.t_ns, x.window_end_ns, x.affects, x.elements) for x in f] == [
        (0, "poweroff", "crash", 100 * MS, 700 * MS, "disrupted", ["cas1"]),
        (1, "stop", "stop", 700 * MS, 2000 * MS, "on_elements", ["cas2", "db:DB1"]),
        (7, "poweroff", "poweroff cas3", 2500 * MS, 2000 * MS, "on_elements", ["cas3"])]  # e = end, the last
    assert run.process_exits == [{"name": "cas2", "host": "cas2", "returncode": 1, "at_ms": 2500.0}]
    from caslab.results.metrics.runs import fault_windows
    windows = fault_windows(sorted(events, key=lambda e: e["ts"]), 2000 * MS)
    assert [w.position for w in windows] == [0, 1, 2]


def test_without_measure_events_the_window_is_the_first_to_the_last_event():
    events = [op(5, "cl1-s0", "cas1"), op(30, "cl1-s0", "cas1"), op(1000, "cl1-s0", "cas1"), fault(20, ["cas1"])]
    run = analyze_run(events, PARAMS)
    assert not run.complete and run.faults[0].window_end_ns == 1000 * MS
    assert run.never_served == 0 and run.cost == {}
    s = run.faults[0].sessions[0]
    assert s.longest_gap_ms == 970.0, "[20 ms, 1000 ms): the success at 30 ms, then none until the end"
    unfinished = frame(steady("cl1-s0", "cas1", 0, 100))
    unfinished = [e for e in unfinished if e["ev"] != "scenario_end"] + [
        {"ts": 2001 * MS, "src": "runner", "ev": "scenario_end", "ok": False, "error": "x"}]
    assert not analyze_run(unfinished, PARAMS).complete
    assert analyze_run([], PARAMS).faults == []


def test_never_served_sessions():
    events = frame(steady("cl1-s0", "cas1", 0, 2000), op(5, "cl1-s1", "cas1"), op(2001, "cl1-s1", "cas1"),
                   op(10, "cl1-s2", "cas1"))
    assert analyze_run(events, PARAMS).never_served == 1, "s1 only outside the window; s2 at its very start"


def test_goodput_from_clients_ready_and_without_a_fault():
    events = frame(steady("cl1-s0", "cas1", 0, 4000), end_ms=4000)
    events = [e | {"ts": 1500 * MS} if e["ev"] == "clients_ready" else e for e in events]
    g = analyze_run(sorted(events + [fault(3000, ["cas1"])], key=lambda e: e["ts"]), PARAMS).goodput
    assert g.first_bin == -1 and g.all_sessions == [20, 20] and g.pre_fault == 20.0 and g.dip == 1.0
    assert g.unaffected == [0, 0] and g.pre_fault_unaffected == 0.0 and g.dip_unaffected is None
    g = analyze_run(events, PARAMS).goodput  # no fault: t0 = start (10 ms); from clients_ready at 1500 ms
    assert g.first_bin == 2 and g.all_sessions == [20] and g.pre_fault is None and g.dip is None
    idle = frame(fault(1500, ["cas1"]), steady("cl1-s0", "cas1", 1500, 3500), end_ms=3500)
    g = analyze_run(idle, PARAMS).goodput
    assert g.pre_fault == 0.0 and g.dip is None and g.pre_fault_unaffected == 0.0 and g.dip_unaffected is None
    assert g.unaffected == [0, 20, 20], "s0 was on no CAS at the fault instant: affected by no fault"


def test_message_integrity_edges():
    from caslab.results.metrics.runs import message_integrity
    send = {"src": "cl1", "ev": "op", "session": "cl1-s0", "op": "send", "ok": True, "lat_us": 1, "cas": "cas1"}
    events = [send | {"ts": 10, "msg_id": "m1"}, send | {"ts": 11, "msg_id": "m2", "op": "read"},
              send | {"ts": 12, "msg_id": "m3"}, send | {"ts": 99, "msg_id": "m4"},
              {"ts": 13, "src": "h", "ev": "http_request", "cmd": "read", "ok": True, "msg_id": "h1"},
              {"ts": 14, "src": "h", "ev": "http_request", "cmd": "send", "ok": True, "msg_id": "h2"},
              {"ts": 15, "src": "h", "ev": "http_request", "cmd": "send", "ok": True},
              {"ts": 20, "src": "runner", "ev": "db_dismounted", "db": "DB1", "previous": "m", "missing": 0, "reason": "x"},
              {"ts": 21, "src": "runner", "ev": "db_active", "db": "DB1"},
              {"ts": 30, "src": "runner", "ev": "mailbox_contents", "db": "DB1", "server": "mbx1", "active": True,
               "msg_ids": ["m1"]},
              {"ts": 31, "src": "runner", "ev": "mailbox_contents", "db": "DB2", "server": "mbx2", "active": False,
               "msg_ids": ["m3", "h2"]},
              {"ts": 32, "src": "runner", "ev": "dumpster_resubmit", "db": "DB1", "cas": "cas1", "resubmitted": 4,
               "recovered": 2}]
    assert message_integrity(events, end=50) == {"acked": 3, "stored": 1, "lost": 2, "unreplicated": 0, "recovered": 2}
    assert message_integrity(events)["acked"] == 4, "without an end: every event counts"


# ---------------------------------------------------------------- who was served, per resolved address

def test_sessions_grouped_by_database_and_resolved_address():
    def resolved(ts, sid, addresses):
        return {"ts": ts, "src": "cl1", "ev": "resolved", "session": sid, "name": "mail", "addresses": addresses}

    def logon(ts, sid, db):
        return {"ts": ts, "src": "cl1", "ev": "logon", "session": sid, "cas": "cas1", "db": db, "reauth": False,
                "resumed": False}
    plan = {"cas1": {"ip": "10.0.0.1", "site": "Main", "role": "cas"}, "cas2": {"ip": "10.0.0.2", "site": "Branch"}}
    events = [{"ts": 0, "src": "runner", "ev": "scenario_start", "mode": "m", "label": "x", "repetition": 0,
               "datapath": "netdev", "plan": plan},
              resolved(5, "a", ["10.0.0.1", "10.0.0.2"]), resolved(20, "a", ["10.0.0.2"]),  # in the window: ignored
              resolved(5, "b", ["10.0.0.2"]), resolved(10, "b", ["10.0.0.1"]),              # at start: replaces
              resolved(5, "c", ["10.0.0.9"]), resolved(6, "d", []), resolved(7, "e", ["10.0.0.1"]),
              resolved(7, "g", ["10.0.0.2"]), logon(8, "g", "DB2"),
              logon(8, "a", "DB1"), logon(9, "a", "DB2"), logon(8, "b", "DB1"), logon(8, "e", "DB1"),
              *[op(t / 1e6, "a", "cas1", op_name=n) for t, n in ((5, "read"), (10, "read"), (11, "send"),
                                                                  (12, "sync"), (13, "ping"), (100, "read"),
                                                                  (101, "read"))],
              op(11 / 1e6, "b", "cas1", ok=False, op_name="send"), op(12 / 1e6, "b", "cas1", op_name="ping"),
              {"ts": 50, "src": "cl1", "ev": "down", "session": "b", "reason": "reset"},
              {"ts": 200, "src": "cl1", "ev": "down", "session": "b", "reason": "reset"},
              op(30 / 1e6, "e", "cas1", ok=False, op_name="read"), op(31 / 1e6, "e", "cas1", op_name="sync")]
    rows = by_address(events, 10, 100)
    assert rows == [
        {"db": "", "address": "10.0.0.9", "host": None, "site": None, "sessions": 1, "served": 0, "mailbox_ok": 0,
         "failures": 0},
        {"db": "DB1", "address": "10.0.0.1", "host": "cas1", "site": "Main", "sessions": 3, "served": 2,
         "mailbox_ok": 5, "failures": 3},
        {"db": "DB2", "address": "10.0.0.2", "host": "cas2", "site": "Branch", "sessions": 1, "served": 0,
         "mailbox_ok": 0, "failures": 0}]
    assert by_address(events[1:], 10, 100)[1]["host"] is None, "without the plan no host is known"
    merged = merge_addresses([rows, rows[1:], []])
    assert merged == [rows[0] | {"success_pct": None},
                      rows[1] | {"sessions": 6, "served": 4, "mailbox_ok": 10, "failures": 6, "success_pct": 62.5},
                      rows[2] | {"sessions": 2, "served": 0, "mailbox_ok": 0, "failures": 0, "success_pct": None}]
    third = merge_addresses([[rows[1] | {"mailbox_ok": 1, "failures": 2}]])
    assert third[0]["success_pct"] == 33.3
    summary = summarize_scenario(META, [outcome(0, by_address=rows), outcome(1, by_address=rows[1:])], 35, [])
    assert summary.by_address == [{"label": "x", **row} for row in merged]


# ---------------------------------------------------------------- Windows NLB convergence

def _converged(ts, took, restarts, moved, broken, departed):
    return {"ts": ts, "src": "wnlb", "ev": "wnlb_converged", "vip": "v", "view": [], "members": [], "buckets": {},
            "owned": [], "moved": moved, "gained": [], "lost": [], "took_ms": took, "restarts": restarts,
            "departed": departed, "broken": broken, "kept": 0}


def test_convergence_in_a_faults_window():
    events = [_converged(99, 1.0, 9, 99, 99, {"x": 99}),
              _converged(100 + 5_250_000, 40.5, 1, 20, 2, {"cas1": 3}),
              _converged(100 + 30_460_000, 12.0, 2, 18, 1, {"cas1": 5, "cas2": 1}),
              _converged(100 * MS, 1.0, 9, 99, 99, {"x": 99})]
    for e in events:
        assert not problems(e), problems(e)
    got = convergence(events, 100, 100 * MS)
    assert (got.converged_ms, got.took_ms, got.restarts, got.buckets_moved, got.conns_broken, got.conns_departed) == \
        (30.5, 40.5, 2, 20, 3, 6)
    converging = {"ts": 500, "src": "wnlb", "ev": "wnlb_converging", "vip": "v", "view": [], "reason": "x",
                  "restart": False, "restarts": 0}
    assert convergence([converging], 100, 1000).restarts == 0
    assert convergence([converging], 600, 1000).restarts is None
    assert convergence([converging | {"ts": 1000}], 100, 1000).restarts is None
    assert convergence([converging | {"ts": 100}], 100, 1000).restarts == 0


# ---------------------------------------------------------------- timelines for the plots

def test_session_trace_around_the_zero():
    events = [op(0.9, "a", "cas1"), op(1.0, "a", "cas1"), op(1.5000004, "a", "cas1", ok=False),
              {"ts": 2 * MS, "src": "cl1", "ev": "down", "session": "b", "reason": "reset"},
              {"ts": 2 * MS, "src": "cl1", "ev": "logon", "session": "a"}, {"ts": 2 * MS, "src": "r", "ev": "op"},
              op(3.0, "a", "cas2"), op(3.1, "a", "cas2")]
    trace = session_trace(events, 2 * MS, "poweroff", 0.001, 0.001, ["a", "c"], [0.5])
    assert (trace.zero_ns, trace.fault_label, trace.before_ms, trace.after_ms, trace.lb_noticed_ms) == \
        (2 * MS, "poweroff", 1.0, 1.0, [0.5])
    assert trace.sessions == {"a": [(-1.0, "ok"), (-0.5, "failed"), (1.0, "ok")], "c": [], "b": [(0.0, "down")]}


# ---------------------------------------------------------------- caslab compare

class _Analysis:
    def __init__(self, scenarios, runs):
        self.scenarios, self.runs = scenarios, runs

    def runs_of(self, sid):
        return self.runs[sid]


def _recovering(rep, reconnects, index=0):
    sessions = [_session_fault(f"s{i}", v) for i, v in enumerate(reconnects)]
    return outcome(rep, faults=[_fault_run(index, sessions)] if index == 0 else
                   [_fault_run(0), _fault_run(index, sessions)])


def _session_fault(sid, reconnect):
    from caslab.results.metrics.outcomes import SessionFault
    return SessionFault(session=sid, host="cl1", address=None, cas_at_fault="cas1", db=None, affected=True,
                        dropped_ms=1.0, stalled=False, longest_gap_ms=1.0, late=False, disrupted=True,
                        recovered=reconnect is not None, reconnect_ms=reconnect, cas_after=None, reauth=0, prompts=0)


def test_compare_matches_scenarios_by_label_and_uses_the_headline_fault():
    a_runs = {"a1": [_recovering(0, [10.0, 20.0]), _recovering(1, [30.0, None])], "a2": [_recovering(0, [5.0])]}
    b_runs = {"b1": [_recovering(0, [40.0], 1), _recovering(1, [50.0, 70.0], 1), _recovering(2, [], 1)],
              "b3": [_recovering(0, [1.0])]}
    a = _Analysis([summarize_scenario({"id": "a1", "label": "L1", "mode": "m"}, a_runs["a1"], 35, []),
                   summarize_scenario({"id": "a2", "label": "L2", "mode": "m"}, a_runs["a2"], 35, []),
                   summarize_scenario({"id": "a0", "label": "L0", "mode": "m"}, [], 35, [])], a_runs)
    b = _Analysis([summarize_scenario({"id": "b3", "label": "L3", "mode": "m"}, b_runs["b3"], 35, []),
                   summarize_scenario({"id": "b1", "label": "L1", "mode": "m"}, b_runs["b1"], 35, [])], b_runs)
    got = compare_runs(a, b)
    assert [(c.label, c.a is not None, c.b is not None) for c in got] == [("L1", True, True), ("L2", True, False),
                                                                           ("L3", False, True)]
    l1 = got[0]
    assert (l1.a.fault, l1.a.repetitions, l1.a.affected, l1.a.recovered, l1.a.unrecovered) == \
        ("poweroff 0", 2, 4, 3, 1)
    assert (l1.a.p50_ms, l1.a.n, l1.a.mean_ms, l1.a.rep_means) == (20.0, 3, 22.5, [15.0, 30.0])
    assert l1.a.ci95_ms == stats.Distribution.of([10.0, 20.0, 30.0], [15.0, 30.0]).ci95_of_repetition_means
    assert (l1.b.fault, l1.b.rep_means, l1.b.repetitions, l1.b.n) == ("poweroff 1", [40.0, 60.0], 3, 3)
    assert l1.difference == stats.welch([15.0, 30.0], [40.0, 60.0])
    assert got[1].difference is None and got[2].difference is None and got[2].a is None


# ---------------------------------------------------------------- the capture cross-check (section 13)

def test_capture_compare_takes_wire_minus_events_over_sessions_with_both():
    wire = {"a": {"reconnect_ms": 10.0004, "synack_ms": 1.0}, "b": {"reconnect_ms": 20.5}, "c": {"reconnect_ms": None},
            "d": {"reconnect_ms": 7.0}, "e": {"reconnect_ms": 3.0}}
    reference = {"a": 10.0, "b": 21.7, "c": 5.0, "d": None, "f": 9.0, "e": 3.0001}
    assert capture_compare(wire, reference) == {"n": 3, "median_abs_diff_ms": 0.0, "max_abs_diff_ms": 1.2,
                                                "median_diff_ms": -0.0, "abs_diffs_ms": [0.0, 0.0, 1.2]}
    skew = {"a": {"reconnect_ms": 10.12345}, "b": {"reconnect_ms": 20.0}, "e": {"reconnect_ms": 3.2}}
    got = capture_compare(skew, {"a": 10.0, "b": 21.23456, "e": 3.0})
    assert got == {"n": 3, "median_abs_diff_ms": 0.2, "max_abs_diff_ms": 1.235, "median_diff_ms": 0.123,
                   "abs_diffs_ms": [0.123, 0.2, 1.235]}
    assert capture_compare(wire, reference, "synack_ms") == {"n": 1, "median_abs_diff_ms": 9.0,
                                                             "max_abs_diff_ms": 9.0, "median_diff_ms": -9.0,
                                                             "abs_diffs_ms": [9.0]}
    assert capture_compare({}, reference) == {"n": 0, "median_abs_diff_ms": None, "max_abs_diff_ms": None,
                                              "median_diff_ms": None, "abs_diffs_ms": []}


# ---------------------------------------------------------------- the cost meter (caslab/run/cost.py)

# ---------------------------------------------------------------- outages and their owner (sections 4-7)

def _logon(ts_ms, sid, cas, db="DB1", reauth=False, prompt=None):
    e = {"ts": int(ts_ms * MS), "src": "cl1", "ev": "logon", "session": sid, "cas": cas, "db": db, "reauth": reauth,
         "resumed": not reauth}
    return e if prompt is None else e | {"prompt": prompt}


def _down(ts_ms, sid):
    return {"ts": int(ts_ms * MS), "src": "cl1", "ev": "down", "session": sid, "reason": "reset"}


def _connect(ts_ms, sid):
    return {"ts": int(ts_ms * MS), "src": "cl1", "ev": "connect_ok", "session": sid, "addr": "10.1.0.100", "lport": 1,
            "laddr": "10.1.10.1"}


def _member(ts_ms, name):
    return {"ts": int(ts_ms * MS), "src": "nlb", "ev": "lb_member", "member": name, "reason": "port_down",
            "alive": False, "accepts_new": False}


def test_which_fault_an_outage_belongs_to_and_its_phases():
    sids = ("s0", "s1", "s2", "s7", "s8", "s9", "s10")
    before = [op(t, sid, "cas4" if sid == "s7" else "cas1") for sid in sids for t in (0, 50)]
    events = frame(before, fault(100, ["cas1", "cas4"]), fault(600, ["cas3"], index=1),
                   {"ts": 300 * MS, "src": "runner", "ev": "fault_undone", "kind": "poweroff", "targets": [],
                    "index": 0},
                   _member(100, "cas1"), _member(600, "cas4"),
                   # s0: a reply sent before the fault, then cut off after the window: still the fault's
                   op(300, "s0", "cas1", lat_ms=250), _down(650, "s0"), steady("s0", "cas2", 700, 2000),
                   # s1: a request sent after the fault was served, then cut off after the window:
                   # that outage is not the fault's
                   op(350, "s1", "cas1"), _down(650, "s1"), steady("s1", "cas2", 700, 2000),
                   # s2: a reply from the failed CAS right after the fault is no service beyond it
                   op(120, "s2", "cas1"), _down(150, "s2"), steady("s2", "cas2", 200, 2000),
                   # s7: noticed only at the window's end; connected, logged on and served at one instant
                   _down(150, "s7"), _connect(200, "s7"), _logon(200, "s7", "cas2"), steady("s7", "cas2", 200, 2000),
                   # s8: silent (a stall), a new connection, served at 700 ms after the second fault
                   _connect(650, "s8"), steady("s8", "cas2", 700, 2000),
                   # s9: a re-logon before the drop; served before its new connection
                   _logon(120, "s9", "cas2", reauth=True, prompt=False), _down(150, "s9"),
                   steady("s9", "cas2", 200, 2000), _connect(250, "s9"), _logon(260, "s9", "cas2", reauth=True),
                   _logon(600, "s9", "cas2", reauth=True),
                   # s10: every milestone, three of them at one instant
                   _down(150, "s10"), _connect(200, "s10"), _logon(200, "s10", "cas2"),
                   steady("s10", "cas2", 200, 2000), sessions=sids)
    for e in events:
        assert not problems(e), problems(e)
    run = analyze_run(events, PARAMS)
    s = {x.session: x for x in run.faults[0].sessions}
    assert s["s0"].recovered and s["s0"].reconnect_ms == 600.0 and s["s0"].dropped_ms == 550.0
    assert s["s1"].undisturbed and not s["s1"].recovered and not s["s1"].disrupted and s["s1"].dropped_ms is None
    assert {x.session: x for x in run.faults[1].sessions}["s1"].collateral
    assert s["s2"].recovered and s["s2"].reconnect_ms == 100.0 and s["s2"].cas_after == "cas2"
    assert s["s2"].phases == {"lb_noticed": 0.0, "client_saw": 50.0, "connected": None, "logged_on": None,
                              "first_op": 100.0}
    assert s["s7"].phases == {"lb_noticed": None, "client_saw": 50.0, "connected": 100.0, "logged_on": 100.0,
                              "first_op": 100.0}
    assert s["s8"].recovered and s["s8"].stalled and s["s8"].reconnect_ms == 600.0 and s["s8"].dropped_ms is None
    assert s["s8"].phases == {"lb_noticed": 0.0, "client_saw": None, "connected": None, "logged_on": None,
                              "first_op": 600.0}
    assert s["s9"].phases == {"lb_noticed": 0.0, "client_saw": 50.0, "connected": None, "logged_on": None,
                              "first_op": 100.0}
    assert (s["s9"].reauth, s["s9"].prompts, s["s9"].silent_reauth) == (2, 1, 1)
    assert s["s10"].phases == {"lb_noticed": 0.0, "client_saw": 50.0, "connected": 100.0, "logged_on": 100.0,
                               "first_op": 100.0}
    assert all(not x.affected for x in run.faults[1].sessions), "nobody was on cas3"
    assert {x.session: x for x in run.faults[1].sessions}["s9"].reauth == 1, "the logon at the second fault's instant is its"
    row = summarize_scenario(META, [run], 35, []).faults[0]
    assert (row.phases_n, row.recovered, row.undisturbed, row.affected) == (1, 6, 1, 7)
    assert row.phases_ms == s["s10"].phases
    assert (row.reauth, row.prompts, row.silent_reauth) == (2, 1, 1)


def test_a_database_fault_is_served_again_only_by_the_mailbox():
    sids = ("d3", "d4", "d6")
    events = frame([_logon(5, sid, "cas2") for sid in sids], [op(t, sid, "cas2") for sid in sids for t in (0, 50)],
                   fault(100, ["db:DB1"], kind="switchover"),
                   op(150, "d3", "cas2", op_name="ping"), _down(200, "d3"), op(250, "d3", "cas2", op_name="ping"),
                   op(300, "d3", "cas2"),
                   op(150, "d4", "cas2"), _down(200, "d4"), op(250, "d4", "cas2"),
                   [op(t, "d6", "cas2", op_name="ping") for t in range(100, 2000, 50)], sessions=sids)
    s = {x.session: x for x in analyze_run(events, PARAMS).faults[0].sessions}
    assert all(x.affected and x.db == "DB1" and x.cas_at_fault == "cas2" for x in s.values())
    assert s["d3"].recovered and s["d3"].reconnect_ms == 200.0, "a ping proves nothing about the mailbox"
    assert s["d4"].recovered and s["d4"].reconnect_ms == 150.0, "an outage in the fault's window is the fault's"
    assert s["d6"].unrecovered and not s["d6"].undisturbed and not s["d6"].disrupted, "only pings: not served"


def test_a_controller_crash_owns_only_what_nothing_else_explains():
    events = frame(_logon(5, "c5", "cas2", db="DB2"), op(0, "c5", "cas2"), op(50, "c5", "cas2"),
                   fault(100, ["controller"], kind="controller-crash", affects="disrupted"),
                   _down(150, "c5"), op(200, "c5", "cas2", op_name="ping"), steady("c5", "cas2", 250, 2000),
                   steady("u", "cas2", 0, 2000), sessions=("c5", "u"))
    s = {x.session: x for x in analyze_run(events, PARAMS).faults[0].sessions}
    assert s["c5"].affected and s["c5"].recovered and s["c5"].reconnect_ms == 100.0, "any success ends it"
    assert not s["u"].affected and not s["u"].undisturbed and not s["u"].disrupted


def test_causal_order_and_load_balancer_reactions():
    from caslab.results.metrics.sessions import in_causal_order, member_down_times
    order = ("a", "b", "c")
    assert not in_causal_order(None, order) and not in_causal_order({}, order)
    assert in_causal_order({"a": 1.0, "b": 1.0, "c": 1.0}, order)
    assert not in_causal_order({"a": 1.0, "b": 3.0, "c": 2.0}, order)
    assert not in_causal_order({"a": 1.0, "b": None, "c": 2.0}, order)
    events = [_member(1, "cas1"), _member(2, "cas1") | {"accepts_new": True},
              {k: v for k, v in _member(3, "cas2").items() if k != "accepts_new"},
              {"ts": 4, "src": "x", "ev": "other", "member": "cas3", "accepts_new": False}, _member(5, "cas1")]
    assert member_down_times(events) == {"cas1": [1 * MS, 5 * MS]}


def test_outages_at_their_edges():
    """Each session probes one edge of sections 3-6 (stall 400 ms, late 500 ms)."""
    sids = ("tie", "exact", "late", "pre", "at_t", "two", "open2", "atend", "logons", "seen", "unaff")
    events = frame(
        fault(100, ["cas1"]), fault(200, ["cas3", "db:DB7"], index=1), fault(1700, ["cas9"], index=2),
        # tie: a drop exactly at the stall's onset is a drop; a drop after its end is not its first drop
        op(50, "tie", "cas1"), _down(450, "tie"), op(500, "tie", "cas2"), op(900, "tie", "cas2", ok=False),
        steady("tie", "cas2", 950, 2000),
        # exact: a gap of exactly stall_ms is no stall; a drop logged with a success is not after it
        op(50, "exact", "cas1"), op(450, "exact", "cas1"), _down(450, "exact"), steady("exact", "cas1", 500, 2000),
        # late: exactly late_ms is not late, a little more is
        op(20, "late", "cas2", lat_ms=500), op(30, "late", "cas2", lat_ms=500.4), op(1700, "late", "cas2", lat_ms=600),
        steady("late", "cas2", 50, 2000),
        # pre: last served before the measurement (at 0 ms): the stall is counted from there
        op(0, "pre", "cas1"), steady("pre", "cas1", 405, 2000),
        # at_t: on cas1 and DB7; a drop exactly at the second fault's instant belongs to it,
        # the latest eligible fault
        _logon(5, "at_t", "cas1", db="DB7"), op(50, "at_t", "cas1"), op(150, "at_t", "cas1"), _down(200, "at_t"), steady("at_t", "cas2", 300, 2000),
        # two: two outages owned by the first fault, the second never ends
        op(50, "two", "cas1"), _down(150, "two"), op(180, "two", "cas1", ok=False), op(190, "two", "cas1"),
        # atend: after the third fault served only at the very end of the measurement
        steady("atend", "cas9", 1300, 1700), op(2000, "atend", "cas9"),
        # logons: on no CAS by success, only by its last logon before the fault
        _logon(1, "logons", "cas4"), _logon(2, "logons", "cas5"), _logon(3, "logons", "cas1"),
        steady("logons", "cas2", 100, 2000),
        # seen: a 1 ns gap between a success and a drop still makes an outage
        op(50, "seen", "cas1"), op(120, "seen", "cas1"), _down(120.000001, "seen"), steady("seen", "cas2", 200, 2000),
        # unaff: on cas2, cut off exactly at the second fault's instant and at the third's
        op(50, "unaff", "cas2"), _down(200, "unaff"), steady("unaff", "cas2", 250, 1700), _down(1700, "unaff"),
        steady("unaff", "cas2", 1750, 2000),
        sessions=sids)
    run = analyze_run(events, PARAMS)
    f0, f1, f2 = ({x.session: x for x in f.sessions} for f in run.faults)
    tie = f0["tie"]
    assert tie.recovered and not tie.stalled and tie.dropped_ms == 350.0 and tie.reconnect_ms == 400.0
    stall = {x.session: x for x in analyze_run(
        [e for e in events if not (e.get("session") == "tie" and e["ev"] == "down")], PARAMS).faults[0].sessions}
    assert stall["tie"].stalled and stall["tie"].dropped_ms is None, "a drop after the outage ended is not its drop"
    assert not f0["exact"].disrupted and not f0["exact"].stalled and f0["exact"].undisturbed
    assert not f0["late"].late and not f0["late"].collateral, "a late op before the fault"
    assert f2["late"].late and f2["late"].collateral and not f1["late"].late
    assert tracks_late(events, "late") == [30 * MS, 1700 * MS]
    assert f0["pre"].recovered and f0["pre"].stalled and f0["pre"].reconnect_ms == 305.0, \
        "silent from 0 ms: a stall from 400 ms, served again at 405 ms"
    assert f0["at_t"].undisturbed and not f0["at_t"].recovered
    assert f1["at_t"].recovered and f1["at_t"].reconnect_ms == 100.0 and f1["at_t"].dropped_ms == 0.0
    two = f0["two"]
    assert two.recovered and not two.stalled and two.reconnect_ms == 90.0 and two.cas_after == "cas1"
    assert two.dropped_ms == 50.0, "a fault owns one outage per session: the first"
    assert f1["two"].collateral and f1["two"].stalled and f1["two"].disrupted and not f1["two"].affected
    assert f2["atend"].undisturbed and not f2["atend"].disrupted, "a success at the end counts"
    assert f0["logons"].cas_at_fault == "cas1" and f0["logons"].affected
    seen = f0["seen"]
    assert seen.recovered and seen.dropped_ms == 20.0 and seen.reconnect_ms == 100.0
    assert (seen.host, seen.db, seen.address) == ("cl1", None, None) and f1["at_t"].db == "DB7"
    assert (f1["unaff"].collateral, f1["unaff"].disrupted, f1["unaff"].dropped_ms) == (True, True, 0.0)
    assert (f0["unaff"].collateral, f0["unaff"].disrupted, f0["unaff"].dropped_ms) == (False, False, None)
    assert f2["unaff"].collateral and f2["unaff"].dropped_ms == 0.0 and not f1["unaff"].late
    assert f1["unaff"].longest_gap_ms == 50.0 and f0["unaff"].longest_gap_ms == 100.0


def tracks_late(events, sid):
    from caslab.results.metrics.sessions import tracks
    return tracks(events, 500, 2000 * MS)[sid].late_ts


def test_every_row_field_is_wired_through():
    """The aggregation's plain wiring: each field of a row and a scenario comes from its own source."""
    from caslab.results.metrics.outcomes import SessionFault

    def sf(sid, **kw):
        base = dict(session=sid, host="cl1", address=None, cas_at_fault="cas1", db=None, affected=False,
                    dropped_ms=None, stalled=False, longest_gap_ms=1.0, late=False, disrupted=False, recovered=False,
                    reconnect_ms=None, cas_after=None, reauth=0, prompts=0)
        return SessionFault(**(base | kw))
    sessions = [sf("a", collateral=True, disrupted=True, stalled=True), sf("b", disrupted=True), sf("c")]
    f0 = _fault_run(0, sessions, kind="drain", label="drain cas1", detection_ms=12.5)
    f1 = _fault_run(1, sessions[:1], label="later", detection_ms=None)
    capture = {"status": "ok", "rep": 0, "abs_diffs_ms": [0.25], "only_events": [], "only_wire": []}
    runs = [outcome(0, faults=[f0, f1], capture_check=capture, cost={"cpu_ms": {"cas": 30.0}, "ops": 4},
                    flood=FLOOD_A, cpu_idle={"mean": 80.0, "min": 70.0, "samples": 2},
                    goodput=Goodput(first_bin=-1, all_sessions=[3, 4], unaffected=[3, 4], pre_fault=3.05)),
            outcome(1, faults=[_fault_run(0, sessions[1:], kind="x", label="other label")],
                    cpu_idle={"mean": 30.05, "min": 20.0, "samples": 2},
                    goodput=Goodput(first_bin=-1, all_sessions=[5, 6], unaffected=[5, 6], pre_fault=4.0))]
    s = summarize_scenario({"id": "sid", "label": "lab", "mode": "mo", "params": {"k": 1}}, runs, 35, [])
    assert s.params == {"k": 1} and s.cpu_idle_pct == 55.0 and s.flood["cluster_bytes"] == 1001
    assert s.goodput["pre_fault_ops_per_s"] == 3.5 and s.goodput["ops_per_s"] == [4.0, 5.0]
    assert s.capture_check["n"] == 1 and s.capture_check["repetitions"] == 1
    r0, r1 = s.faults
    assert (r0.scenario, r0.label, r0.mode, r0.kind, r0.fault, r0.repetitions, r0.sessions) == \
        ("sid", "lab", "mo", "drain", "drain cas1", 2, 5)
    assert (r0.collateral, r0.disrupted, r0.stalled) == (1, 3, 1)
    assert (r0.detection_ms.n, r0.detection_ms.p50) == (1, 12.5) and r1.detection_ms.n == 0
    assert r0.capture_check == s.capture_check and r1.capture_check is None, "the wire is read for the first fault"
    assert r0.cpu_ms_per_op == 7.5 and r1.cpu_ms_per_op == 7.5
    assert summary_mod.headline_fault(s) == 0
    nobody = summarize_scenario(META, [outcome(0, faults=[_fault_run(3, [sf("a")]), _fault_run(4, [sf("b")])])], 35, [])
    assert summary_mod.headline_fault(nobody) == 3, "nobody affected: the first fault"
    assert summary_mod.headline_fault(summarize_scenario(META, [], 35, [])) == 0
    assert summarize_scenario(META, [], 35, []).untrustworthy_reasons == ["no repetition ran: there is nothing to trust"]
    two_decimals = summarize_scenario(META, [outcome(0, cpu_idle={"mean": 80.1, "min": 1.0, "samples": 1}),
                                             outcome(1, cpu_idle={"mean": 30.04, "min": 1.0, "samples": 1})], 35, [])
    assert two_decimals.cpu_idle_pct == 55.1
    plain = summary_mod.merge_capture_checks([{"status": "ok", "only_events": ["x"]},
                                              {"status": "error", "error": "e"}])
    assert plain["only_events"] == [{"rep": 0, "session": "x"}] and plain["errors"] == ["repetition 1: e"]
    assert plain["not_compared"] == 0 and plain["n"] == 0
    rates = summary_mod.flood_summary([outcome(0, flood=FLOOD_A | {"kbit_s": 8.05, "window_ms": 1000.05})])
    assert (rates["kbit_s"], rates["window_ms"]) == (round(8.05, 1), round(1000.05, 1)), "one decimal"


def test_http_rows_put_the_run_without_faults_last_and_take_the_first_repetitions_label():
    def http_run(rep, index, label):
        fault_run = HttpFaultRun(index, label, 0, 1, [_http_session("h1-owa0")])
        return outcome(rep, http=[fault_run])
    runs = [http_run(0, -1, "no fault"), http_run(0, 2, "first"), http_run(1, 2, "second"), http_run(1, 0, "zero")]
    rows = summarize_scenario(META, runs, 35, []).http
    assert [(r.fault_index, r.fault) for r in rows] == [(0, "zero"), (2, "first"), (-1, "no fault")]


def _http_session(sid):
    from caslab.results.metrics.outcomes import HttpSessionFault
    return HttpSessionFault(session=sid, protocol="owa", external=False, configured=True, cas_at_fault="cas1",
                            affected=True, dropped_ms=None, disrupted=False, recovered=False, reconnect_ms=None,
                            relogins=0, prompts=0, pings_lost=0, pings_reestablished=0, reestablish_ms=None,
                            disconnects=0, requests=1, failed=0)


def test_trace_times_are_rounded_to_the_microsecond():
    trace = session_trace([op(1.0001234, "a", "cas1")], 0, "f", 1.0, 1.0, ["a"], [])
    assert trace.sessions == {"a": [(1.0, "ok")]}


def test_one_run_wires_every_part_and_its_edges():
    plan = {"cas1": {"ip": "10.0.0.1", "site": "Main"}}
    events = frame(
        steady("cl1-s0", "cas1", 0, 2000), fault(100, ["cas1", "db:DB1"]),
        {"ts": 0, "src": "runner", "ev": "scenario_start", "mode": "m", "label": "x", "repetition": 0,
         "datapath": "netdev", "plan": plan},
        {"ts": 1, "src": "cl1", "ev": "resolved", "session": "cl1-s0", "name": "mail", "addresses": ["10.0.0.1"]},
        _converged(100 * MS, 5.0, 0, 3, 1, {}), _db_role(150 * MS, "DB1", True, 2), _flood("cl9", "p", 800, 8, 80, 1000.0),
        {"ts": 223_456_789, "src": "runner", "ev": "process_exit", "name": "x", "host": None, "returncode": None},
        op(2000, "cl1-s1", "cas1", op_name="send", msg_id="m1"), op(2001, "cl1-s1", "cas1", op_name="send", msg_id="m2"),
        op(10, "cl1-s2", "cas1"),
        [{"ts": 2000 * MS, "src": "runner", "ev": "process_cpu", "name": "cas1", "kind": "cas", "cpu_ms": v,
          "window_ms": 1.0} for v in (1.04, 2.02)])
    run = analyze_run(events, PARAMS)
    f = run.faults[0]
    assert (f.convergence.converged_ms, f.convergence.took_ms) == (0.0, 5.0), "a convergence at the instant"
    assert f.databases == {"DB1": {"unmounted_ms": 50.0, "missing": 2, "dismounted": False}}
    assert run.flood["cluster_bytes"] == 800 and run.flood["kbit_s"] == 6.4
    assert run.by_address and run.by_address[0]["host"] == "cas1"
    assert run.process_exits == [{"name": "x", "host": None, "returncode": None, "at_ms": 123.5}]
    assert run.messages["acked"] == 1, "a send after the end is not acknowledged in the run"
    assert run.never_served == 0, "s1 served at the very end, s2 at the very start"
    assert run.cost["ops"] == 39 + 2 and run.cost["cpu_ms"] == {"cas": 3.1}, "50 .. 1950 ms, and at 10 and 2000 ms"
    no_start = [e for e in events if e["ev"] != "measure_start"]
    assert analyze_run(no_start, PARAMS).cost["ops"] == 39 + 2 + 1, "start = the first event (0 ms)"
    assert flooding([_flood("h", "p", 1001, 1, 1, 3000.0)])["kbit_s"] == round(1001 * 8 / 3000.0, 1) == 2.7


def test_goodput_and_availability_rounding():
    events = frame(fault(3000, ["cas9"]), op(1500, "a", "cas1"), op(1600, "a", "cas1"), op(2500, "a", "cas1"),
                   op(2600, "a", "cas1"), op(2700, "a", "cas1"), op(3500, "a", "cas1"), end_ms=5000)
    events = [e | {"ts": 0} if e["ev"] == "clients_ready" else e for e in events]
    g = analyze_run(events, PARAMS).goodput
    assert g.all_sessions[:3] == [0, 2, 3] and g.pre_fault == 1.7 and g.dip == 0.0
    assert g.pre_fault_unaffected == 1.7 and g.dip_unaffected == 0.0
    events = frame(fault(1000, ["cas9"]), op(500, "a", "cas1"), op(600, "a", "cas1"), op(700, "a", "cas1"),
                   op(1500, "a", "cas1"), end_ms=2000)
    g = analyze_run([e | {"ts": 0} if e["ev"] == "clients_ready" else e for e in events], PARAMS).goodput
    assert (g.pre_fault, g.dip, g.dip_unaffected) == (3.0, 0.333, 0.333)
    got = analyze_run(frame(fault(1000, ["cas1"]), probe(1000 + 0.5 * 250, True)), PARAMS).probe_availability
    assert got["probe"] == [(0.0, 100.0)]


def test_session_edges_of_beyond_and_eligibility():
    events = frame(
        fault(100, ["cas1"]), fault(500, ["cas3"], index=1),
        # sent exactly at the fault instant: beyond it; then cut off after the window
        op(50, "x", "cas1"), op(300, "x", "cas1", lat_ms=200), _down(600, "x"), steady("x", "cas2", 650, 2000),
        # cut off exactly at the window's end, served in between: not the first fault's
        op(50, "y", "cas1"), op(300, "y", "cas1"), _down(500, "y"), steady("y", "cas2", 550, 2000),
        # a logon exactly at the fault instant is not "before" it
        _logon(100, "z", "cas1"), steady("z", "cas2", 150, 2000),
        {"ts": 160 * MS, "src": "other", "ev": "op", "session": "w", "op": "read", "ok": True, "lat_us": 1,
         "cas": "cas2"},
        sessions=("x", "y", "z"))
    run = analyze_run(events, PARAMS)
    s = {x.session: x for x in run.faults[0].sessions}
    assert s["x"].undisturbed and not s["x"].recovered
    assert s["y"].undisturbed and not s["y"].recovered
    assert s["z"].cas_at_fault is None and not s["z"].affected
    assert s["w"].host == "other", "a session no client declared: its host is its events' source"
    db = frame(fault(100, ["db:DB1"]), _logon(5, "d", "cas2"), op(50, "d", "cas2"), op(300, "d", "cas2", op_name="ping"),
               op(400, "d", "cas2"), _down(700, "d"), steady("d", "cas2", 750, 2000), fault(600, ["cas9"], index=1),
               sessions=("d",))
    d = analyze_run(db, PARAMS).faults[0].sessions[0]
    assert d.undisturbed and not d.recovered, "a mailbox success after the database failed is service beyond it"
    db_ping = [e for e in db if not (e.get("session") == "d" and e["ts"] == 400 * MS)]
    d = analyze_run(db_ping, PARAMS).faults[0].sessions[0]
    assert d.recovered and d.reconnect_ms == 650.0, "a ping is no service beyond a database fault"


def test_addresses_count_drops_at_the_windows_edges_and_a_plan_less_start():
    events = [{"ts": 0, "src": "runner", "ev": "scenario_start", "mode": "m", "label": "x", "repetition": 0,
               "datapath": "netdev"},
              {"ts": 1, "src": "cl1", "ev": "resolved", "session": "a", "name": "n", "addresses": ["10.0.0.1"]},
              {"ts": 10, "src": "cl1", "ev": "down", "session": "a", "reason": "r"},
              {"ts": 100, "src": "cl1", "ev": "down", "session": "a", "reason": "r"}]
    assert by_address(events, 10, 100)[0]["failures"] == 2


def test_detection_needs_a_member_that_stopped_taking_new_connections():
    quiet = {k: v for k, v in _member(150, "cas1").items() if k != "accepts_new"}
    run = analyze_run(frame(fault(100, ["cas1"]), quiet, steady("cl1-s0", "cas1", 0, 2000)), PARAMS)
    assert run.faults[0].detection_ms is None
