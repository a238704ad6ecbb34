"""The NLB core's controller dataplane (``dataplane = "controller"``): a packet-in per new
connection, pinned by two exact flows; what a switch is sent when it connects and reports
its ports; ARP, ping and resets; flows expiring; a restarted controller re-learning the
connections a previous one pinned. The core is driven directly (tests/nlb_lab.py), its
messages built for an OpenFlow 1.3 and a 1.5 switch (every test that reads them runs for
both); frames are built and read with scapy. Membership changes are in
test_nlb_core_membership.py, the switch dataplane in test_nlb_core_switch_dp.py."""

from __future__ import annotations

import pytest
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Ether

from controllers.nlb_flows import (
    BASE, FORWARD, GUARD, PRIO_CONN, PRIO_GUARD_ALLOW, PRIO_GUARD_DROP, PRIO_MISS, PRIO_VIP_CTRL, REVERSE, SERVICE,
    T_CLASSIFY, T_SERVICE, Cookie,
)
from labcommon.catalogue import NLB_CONN, NLB_RELEARN, NLB_SWITCH
from tests.nlb_lab import (
    BRANCH_VIP, CLIENT, MEMBER, MEMBERS, OF13, OTHER_SERVICE_PORT, S, SERVICE_PORT, T0, VIP_IP, VIP_MAC,
    apply_actions, arp_frame, challenges_until, channel, checksums_ok, conns_of, core_for, emitted, flow_mods,
    icmp_echo, kind_of, link, match_dict, member_of, of_class, outputs, packet_outs, pin, po_in_port, port_list,
    sent, set_fields, syn, tcp_frame, vlan_ids,
)


def metered(flow) -> bool:
    """The flow passes meter 1: an instruction in OpenFlow 1.3, an action in 1.5."""
    if flow.datapath.ofproto.OFP_VERSION == OF13:
        return any(type(i).__name__ == "OFPInstructionMeter" and i.meter_id == 1 for i in flow.instructions)
    return any(type(a).__name__ == "OFPActionMeter" and a.meter_id == 1 for a in apply_actions(flow))


def to_controller(flow) -> bool:
    """Outputs to the controller, the whole packet (no buffer on the switch)."""
    ofp = flow.datapath.ofproto
    outs = [a for a in apply_actions(flow) if type(a).__name__ == "OFPActionOutput"]
    return [(a.port, a.max_len) for a in outs] == [(ofp.OFPP_CONTROLLER, ofp.OFPCML_NO_BUFFER)]


def of_kind(msgs, kind: int) -> list:
    return [m for m in flow_mods(msgs) if kind_of(m) == kind]


def ready(version: int, **kw):
    """A core on the lab's config and its switch (dpid 1), connected with all ports up."""
    core, _ = core_for(**kw)
    ch = channel(1, version)
    core.switch_connected(ch, False, T0)
    core.port_desc(ch, port_list(), T0)
    return core, ch


def packet_in(core, ch, data: bytes, in_port: int = CLIENT.port_no, cookie: int = 0) -> list:
    """What the core sends in answer to a packet-in."""
    return sent(core.packet_in(ch, in_port, data, cookie, T0))


def frame(po) -> Ether:
    return Ether(po.data)


# ---- switch set-up ----------------------------------------------------------------------------


def test_a_switch_gets_table_miss_meter_vip_base_and_is_asked_for_ports_and_flows(version):
    core, _ = core_for()
    ch = channel(1, version)
    out = core.switch_connected(ch, False, T0)
    msgs = sent(out)
    miss, arp, icmp = flow_mods(msgs)
    assert (miss.table_id, miss.priority, match_dict(miss.match)) == (T_CLASSIFY, PRIO_MISS, {})
    assert outputs(apply_actions(miss)) == [ch.ofproto.OFPP_NORMAL]
    assert match_dict(arp.match) == {"eth_type": 0x0806, "arp_tpa": VIP_IP}
    assert match_dict(icmp.match) == {"eth_type": 0x0800, "ip_proto": 1, "ipv4_dst": VIP_IP}
    for flow in (arp, icmp):
        assert flow.priority == PRIO_VIP_CTRL and flow.cookie == Cookie(1, 0, BASE).encode()
        assert to_controller(flow) and metered(flow)
    delete, add = of_class(msgs, "OFPMeterMod")
    assert (delete.command, add.command) == (ch.ofproto.OFPMC_DELETE, ch.ofproto.OFPMC_ADD)
    [band] = add.bands
    assert add.meter_id == 1 and add.flags == ch.ofproto.OFPMF_PKTPS | ch.ofproto.OFPMF_BURST
    assert (band.rate, band.burst_size) == (2000, 500)
    assert len(of_class(msgs, "OFPPortDescStatsRequest")) == 1
    wanted = "OFPFlowStatsRequest" if version == OF13 else "OFPFlowDescStatsRequest"  # 1.5 stats lack cookies
    [request] = of_class(msgs, wanted)
    assert (request.cookie, request.cookie_mask) == Cookie.tag_mask()
    assert core.datapaths[1] is ch and emitted(out, NLB_SWITCH) == [{"dpid": 1}]


def test_switch_without_a_vip_gets_only_the_table_miss_flow(version):
    core, _ = core_for()
    msgs = sent(core.switch_connected(channel(7, version), False, T0))
    assert [(m.priority, match_dict(m.match)) for m in flow_mods(msgs)] == [(PRIO_MISS, {})]
    assert of_class(msgs, "OFPMeterMod") == [] and len(msgs) == 2  # and the port desc request


def test_branch_switch_gets_only_its_own_vip(version):
    core, _ = core_for()
    msgs = sent(core.switch_connected(channel(2, version), False, T0))
    dsts = {match_dict(m.match).get("ipv4_dst") or match_dict(m.match).get("arp_tpa") for m in flow_mods(msgs)}
    assert dsts == {None, BRANCH_VIP}


def test_port_desc_learns_ports_and_installs_the_source_guard_and_service(version):
    core, _ = core_for()
    ch = channel(1, version)
    core.switch_connected(ch, False, T0)
    msgs = sent(core.port_desc(ch, port_list(), T0))
    assert {m.name: core.vips[0].port_numbers[m.port_name] for m in MEMBERS} == {"cas1": 1, "cas2": 2, "cas3": 3}
    assert core.vips[1].port_numbers == {}  # dpid 2's VIP learns nothing from dpid 1
    guard = [g for g in of_kind(msgs, GUARD) if match_dict(g.match)["eth_type"] == 0x0800]  # ARP: test_nlb_flows
    allowed = [(match_dict(g.match), g.instructions[0].table_id) for g in guard if g.priority == PRIO_GUARD_ALLOW]
    base = {"eth_type": 0x0800, "ipv4_dst": VIP_IP}
    assert allowed == [({"in_port": 10, **base, "ipv4_src": "10.1.3.1"}, T_SERVICE),
                       ({"in_port": 10, **base, "ipv4_src": ("10.1.10.0", "255.255.255.0")}, T_SERVICE),
                       ({"in_port": 11, **base, "ipv4_src": "10.1.3.2"}, T_SERVICE),
                       ({"in_port": 11, **base, "ipv4_src": ("10.1.11.0", "255.255.255.0")}, T_SERVICE)]
    [drop] = [g for g in guard if g.priority == PRIO_GUARD_DROP]
    assert match_dict(drop.match) == base and drop.instructions == []
    tcp, rest = of_kind(msgs, SERVICE)
    assert (tcp.table_id, tcp.priority) == (T_SERVICE, 100) and to_controller(tcp) and metered(tcp)
    assert match_dict(tcp.match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_dst": VIP_IP}
    assert (rest.table_id, rest.priority, match_dict(rest.match), rest.instructions) == (T_SERVICE, 0, {}, [])


# ---- a new connection -------------------------------------------------------------------------


def test_syn_installs_forward_and_reverse_flows_then_a_packet_out(version):
    core, ch = ready(version)
    data = syn(40001, seq=777)
    out = core.packet_in(ch, CLIENT.port_no, data, 0, T0)
    msgs = sent(out)
    assert [type(m).__name__ for m in msgs] == ["OFPFlowMod", "OFPFlowMod", "OFPPacketOut"]
    [fwd], [rev] = of_kind(msgs, FORWARD), of_kind(msgs, REVERSE)
    member = MEMBER[core.vips[0].pool.choose(CLIENT.ip, 40001).name]
    idx = core.vips[0].member_index[member.name]
    assert fwd.table_id == rev.table_id == T_CLASSIFY and fwd.priority == rev.priority == PRIO_CONN
    assert match_dict(fwd.match) == {"in_port": CLIENT.port_no, "eth_type": 0x0800, "ip_proto": 6,
                                     "ipv4_src": CLIENT.ip, "tcp_src": 40001, "ipv4_dst": VIP_IP,
                                     "tcp_dst": SERVICE_PORT}
    assert set_fields(apply_actions(fwd)) == {"eth_dst": member.mac, "ipv4_dst": member.ip}
    assert outputs(apply_actions(fwd)) == [member.port_no]
    assert fwd.cookie == Cookie(1, idx, FORWARD).encode()
    assert fwd.flags & ch.ofproto.OFPFF_SEND_FLOW_REM and fwd.idle_timeout == 60
    assert match_dict(rev.match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": member.ip,
                                     "tcp_src": SERVICE_PORT, "ipv4_dst": CLIENT.ip, "tcp_dst": 40001}
    assert set_fields(apply_actions(rev)) == {"ipv4_src": VIP_IP, "eth_src": VIP_MAC, "eth_dst": CLIENT.mac}
    assert outputs(apply_actions(rev)) == [CLIENT.port_no]
    assert rev.cookie == Cookie(1, idx, REVERSE).encode() and rev.idle_timeout == 60 and rev.flags == 0
    [po] = packet_outs(msgs)
    assert po.data == data and po_in_port(po) == ch.ofproto.OFPP_CONTROLLER
    assert po.buffer_id == ch.ofproto.OFP_NO_BUFFER
    assert set_fields(po.actions)["ipv4_dst"] == member.ip and outputs(po.actions) == [member.port_no]
    assert conns_of(core) == {(CLIENT.ip, 40001, VIP_IP, SERVICE_PORT): member.name}
    conn = core.vips[0].conns.get((CLIENT.ip, 40001, VIP_IP, SERVICE_PORT))
    assert (conn.client_mac, conn.in_port, conn.client_isn) == (CLIENT.mac, CLIENT.port_no, 777)
    assert core.stats["conns"] == 1
    assert emitted(out, NLB_CONN) == [{"vip": VIP_IP, "client": f"{CLIENT.ip}:40001", "member": member.name}]


def test_retransmitted_syn_reuses_the_pinned_member_and_counts_once():
    core, ch = ready(OF13)
    first = core.packet_in(ch, CLIENT.port_no, syn(40002), 0, T0)
    again = core.packet_in(ch, CLIENT.port_no, syn(40002), 0, T0)
    assert member_of(of_kind(sent(first), FORWARD)[0]) == member_of(of_kind(sent(again), FORWARD)[0])
    assert len(core.vips[0].conns) == 1 and core.stats["conns"] == 1
    assert len(emitted(first, NLB_CONN)) == 1 and emitted(again, NLB_CONN) == []


def test_many_clients_spread_over_all_members():
    core, ch = ready(OF13)
    assert {pin(core, ch, 41000 + i) for i in range(60)} == {"cas1", "cas2", "cas3"}
    assert sum(core.vips[0].conns.count_by_backend().values()) == 60


@pytest.mark.parametrize("affinity, clients, spread", [
    ("single", [(CLIENT.ip, 42000 + i) for i in range(30)], 1),           # every port of one client
    ("network", [(f"10.1.10.{1 + i}", 42100 + i) for i in range(30)], 1),  # a whole /24
    ("none", [(CLIENT.ip, 42000 + i) for i in range(30)], 3),
])
def test_affinity(affinity, clients, spread):
    core, ch = ready(OF13, affinity=affinity)
    assert len({pin(core, ch, port, src_ip=ip) for ip, port in clients}) == spread


def test_every_configured_service_port_is_balanced(version):
    core, ch = ready(version)
    msgs = packet_in(core, ch, syn(42200, dport=OTHER_SERVICE_PORT))
    assert match_dict(of_kind(msgs, FORWARD)[0].match)["tcp_dst"] == OTHER_SERVICE_PORT
    assert (CLIENT.ip, 42200, VIP_IP, OTHER_SERVICE_PORT) in core.vips[0].conns.by_key


def test_syn_before_the_ports_are_known_installs_nothing():
    core, _ = core_for()
    ch = channel(1, OF13)
    core.switch_connected(ch, False, T0)
    assert core.packet_in(ch, CLIENT.port_no, syn(40003), 0, T0) == [] and len(core.vips[0].conns) == 0


@pytest.mark.parametrize("fast_fail", [True, False])
def test_syn_to_a_port_that_is_not_a_service_port_is_reset(version, fast_fail):
    core, ch = ready(version, fast_fail=fast_fail)
    [po] = packet_in(core, ch, syn(40004, seq=5000, dport=8080))
    seg = frame(po)[TCP]
    assert str(seg.flags) == "RA" and seg.seq == 0 and seg.ack == 5001 and (seg.sport, seg.dport) == (8080, 40004)
    assert outputs(po.actions) == [CLIENT.port_no] and checksums_ok(po.data)


def test_syn_with_no_eligible_member_is_reset():
    core, ch = ready(OF13)
    for name in ("cas1", "cas2", "cas3"):
        core.set_member(core.vips[0], name, "test", T0, healthy=False)
    [po] = packet_in(core, ch, syn(40005, seq=99))
    seg = frame(po)[TCP]
    assert str(seg.flags) == "RA" and seg.ack == 100 and len(core.vips[0].conns) == 0


def test_packets_for_another_switch_or_address_are_ignored():
    core, ch = ready(OF13)
    assert packet_in(core, ch, syn(40006, dst_ip="10.1.3.9")) == []
    other = channel(9, OF13)
    core.switch_connected(other, False, T0)
    assert packet_in(core, other, syn(40006)) == [] and len(core.vips[0].conns) == 0


# ---- ARP and ICMP --------------------------------------------------------------------------------


@pytest.mark.parametrize("vlans", [(), (42,), (7, 42)])
def test_arp_request_for_the_vip_gets_a_reply_with_the_vip_mac(version, vlans):
    core, ch = ready(version)
    [po] = packet_in(core, ch, arp_frame(1, VIP_IP, vlans=vlans))
    assert outputs(po.actions) == [CLIENT.port_no] and po_in_port(po) == ch.ofproto.OFPP_CONTROLLER
    reply = frame(po)
    assert (reply.src, reply.dst) == (VIP_MAC, CLIENT.mac)
    assert vlan_ids(reply) == list(vlans)
    arp = reply[ARP]
    assert (arp.op, arp.hwsrc, arp.psrc, arp.hwdst, arp.pdst) == (2, VIP_MAC, VIP_IP, CLIENT.mac, CLIENT.ip)
    assert core.stats["arp"] == 1


def test_arp_for_other_addresses_and_arp_replies_are_ignored():
    core, ch = ready(OF13)
    assert packet_in(core, ch, arp_frame(1, "10.1.1.1")) == []
    assert packet_in(core, ch, arp_frame(2, VIP_IP)) == []
    assert packet_in(core, ch, arp_frame(1, BRANCH_VIP)) == []  # not this switch's VIP


@pytest.mark.parametrize("vlans", [(), (42,)])
def test_icmp_echo_to_the_vip_is_answered(version, vlans):
    core, ch = ready(version)
    [po] = packet_in(core, ch, icmp_echo(vlans=vlans))
    reply = frame(po)
    assert (reply.src, reply.dst) == (VIP_MAC, CLIENT.mac) and vlan_ids(reply) == list(vlans)
    assert (reply[IP].src, reply[IP].dst) == (VIP_IP, CLIENT.ip)
    echo = reply[ICMP]
    assert (echo.type, echo.code, echo.id, echo.seq, bytes(echo.payload)) == (0, 0, 0x1234, 7, b"caslab-ping")
    assert outputs(po.actions) == [CLIENT.port_no] and checksums_ok(po.data) and core.stats["icmp"] == 1


# ---- segments without a pinned connection ----------------------------------------------------------


def test_non_syn_for_an_unknown_connection_gets_an_exact_rst(version):
    core, ch = ready(version, fast_fail=True)
    [po] = packet_in(core, ch, tcp_frame(40010, "PA", seq=123456, ack=0xDEADBEEF, payload=b"hello"))
    assert outputs(po.actions) == [CLIENT.port_no]
    reply = frame(po)
    assert str(reply[TCP].flags) == "R" and reply[TCP].seq == 0xDEADBEEF  # the client's ack: in its window
    assert (reply[TCP].sport, reply[TCP].dport) == (SERVICE_PORT, 40010)
    assert (reply[IP].src, reply[IP].dst, reply.src, reply.dst) == (VIP_IP, CLIENT.ip, VIP_MAC, CLIENT.mac)
    assert checksums_ok(po.data) and core.stats["resets"] == 1 and len(core.vips[0].conns) == 0


def test_without_fast_fail_an_unknown_connection_on_a_service_port_is_left_alone():
    core, ch = ready(OF13, fast_fail=False)
    assert packet_in(core, ch, tcp_frame(40011, "A", ack=5)) == []
    [po] = packet_in(core, ch, tcp_frame(40011, "A", ack=5, dport=8080))  # a closed port is still reset
    assert frame(po)[TCP].seq == 5


def test_rst_and_ackless_segments_are_never_answered():
    core, ch = ready(OF13, fast_fail=True)
    for flags in ("RA", "R", "F", "", "U"):
        assert packet_in(core, ch, tcp_frame(40012, flags, ack=9)) == [], flags


def test_non_syn_of_a_pinned_connection_is_forwarded_to_its_member(version):
    """A segment that raced its connection's flow install goes the same way, no RST."""
    core, ch = ready(version)
    member = pin(core, ch, 40013)
    data = tcp_frame(40013, "A", seq=1001, ack=1)
    msgs = packet_in(core, ch, data)
    [po] = packet_outs(msgs)
    assert po.data == data and outputs(po.actions) == [MEMBER[member].port_no]
    assert set_fields(apply_actions(of_kind(msgs, FORWARD)[0]))["ipv4_dst"] == MEMBER[member].ip


# ---- flow expiry and a restarted controller ----------------------------------------------------------


def test_idle_timeout_of_the_forward_flow_forgets_the_connection():
    core, ch = ready(OF13)
    msgs = packet_in(core, ch, syn(40020))
    [fwd], [rev] = of_kind(msgs, FORWARD), of_kind(msgs, REVERSE)
    assert core.flow_removed(ch, rev.cookie, True, rev.match) == []  # only the forward flow's expiry counts
    assert core.flow_removed(ch, fwd.cookie, False, fwd.match) == []  # deleted on purpose: evict's business
    assert len(core.vips[0].conns) == 1
    core.flow_removed(ch, fwd.cookie, True, fwd.match)
    assert len(core.vips[0].conns) == 0


def restarted(version: int, old_flows: list, down: tuple[str, ...] = ()):
    """A new core on a switch that reports its ports (``down``: members whose link is down)
    and then the flows a previous core made (the flow mods stand for the switch's entries:
    what the core reads of them, cookie, match and instructions, they carry alike)."""
    new, _ = core_for()
    ch = channel(1, version)
    new.switch_connected(ch, False, T0)
    new.port_desc(ch, port_list(down), T0)
    return new, ch, new.flow_stats(ch, old_flows, T0)


def test_restarted_controller_relearns_connections_from_the_switch(version):
    old, old_ch = ready(version)
    flows = [f for i in range(30) for f in flow_mods(packet_in(old, old_ch, syn(43000 + i)))]
    parser = old_ch.ofproto_parser
    unrelated = parser.OFPFlowMod(old_ch, table_id=0, priority=5, cookie=0x1234, match=parser.OFPMatch(),
                                  instructions=[])
    new, ch, out = restarted(version, flows + [unrelated])
    assert conns_of(new) == conns_of(old)
    for conn in new.vips[0].conns.by_key.values():
        assert (conn.client_mac, conn.in_port) == (CLIENT.mac, CLIENT.port_no)
    assert emitted(out, NLB_RELEARN) == [{"dpid": 1, "conns": 30}]
    # re-learned connections are evicted like any other: the dead member's clients are challenged
    on_cas1 = sum(1 for v in conns_of(new).values() if v == "cas1")
    link(new, ch, "cas1", False, T0)
    outs = packet_outs(sent(challenges_until(new, T0 + S // 1000)))
    assert len(outs) == on_cas1 > 0
    assert all(outputs(po.actions) == [CLIENT.port_no] and frame(po).dst == CLIENT.mac for po in outs)


def test_relearning_skips_members_not_in_service_and_their_clients_get_a_reset(version):
    old, old_ch = ready(version)
    flows, keys = [], {}
    for i in range(30):
        msgs = packet_in(old, old_ch, syn(43100 + i))
        flows += flow_mods(msgs)
        keys[43100 + i] = member_of(of_kind(msgs, FORWARD)[0])
    # cas1's link is down while the controller restarts: the port desc says so, then the
    # flow reply (taken before the app deleted cas1's flows) still lists them
    new, ch, _ = restarted(version, flows, down=("cas1",))
    assert conns_of(new) == {k: v for k, v in conns_of(old).items() if v != "cas1"}
    sport = next(p for p, m in keys.items() if m == "cas1")
    msgs = packet_in(new, ch, tcp_frame(sport, "PA", seq=2000, ack=0x4000))
    assert flow_mods(msgs) == [], "a connection of a dead member was forwarded into its dead port"
    [po] = msgs
    assert str(frame(po)[TCP].flags) == "R" and frame(po)[TCP].seq == 0x4000
