"""Each HA mode and each fault, in a short real run (Mininet, OVS, real HAProxy and
dnsmasq): the numbers must show each design's known behaviour."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from labcommon.events import read_events

pytestmark = pytest.mark.require_root

BASE = {
    "experiment": {"name": "t", "repetitions": 1},
    "topology": {"cas": 3, "mailboxes": 2, "client_hosts": 2},
    "clients": {"sessions_per_host": 6, "distinct_source_ips": True, "op_timeout_ms": 1000},
    "timing": {"warmup_s": 1.0, "observe_s": 5.0},
    "probe": {"capture": False},
}


def run(tmp_path: Path, mode: str, faults: list[dict], row: int = 0, **sections) -> tuple[dict, list[dict]]:
    """Run one scenario; returns fault ``row``'s results (with the scenario's own fields)
    and the events."""
    raw = json.loads(json.dumps(BASE))
    raw["experiment"]["modes"] = [mode]
    for section, values in sections.items():
        if isinstance(values, list):
            raw[section] = values
        else:
            raw.setdefault(section, {}).update(values)
    raw["faults"] = faults
    spec = spec_mod.validate(raw, "test")
    run_dir = runner.run_experiment(spec, Path("test.toml"), tmp_path / "out")
    scenario = json.loads((run_dir / "summary.json").read_text())["scenarios"][0]
    return {**scenario, **scenario["faults"][row], "rows": scenario["faults"]}, list(read_events(run_dir / "events.jsonl"))


POWEROFF = [{"kind": "poweroff", "target": "cas1", "at_s": 0.5}]
# Where sessions land by hashing (sdn-nlb, affinity none), a fixed target may by chance
# serve nobody: "@busiest" picks the CAS serving the most sessions at the fault's instant.
POWEROFF_BUSIEST = [{"kind": "poweroff", "target": "@busiest", "at_s": 0.5}]


def test_direct_profile_never_recovers(tmp_path, no_residue):
    s, _ = run(tmp_path, "direct", POWEROFF)
    assert s["affected"] == s["sessions"] == 12, "every profile names cas1"
    assert s["unrecovered"] == s["affected"]


def test_dns_round_robin_waits_for_client_timeouts(tmp_path, no_residue):
    s, events = run(tmp_path, "dns-rr", POWEROFF, clients={"select": "next_on_fail"})
    assert 0 < s["affected"] < s["sessions"]
    assert s["recovered"] == s["affected"] and s["collateral"] == 0
    assert s["reconnect_ms"]["p50"] >= 900, "nothing tells a DNS client early: it must time out first"
    assert any(e["ev"] == "connect_fail" for e in events), "some clients try the dead address again"


def test_dns_round_robin_first_address_only_is_stuck(tmp_path, no_residue):
    s, _ = run(tmp_path, "dns-rr", POWEROFF, clients={"select": "first"})
    assert s["affected"] > 0 and s["unrecovered"] == s["affected"], "TTL 300 s outlives the window"


def test_haproxy_marks_down_after_fall_checks(tmp_path, no_residue):
    s, events = run(tmp_path, "haproxy", POWEROFF, haproxy={"inter_ms": 400, "fall": 3})
    assert s["affected"] > 0 and s["recovered"] == s["affected"]
    downs = [e for e in events if e["ev"] == "lb_member" and not e["accepts_new"] and e["member"] == "cas1"]
    assert downs, "HAProxy logged cas1 DOWN"
    assert 800 <= s["detection_ms"]["p50"] <= 4000, s["detection_ms"]


# Windows NLB (heartbeats, convergence, buckets, flooding, drain) has its own file: test_wnlb.py.


def test_sdn_nlb_crash_is_reset_by_the_kernel(tmp_path, no_residue):
    s, _ = run(tmp_path, "sdn-nlb", [{"kind": "crash", "target": "@busiest", "at_s": 0.5}])
    assert s["affected"] > 0 and s["recovered"] == s["affected"] and s["collateral"] == 0
    assert s["reconnect_ms"]["max"] < 1000


def test_sdn_nlb_catches_a_frozen_cas_with_app_probes(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "freeze", "target": "@busiest", "at_s": 0.5}])
    assert s["affected"] > 0 and s["recovered"] == s["affected"] and s["collateral"] == 0
    frozen = next(e for e in events if e["ev"] == "fault")["targets"][0]
    reasons = [e["reason"] for e in events if e["ev"] == "lb_member" and e["member"] == frozen]
    assert any(r.startswith("probe_down") for r in reasons), reasons
    assert s["reconnect_ms"]["p50"] < 1000, "the NLB's reset beats the client's 1 s timeout"


def test_sdn_nlb_drain_and_rejoin_break_no_session(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "drain", "target": "@busiest", "at_s": 0.5},
                                          {"kind": "rejoin", "target": "@busiest", "at_s": 2.5}])
    assert s["affected"] > 0, "sessions were on the drained CAS"
    assert s["disrupted"] == 0 and s["collateral"] == 0 and s["unrecovered"] == 0
    drained = {e["targets"][0] for e in events if e["ev"] == "fault"}
    assert len(drained) == 1, "the rejoin acts on the CAS the drain chose"
    states = [(e["reason"], e["accepts_new"]) for e in events if e["ev"] == "lb_member" and e["member"] in drained]
    assert ("drain", False) in states and ("rejoin", True) in states


def test_sdn_nlb_link_cut_shows_what_probes_miss(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "link-cut", "target": "@busiest", "at_s": 0.5}],
                    timing={"observe_s": 4.0})
    cut = next(e for e in events if e["ev"] == "fault")["targets"][0]
    assert s["affected"] > 0 and s["disrupted"] >= s["affected"], "mailbox operations through the cut CAS fail"
    assert not any(e["ev"] == "lb_member" and e["member"] == cut for e in events), \
        "cas1 still answers the NLB's hello: a CAS that lost its mailboxes is not detected"


def test_sdn_nlb_controller_crash_keeps_sessions_flowing(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "controller-crash", "at_s": 0.5, "restart_after_s": 1.0}])
    assert s["disrupted"] == 0, "secure fail mode keeps the pinned flows forwarding"
    relearned = [e for e in events if e["ev"] == "nlb_relearn" and e["conns"] > 0]
    assert relearned and relearned[-1]["conns"] >= s["sessions"], relearned
    # The lab's cost counts both controllers: the killed one up to its death, the restarted
    # one (a new pid) from its start (issue 16 item 10).
    controllers = [e for e in events if e["ev"] == "process_cpu" and e["name"] == "controller"]
    assert [(e["ended_in_window"], e["started_in_window"]) for e in controllers] in \
        ([(True, False), (False, True)], [(False, True), (True, False)]), controllers
    assert len({e["pid"] for e in controllers}) == 2 and all(e["kind"] == "controller" for e in controllers)


def test_dag_switchover_under_load_loses_no_acked_message(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "dag-switchover", "database": "DB1", "to": "mbx2", "at_s": 0.5}],
                    clients={"ops": {"send": 4, "read": 1}})
    moved = [e for e in events if e["ev"] == "db_active"]
    assert moved and moved[0]["server"] == "mbx2" and moved[0]["ok"], moved
    assert s["affected"] > 0, "sessions whose database is DB1"
    assert s["messages"]["acked"] > 50 and s["messages"]["lost"] == 0
    assert s["unrecovered"] == 0 and s["collateral"] == 0
    late_sends = [e for e in events if e["ev"] == "op" and e.get("op") == "send" and e["ok"]
                  and e["ts"] > moved[0]["ts"]]
    assert late_sends, "mail keeps flowing after the switchover"


def test_mailbox_poweroff_fails_databases_over(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "poweroff", "target": "mbx1", "at_s": 0.5}],
                    clients={"ops": {"send": 4, "read": 1}})
    moved = [e for e in events if e["ev"] == "db_active"]
    assert [(e["db"], e["server"]) for e in moved] == [("DB1", "mbx2")]
    assert s["affected"] > 0 and s["unrecovered"] == 0
    assert s["messages"]["lost"] == 0


def session_dbs(events: list[dict]) -> dict[str, str]:
    return {e["session"]: e["db"] for e in events if e["ev"] == "logon"}


@pytest.mark.parametrize("refresh_s,stuck", [(3600, True), (1, False)], ids=["hourly-autodiscover", "fast-refresh"])
def test_database_created_before_the_array_keeps_profiles_on_cas1(tmp_path, no_residue, refresh_s, stuck):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "rebind", "database": "DB1", "to": "array:HQ", "at_s": 0.3},
                                          {"kind": "poweroff", "target": "cas1", "at_s": 1.8}], row=1,
                    exchange={"created_before_array": ["DB1"], "autodiscover_refresh_s": refresh_s})
    assert [e["server"] for e in events if e["ev"] == "rcas_set" and e["ok"]] == ["outlook.hq.lab.test"]
    dbs = session_dbs(events)
    first_servers = {}
    for e in events:
        if e["ev"] == "autodiscover":
            first_servers.setdefault(e["session"], e["server"])
    assert {first_servers[sid] for sid, db in dbs.items() if db == "DB1"} == {"cas1.lab.test"}
    assert {first_servers[sid] for sid, db in dbs.items() if db == "DB2"} == {"outlook.hq.lab.test"}
    fault = next(e for e in events if e["ev"] == "fault" and e["kind"] == "poweroff")
    on_cas1 = {e["session"] for e in events if e["ev"] == "op" and e["ok"] and e["cas"] == "cas1" and e["ts"] < fault["ts"]}
    db1_on_cas1 = {sid for sid in on_cas1 if dbs[sid] == "DB1"}
    if stuck:
        assert db1_on_cas1 and s["unrecovered"] >= len(db1_on_cas1), "stale profiles cannot leave cas1"
    else:
        assert not db1_on_cas1 or s["unrecovered"] == 0
        assert s["unrecovered"] == 0, "a fresh autodiscover answer moved every profile to the array"


def test_branch_clients_follow_their_database_rpc_client_access_server(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", POWEROFF, topology={"branch": True, "branch_cas": 2, "branch_client_hosts": 1},
                    exchange={"rpc_client_access_server": {"DB2": "array:Branch"}})
    dbs = session_dbs(events)
    served = {}
    for e in events:
        if e["ev"] == "op" and e["ok"]:
            served.setdefault(e["session"], set()).add(e["cas"])
    branch_sessions = [sid for sid in dbs if sid.startswith("cl3-")]
    assert branch_sessions, "the Branch client host ran sessions"
    for sid, db in dbs.items():
        expected = {"cas4", "cas5"} if db == "DB2" else {"cas1", "cas2", "cas3"}
        assert served[sid] <= expected, (sid, db, served[sid])
    assert any(dbs[sid] == "DB1" for sid in branch_sessions), "Branch users of DB1 cross the WAN to HQ"
    assert s["recovered"] == s["affected"] and s["collateral"] == 0


def test_two_cas_powered_off_at_once_leave_the_third(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "poweroff", "target": ["cas1", "cas2"], "at_s": 0.5}])
    assert s["affected"] > 0 and s["recovered"] == s["affected"] and s["collateral"] == 0
    fault = next(e for e in events if e["ev"] == "fault")
    after = {e["cas"] for e in events if e["ev"] == "op" and e["ok"] and e["ts"] > fault["ts"] + 500_000_000}
    assert after == {"cas3"}


def test_several_faults_at_their_own_times(tmp_path, no_residue):
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "crash", "target": "cas1", "at_s": 0.5},
                                          {"kind": "poweroff", "target": "cas2", "at_s": 1.5}])
    faults = [e for e in events if e["ev"] == "fault"]
    assert [(f["kind"], f["targets"]) for f in faults] == [("crash", ["cas1"]), ("poweroff", ["cas2"])]
    gap_s = (faults[1]["ts"] - faults[0]["ts"]) / 1e9
    assert 0.9 <= gap_s <= 1.3, gap_s
    assert [r["fault"] for r in s["rows"]] == ["crash cas1", "poweroff cas2"]
    assert all(r["unrecovered"] == 0 for r in s["rows"])


def test_wan_shaping_applies_bandwidth_and_reports_missing_netem(tmp_path, no_residue):
    from caslab.base import system

    s, events = run(tmp_path, "sdn-nlb", POWEROFF, topology={"branch": True, "wan_bw_mbit": 20, "wan_delay_ms": 30})
    notices = [e for e in events if e["ev"] == "capability_missing"]
    if system.netem_available():
        assert not notices and not s["notices"]
    else:
        assert notices and "sch_netem" in s["notices"][0]
    branch_ok = [e for e in events if e["ev"] == "op" and e["ok"] and e["session"].startswith("cl3-")]
    assert branch_ok, "Branch sessions work across the shaped WAN link"


def test_array_fqdn_comes_from_the_spec_and_no_array_means_one_cas(tmp_path, no_residue):
    s, events = run(tmp_path / "named", "sdn-nlb", POWEROFF_BUSIEST,
                    arrays=[{"name": "CASArray-HQ", "fqdn": "rpc.contoso.lab.test", "site": "HQ"}])
    assert {e["server"] for e in events if e["ev"] == "autodiscover"} == {"rpc.contoso.lab.test"}
    assert s["affected"] > 0 and s["recovered"] == s["affected"]
    s, events = run(tmp_path / "none", "sdn-nlb", POWEROFF, arrays=[])
    assert {e["server"] for e in events if e["ev"] == "autodiscover"} == {"cas1.lab.test"}
    assert s["affected"] == s["sessions"] and s["unrecovered"] == s["affected"], \
        "without an array every database points at one CAS, load balancer or not"


def test_backend_network_carries_the_mailbox_traffic_and_the_faults_act_on_it(tmp_path, no_residue):
    """With a back-end network the CAS reach their mailbox servers, and those their DAG
    peers, at back-end addresses only; link-cut blackholes those, and a mailbox server's
    poweroff (its back-end NIC down too) fails its database over with nothing lost."""
    s, events = run(tmp_path, "sdn-nlb", [{"kind": "link-cut", "target": "@busiest", "at_s": 0.5, "duration_s": 1.0},
                                          {"kind": "poweroff", "target": "mbx1", "at_s": 2.5}],
                    topology={"backend_network": True}, clients={"ops": {"send": 2, "read": 1}},
                    timing={"observe_s": 5.0})
    cut, poweroff = s["rows"]
    assert cut["affected"] > 0, "blackholing the back-end addresses cuts the CAS from every mailbox"
    assert s["messages"]["lost"] == 0 and s["messages"]["acked"] > 0
    assert any(e["ev"] == "db_active" and e["ok"] and e["db"] == "DB1" and e["server"] == "mbx2" for e in events)
    configs = Path(next(tmp_path.glob("out/**/config")))
    addresses = [a for db in json.loads((configs / "cas1.json").read_text())["databases"].values() for a in db]
    addresses += [a for db in json.loads((configs / "mbx1.json").read_text())["databases"].values() for a in db["peers"]]
    assert addresses and all(a.startswith("10.101.2.") for a in addresses), addresses
    assert {e["peer"] for e in events if e["ev"] == "replication_failed"} <= {"10.101.2.1:7001"}
