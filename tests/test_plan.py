"""Unit tests of topologies/plan.py (the addressing plan) and topologies/cas_array.py (the
Mininet Topo, built as a graph only: no root, no switch, no network namespace)."""

from __future__ import annotations

import ipaddress
import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from topologies import cas_array
from topologies.cas_array import DEFAULT_SITES, CasArrayTopo, casarray, topos, twosites
from topologies.plan import LAB_DOMAIN, SWITCH_PREFIX, HostPlan, LabPlan, mac_for

TWO_SITES = [
    {"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 2},
    {"name": "Branch", "cas": 2, "mailboxes": 1, "clients": 1},
]

# the counts the documented plan has room for: CAS 10.k.1.1-64, mailboxes 10.k.2.1-16, clients 10.k.3.1-32
site_counts = st.fixed_dictionaries({
    "cas": st.integers(0, 64), "mailboxes": st.integers(0, 16), "clients": st.integers(0, 32),
})
site_lists = st.lists(site_counts, min_size=1, max_size=4).map(
    lambda sites: [dict(s, name=f"Site{i}") for i, s in enumerate(sites)])


# ---- LabPlan -------------------------------------------------------------------------------


def test_multi_role_servers_run_cas_and_mailbox_and_the_rest_is_unchanged():
    plan = LabPlan.build([{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 1, "multi_role": 2}])
    assert [(h.name, h.ip, h.roles) for h in plan.by_role("cas")] == [
        ("ex1", "10.1.1.1", ("cas", "mailbox")), ("ex2", "10.1.1.2", ("cas", "mailbox")), ("cas1", "10.1.1.3", ("cas",))]
    assert [h.name for h in plan.by_role("mailbox")] == ["ex1", "ex2"]
    assert len({h.ip for h in plan.hosts}) == len(plan.hosts)
    single = LabPlan.build([{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 1}])
    assert single == LabPlan.build([{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 1, "multi_role": 0}])
    assert all(h.roles == (h.role,) for h in single.hosts)
    with pytest.raises(ValueError, match="multi-role"):
        LabPlan.build([{"name": "HQ", "cas": 1, "mailboxes": 2, "clients": 1, "multi_role": 2}])


def test_plan_from_topology_multi_role_and_branch_mailboxes():
    from topologies.plan import plan_from_topology

    topo = {"cas": 2, "mailboxes": 2, "client_hosts": 1, "branch": True, "branch_cas": 1, "branch_client_hosts": 1,
            "multi_role": True, "branch_mailboxes": 1}
    plan = plan_from_topology(topo)
    assert [h.name for h in plan.by_role("mailbox", "HQ")] == ["ex1", "ex2"]
    assert [(h.name, h.ip) for h in plan.by_role("mailbox", "Branch")] == [("mbx1", "10.2.2.1")]
    assert [(h.name, h.ip) for h in plan.by_role("cas", "Branch")] == [("cas1", "10.2.1.1")]


def test_one_site_plan_addresses_and_names():
    plan = LabPlan.build(DEFAULT_SITES)
    by_name = {h.name: h for h in plan.hosts}
    assert set(by_name) == {"dns1", "ad1", "lb1", "cas1", "cas2", "cas3", "mbx1", "mbx2", "cl1", "cl2"}
    expected = {"dns1": ("dns", "10.1.0.2"), "ad1": ("autodiscover", "10.1.0.3"), "lb1": ("lb", "10.1.0.4"),
                "cas1": ("cas", "10.1.1.1"), "cas2": ("cas", "10.1.1.2"), "cas3": ("cas", "10.1.1.3"),
                "mbx1": ("mailbox", "10.1.2.1"), "mbx2": ("mailbox", "10.1.2.2"),
                "cl1": ("client", "10.1.3.1"), "cl2": ("client", "10.1.3.2")}
    for name, (role, ip) in expected.items():
        assert (by_name[name].role, by_name[name].ip, by_name[name].site) == (role, ip, "HQ")
        assert by_name[name].cidr == f"{ip}/16"
    assert not plan.routed
    site = plan.site("HQ")
    assert (site.switch, site.vip, site.gateway()) == ("clab1", "10.1.0.100", "10.1.0.1")
    assert site.subnet == ipaddress.IPv4Network("10.1.0.0/16")
    assert site.array_fqdn == f"outlook.hq.{LAB_DOMAIN}"
    assert plan.switch_names() == ["clab1"]


def test_two_site_plan_is_routed_and_numbers_hosts_across_sites():
    plan = LabPlan.build(TWO_SITES)
    assert plan.routed
    assert [s.name for s in plan.sites] == ["HQ", "Branch"]
    assert plan.switch_names() == [f"{SWITCH_PREFIX}1", f"{SWITCH_PREFIX}2"]
    assert [h.name for h in plan.by_role("cas", "HQ")] == ["cas1", "cas2", "cas3"]
    assert [(h.name, h.ip) for h in plan.by_role("cas", "Branch")] == [("cas4", "10.2.1.1"), ("cas5", "10.2.1.2")]
    assert [(h.name, h.ip) for h in plan.by_role("client", "Branch")] == [("cl3", "10.2.3.1")]
    assert [(h.name, h.ip) for h in plan.by_role("autodiscover")] == [("ad1", "10.1.0.3"), ("ad2", "10.2.0.3")]
    assert [(h.name, h.ip) for h in plan.by_role("lb")] == [("lb1", "10.1.0.4"), ("lb2", "10.2.0.4")]
    assert [h.name for h in plan.by_role("dns")] == ["dns1"]  # DNS only in site 1
    assert plan.site("Branch").vip == "10.2.0.100" and plan.site("Branch").gateway() == "10.2.0.1"
    assert plan.site("Branch").vip_mac == "02:00:0a:02:00:64"


def test_missing_counts_default_to_zero():
    plan = LabPlan.build([{"name": "Lab"}])
    assert sorted(h.name for h in plan.hosts) == ["ad1", "dns1", "lb1"]


def test_unknown_site_and_host_raise_key_error():
    plan = LabPlan.build(DEFAULT_SITES)
    with pytest.raises(KeyError):
        plan.site("Nowhere")
    with pytest.raises(KeyError):
        plan.host("cas99")
    assert plan.host("cas2").ip == "10.1.1.2"


@settings(max_examples=40, deadline=None)
@given(site_lists)
def test_plan_invariants_for_any_counts_within_the_plan(sites):
    plan = LabPlan.build(sites)
    ips = [h.ip for h in plan.hosts]
    macs = [h.mac for h in plan.hosts]
    names = [h.name for h in plan.hosts]
    assert len(set(ips)) == len(ips), "duplicate IP"
    assert len(set(macs)) == len(macs), "duplicate MAC"
    assert len(set(names)) == len(names), "duplicate host name"
    assert plan.routed == (len(sites) > 1)
    vips = {s.vip for s in plan.sites}
    gateways = {s.gateway() for s in plan.sites}
    for host in plan.hosts:
        site = plan.site(host.site)
        addr = ipaddress.IPv4Address(host.ip)
        assert addr in site.subnet
        block = {"cas": 1, "mailbox": 2, "client": 3}.get(host.role, 0)
        assert host.ip.startswith(f"10.{site.index}.{block}.")
        assert host.ip not in vips and host.ip not in gateways
        assert re.fullmatch(r"(cas|mbx|cl|ad|lb|dns)\d+", host.name)
        assert re.fullmatch(r"02:00(:[0-9a-f]{2}){4}", host.mac)
        assert host.mac == mac_for(host.ip)
        assert plan.host(host.name) is host
    for i, (spec, site) in enumerate(zip(sites, plan.sites), start=1):
        assert site.index == i and site.switch == f"clab{i}"
        assert len(plan.by_role("cas", site.name)) == spec["cas"]
        assert len(plan.by_role("mailbox", site.name)) == spec["mailboxes"]
        assert len(plan.by_role("client", site.name)) == spec["clients"]
        assert len(plan.by_role("autodiscover", site.name)) == 1
        assert len(plan.by_role("lb", site.name)) == 1
    assert len(plan.by_role("dns")) == 1 and plan.by_role("dns")[0].site == sites[0]["name"]
    total = sum(s["cas"] + s["mailboxes"] + s["clients"] + 2 for s in sites) + 1
    assert len(plan.hosts) == total
    # numbering per role is 1..n across all sites, in site order
    for prefix in ("cas", "mbx", "cl", "ad", "lb"):
        numbers = [int(n[len(prefix):]) for n in names if re.fullmatch(prefix + r"\d+", n)]
        assert numbers == list(range(1, len(numbers) + 1))


def test_mac_for_is_locally_administered_and_stable():
    assert mac_for("10.1.0.11") == "02:00:0a:01:00:0b"
    assert mac_for("10.255.7.200") == "02:00:0a:ff:07:c8"
    assert int(mac_for("10.1.0.11").split(":")[0], 16) & 0b10  # locally administered bit
    assert not int(mac_for("10.1.0.11").split(":")[0], 16) & 0b01  # unicast
    assert HostPlan("x", "cas", "HQ", "10.3.0.12").mac == "02:00:0a:03:00:0c"


@pytest.mark.parametrize("site", [
    {"name": "HQ", "cas": 65, "mailboxes": 1, "clients": 1},
    {"name": "HQ", "cas": 1, "mailboxes": 17, "clients": 1},
    {"name": "HQ", "cas": 1, "mailboxes": 1, "clients": 33},
])
def test_counts_beyond_the_plan_are_rejected_not_silently_duplicated(site):
    with pytest.raises(ValueError, match="addressing plan"):
        LabPlan.build([site])


def test_sixteen_cas_per_site_fit_the_plan():
    plan = LabPlan.build([{"name": "HQ", "cas": 16, "mailboxes": 2, "clients": 4}])
    assert [h.ip for h in plan.by_role("cas")][-1] == "10.1.1.16"


# ---- source_ips ----------------------------------------------------------------------------


def test_source_ips_are_distinct_per_client_and_inside_the_site():
    plan = LabPlan.build(TWO_SITES)
    cl1, cl2, cl3 = plan.host("cl1"), plan.host("cl2"), plan.host("cl3")
    a, b, c = plan.source_ips(cl1, 5), plan.source_ips(cl2, 5), plan.source_ips(cl3, 3)
    assert a == [f"10.1.10.{i}" for i in range(1, 6)]
    assert b == [f"10.1.11.{i}" for i in range(1, 6)]
    assert c == [f"10.2.10.{i}" for i in range(1, 4)]
    assert not set(a) & set(b)
    host_ips = {h.ip for h in plan.hosts} | {s.vip for s in plan.sites} | {s.gateway() for s in plan.sites}
    for client, ips in ((cl1, a), (cl2, b), (cl3, c)):
        subnet = plan.site(client.site).subnet
        assert all(ipaddress.IPv4Address(ip) in subnet for ip in ips)
        assert not set(ips) & host_ips


@settings(max_examples=30, deadline=None)
@given(st.integers(1, 8), st.integers(0, 250))
def test_source_ips_any_count_up_to_250(clients, count):
    plan = LabPlan.build([{"name": "HQ", "cas": 2, "mailboxes": 1, "clients": clients}])
    seen: set[str] = set()
    for client in plan.by_role("client"):
        ips = plan.source_ips(client, count)
        assert len(ips) == count == len(set(ips))
        for ip in ips:
            assert ipaddress.IPv4Address(ip) in plan.site("HQ").subnet  # raises on an invalid address
            assert ip not in seen
            seen.add(ip)
        # the /24 of a client's source addresses belongs to that client only
        assert len({ip.rsplit(".", 1)[0] for ip in ips}) <= 1


def test_more_than_250_source_ips_is_an_error():
    plan = LabPlan.build(DEFAULT_SITES)
    assert len(plan.source_ips(plan.host("cl1"), 250)) == 250
    with pytest.raises(ValueError):
        plan.source_ips(plan.host("cl1"), 251)


# ---- CasArrayTopo --------------------------------------------------------------------------


def links_of(topo) -> set[frozenset]:
    return {frozenset((a, b)) for a, b in topo.links()}


def test_default_topology_graph():
    topo = CasArrayTopo()
    plan = topo.plan
    assert topo.switches() == ["clab1"]
    assert sorted(topo.hosts()) == sorted(h.name for h in plan.hosts)
    assert "r1" not in topo.hosts()
    assert len(topo.links()) == len(plan.hosts)
    links = links_of(topo)
    for host in plan.hosts:
        assert frozenset((host.name, "clab1")) in links
        info = topo.nodeInfo(host.name)
        assert info["ip"] == f"{host.ip}/16" and info["mac"] == host.mac
        assert info["role"] == host.role and info["site"] == "HQ"
        assert info.get("defaultRoute") is None  # not routed
    sw = topo.nodeInfo("clab1")
    assert sw["dpid"] == "0000000000000001" and sw["protocols"] == "OpenFlow13,OpenFlow15"


def test_two_site_topology_has_a_router_joining_the_site_switches():
    topo = CasArrayTopo(sites=TWO_SITES, wan_bw_mbit=10)
    plan = topo.plan
    assert sorted(topo.switches()) == ["clab1", "clab2"]
    assert sorted(topo.hosts()) == sorted([h.name for h in plan.hosts] + ["r1"])
    assert len(topo.links()) == len(plan.hosts) + 2
    links = links_of(topo)
    for host in plan.hosts:
        switch = plan.site(host.site).switch
        assert frozenset((host.name, switch)) in links
        other = {"clab1", "clab2"} - {switch}
        assert frozenset((host.name, other.pop())) not in links
        assert topo.nodeInfo(host.name)["defaultRoute"] == f"via {plan.site(host.site).gateway()}"
    assert frozenset(("r1", "clab1")) in links and frozenset(("r1", "clab2")) in links
    assert topo.nodeInfo("r1")["role"] == "router"
    hq, branch = topo.linkInfo("r1", "clab1"), topo.linkInfo("r1", "clab2")
    assert hq["intfName1"] == "r1-eth1" and hq["params1"] == {"ip": "10.1.0.1/16"}
    assert branch["intfName1"] == "r1-eth2" and branch["params1"] == {"ip": "10.2.0.1/16"}
    assert "bw" not in hq and branch["bw"] == 10  # the WAN limit is on the branch side only
    assert topo.nodeInfo("clab2")["dpid"] == "0000000000000002"


def test_topology_can_take_a_prebuilt_plan():
    plan = LabPlan.build(TWO_SITES)
    topo = CasArrayTopo(plan=plan)
    assert topo.plan is plan
    assert "r1" in topo.hosts()


def test_switch_ports_are_unique_per_switch():
    topo = twosites()
    used: dict[str, set[int]] = {}
    for a, b, info in topo.links(withInfo=True):
        for node, port in ((info["node1"], info["port1"]), (info["node2"], info["port2"])):
            assert port not in used.setdefault(node, set())
            used[node].add(port)


def test_topos_dict_entries_build():
    assert set(topos) == {"casarray", "twosites"}
    assert cas_array.topos is topos
    one = topos["casarray"]()
    assert [h.name for h in one.plan.by_role("cas")] == ["cas1", "cas2", "cas3"]
    assert not one.plan.routed and "r1" not in one.hosts()
    # `mn --topo casarray,4,1,3` passes strings
    custom = topos["casarray"]("4", "1", "3")
    assert (len(custom.plan.by_role("cas")), len(custom.plan.by_role("mailbox")),
            len(custom.plan.by_role("client"))) == (4, 1, 3)
    assert len(custom.links()) == len(custom.plan.hosts)
    two = topos["twosites"](cas=1, clients=2)
    assert two.plan.routed and "r1" in two.hosts()
    assert [h.name for h in two.plan.by_role("cas", "Branch")] == ["cas2"]
    assert [h.name for h in two.plan.by_role("client", "Branch")] == ["cl3", "cl4"]
    assert casarray().plan.hosts == one.plan.hosts


# ---- hypervisors ------------------------------------------------------------------------


VIRTUAL = [{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 2, "hypervisors": 2,
            "placement": {"cas1": "hv1", "cas2": "hv1"}}]


def test_hypervisors_change_no_address_and_place_unnamed_vms_in_turn():
    plain, virtual = LabPlan.build(DEFAULT_SITES), LabPlan.build(VIRTUAL)
    assert [(h.name, h.ip, h.mac) for h in plain.hosts] == [(h.name, h.ip, h.mac) for h in virtual.hosts]
    assert virtual.placement == {"cas1": "hv1", "cas2": "hv1", "cas3": "hv1"}
    assert LabPlan.build([dict(VIRTUAL[0], placement={})]).placement == {"cas1": "hv1", "cas2": "hv2", "cas3": "hv1"}
    assert virtual.switch_names() == ["clab1", "clab1hv1", "clab1hv2"] and plain.switch_names() == ["clab1"]
    assert (virtual.switch_of("cas3"), virtual.switch_of("mbx1")) == ("clab1hv1", "clab1")
    assert virtual.switch_of("cas3", {"cas3": "hv2"}) == "clab1hv2"
    assert virtual.virtualized and not plain.virtualized and not plain.placement


@pytest.mark.parametrize("placement,message", [({"mbx1": "hv1"}, "only its CAS"), ({"cas1": "hv3"}, "hv3"),
                                               ({"cas9": "hv1"}, "cas9")])
def test_a_placement_the_plan_cannot_honour_is_refused(placement, message):
    with pytest.raises(ValueError, match=message):
        LabPlan.build([dict(VIRTUAL[0], placement=placement)])
    with pytest.raises(ValueError, match="needs hypervisors"):
        LabPlan.build([dict(VIRTUAL[0], hypervisors=0)])


def test_virtual_topology_puts_vms_behind_hypervisor_switches_with_one_uplink_each():
    topo = CasArrayTopo(sites=VIRTUAL)
    assert sorted(topo.switches()) == ["clab1", "clab1hv1", "clab1hv2"]
    links = links_of(topo)
    assert frozenset(("clab1hv1", "clab1")) in links and frozenset(("clab1hv2", "clab1")) in links
    for cas in ("cas1", "cas2", "cas3"):
        assert frozenset((cas, "clab1hv1")) in links and frozenset((cas, "clab1")) not in links
    for host in ("mbx1", "cl1", "dns1"):
        assert frozenset((host, "clab1")) in links
    assert topo.nodeInfo("clab1hv2")["dpid"] == "%016x" % 0x102
    assert len(topo.links()) == len(topo.plan.hosts) + 2


# ---- the back-end network ----------------------------------------------------------------


def test_backend_network_gives_each_exchange_server_a_second_address_and_nothing_else_changes():
    sites = [{"name": "HQ", "cas": 16, "mailboxes": 2, "clients": 4, "multi_role": 1}]
    plain, backend = LabPlan.build(sites), LabPlan.build(sites, backend=True)
    assert [(h.name, h.ip, h.mac) for h in plain.hosts] == [(h.name, h.ip, h.mac) for h in backend.hosts]
    assert plain.bridge_names() == plain.switch_names() == ["clab1"] and plain.backend_switch_names() == []
    assert backend.switch_names() == ["clab1"] and backend.bridge_names() == ["clab1", "clab1b"]
    subnet = ipaddress.IPv4Network("10.101.0.0/16")
    servers = [h for h in backend.hosts if backend.on_backend(h)]
    assert {h.name for h in servers} == {h.name for h in backend.hosts if {"cas", "mailbox"} & set(h.roles)}
    assert len({backend.server_ip(h) for h in servers}) == len(servers), "back-end addresses are distinct"
    for host in backend.hosts:
        if host in servers:
            assert ipaddress.IPv4Address(backend.server_ip(host)) in subnet
            assert backend.server_ip(host).split(".")[2:] == host.ip.split(".")[2:]
        else:
            assert backend.server_ip(host) == host.ip and not plain.on_backend(host)
        assert plain.server_ip(host) == host.ip


@pytest.mark.parametrize("sites", [TWO_SITES, [{"name": "HQ", "cas": 2, "mailboxes": 1, "clients": 1,
                                                  "hypervisors": 1}]])
def test_a_backend_network_the_plan_cannot_build_is_refused(sites):
    with pytest.raises(ValueError, match="back-end network"):
        LabPlan.build(sites, backend=True)


def test_backend_topology_puts_every_exchange_server_on_a_linux_bridge_as_its_second_nic():
    from topologies.kernel_bridge import KernelBridge

    plan = LabPlan.build([{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 2}], backend=True)
    topo = CasArrayTopo(plan=plan)
    assert sorted(topo.switches()) == ["clab1", "clab1b"]
    assert topo.nodeInfo("clab1b")["cls"] is KernelBridge and "cls" not in topo.nodeInfo("clab1")
    links = links_of(topo)
    for host in plan.hosts:
        assert frozenset((host.name, "clab1")) in links, "every host keeps its client-facing NIC"
        on_backend = frozenset((host.name, "clab1b")) in links
        assert on_backend == plan.on_backend(host)
        if on_backend:
            info = topo.linkInfo(host.name, "clab1b")
            assert info["params1"] == {"ip": f"{plan.server_ip(host)}/16"}
            assert info["port1"] == 1, "eth1: the client-facing NIC stays eth0, the host's first"
