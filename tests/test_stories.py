"""The field's failure stories, each run for real in a short scenario pair: the symptom
appears in the first scenario and disappears with the documented fix in the second
(experiments/multi-role-switchover, auth-ntlm-kerberos, one-cas-user, replication and
mount-dial are the full-size versions, with numbers in the README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from labcommon.catalogue import problems
from labcommon.events import read_events

pytestmark = pytest.mark.require_root


def run(tmp_path: Path, raw: dict) -> tuple[dict[str, dict], list[dict]]:
    """Run a spec; returns each scenario's summary by label, and the events."""
    base = {"experiment": {"name": "story", "repetitions": 1},
            "clients": {"sessions_per_host": 6, "distinct_source_ips": True},
            "timing": {"warmup_s": 1.0, "observe_s": 4.0}, "probe": {"capture": False, "rate_hz": 5,
                                                                     "app_rate_hz": 2}}
    for section, values in raw.items():
        if isinstance(values, dict) and isinstance(base.get(section), dict):
            base[section] = {**base[section], **values}
        else:
            base[section] = values
    spec = spec_mod.validate(base, "story")
    run_dir = runner.run_experiment(spec, Path("story.toml"), tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"]
    events = list(read_events(run_dir / "events.jsonl"))
    assert not [p for e in events for p in problems(e)], "every event matches the catalogue"
    return {s["label"]: s for s in summary["scenarios"]}, events


def test_multi_role_switchover_then_poweroff_cuts_off_without_array_only(tmp_path, no_residue):
    scenarios, events = run(tmp_path, {
        "experiment": {"modes": ["direct", "sdn-nlb"]},
        "topology": {"cas": 2, "mailboxes": 2, "multi_role": True, "client_hosts": 1},
        "faults": [{"kind": "server-switchover", "target": "ex1", "to": "ex2", "at_s": 0.5},
                   {"kind": "poweroff", "target": "ex1", "at_s": 1.5}]})
    assert {e["server"] for e in events if e["ev"] == "db_active" and e["ok"]} == {"ex2"}, "DB1 moved to ex2"
    for label, s in scenarios.items():
        switchover, poweroff = s["faults"]
        assert switchover["unrecovered"] == 0 and s["messages"]["lost"] == 0, f"{label}: a switchover loses nothing"
        assert poweroff["affected"] > 0
    direct, array = scenarios["direct"]["faults"][1], scenarios["sdn-nlb"]["faults"][1]
    assert direct["affected"] == direct["sessions"] == 6, "every profile names ex1"
    assert direct["unrecovered"] == 6, "no array: nobody reconnects, though every mailbox is alive on ex2"
    assert array["unrecovered"] == 0 and array["recovered"] == array["affected"]
    assert array["prompts"] >= array["affected"], "NTLM: each moved session prompts for credentials"


def test_ntlm_prompts_where_kerberos_re_authenticates_silently(tmp_path, no_residue):
    scenarios, _ = run(tmp_path, {
        "experiment": {"modes": ["sdn-nlb"]}, "topology": {"cas": 2, "mailboxes": 1, "client_hosts": 1},
        "clients": {"prompt_answer_ms": 1500}, "sweep": {"exchange.auth": ["ntlm", "kerberos"]},
        "faults": [{"kind": "poweroff", "target": "@busiest", "at_s": 0.5}]})
    ntlm = scenarios["sdn-nlb exchange.auth=ntlm"]["faults"][0]
    kerberos = scenarios["sdn-nlb exchange.auth=kerberos"]["faults"][0]
    for row in (ntlm, kerberos):
        assert row["affected"] > 0 and row["recovered"] == row["affected"] and row["reauth"] >= row["affected"]
    assert ntlm["prompts"] == ntlm["reauth"] and ntlm["silent_reauth"] == 0
    assert kerberos["prompts"] == 0 and kerberos["silent_reauth"] == kerberos["reauth"]
    assert ntlm["reconnect_ms"]["p50"] >= 1500, "the user typed the password before the session came back"


def test_a_user_works_only_through_the_cas_of_his_database_site(tmp_path, no_residue):
    scenarios, events = run(tmp_path, {
        "experiment": {"modes": ["dns-rr"]},
        "topology": {"cas": 1, "mailboxes": 1, "client_hosts": 1, "branch": True, "branch_cas": 1,
                     "branch_mailboxes": 1, "branch_client_hosts": 0, "databases": 1, "wan_firewall": True},
        "exchange": {"database_site": {"DB1": "Branch"}}, "dns": {"ttl_s": 3600},
        "clients": {"sessions_per_host": 4, "ops": {"read": 3, "send": 1, "ping": 4}},
        "timing": {"ready_timeout_s": 40.0},
        "arrays": [{"name": "HQ", "fqdn": "outlook.hq.lab.test", "site": "HQ", "records": ["cas1", "cas2"]},
                   {"name": "Branch", "fqdn": "outlook.branch.lab.test", "site": "Branch"}],
        "sweep": {"exchange.rpc_client_access_server": [{}, {"DB1": "array:Branch"}]}})
    broken = {r["host"]: r for r in scenarios["dns-rr RpcClientAccessServer: default"]["by_address"]}
    assert set(broken) == {"cas1", "cas2"}, "the round robin sent users to a CAS in each site"
    assert broken["cas1"]["served"] == 0 < broken["cas1"]["sessions"], "HQ's CAS cannot reach Branch's mailbox"
    assert broken["cas2"]["served"] == broken["cas2"]["sessions"] > 0, "Branch's CAS serves its own database"
    fixed = scenarios["dns-rr RpcClientAccessServer: DB1 -> array:Branch"]["by_address"]
    assert [r["host"] for r in fixed] == ["cas2"] and fixed[0]["served"] == fixed[0]["sessions"] == 4
    assert any(e["ev"] == "wan_firewall" and e["dropped"] > 0 for e in events), "the cause is on record"


# Nothing ships during the run; a generation (30 messages) is announced as it closes: the copy knows
# its queue, and best availability (12 generations: 360 messages) mounts it.
# A generation closes every 10 messages and the copier never ships in the window: by the fault (1 s
# into the window, after warm-up) the sessions have sent several generations' worth, so the copy
# always knows it lacks some (at 30 messages a slow machine could reach the fault without one).
ASYNC_LAGGING = {"replication": "async", "log_messages": 10, "log_interval_ms": 60000}


def test_async_failover_loses_acknowledged_mail_and_the_dumpster_recovers_it(tmp_path, no_residue):
    scenarios, _ = run(tmp_path, {
        "experiment": {"modes": ["sdn-nlb"]}, "topology": {"cas": 2, "mailboxes": 2, "client_hosts": 1},
        "clients": {"ops": {"send": 3, "read": 1}}, "exchange": {**ASYNC_LAGGING, "mount_dial": "best"},
        "sweep": {"exchange.dumpster_messages": [0, 3000]},
        "faults": [{"kind": "poweroff", "target": "mbx1", "at_s": 1.0}]})
    lossy = scenarios["sdn-nlb exchange.dumpster_messages=0"]
    row = lossy["faults"][0]
    assert row["db_unmounted_ms"] is not None and row["dbs_dismounted"] == 0, "best availability mounted DB1"
    assert row["copy_missing"] > 0, "the copy knew it lacked the announced generations"
    assert lossy["messages"]["lost"] >= row["copy_missing"] > 0, "acknowledged mail is lost, and counted"
    recovered = scenarios["sdn-nlb exchange.dumpster_messages=3000"]
    assert recovered["messages"]["recovered"] > 0 and recovered["messages"]["lost"] == 0


def test_lossless_mount_dial_keeps_a_lagging_copy_dismounted(tmp_path, no_residue):
    scenarios, events = run(tmp_path, {
        "experiment": {"modes": ["sdn-nlb"]}, "topology": {"cas": 2, "mailboxes": 2, "client_hosts": 1},
        "clients": {"ops": {"send": 3, "read": 1}}, "exchange": {**ASYNC_LAGGING, "mount_dial": "lossless"},
        "faults": [{"kind": "poweroff", "target": "mbx1", "at_s": 1.0}]})
    row = scenarios["sdn-nlb"]["faults"][0]
    assert row["dbs_dismounted"] == 1 and row["db_unmounted_ms"] is None
    assert any(e["ev"] == "db_dismounted" and e["db"] == "DB1" and e["missing"] > 0 for e in events)
    assert row["unrecovered"] > 0, "DB1's users stay cut off: data kept, availability given up"


def test_sync_sends_a_frozen_passive_copy_never_confirmed_are_counted_as_single_copy(tmp_path, no_residue):
    """Synchronous replication with DB1's passive copy (on mbx2) frozen: DB1's sends are still
    acknowledged, each naming the copy that did not confirm it, and the run counts exactly
    those messages as held by one copy; before the freeze no send says so."""
    scenarios, events = run(tmp_path, {
        "experiment": {"modes": ["sdn-nlb"]},
        "topology": {"cas": 2, "mailboxes": 2, "client_hosts": 1, "databases": 2},
        "clients": {"ops": {"read": 1, "send": 4}},
        "exchange": {"replication": "sync"},
        "faults": [{"kind": "freeze", "target": "mbx2", "at_s": 0.5}]})
    frozen_at = next(e["ts"] for e in events if e["ev"] == "fault")
    single = [e for e in events if e["ev"] == "op" and e.get("unreplicated")]
    assert single, "no acknowledged send named the frozen copy"
    assert all(e["ok"] and e["op"] == "send" and e["ts"] > frozen_at for e in single), single[:3]
    assert scenarios["sdn-nlb"]["messages"]["unreplicated"] == len({e["msg_id"] for e in single})
    assert scenarios["sdn-nlb"]["messages"]["lost"] == 0, "every acknowledged message is on the active copy"
