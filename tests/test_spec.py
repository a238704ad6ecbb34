"""Spec validation: bad specs are rejected before anything starts, naming file, key and
what was expected; good specs resolve with every default filled in."""

from __future__ import annotations

import subprocess
import sys

import pytest

from caslab.spec import experiment as spec_mod
from caslab.spec.experiment import SpecError
from tests.conftest import ROOT

EXPERIMENTS = sorted((ROOT / "experiments").glob("*.toml"))


@pytest.mark.parametrize("path", EXPERIMENTS, ids=lambda p: p.name)
def test_every_shipped_spec_is_valid(path):
    spec, _ = spec_mod.load(str(path))
    assert spec["experiment"]["modes"] and spec_mod.scenarios(spec)


def test_defaults_are_filled_in():
    spec = spec_mod.validate({}, "empty.toml")
    assert spec["nlb"]["fast_fail"] is True
    assert spec["haproxy"] == {"inter_ms": 2000, "fall": 3, "rise": 2, "shutdown_sessions": False}
    assert spec["wnlb"]["heartbeat_ms"] == 1000 and spec["wnlb"]["missed"] == 5
    assert spec["faults"] == [] and spec["timing"]["observe_s"] == 8.0


BAD = [
    ({"experimnt": {}}, "experimnt", "did you mean 'experiment'"),
    ({"nlb": {"affinty": "none"}}, "nlb.affinty", "did you mean 'affinity'"),
    ({"nlb": {"affinity": "sticky"}}, "nlb.affinity", "one of ['none', 'single', 'network']"),
    ({"nlb": {"fast_fail": "yes"}}, "nlb.fast_fail", "true or false"),
    ({"nlb": {"challenge_delays_ms": [5, 2]}}, "nlb.challenge_delays_ms", "ascending delays"),
    ({"nlb": {"challenge_delays_ms": []}}, "nlb.challenge_delays_ms", "1 to 32 ascending"),
    ({"nlb": {"challenge_delays_ms": [0, 5]}}, "nlb.challenge_delays_ms", "from 0.1 to 10000"),
    ({"nlb": {"challenge_delays_ms": [1, "5"]}}, "nlb.challenge_delays_ms", "ascending delays"),
    ({"nlb": {"challenge_delays_ms": [True, 5]}}, "nlb.challenge_delays_ms", "ascending delays"),
    ({"clients": {"interval_ms": "50"}}, "clients.interval_ms", "an integer from 5 to 60000"),
    ({"clients": {"interval_ms": 1}}, "clients.interval_ms", "an integer from 5 to 60000"),
    ({"clients": {"sessions_per_host": True}}, "clients.sessions_per_host", "an integer"),
    ({"clients": {"ops": {"read": -1}}}, "clients.ops", "weights"),
    ({"clients": {"ops": {"write": 1}}}, "clients.ops", "weights"),
    ({"clients": {"backoff_ms": []}}, "clients.backoff_ms", "non-empty list"),
    ({"experiment": {"modes": ["wlbs"]}}, "experiment.modes", "distinct modes"),
    ({"experiment": {"modes": ["wnlb", "wnlb"]}}, "experiment.modes", "distinct modes"),
    ({"experiment": {"modes": []}}, "experiment.modes", "non-empty"),
    ({"experiment": {"repetitions": 0}}, "experiment.repetitions", "from 1 to 50"),
    ({"experiment": {"name": "a b"}}, "experiment.name", "letters"),
    ({"topology": {"cas": 0}}, "topology.cas", "from 1 to 64"),
    ({"topology": {"cas": 65}}, "topology.cas", "from 1 to 64"),
    ({"timing": {"observe_s": "long"}}, "timing.observe_s", "a number from 1"),
    ({"timing": {"observe_s": float("inf")}}, "timing.observe_s", "finite"),
    ({"timing": {"warmup_s": float("nan")}}, "timing.warmup_s", "finite"),
    ({"dns": {"ttl_s": -5}}, "dns.ttl_s", "TTL"),
    ({"faults": {"kind": "poweroff"}}, "faults", "array of tables"),
    ({"faults": [{"target": "cas1"}]}, "faults[0].kind", "missing"),
    ({"faults": [{"kind": "meteor", "target": "cas1"}]}, "faults[0].kind", "one of"),
    ({"faults": [{"kind": "poweroff"}]}, "faults[0].target", "missing"),
    ({"faults": [{"kind": "poweroff", "target": "cas9"}]}, "faults[0].target", "a host of this topology"),
    ({"faults": [{"kind": "poweroff", "target": "router"}]}, "faults[0].target", "a host of this topology"),
    ({"faults": [{"kind": "poweroff", "target": "cas01"}]}, "faults[0].target", "a host of this topology"),
    ({"faults": [{"kind": "poweroff", "target": "cas1\n"}]}, "faults[0].target", "a host of this topology"),
    ({"faults": [{"kind": "poweroff", "target": "cl3"}]}, "faults[0].target", "a host of this topology"),
    ({"faults": [{"kind": "link-cut", "target": "mbx1"}]}, "faults[0].target", "role is one of ['cas']"),
    ({"faults": [{"kind": "poweroff", "target": ["cas1", "cas1"]}]}, "faults[0].target", "distinct"),
    ({"faults": [{"kind": "controller-crash", "target": "cas1"}]}, "faults[0].target", "no target"),
    ({"experiment": {"modes": ["direct"]}, "faults": [{"kind": "drain", "target": "cas1"}]}, "faults[0].kind",
     "load_balancer"),
    ({"experiment": {"modes": ["haproxy"]}, "faults": [{"kind": "controller-crash"}]}, "faults[0].kind",
     "controller"),
    ({"topology": {"mailboxes": 1}, "faults": [{"kind": "dag-switchover"}]}, "faults[0].kind",
     "at least two mailbox servers"),
    ({"faults": [{"kind": "dag-switchover", "to": "cas2"}]}, "faults[0].to", "a mailbox server"),
    ({"faults": [{"kind": "rebind", "to": "x'; touch /tmp/pwned; echo '"}]}, "faults[0].to", "one of"),
    ({"faults": [{"kind": "flap", "target": "cas1", "period_s": 1, "down_s": 2}]}, "faults[0].down_s", "less than"),
    ({"faults": [{"kind": "impair", "target": "cas1"}]}, "faults[0].rate_mbit", "at least one"),
    ({"sweep": {"topology.cas": [3, 1]}, "faults": [{"kind": "poweroff", "target": "cas2"}]}, "faults[0].target",
     "a host of this topology"),
    ({"sweep": {"timing.observe_s": [8, 2]}, "faults": [{"kind": "poweroff", "target": "cas1", "at_s": 3}]},
     "faults[0].at_s", "observation window"),
    ({"sweep": {"clients.interval_ms": list(range(5, 105)), "nlb.probe_interval_ms": list(range(10, 110))}},
     "sweep", "combinations"),
    ({"clients": {"op_timeout_ms": 20000}}, "clients.op_timeout_ms", "observation window"),
    ({"arrays": [{"name": "A", "fqdn": "cas1.lab.test", "site": "HQ"}]}, "arrays[0].fqdn", "not a lab host"),
    ({"exchange": {"rpc_client_access_server": {"DB7": "cas1"}}}, "exchange.rpc_client_access_server.DB7",
     "a database of this topology"),
    ({"exchange": {"rpc_client_access_server": {"DB1": "cas9"}}}, "exchange.rpc_client_access_server.DB1", "one of"),
    ({"faults": [{"kind": "poweroff", "target": "cas1", "at_s": -1}]}, "faults[0].at_s", "non-negative"),
    ({"faults": [{"kind": "poweroff", "target": "cas1", "at_s": 100}]}, "faults[0].at_s", "observation window"),
    ({"faults": [{"kind": "poweroff", "target": "cas1", "when": 1}]}, "faults[0].when", "one of the keys"),
    ({"sweep": {"nlb.fast_fail": "both"}}, "sweep.nlb.fast_fail", "non-empty list"),
    ({"sweep": {"nlb.speed": [1]}}, "sweep.nlb.speed", "naming a spec setting"),
    ({"sweep": {"nlb.affinity": ["none", "bogus"]}}, "sweep.nlb.affinity", "one of"),
    ({"faults": [{"kind": "dag-switchover", "database": "database1"}]}, "faults[0].database", "a database of this"),
    ({"arrays": {"name": "a"}}, "arrays", "array of tables"),
    ({"arrays": [{"name": "A", "fqdn": "outlook.hq.lab.test"}]}, "arrays[0].site", "(missing)"),
    ({"arrays": [{"name": "A", "fqdn": "Outlook HQ", "site": "HQ"}]}, "arrays[0].fqdn", "DNS name"),
    ({"arrays": [{"name": "A", "fqdn": "a.lab.test", "site": "HQ", "members": []}]}, "arrays[0].members", "keys"),
    ({"arrays": [{"name": "A", "fqdn": "a.lab.test", "site": "HQ"}, {"name": "B", "fqdn": "b.lab.test", "site": "HQ"}]},
     "arrays[1].site", "one array per site"),
    ({"arrays": [{"name": "A", "fqdn": "a.lab.test", "site": "Branch"}]}, "arrays[0].site", "a site of this topology"),
    ({"arrays": [], "exchange": {"rpc_client_access_server": {"DB1": "array:HQ"}}},
     "exchange.rpc_client_access_server.DB1", "one of"),
    ({"arrays": [], "faults": [{"kind": "rebind", "database": "DB1", "to": "array:HQ"}]}, "faults[0].to",
     "one of"),
    ({"topology": {"multi_role": True}, "experiment": {"modes": ["wnlb"]}}, "topology.multi_role",
     "failover clustering"),
    ({"topology": {"wan_firewall": True}}, "topology.wan_firewall", "Branch site"),
    ({"topology": {"backend_network": True, "branch": True}}, "topology.backend_network", "topology.branch"),
    ({"topology": {"backend_network": True, "hypervisors": 2}}, "topology.backend_network", "one site of physical"),
    ({"topology": {"backend_network": True, "internet_client_hosts": 1}}, "topology.backend_network",
     "topology.internet_client_hosts"),
    ({"topology": {"backend_network": "yes"}}, "topology.backend_network", "true or false"),
    ({"topology": {"switch_ports": "dpdk"}}, "topology.switch_ports", "one of ['system', 'afxdp']"),
    ({"topology": {"branch_mailboxes": 1}}, "topology.branch_mailboxes", "Branch site"),
    ({"exchange": {"database_site": {"DB1": "Branch"}}}, "exchange.database_site.DB1", "mailbox servers"),
    ({"topology": {"branch": True}, "exchange": {"database_site": {"DB1": "Branch"}}}, "exchange.database_site.DB1",
     "mailbox servers"),
    ({"exchange": {"database_site": {"DB9": "HQ"}}}, "exchange.database_site.DB9", "a database of this"),
    ({"arrays": [{"name": "A", "fqdn": "a.lab.test", "site": "HQ", "records": ["mbx1"]}]}, "arrays[0].records",
     "CAS host names"),
    ({"arrays": [{"name": "A", "fqdn": "a.lab.test", "site": "HQ", "records": []}]}, "arrays[0].records",
     "CAS host names"),
    ({"exchange": {"auth": "basic"}}, "exchange.auth", "one of"),
    ({"faults": [{"kind": "server-switchover", "target": "mbx1", "to": "mbx1"}]}, "faults[0].to",
     "another mailbox server"),
    ({"faults": [{"kind": "server-switchover", "target": "cas1"}]}, "faults[0].target", "role is one of"),
    ({"topology": {"multi_role": True, "cas": 2}, "faults": [{"kind": "poweroff", "target": "cas1"}]},
     "faults[0].target", "['dns1', 'ad1', 'lb1', 'ex1', 'ex2'"),
]


@pytest.mark.parametrize("raw,key,expected", BAD, ids=[b[1] + ":" + b[2][:12] for b in BAD])
def test_bad_spec_names_file_key_and_expectation(raw, key, expected):
    with pytest.raises(SpecError) as info:
        spec_mod.validate(raw, "experiments/bad.toml")
    message = str(info.value)
    assert message.startswith("experiments/bad.toml"), message
    assert info.value.key == key, message
    assert expected in message, message


def test_toml_syntax_error_names_the_file(tmp_path):
    path = tmp_path / "broken.toml"
    path.write_text("[experiment\nname = 1\n")
    with pytest.raises(SpecError, match="broken.toml: \\(syntax\\): expected valid TOML"):
        spec_mod.load(str(path))


def test_missing_spec_file_is_a_clear_error():
    with pytest.raises(SpecError, match="no-such-spec.*existing TOML file"):
        spec_mod.load("no-such-spec")


def test_overrides_are_validated_like_the_file():
    spec, _ = spec_mod.load("default", ["nlb.fast_fail=false", "clients.sessions_per_host=4",
                                        "experiment.modes=[\"sdn-nlb\"]"])
    assert spec["nlb"]["fast_fail"] is False and spec["clients"]["sessions_per_host"] == 4
    assert spec["experiment"]["modes"] == ["sdn-nlb"]
    with pytest.raises(SpecError, match="--set: nlb.fast_fail|nlb.fast_fail: expected true or false"):
        spec_mod.load("default", ["nlb.fast_fail=maybe"])
    with pytest.raises(SpecError, match="section.key=value"):
        spec_mod.load("default", ["fast_fail"])
    with pytest.raises(SpecError, match="one of the keys"):
        spec_mod.load("default", ["bogus.key=1"])


def test_sweep_and_modes_expand_to_scenarios():
    spec = spec_mod.validate({"experiment": {"modes": ["sdn-nlb", "haproxy"]},
                              "sweep": {"nlb.fast_fail": [True, False], "clients.interval_ms": [20, 50]}}, "s.toml")
    scenarios = spec_mod.scenarios(spec)
    assert len(scenarios) == 6, "a sweep over nlb.* multiplies only sdn-nlb's scenarios"
    labels = {s["label"] for s in scenarios}
    assert "sdn-nlb clients.interval_ms=20; nlb.fast_fail=false" in labels
    assert {"haproxy clients.interval_ms=20", "haproxy clients.interval_ms=50"} <= labels
    chosen = next(s for s in scenarios if s["label"] == "sdn-nlb clients.interval_ms=50; nlb.fast_fail=true")
    assert chosen["clients"]["interval_ms"] == 50 and chosen["nlb"]["fast_fail"] is True


def test_sweep_labels_read_as_a_person_would_say_them():
    """Tables and lists are not Python reprs (issue 16: one-cas-user's scenarios were
    labelled ``exchange.rpc_client_access_server={}`` and ``{'DB1': 'array:Branch'}``)."""
    spec, _ = spec_mod.load("one-cas-user")
    assert [s["label"] for s in spec_mod.scenarios(spec)] == [
        "dns-rr RpcClientAccessServer: default", "dns-rr RpcClientAccessServer: DB1 -> array:Branch"]
    assert spec_mod.sweep_label("sdn-nlb", {}) == "sdn-nlb"
    assert spec_mod.sweep_label("m", {"exchange.rpc_client_access_server": {"DB1": "cas2", "DB2": "array:HQ"},
                                      "clients.backoff_ms": [0, 100], "timing.observe_s": 2.5,
                                      "http.publish_autodiscover": False}) == (
        "m RpcClientAccessServer: DB1 -> cas2, DB2 -> array:HQ; back-off ms: 0, 100; timing.observe_s=2.5; "
        "http.publish_autodiscover=false")
    assert spec_mod.sweep_label("m", {"topology.vm_placement": {}}) == "m VM placement: default"
    assert spec_mod.sweep_label("m", {"x.some_list": []}) == "m some list: default"


def test_cli_rejects_bad_spec_before_building_anything(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text("[nlb]\naffinity = 'sticky'\n")
    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "run", str(path), "--out", str(tmp_path / "out")],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "bad.toml: nlb.affinity: expected one of ['none', 'single', 'network'], got 'sticky'" in result.stderr
    assert not (tmp_path / "out").exists()


def test_cli_rejects_bad_override(tmp_path):
    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "run", "--set", "timing.observe_s=-1", "--check"],
                            cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "timing.observe_s" in result.stderr
