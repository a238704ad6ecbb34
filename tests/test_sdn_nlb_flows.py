"""Unit tests of controllers/sdn_nlb.py, the OpenFlow 1.3 NLB app, against a FAKE datapath.

No switch and no root: the app is constructed directly from a JSON config (CASLAB_NLB_CONFIG),
its handlers are called with real os-ken OpenFlow message objects wrapped in real events, and
the fake datapath records (and serializes, as the real one does) every message the app sends.
Packets are built and parsed with os_ken.lib.packet.
"""

from __future__ import annotations

import itertools
import json
import os
import struct
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from os_ken.controller import ofp_event
from os_ken.lib.packet import arp, ethernet, icmp, ipv4, packet, tcp
from os_ken.ofproto import ofproto_v1_3 as ofp
from os_ken.ofproto import ofproto_v1_3_parser as parser

from controllers import sdn_nlb
from controllers.sdn_nlb import (
    COOKIE_MASK_MEMBER, COOKIE_TAG, FORWARD, PRIO_CONN, PRIO_MISS, PRIO_VIP_CTRL, PRIO_VIP_TCP, REVERSE, SdnNlb,
    member_cookie,
)

ROOT = Path(__file__).resolve().parent.parent

VIP_IP, VIP_MAC = "10.1.0.100", "02:00:0a:01:00:64"
CLIENT_IP, CLIENT_MAC, CLIENT_PORT_NO = "10.1.0.51", "02:00:0a:01:00:33", 10
OTHER_CLIENT_IP, OTHER_CLIENT_MAC, OTHER_CLIENT_PORT_NO = "10.1.0.52", "02:00:0a:01:00:34", 11
SERVICE_PORT = 443
MEMBERS = [  # name, ip, mac, switch port name, switch port number
    ("cas1", "10.1.0.11", "02:00:0a:01:00:0b", "clab1-eth1", 1),
    ("cas2", "10.1.0.12", "02:00:0a:01:00:0c", "clab1-eth2", 2),
    ("cas3", "10.1.0.13", "02:00:0a:01:00:0d", "clab1-eth3", 3),
]
MEMBER = {m[0]: m for m in MEMBERS}
BRANCH_VIP = "10.2.0.100"


def config(fast_fail: bool = True, affinity: str = "none", events: str | None = None, **extra) -> dict:
    cfg = {
        "vips": [
            {"name": "HQ", "ip": VIP_IP, "mac": VIP_MAC, "dpid": 1, "ports": [135, SERVICE_PORT],
             "affinity": affinity,
             "members": [{"name": n, "ip": ip, "mac": mac, "port_name": pn} for n, ip, mac, pn, _ in MEMBERS]},
            {"name": "Branch", "ip": BRANCH_VIP, "mac": "02:00:0a:02:00:64", "dpid": 2, "ports": [SERVICE_PORT],
             "members": [{"name": "cas4", "ip": "10.2.0.11", "mac": "02:00:0a:02:00:0b", "port_name": "clab2-eth1"}]},
        ],
        "fast_fail": fast_fail,
        "conn_idle_s": 60,
    }
    if events:
        cfg["events"] = events
    cfg.update(extra)
    return cfg


class FakeHub:
    """Stands in for os-ken's hub in the app module: timers are recorded, and a test fires
    them when it wants (no event loop, no sleeps)."""

    def __init__(self):
        self.timers: list = []

    def spawn_after(self, seconds, func, *args, **kwargs):
        self.timers.append((seconds, func, args, kwargs))
        return object()

    def spawn(self, func, *args, **kwargs):
        return self.spawn_after(0, func, *args, **kwargs)

    def delays(self) -> list:
        return [t[0] for t in self.timers]

    def fire_next(self) -> None:
        """Run only the earliest pending timer."""
        self.timers.sort(key=lambda t: t[0])
        _, func, args, kwargs = self.timers.pop(0)
        func(*args, **kwargs)

    def fire(self) -> int:
        """Run every pending timer (earliest first), including ones they start; returns how many ran."""
        ran = 0
        while self.timers:
            self.timers.sort(key=lambda t: t[0])
            _, func, args, kwargs = self.timers.pop(0)
            func(*args, **kwargs)
            ran += 1
        return ran


@pytest.fixture
def timers(monkeypatch) -> FakeHub:
    fake = FakeHub()
    monkeypatch.setattr(sdn_nlb, "hub", fake)
    return fake


@pytest.fixture
def make_app(tmp_path, monkeypatch, timers):
    serial = itertools.count()

    def make(**kwargs) -> SdnNlb:
        path = tmp_path / f"nlb-{next(serial)}.json"
        path.write_text(json.dumps(config(**kwargs)), encoding="utf-8")
        monkeypatch.setenv("CASLAB_NLB_CONFIG", str(path))
        return SdnNlb()

    return make


class FakeDatapath:
    """What the app uses of os-ken's Datapath: id, ofproto, ofproto_parser, send_msg."""

    def __init__(self, dpid: int = 1):
        self.id = dpid
        self.ofproto = ofp
        self.ofproto_parser = parser
        self.sent: list = []
        self._xid = 0

    def send_msg(self, msg) -> None:
        # as os_ken.controller.controller.Datapath.send_msg: give it an xid and serialize it,
        # so a message the real switch connection could not encode fails here too
        if msg.xid is None:
            self._xid += 1
            msg.set_xid(self._xid)
        msg.serialize()
        assert len(msg.buf) >= ofp.OFP_HEADER_SIZE
        self.sent.append(msg)

    def take(self) -> list:
        sent, self.sent = self.sent, []
        return sent


def flow_mods(msgs, command=ofp.OFPFC_ADD):
    return [m for m in msgs if isinstance(m, parser.OFPFlowMod) and m.command == command]


def packet_outs(msgs):
    return [m for m in msgs if isinstance(m, parser.OFPPacketOut)]


def actions_of(flow_mod):
    [inst] = flow_mod.instructions
    assert inst.type == ofp.OFPIT_APPLY_ACTIONS
    return inst.actions


def set_fields(actions) -> dict:
    return {a.key: a.value for a in actions if isinstance(a, parser.OFPActionSetField)}


def outputs(actions) -> list[int]:
    return [a.port for a in actions if isinstance(a, parser.OFPActionOutput)]


def match_dict(match) -> dict:
    return dict(match.items())


def ofport(name: str, port_no: int, link_down: bool = False, admin_down: bool = False):
    return parser.OFPPort(port_no=port_no, hw_addr="aa:bb:cc:00:00:%02x" % port_no, name=name.encode(),
                          config=ofp.OFPPC_PORT_DOWN if admin_down else 0,
                          state=ofp.OFPPS_LINK_DOWN if link_down else ofp.OFPPS_LIVE,
                          curr=0, advertised=0, supported=0, peer=0, curr_speed=0, max_speed=0)


# ---- driving the app -----------------------------------------------------------------------


def features(app, dp) -> list:
    msg = parser.OFPSwitchFeatures(dp, datapath_id=dp.id, n_buffers=0, n_tables=254, auxiliary_id=0, capabilities=0)
    app.switch_features_handler(ofp_event.EventOFPSwitchFeatures(msg))
    return dp.take()


def port_desc(app, dp, ports) -> list:
    msg = parser.OFPPortDescStatsReply(dp)
    msg.body = ports
    app.port_desc_handler(ofp_event.EventOFPPortDescStatsReply(msg))
    return dp.take()


def port_status(app, dp, port, reason=ofp.OFPPR_MODIFY) -> list:
    msg = parser.OFPPortStatus(dp, reason=reason, desc=port)
    app.port_status_handler(ofp_event.EventOFPPortStatus(msg))
    return dp.take()


def packet_in(app, dp, data: bytes, in_port: int = CLIENT_PORT_NO) -> list:
    msg = parser.OFPPacketIn(dp, buffer_id=ofp.OFP_NO_BUFFER, total_len=len(data), reason=ofp.OFPR_ACTION,
                             table_id=0, cookie=0, match=parser.OFPMatch(in_port=in_port), data=data)
    app.packet_in_handler(ofp_event.EventOFPPacketIn(msg))
    return dp.take()


def ready(app, dpid: int = 1) -> FakeDatapath:
    """A switch that connected and reported its ports (all up)."""
    dp = FakeDatapath(dpid)
    features(app, dp)
    port_desc(app, dp, [ofport(pn, no) for _, _, _, pn, no in MEMBERS]
              + [ofport("clab1-eth10", CLIENT_PORT_NO), ofport("clab1-eth11", OTHER_CLIENT_PORT_NO)])
    return dp


def tcp_frame(sport: int, bits: int, seq: int = 1000, ack: int = 0, dport: int = SERVICE_PORT,
              src_ip: str = CLIENT_IP, src_mac: str = CLIENT_MAC, dst_ip: str = VIP_IP) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=VIP_MAC, src=src_mac, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=src_ip, dst=dst_ip, proto=6))
    pkt.add_protocol(tcp.tcp(src_port=sport, dst_port=dport, seq=seq, ack=ack, bits=bits, window_size=64240))
    pkt.serialize()
    return bytes(pkt.data)


def syn(sport: int, **kw) -> bytes:
    return tcp_frame(sport, tcp.TCP_SYN, **kw)


def ones_complement_sum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def check_checksums(data: bytes) -> None:
    """IPv4 header and TCP/ICMP checksums of a crafted frame verify (a client drops bad ones)."""
    ip_start = 14
    ihl = (data[ip_start] & 0x0F) * 4
    ip_header = data[ip_start:ip_start + ihl]
    assert ones_complement_sum(ip_header) == 0xFFFF, "bad IPv4 header checksum"
    total_len = struct.unpack("!H", ip_header[2:4])[0]
    l4 = data[ip_start + ihl:ip_start + total_len]
    if ip_header[9] == 6:
        pseudo = ip_header[12:20] + struct.pack("!BBH", 0, 6, len(l4))
        assert ones_complement_sum(pseudo + l4) == 0xFFFF, "bad TCP checksum"
    elif ip_header[9] == 1:
        assert ones_complement_sum(l4) == 0xFFFF, "bad ICMP checksum"


def parse_out(po):
    """A PacketOut's frame, parsed: (the os-ken Packet, its ethernet header)."""
    pkt = packet.Packet(po.data)
    eth = pkt.get_protocol(ethernet.ethernet)
    return pkt, eth


def conns_of(app, vip_index: int = 0) -> dict:
    return {k: c.backend for k, c in app.vips[vip_index].conns.by_key.items()}


def pin(app, dp, sport: int, **kw) -> tuple[str, list]:
    """Send a SYN; return the member its forward flow points at, and the messages."""
    msgs = packet_in(app, dp, syn(sport, **kw))
    fwd = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == FORWARD]
    assert len(fwd) == 1, msgs
    ip = set_fields(actions_of(fwd[0]))["ipv4_dst"]
    return next(n for n, mip, *_ in MEMBERS if mip == ip), msgs


# ---- construction and switch set-up ---------------------------------------------------------


def test_app_reads_its_config(make_app):
    app = make_app(fast_fail=False, affinity="single")
    assert [v.ip for v in app.vips] == [VIP_IP, BRANCH_VIP]
    assert app.fast_fail is False and app.conn_idle_s == 60
    hq = app.vips[0]
    assert hq.index == 1 and hq.dpid == 1 and hq.ports == {135, SERVICE_PORT}
    assert hq.pool.affinity == "single"
    assert hq.member_index == {"cas1": 1, "cas2": 2, "cas3": 3}
    assert app.find_vip("HQ") is hq and app.find_vip(VIP_IP) is hq and app.find_vip("nope") is None


def test_app_without_config_has_no_vips(monkeypatch):
    monkeypatch.delenv("CASLAB_NLB_CONFIG", raising=False)
    app = SdnNlb()
    assert app.vips == [] and app.fast_fail is True
    dp = FakeDatapath(1)
    msgs = features(app, dp)
    assert [(m.priority, match_dict(m.match)) for m in flow_mods(msgs)] == [(PRIO_MISS, {})]


def test_switch_features_installs_table_miss_and_the_three_vip_flows(make_app):
    app = make_app()
    dp = FakeDatapath(1)
    msgs = features(app, dp)
    adds = flow_mods(msgs)
    assert len(adds) == 4
    miss = [m for m in adds if m.priority == PRIO_MISS]
    assert len(miss) == 1 and match_dict(miss[0].match) == {}
    assert outputs(actions_of(miss[0])) == [ofp.OFPP_NORMAL]

    vip_flows = {(m.priority, tuple(sorted(match_dict(m.match).items()))): m for m in adds if m.priority != PRIO_MISS}
    expected = {
        (PRIO_VIP_CTRL, (("arp_tpa", VIP_IP), ("eth_type", 0x0806))),
        (PRIO_VIP_CTRL, (("eth_type", 0x0800), ("ip_proto", 1), ("ipv4_dst", VIP_IP))),
        (PRIO_VIP_TCP, (("eth_type", 0x0800), ("ip_proto", 6), ("ipv4_dst", VIP_IP))),
    }
    assert set(vip_flows) == expected
    for flow in vip_flows.values():
        [out] = actions_of(flow)
        assert out.port == ofp.OFPP_CONTROLLER and out.max_len == ofp.OFPCML_NO_BUFFER
    assert PRIO_VIP_TCP < PRIO_VIP_CTRL < PRIO_CONN and PRIO_MISS < PRIO_VIP_TCP
    # and it asks for the ports and for the flows a previous controller left
    assert any(isinstance(m, parser.OFPPortDescStatsRequest) for m in msgs)
    [stats] = [m for m in msgs if isinstance(m, parser.OFPFlowStatsRequest)]
    assert stats.cookie == COOKIE_TAG and stats.cookie_mask == 0xFFFF << 48
    assert app.datapaths[1] is dp


def test_switch_without_a_vip_gets_only_the_table_miss_flow(make_app):
    app = make_app()
    msgs = features(app, FakeDatapath(7))
    assert [(m.priority, match_dict(m.match)) for m in flow_mods(msgs)] == [(PRIO_MISS, {})]


def test_branch_switch_gets_only_its_own_vip(make_app):
    app = make_app()
    msgs = features(app, FakeDatapath(2))
    dsts = {match_dict(m.match).get("ipv4_dst") or match_dict(m.match).get("arp_tpa") for m in flow_mods(msgs)}
    assert dsts == {None, BRANCH_VIP}


def test_port_desc_learns_member_port_numbers(make_app):
    app = make_app()
    ready(app)
    assert {n: app.vips[0].port_numbers[pn] for n, _, _, pn, _ in MEMBERS} == {"cas1": 1, "cas2": 2, "cas3": 3}
    assert app.vips[1].port_numbers == {}  # dpid 2's VIP learns nothing from dpid 1


# ---- a new connection ----------------------------------------------------------------------


def test_syn_installs_forward_and_reverse_flows_and_a_packet_out(make_app):
    app = make_app()
    dp = ready(app)
    data = syn(40001, seq=777)
    msgs = packet_in(app, dp, data)
    adds, outs = flow_mods(msgs), packet_outs(msgs)
    assert len(adds) == 2 and len(outs) == 1 and len(msgs) == 3
    assert all(m.priority == PRIO_CONN for m in adds)
    [fwd] = [m for m in adds if m.cookie & 0xFFFF == FORWARD]
    [rev] = [m for m in adds if m.cookie & 0xFFFF == REVERSE]

    chosen = app.vips[0].pool.choose(CLIENT_IP, 40001)
    name, member_ip, member_mac, _, member_port = MEMBER[chosen.name]
    idx = app.vips[0].member_index[name]

    assert match_dict(fwd.match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": CLIENT_IP, "tcp_src": 40001,
                                     "ipv4_dst": VIP_IP, "tcp_dst": SERVICE_PORT}
    assert set_fields(actions_of(fwd)) == {"eth_dst": member_mac, "ipv4_dst": member_ip}
    assert outputs(actions_of(fwd)) == [member_port]
    assert fwd.cookie == member_cookie(1, idx, FORWARD)
    assert fwd.flags & ofp.OFPFF_SEND_FLOW_REM and fwd.idle_timeout == 60

    assert match_dict(rev.match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_src": member_ip,
                                     "tcp_src": SERVICE_PORT, "ipv4_dst": CLIENT_IP, "tcp_dst": 40001}
    assert set_fields(actions_of(rev)) == {"ipv4_src": VIP_IP, "eth_src": VIP_MAC, "eth_dst": CLIENT_MAC}
    assert outputs(actions_of(rev)) == [CLIENT_PORT_NO]
    assert rev.cookie == member_cookie(1, idx, REVERSE) and rev.idle_timeout == 60

    [po] = outs
    assert po.data == data and po.in_port == CLIENT_PORT_NO and po.buffer_id == ofp.OFP_NO_BUFFER
    assert set_fields(po.actions)["ipv4_dst"] == member_ip and outputs(po.actions) == [member_port]
    assert conns_of(app) == {(CLIENT_IP, 40001, VIP_IP, SERVICE_PORT): name}
    assert app.stats["conns"] == 1


def test_member_cookie_layout():
    c = member_cookie(3, 5, REVERSE)
    assert c >> 48 == 0xCA5 and (c >> 32) & 0xFFFF == 3 and (c >> 16) & 0xFFFF == 5 and c & 0xFFFF == REVERSE
    assert member_cookie(3, 5, FORWARD) & COOKIE_MASK_MEMBER == member_cookie(3, 5)
    assert member_cookie(3, 6, FORWARD) & COOKIE_MASK_MEMBER != member_cookie(3, 5)


def test_retransmitted_syn_reuses_the_pinned_member_and_counts_once(make_app):
    app = make_app()
    dp = ready(app)
    first, _ = pin(app, dp, 40002)
    again, msgs = pin(app, dp, 40002)
    assert first == again
    assert len(app.vips[0].conns) == 1 and app.stats["conns"] == 1


def test_many_clients_spread_over_all_members(make_app):
    app = make_app()
    dp = ready(app)
    chosen = {pin(app, dp, 41000 + i)[0] for i in range(60)}
    assert chosen == {"cas1", "cas2", "cas3"}
    assert sum(app.vips[0].conns.count_by_backend().values()) == 60


def test_single_affinity_pins_every_port_of_a_client_to_one_member(make_app):
    app = make_app(affinity="single")
    dp = ready(app)
    assert len({pin(app, dp, 42000 + i)[0] for i in range(30)}) == 1


def test_network_affinity_pins_a_whole_slash_24_to_one_member(make_app):
    app = make_app(affinity="network")
    dp = ready(app)
    chosen = {pin(app, dp, 42100 + i, src_ip=f"10.1.0.{51 + i}")[0] for i in range(30)}
    assert len(chosen) == 1


def test_every_configured_service_port_is_balanced(make_app):
    app = make_app()
    dp = ready(app)
    member, msgs = pin(app, dp, 42200, dport=135)
    [fwd] = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == FORWARD]
    assert match_dict(fwd.match)["tcp_dst"] == 135
    assert (CLIENT_IP, 42200, VIP_IP, 135) in app.vips[0].conns.by_key


def test_syn_before_the_port_is_known_installs_nothing(make_app):
    app = make_app()
    dp = FakeDatapath(1)
    features(app, dp)
    assert packet_in(app, dp, syn(40003)) == []
    assert len(app.vips[0].conns) == 0


def test_syn_to_a_port_that_is_not_a_service_port_is_reset(make_app):
    for fast_fail in (True, False):
        app = make_app(fast_fail=fast_fail)
        dp = ready(app)
        msgs = packet_in(app, dp, syn(40004, seq=5000, dport=8080))
        assert flow_mods(msgs) == []
        [po] = packet_outs(msgs)
        pkt, eth = parse_out(po)
        seg = pkt.get_protocol(tcp.tcp)
        assert seg.bits == tcp.TCP_RST | tcp.TCP_ACK and seg.seq == 0 and seg.ack == 5001
        assert (seg.src_port, seg.dst_port) == (8080, 40004)
        check_checksums(po.data)


def test_syn_with_no_eligible_member_is_reset(make_app):
    app = make_app()
    dp = ready(app)
    for name in ("cas1", "cas2", "cas3"):
        app.set_member(app.vips[0], name, "test", alive=False)
    dp.take()
    msgs = packet_in(app, dp, syn(40005, seq=99))
    assert flow_mods(msgs) == []
    [po] = packet_outs(msgs)
    seg = parse_out(po)[0].get_protocol(tcp.tcp)
    assert seg.has_flags(tcp.TCP_RST, tcp.TCP_ACK) and seg.ack == 100
    assert len(app.vips[0].conns) == 0


def test_packets_for_another_switch_or_address_are_ignored(make_app):
    app = make_app()
    dp = ready(app)
    assert packet_in(app, dp, syn(40006, dst_ip="10.1.0.11")) == []
    other = FakeDatapath(9)
    features(app, other)
    assert packet_in(app, other, syn(40006)) == []
    assert len(app.vips[0].conns) == 0


# ---- ARP and ICMP --------------------------------------------------------------------------


def arp_frame(opcode: int, target_ip: str, sender_ip: str = CLIENT_IP, sender_mac: str = CLIENT_MAC) -> bytes:
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst="ff:ff:ff:ff:ff:ff", src=sender_mac, ethertype=0x0806))
    pkt.add_protocol(arp.arp(opcode=opcode, src_mac=sender_mac, src_ip=sender_ip,
                             dst_mac="00:00:00:00:00:00", dst_ip=target_ip))
    pkt.serialize()
    return bytes(pkt.data)


def test_arp_request_for_the_vip_gets_a_reply_with_the_vip_mac(make_app):
    app = make_app()
    dp = ready(app)
    msgs = packet_in(app, dp, arp_frame(arp.ARP_REQUEST, VIP_IP), in_port=CLIENT_PORT_NO)
    assert flow_mods(msgs) == []
    [po] = packet_outs(msgs)
    assert outputs(po.actions) == [CLIENT_PORT_NO] and po.in_port == ofp.OFPP_CONTROLLER
    pkt, eth = parse_out(po)
    reply = pkt.get_protocol(arp.arp)
    assert reply.opcode == arp.ARP_REPLY
    assert (reply.src_mac, reply.src_ip) == (VIP_MAC, VIP_IP)
    assert (reply.dst_mac, reply.dst_ip) == (CLIENT_MAC, CLIENT_IP)
    assert (eth.src, eth.dst, eth.ethertype) == (VIP_MAC, CLIENT_MAC, 0x0806)
    assert app.stats["arp"] == 1


def test_arp_for_other_addresses_and_arp_replies_are_ignored(make_app):
    app = make_app()
    dp = ready(app)
    assert packet_in(app, dp, arp_frame(arp.ARP_REQUEST, "10.1.0.11")) == []
    assert packet_in(app, dp, arp_frame(arp.ARP_REPLY, VIP_IP)) == []
    assert packet_in(app, dp, arp_frame(arp.ARP_REQUEST, BRANCH_VIP)) == []  # not this switch's VIP


def test_icmp_echo_to_the_vip_is_answered(make_app):
    app = make_app()
    dp = ready(app)
    pkt = packet.Packet()
    pkt.add_protocol(ethernet.ethernet(dst=VIP_MAC, src=CLIENT_MAC, ethertype=0x0800))
    pkt.add_protocol(ipv4.ipv4(src=CLIENT_IP, dst=VIP_IP, proto=1))
    pkt.add_protocol(icmp.icmp(type_=icmp.ICMP_ECHO_REQUEST, code=0, csum=0,
                               data=icmp.echo(id_=0x1234, seq=7, data=b"caslab-ping")))
    pkt.serialize()
    [po] = packet_outs(packet_in(app, dp, bytes(pkt.data)))
    reply, eth = parse_out(po)
    ip, echo = reply.get_protocol(ipv4.ipv4), reply.get_protocol(icmp.icmp)
    assert (eth.src, eth.dst) == (VIP_MAC, CLIENT_MAC)
    assert (ip.src, ip.dst) == (VIP_IP, CLIENT_IP)
    assert echo.type == icmp.ICMP_ECHO_REPLY
    assert (echo.data.id, echo.data.seq, echo.data.data) == (0x1234, 7, b"caslab-ping")
    assert outputs(po.actions) == [CLIENT_PORT_NO]
    check_checksums(po.data)


# ---- unknown connections: RST --------------------------------------------------------------


def test_non_syn_for_an_unknown_connection_gets_an_acceptable_rst(make_app):
    app = make_app(fast_fail=True)
    dp = ready(app)
    data = tcp_frame(40010, tcp.TCP_ACK | tcp.TCP_PSH, seq=123456, ack=0xDEADBEEF)
    msgs = packet_in(app, dp, data)
    assert flow_mods(msgs) == []
    [po] = packet_outs(msgs)
    assert outputs(po.actions) == [CLIENT_PORT_NO]
    pkt, eth = parse_out(po)
    ip, seg = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(tcp.tcp)
    assert seg.bits == tcp.TCP_RST
    assert seg.seq == 0xDEADBEEF  # = the incoming packet's ack number: inside the client's window
    assert (seg.src_port, seg.dst_port) == (SERVICE_PORT, 40010)
    assert (ip.src, ip.dst, ip.proto) == (VIP_IP, CLIENT_IP, 6)
    assert (eth.src, eth.dst) == (VIP_MAC, CLIENT_MAC)
    check_checksums(po.data)
    assert app.stats["resets"] == 1 and len(app.vips[0].conns) == 0


def test_without_fast_fail_an_unknown_connection_on_a_service_port_is_left_alone(make_app):
    app = make_app(fast_fail=False)
    dp = ready(app)
    assert packet_in(app, dp, tcp_frame(40011, tcp.TCP_ACK, ack=5)) == []
    # a closed port is still reset at once
    [po] = packet_outs(packet_in(app, dp, tcp_frame(40011, tcp.TCP_ACK, ack=5, dport=8080)))
    assert parse_out(po)[0].get_protocol(tcp.tcp).seq == 5


def test_rst_and_ackless_segments_are_never_answered(make_app):
    app = make_app(fast_fail=True)
    dp = ready(app)
    assert packet_in(app, dp, tcp_frame(40012, tcp.TCP_RST | tcp.TCP_ACK, ack=9)) == []
    assert packet_in(app, dp, tcp_frame(40012, tcp.TCP_RST)) == []
    assert packet_in(app, dp, tcp_frame(40012, tcp.TCP_FIN)) == []  # no ACK: nothing to take a seq from


def test_non_syn_of_a_pinned_connection_is_forwarded_to_its_member(make_app):
    """A packet that raced its own flow install goes the same way as the SYN, no RST."""
    app = make_app()
    dp = ready(app)
    member, _ = pin(app, dp, 40013)
    data = tcp_frame(40013, tcp.TCP_ACK, seq=1001, ack=1)
    msgs = packet_in(app, dp, data)
    [po] = packet_outs(msgs)
    assert po.data == data and po.in_port == CLIENT_PORT_NO  # the packet itself, not a RST
    assert outputs(po.actions) == [MEMBER[member][4]]
    fwd = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == FORWARD]
    assert len(fwd) == 1 and set_fields(actions_of(fwd[0]))["ipv4_dst"] == MEMBER[member][1]


# ---- a member's port goes down -------------------------------------------------------------


def pin_until(app, dp, wanted: set[str], start: int = 43000, client=(CLIENT_IP, CLIENT_MAC, CLIENT_PORT_NO)):
    """Open connections until each wanted member has at least two; returns {key: member}."""
    ip, mac, port_no = client
    got: dict = {}
    for sport in range(start, start + 500):
        msgs = packet_in(app, dp, syn(sport, src_ip=ip, src_mac=mac), in_port=port_no)
        [fwd] = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == FORWARD]
        name = next(n for n, mip, *_ in MEMBERS if mip == set_fields(actions_of(fwd))["ipv4_dst"])
        got[(ip, sport, VIP_IP, SERVICE_PORT)] = name
        counts = {n: list(got.values()).count(n) for n in wanted}
        if min(counts.values()) >= 2:
            return got
    raise AssertionError("could not reach every member")


def test_link_down_deletes_the_members_flows_and_challenges_its_clients(make_app, timers):
    app = make_app(fast_fail=True)
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas1", "cas2", "cas3"})
    pinned.update(pin_until(app, dp, {"cas2"}, start=44000,
                            client=(OTHER_CLIENT_IP, OTHER_CLIENT_MAC, OTHER_CLIENT_PORT_NO)))
    on_cas2 = {k for k, v in pinned.items() if v == "cas2"}
    assert any(k[0] == OTHER_CLIENT_IP for k in on_cas2) and any(k[0] == CLIENT_IP for k in on_cas2)

    msgs = port_status(app, dp, ofport("clab1-eth2", 2, link_down=True))

    deletes = flow_mods(msgs, ofp.OFPFC_DELETE)
    assert len(deletes) == 1 and flow_mods(msgs) == []
    [delete] = deletes
    assert delete.cookie == member_cookie(1, 2) and delete.cookie_mask == COOKIE_MASK_MEMBER
    assert delete.table_id == ofp.OFPTT_ALL and delete.out_port == ofp.OFPP_ANY and delete.out_group == ofp.OFPG_ANY
    assert match_dict(delete.match) == {}
    # the delete covers both directions of cas2's flows and nothing of cas1/cas3
    for direction in (FORWARD, REVERSE):
        assert member_cookie(1, 2, direction) & delete.cookie_mask == delete.cookie
        for other in (1, 3):
            assert member_cookie(1, other, direction) & delete.cookie_mask != delete.cookie

    # cas2's connections are forgotten at once, the others stay pinned where they were
    assert conns_of(app) == {k: v for k, v in pinned.items() if v != "cas2"}

    # the challenges follow the delete on a schedule (OVS applies deletes asynchronously)
    assert packet_outs(msgs) == []
    assert timers.delays() == [pytest.approx(d) for d in (0.005, 0.025, 0.06, 0.12, 0.25)]
    timers.fire_next()
    # two one-byte challenges per cas2 connection, to that client, and none for the others
    outs = packet_outs(dp.take())
    assert len(outs) == 2 * len(on_cas2)
    challenged: dict = {}
    for po in outs:
        pkt, eth = parse_out(po)
        ip, seg = pkt.get_protocol(ipv4.ipv4), pkt.get_protocol(tcp.tcp)
        assert seg.bits == tcp.TCP_ACK and ip.total_length == 20 + 20 + 1 and po.data[14 + 40:14 + 41] == b"\x00"
        assert (ip.src, eth.src, seg.src_port) == (VIP_IP, VIP_MAC, SERVICE_PORT)
        key = (ip.dst, seg.dst_port, VIP_IP, SERVICE_PORT)
        assert key in on_cas2
        expected_port = OTHER_CLIENT_PORT_NO if ip.dst == OTHER_CLIENT_IP else CLIENT_PORT_NO
        expected_mac = OTHER_CLIENT_MAC if ip.dst == OTHER_CLIENT_IP else CLIENT_MAC
        assert outputs(po.actions) == [expected_port] and eth.dst == expected_mac
        check_checksums(po.data)
        challenged.setdefault(key, []).append(seg.seq)
    assert set(challenged) == on_cas2
    for seqs in challenged.values():
        assert len(seqs) == 2 and (seqs[1] - seqs[0]) % (1 << 32) == 1 << 31  # half the sequence space apart

    member = app.vips[0].pool.members["cas2"]
    assert member.port_up is False and member.accepts_new is False and member.alive is True
    assert app.stats["challenges"] == len(on_cas2)
    # nobody answered: every later round challenges again, then the controller gives up
    assert timers.fire() == 4
    assert len(packet_outs(dp.take())) == 4 * 2 * len(on_cas2)
    assert app.pending_resets == {}


def test_a_reset_client_is_not_challenged_again(make_app, timers):
    app = make_app(fast_fail=True)
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas3"})
    key = next(k for k, v in pinned.items() if v == "cas3")
    on_cas3 = sum(1 for v in pinned.values() if v == "cas3")
    port_status(app, dp, ofport("clab1-eth3", 3, link_down=True))
    timers.fire_next()
    assert len(packet_outs(dp.take())) == 2 * on_cas3
    packet_in(app, dp, tcp_frame(key[1], tcp.TCP_ACK, seq=5555, ack=0x12345678))  # its dup ACK: reset
    timers.fire()
    assert len(packet_outs(dp.take())) == 4 * 2 * (on_cas3 - 1)


def test_after_link_down_new_syns_never_pick_the_dead_member(make_app):
    app = make_app()
    dp = ready(app)
    port_status(app, dp, ofport("clab1-eth1", 1, link_down=True))
    chosen = {pin(app, dp, 45000 + i)[0] for i in range(120)}
    assert chosen == {"cas2", "cas3"}


def test_dead_members_client_answer_to_the_challenge_gets_reset(make_app, timers):
    """The whole fast-fail cycle: challenge, the client's duplicate ACK, an exact RST."""
    app = make_app(fast_fail=True)
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas3"})
    key = next(k for k, v in pinned.items() if v == "cas3")
    port_status(app, dp, ofport("clab1-eth3", 3, link_down=True))
    timers.fire()
    assert packet_outs(dp.take())  # the challenges
    dup_ack = tcp_frame(key[1], tcp.TCP_ACK, seq=5555, ack=0x12345678)
    [po] = packet_outs(packet_in(app, dp, dup_ack))
    seg = parse_out(po)[0].get_protocol(tcp.tcp)
    assert seg.bits == tcp.TCP_RST and seg.seq == 0x12345678 and seg.dst_port == key[1]


def test_link_down_without_fast_fail_deletes_flows_but_sends_no_challenge(make_app, timers):
    app = make_app(fast_fail=False)
    dp = ready(app)
    pin_until(app, dp, {"cas1"})
    msgs = port_status(app, dp, ofport("clab1-eth1", 1, link_down=True))
    assert len(flow_mods(msgs, ofp.OFPFC_DELETE)) == 1 and packet_outs(msgs) == []
    timers.fire()
    assert dp.take() == []
    assert "cas1" not in app.vips[0].conns.count_by_backend()


@pytest.mark.parametrize("how", ["admin_down", "deleted"])
def test_admin_down_or_deleted_port_also_evicts(make_app, how):
    app = make_app()
    dp = ready(app)
    if how == "admin_down":
        msgs = port_status(app, dp, ofport("clab1-eth2", 2, admin_down=True))
    else:
        msgs = port_status(app, dp, ofport("clab1-eth2", 2), reason=ofp.OFPPR_DELETE)
    [delete] = flow_mods(msgs, ofp.OFPFC_DELETE)
    assert delete.cookie == member_cookie(1, 2)
    assert app.vips[0].pool.members["cas2"].port_up is False


def test_port_back_up_rejoins_without_deleting_anything(make_app):
    app = make_app()
    dp = ready(app)
    port_status(app, dp, ofport("clab1-eth1", 1, link_down=True))
    msgs = port_status(app, dp, ofport("clab1-eth1", 1))
    assert msgs == []
    assert app.vips[0].pool.members["cas1"].accepts_new
    assert "cas1" in {pin(app, dp, 46000 + i)[0] for i in range(60)}


def test_repeated_link_down_and_unrelated_ports_do_nothing_more(make_app):
    app = make_app()
    dp = ready(app)
    assert len(flow_mods(port_status(app, dp, ofport("clab1-eth1", 1, link_down=True)), ofp.OFPFC_DELETE)) == 1
    assert port_status(app, dp, ofport("clab1-eth1", 1, link_down=True)) == []
    assert port_status(app, dp, ofport("clab1-eth10", CLIENT_PORT_NO, link_down=True)) == []


def test_member_port_down_in_the_initial_port_desc_keeps_it_out(make_app):
    app = make_app()
    dp = FakeDatapath(1)
    features(app, dp)
    msgs = port_desc(app, dp, [ofport("clab1-eth1", 1, link_down=True), ofport("clab1-eth2", 2),
                               ofport("clab1-eth3", 3)])
    assert [m.cookie for m in flow_mods(msgs, ofp.OFPFC_DELETE)] == [member_cookie(1, 1)]
    assert {pin(app, dp, 47000 + i)[0] for i in range(60)} == {"cas2", "cas3"}


# ---- health probes, drain, flow expiry, re-learning ----------------------------------------


def test_probes_flip_a_member_after_fall_failures_and_back_after_rise(make_app):
    app = make_app(health={"fall": 3, "rise": 2})
    dp = ready(app)
    pin_until(app, dp, {"cas2"})
    dp.take()
    app.on_probe(VIP_IP, "cas2", False)
    app.on_probe(VIP_IP, "cas2", False)
    assert dp.take() == [] and app.vips[0].pool.members["cas2"].alive
    app.on_probe(VIP_IP, "cas2", False, "timeout")
    [delete] = flow_mods(dp.take(), ofp.OFPFC_DELETE)
    assert delete.cookie == member_cookie(1, 2)
    assert not app.vips[0].pool.members["cas2"].alive and "cas2" not in app.vips[0].conns.count_by_backend()
    app.on_probe(VIP_IP, "cas2", True)
    assert not app.vips[0].pool.members["cas2"].alive
    app.on_probe(VIP_IP, "cas2", True)
    assert app.vips[0].pool.members["cas2"].alive and dp.take() == []
    app.on_probe("10.9.9.9", "cas2", False)  # unknown VIP / member: ignored
    app.on_probe(VIP_IP, "cas9", False)


def test_drain_keeps_existing_connections_and_stops_new_ones(make_app):
    app = make_app()
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas1"})
    dp.take()
    app.drain(app.vips[0], "cas1")
    assert dp.take() == []  # no flow delete, no challenge
    assert conns_of(app) == pinned
    assert "cas1" not in {pin(app, dp, 48000 + i)[0] for i in range(60)}
    key = next(k for k, v in pinned.items() if v == "cas1")
    assert pin(app, dp, key[1])[0] == "cas1"  # a retransmitted SYN of a pinned session stays
    app.rejoin(app.vips[0], "cas1")
    assert "cas1" in {pin(app, dp, 49000 + i)[0] for i in range(60)}


def test_drain_deadline_evicts_the_remaining_sessions(make_app, timers):
    app = make_app(fast_fail=True)
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas3"})
    on_cas3 = sum(1 for v in pinned.values() if v == "cas3")
    dp.take()
    app.drain(app.vips[0], "cas3", deadline_s=30)
    assert dp.take() == [] and timers.delays() == [30]
    timers.fire_next()  # the deadline, which schedules the challenges
    timers.fire_next()  # their first round
    msgs = dp.take()
    assert [m.cookie for m in flow_mods(msgs, ofp.OFPFC_DELETE)] == [member_cookie(1, 3)]
    assert len(packet_outs(msgs)) == 2 * on_cas3
    assert "cas3" not in app.vips[0].conns.count_by_backend()


def test_rejoin_before_the_drain_deadline_cancels_the_eviction(make_app, timers):
    app = make_app()
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas3"})
    app.drain(app.vips[0], "cas3", deadline_s=30)
    app.rejoin(app.vips[0], "cas3")
    dp.take()
    timers.fire()
    assert dp.take() == [] and conns_of(app) == pinned


def test_challenge_delay_is_configurable(make_app, timers):
    app = make_app(challenge_delay_ms=5)
    dp = ready(app)
    pin_until(app, dp, {"cas1"})
    port_status(app, dp, ofport("clab1-eth1", 1, link_down=True))
    assert timers.delays() == [pytest.approx(0.005)]


def test_without_port_detection_link_down_is_ignored(make_app, timers):
    """Windows NLB emulation: a dead host is only noticed by missed heartbeats (probes)."""
    app = make_app(port_detection=False)
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas1"})
    assert port_status(app, dp, ofport("clab1-eth1", 1, link_down=True)) == []
    assert timers.timers == [] and conns_of(app) == pinned
    assert app.vips[0].pool.members["cas1"].accepts_new
    assert app.vips[0].port_numbers["clab1-eth1"] == 1  # ports are still learned
    # the probes still take it out
    app.on_probe(VIP_IP, "cas1", False)
    app.on_probe(VIP_IP, "cas1", False)
    assert [m.cookie for m in flow_mods(dp.take(), ofp.OFPFC_DELETE)] == [member_cookie(1, 1)]


def test_convergence_delays_a_probe_verdict(make_app, timers):
    app = make_app(convergence_ms=800, health={"fall": 2, "rise": 2})
    dp = ready(app)
    pin_until(app, dp, {"cas2"})
    dp.take()
    app.on_probe(VIP_IP, "cas2", False)
    app.on_probe(VIP_IP, "cas2", False)
    # the verdict is in, but the pool keeps sending new clients to cas2 until convergence
    assert dp.take() == [] and app.vips[0].pool.members["cas2"].alive
    assert timers.delays() == [pytest.approx(0.8)]
    seconds, func, args, kwargs = timers.timers.pop(0)
    func(*args, **kwargs)
    assert [m.cookie for m in flow_mods(dp.take(), ofp.OFPFC_DELETE)] == [member_cookie(1, 2)]
    assert not app.vips[0].pool.members["cas2"].alive


def test_idle_timeout_of_the_forward_flow_forgets_the_connection(make_app):
    app = make_app()
    dp = ready(app)
    member, msgs = pin(app, dp, 40020)
    [fwd] = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == FORWARD]
    [rev] = [m for m in flow_mods(msgs) if m.cookie & 0xFFFF == REVERSE]

    def removed(flow, reason):
        msg = parser.OFPFlowRemoved(dp, cookie=flow.cookie, priority=flow.priority, reason=reason, table_id=0,
                                    duration_sec=1, duration_nsec=0, idle_timeout=60, hard_timeout=0,
                                    packet_count=1, byte_count=60, match=flow.match)
        app.flow_removed_handler(ofp_event.EventOFPFlowRemoved(msg))

    removed(rev, ofp.OFPRR_IDLE_TIMEOUT)  # only the forward flow's expiry counts
    removed(fwd, ofp.OFPRR_DELETE)  # deleted on purpose: handled by evict, not here
    assert len(app.vips[0].conns) == 1
    removed(fwd, ofp.OFPRR_IDLE_TIMEOUT)
    assert len(app.vips[0].conns) == 0


def flow_stats_from(flow_mods_list):
    return [parser.OFPFlowStats(table_id=0, duration_sec=5, duration_nsec=0, priority=m.priority,
                                idle_timeout=m.idle_timeout, hard_timeout=0, flags=m.flags, cookie=m.cookie,
                                packet_count=3, byte_count=180, match=m.match, instructions=m.instructions)
            for m in flow_mods_list]


def relearn(app, dp, stats) -> None:
    msg = parser.OFPFlowStatsReply(dp)
    msg.body = stats
    app.flow_stats_handler(ofp_event.EventOFPFlowStatsReply(msg))


def test_restarted_controller_relearns_connections_from_the_switch_flows(make_app, timers):
    old = make_app()
    dp = ready(old)
    pinned = pin_until(old, dp, {"cas1", "cas2", "cas3"})
    # rebuild every installed flow as the switch would report it
    installed = []
    for sport in sorted(k[1] for k in pinned):
        installed += flow_mods(packet_in(old, dp, syn(sport)))

    new = make_app()
    dp2 = ready(new)
    relearn(new, dp2, flow_stats_from(installed))
    assert conns_of(new) == pinned
    for conn in new.vips[0].conns.by_key.values():
        assert conn.client_mac == CLIENT_MAC and conn.in_port == CLIENT_PORT_NO
    # relearned connections are evicted like any other: the dead member's clients are challenged
    on_cas1 = sum(1 for v in pinned.values() if v == "cas1")
    port_status(new, dp2, ofport("clab1-eth1", 1, link_down=True))
    timers.fire_next()
    outs = packet_outs(dp2.take())
    assert len(outs) == 2 * on_cas1
    assert all(outputs(po.actions) == [CLIENT_PORT_NO] and parse_out(po)[1].dst == CLIENT_MAC for po in outs)


def test_relearned_connection_on_a_member_that_is_down_is_not_forwarded_to_it(make_app):
    old = make_app()
    dp = ready(old)
    pinned = pin_until(old, dp, {"cas1"})
    key = next(k for k, v in pinned.items() if v == "cas1")
    installed = flow_mods(packet_in(old, dp, syn(key[1])))

    # the controller restarts while cas1's link is down: the port desc reply says so (and the
    # app deletes cas1's flows), then the flow stats reply, taken before that delete, arrives
    new = make_app(fast_fail=True)
    dp2 = FakeDatapath(1)
    features(new, dp2)
    port_desc(new, dp2, [ofport("clab1-eth1", 1, link_down=True), ofport("clab1-eth2", 2), ofport("clab1-eth3", 3),
                         ofport("clab1-eth10", CLIENT_PORT_NO)])
    relearn(new, dp2, flow_stats_from(installed))
    # the client's next data segment has no flow any more and reaches the controller
    msgs = packet_in(new, dp2, tcp_frame(key[1], tcp.TCP_ACK | tcp.TCP_PSH, seq=2000, ack=0x4000))
    to_dead = [m for m in flow_mods(msgs) if outputs(actions_of(m)) == [1]]
    assert to_dead == [], "packets of a connection on a dead member are forwarded into its dead port"
    [po] = packet_outs(msgs)
    assert parse_out(po)[0].get_protocol(tcp.tcp).bits == tcp.TCP_RST


def test_events_are_logged(make_app, tmp_path):
    log = tmp_path / "events" / "nlb.jsonl"
    app = make_app(events=str(log))
    dp = ready(app)
    member, _ = pin(app, dp, 40030)
    port_status(app, dp, ofport(MEMBER[member][3], MEMBER[member][4], link_down=True))
    app.event_log.close()
    events = [json.loads(line) for line in log.read_text().splitlines()]
    kinds = [e["ev"] for e in events]
    for kind in ("nlb_up", "nlb_switch", "nlb_conn", "lb_member", "nlb_evict"):
        assert kind in kinds
    [evict] = [e for e in events if e["ev"] == "nlb_evict"]
    assert evict["member"] == member and evict["conns"] == 1 and evict["reason"] == "port_down"


def test_snapshot_reports_members_and_connections(make_app):
    app = make_app()
    dp = ready(app)
    pinned = pin_until(app, dp, {"cas1", "cas2"})
    port_status(app, dp, ofport("clab1-eth3", 3, link_down=True))
    snap = app.snapshot()
    json.dumps(snap)  # the admin API serves it as JSON
    [hq] = [v for v in snap["vips"] if v["ip"] == VIP_IP]
    by_name = {m["name"]: m for m in hq["members"]}
    assert by_name["cas3"]["port_up"] is False and by_name["cas3"]["connections"] == 0
    survivors = {k: v for k, v in pinned.items() if v != "cas3"}
    assert hq["connections"] == len(survivors)
    assert by_name["cas1"]["connections"] == sum(1 for v in survivors.values() if v == "cas1")


# ---- garbage ---------------------------------------------------------------------------------

ETH_HDR = bytes.fromhex("02000a010064") + bytes.fromhex("02000a010033")
FIXED_LENGTH_TCP_OPTIONS = {0: 1, 1: 1, 2: 4, 3: 3, 4: 2, 8: 10, 28: 4}  # os-ken steps over these by kind


def has_zero_length_unknown_tcp_option(l4: bytes) -> bool:
    """Would os-ken's TCP option parser loop forever on this segment (tested separately below)?

    It mirrors os_ken.lib.packet.tcp: fixed-size options advance by their size, every other
    kind (SACK, TCP-AO, unknown) by its length byte, so a length of 0 never advances.
    """
    if len(l4) < 20:
        return False
    opts = l4[20:(l4[12] >> 4) * 4]
    while opts:
        kind = opts[0]
        if kind in FIXED_LENGTH_TCP_OPTIONS:
            step = FIXED_LENGTH_TCP_OPTIONS[kind]
            if len(opts) < step:
                return False  # struct.error: os-ken gives up on the options
        else:
            if len(opts) < 2:
                return False
            step = opts[1]
            if step == 0:
                return True
        opts = opts[step:]
    return False


@st.composite
def reachable_frames(draw):
    """What the installed flows can send to the controller: ARP, or IPv4 TCP/ICMP to the VIP."""
    if draw(st.booleans()):
        return ETH_HDR + b"\x08\x06" + draw(st.binary(max_size=60))
    ihl = draw(st.integers(5, 15))
    proto = draw(st.sampled_from([1, 6]))
    l4 = draw(st.binary(max_size=80))
    if proto == 6:
        assume(not has_zero_length_unknown_tcp_option(l4))
    options = draw(st.binary(min_size=(ihl - 5) * 4, max_size=(ihl - 5) * 4))
    header = struct.pack("!BBHHHBBH4s4s", 0x40 | ihl, 0, ihl * 4 + len(l4), 0, 0, 64, proto, 0,
                         bytes([10, 1, 0, 51]), bytes([10, 1, 0, 100]))
    return ETH_HDR + b"\x08\x00" + header + options + l4


@settings(max_examples=50, deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much,
                                                                  HealthCheck.function_scoped_fixture])
@given(data=reachable_frames(), in_port=st.integers(1, 64))
def test_garbage_the_switch_can_send_never_raises(make_app, data, in_port):
    app = make_app()
    dp = ready(app)
    msgs = packet_in(app, dp, data, in_port=in_port)
    for po in packet_outs(msgs):  # whatever it answers is well formed
        assert parse_out(po)[1] is not None


@pytest.mark.parametrize("data", [b"", b"\x00", b"\xff" * 13, ETH_HDR, ETH_HDR + b"\x08\x00",
                                  ETH_HDR + b"\x08\x00\x45", ETH_HDR + b"\x08\x06\x00\x01",
                                  ETH_HDR + b"\x08\x00" + b"\x00" * 40, bytes(range(256))])
def test_short_and_zero_frames_never_raise(make_app, data):
    app = make_app()
    dp = ready(app)
    msgs = packet_in(app, dp, data)
    assert flow_mods(msgs) == []


# Frames whose parsing raises inside os-ken (found by fuzzing os_ken.lib.packet.packet.Packet).
# The installed flows only send ARP and IPv4 to the VIP to the controller, so these cannot
# come from the lab's switch, and os-ken's event loop logs handler exceptions; but the
# handler itself does not survive garbage.
RAISING_FRAMES = {
    "llc": ETH_HDR + bytes.fromhex("02f5b2"),
    "cfm": ETH_HDR + bytes.fromhex("890284c78f346df30e7bde5d918d33f08169"),
    "ipv6": ETH_HDR + bytes.fromhex("86dd927de0fbddf12b5ad49a65d383cacc90ab2b5387db12eea1cec00cf403ce934c19731600dfa90c"
                                    "bd478c4e97ee9ff2c2c84175621ecff6a5394ea4aac7208280e2bef006"),
}


@pytest.mark.parametrize("name", sorted(RAISING_FRAMES))
def test_arbitrary_garbage_never_raises(make_app, name):
    app = make_app()
    dp = ready(app)
    packet_in(app, dp, RAISING_FRAMES[name])


HANG_SCRIPT = textwrap.dedent("""
    import resource, sys
    resource.setrlimit(resource.RLIMIT_AS, (768 << 20, 768 << 20))
    sys.path.insert(0, sys.argv[1])
    sys.path.insert(0, sys.argv[2])
    from test_sdn_nlb_flows import *  # the fake datapath and helpers
    from controllers.sdn_nlb import SdnNlb
    app = SdnNlb()
    dp = ready(app)
    data = bytearray(tcp_frame(40099, tcp.TCP_SYN))
    # TCP data offset 6 (one 4-byte option word): option kind 0xFE, length 0, then padding;
    # checksums are not verified by the parser
    tcp_at = 14 + 20
    data[tcp_at + 12] = 6 << 4
    data[16:18] = (20 + 24).to_bytes(2, "big")
    data = bytes(data[:tcp_at + 20]) + bytes([0xFE, 0x00, 0x00, 0x00])
    packet_in(app, dp, data)
    print("returned")
""")


def test_tcp_option_of_length_zero_does_not_hang_the_controller(tmp_path):
    cfg = tmp_path / "nlb.json"
    cfg.write_text(json.dumps(config()), encoding="utf-8")
    script = tmp_path / "hang.py"
    script.write_text(HANG_SCRIPT, encoding="utf-8")
    env = dict(os.environ, CASLAB_NLB_CONFIG=str(cfg))
    try:
        result = subprocess.run([sys.executable, str(script), str(ROOT), str(Path(__file__).parent)], env=env,
                                capture_output=True, text=True, timeout=10)
    except subprocess.TimeoutExpired:
        raise AssertionError("packet_in_handler did not return within 10 s") from None
    assert result.returncode == 0 and "returned" in result.stdout, result.stderr[-2000:]
