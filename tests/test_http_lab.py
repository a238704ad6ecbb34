"""Real HTTPS through each load balancer (Mininet, OVS, real HAProxy at layer 7 and 4, the
SDN NLB, dnsmasq, aiohttp on every CAS): external clients find their server through
autodiscover in DNS, keep their affinity, and pay what a CAS failure costs each protocol."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from labcommon.catalogue import FAULT, HTTP_AUTODISCOVER, HTTP_REQUEST, RPC_CHANNEL
from labcommon.events import read_events

pytestmark = pytest.mark.require_root

BASE = {
    "experiment": {"name": "http", "repetitions": 1},
    "topology": {"cas": 2, "mailboxes": 2, "client_hosts": 1, "internet_client_hosts": 1},
    "clients": {"sessions_per_host": 0, "distinct_source_ips": True},
    "http": {"owa_users_per_host": 2, "eas_devices_per_host": 2, "oa_profiles_per_host": 2, "time_scale": 0.005,
             "request_timeout_ms": 1500},
    "haproxy": {"inter_ms": 300, "fall": 2},
    "nlb": {"affinity": "single"},
    "timing": {"warmup_s": 1.0, "observe_s": 5.0},
    "probe": {"capture": False, "rate_hz": 0},
}


def run(tmp_path: Path, **sections) -> tuple[dict, list[dict]]:
    raw = json.loads(json.dumps(BASE))
    for section, values in sections.items():
        if isinstance(values, list):
            raw[section] = values
        else:
            raw.setdefault(section, {}).update(values)
    spec = spec_mod.validate(raw, "test")
    run_dir = runner.run_experiment(spec, Path("test.toml"), tmp_path / "out")
    return json.loads((run_dir / "summary.json").read_text()), list(read_events(run_dir / "events.jsonl"))


def cas_per_session(events: list[dict], before_ns: int | None) -> dict[str, set[str]]:
    out: dict[str, set[str]] = defaultdict(set)
    for e in events:
        if e["ev"] == HTTP_REQUEST and e["ok"] and e.get("cas") and (before_ns is None or e["ts"] < before_ns):
            out[e["session"]].add(e["cas"])
    return out


@pytest.mark.parametrize("mode", ["haproxy-l7", "haproxy", "sdn-nlb"])
def test_https_through_each_load_balancer_survives_a_cas_failure(tmp_path, no_residue, mode):
    summary, events = run(tmp_path, experiment={"modes": [mode]},
                          faults=[{"kind": "poweroff", "target": "@busiest", "at_s": 0.5}])
    rows = {row["protocol"]: row for row in summary["scenarios"][0]["http"]}
    assert set(rows) == {"owa", "eas", "oa"} and {row["clients"] for row in rows.values()} == {"Internet"}
    for protocol, row in rows.items():
        assert row["configured"] == row["sessions"] == 2, f"{protocol}: autodiscover over HTTPS through {mode}"
    fault = next(e for e in events if e["ev"] == FAULT)
    before = cas_per_session(events, fault["ts"])
    assert len(before) == 6, "every session was served before the fault"
    assert all(len(cas) == 1 for cas in before.values()), f"affinity: one CAS per session, {dict(before)}"
    unpaired = [e for e in events if e["ev"] == RPC_CHANNEL and e["state"] == "unpaired" and e["ts"] < fault["ts"]]
    assert not unpaired, "both Outlook Anywhere channels reached the same CAS"
    affected = sum(row["affected"] for row in rows.values())
    assert affected > 0, "the busiest CAS served someone"
    dead = fault["targets"][0]
    after = cas_per_session([e for e in events if e["ts"] > fault["ts"]], None)
    for protocol, row in rows.items():
        assert row["unrecovered"] == 0 and row["recovered"] + row["undisturbed"] == row["affected"], \
            f"{protocol}: every affected session served again ({row})"
        if protocol == "owa":
            assert row["relogins"] >= row["affected"], "an OWA session that moved CAS had to log in again"
    moved = [s for s, cas in before.items() if dead in cas]
    assert all(after[s] - {dead} for s in moved), "affected sessions were served by a surviving CAS"


def test_external_clients_need_autodiscover_published_in_dns(tmp_path, no_residue):
    summary, events = run(tmp_path, experiment={"modes": ["haproxy-l7"]}, timing={"observe_s": 2.0},
                          http={"publish_autodiscover": False, "internal": True, "eas_devices_per_host": 0,
                                "oa_profiles_per_host": 0})
    rows = {row["clients"]: row for row in summary["scenarios"][0]["http"]}
    assert rows["Internet"]["protocol"] == rows["internal"]["protocol"] == "owa"
    assert rows["Internet"]["configured"] == 0 and rows["Internet"]["requests"] == 0
    assert rows["internal"]["configured"] == 2, "internal sessions found their server (site autodiscover)"
    failures = [e for e in events if e["ev"] == HTTP_AUTODISCOVER and not e["ok"]]
    assert failures and all(e["session"].startswith("ext") and "resolve" in e["reason"] for e in failures)
    served = cas_per_session(events, None)
    assert set(served) == {"cl1-owa0", "cl1-owa1"}, "no external session ever reached a CAS"


def test_an_idle_timeout_below_the_keepalive_cuts_outlook_anywhere(tmp_path, no_residue):
    summary, _ = run(tmp_path, experiment={"modes": ["haproxy"]}, timing={"observe_s": 4.0},
                     http={"owa_users_per_host": 0, "eas_devices_per_host": 0, "oa_profiles_per_host": 2,
                           "time_scale": 0.01, "oa_keepalive_s": 120, "oa_interval_ms": 60000},
                     sweep={"http.lb_idle_timeout_s": [60, 240]})
    rows = {s["params"]["http.lb_idle_timeout_s"]: s["http"][0] for s in summary["scenarios"]}
    assert rows[60]["fault"] == "no fault"
    assert rows[60]["disconnects"] >= 2, f"0.6 s idle timeout, 1.2 s keep-alive: channels cut ({rows[60]})"
    assert rows[240]["disconnects"] == 0, f"2.4 s idle timeout above the keep-alive: none ({rows[240]})"
    assert rows[240]["requests"] >= 4, "keep-alives went through"
