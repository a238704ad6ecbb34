"""The SDN NLB's OpenFlow messages, built by pure functions (Faucet's way): a builder is
given the switch's protocol modules and the NLB's state and *returns* messages; the app
only sends them, and the tests check them against a fake datapath.

Pipeline (both dataplanes share tables 0 and 1; tables 2 and 3 are the switch dataplane)::

    table 0  classify   ARP/ICMP for the VIP -> meter -> controller
                        pinned connections (controller dataplane)
                        source guard: (client port, its prefixes) -> table 1; other VIP traffic dropped;
                        ARP claiming a client's address only from that client's port
                        replies from a CAS (switch dataplane) -> ct(nat) -> table 2
                        everything else -> NORMAL
    table 1  service    controller dataplane: TCP -> meter -> controller
                        switch dataplane: service ports -> ct(nat) -> table 2; other ports -> controller (RST)
    table 2  conntrack  +est with a dead member's ct_mark, to its address -> a survivor (fast_fail: its
                        kernel answers with an exact RST); other such packets -> controller
                        a survivor's RST for no connection it has (-est) -> as the VIP, NORMAL, and a
                        copy to the controller (through the meter: bookkeeping, not on the path)
                        +new SYN to the VIP -> select group (hash by affinity; buckets watch each
                        CAS port; each commits the connection with nat(dst=CAS), ct_mark=member)
                        +new TCP to the VIP with neither SYN nor RST (a connection forgotten at its
                        member's death, or expired) -> stray group (fast_fail): the first member
                        in service whose port is up, readdressed (its kernel resets it), else
                        the controller
                        other +new to the VIP -> controller (RST); +est -> table 3
                        other VIP traffic dropped; anything else (a CAS answering a client that
                        talks to it directly, a health probe) -> NORMAL
    table 3  deliver    ct_mark=m to CAS m's address -> CAS m's fast-failover group: its MAC and port
                        while the port is up, else (the moment the switch sees it down, before any
                        controller reacts) the first survivor whose port is up, rewritten to its
                        address (fast_fail), else the controller; replies -> VIP MAC, out of their
                        client's port (a destination no client source covers: NORMAL)

Why a survivor: a TCP segment that reaches a host with no socket for it is answered by the
host's kernel with an RST whose sequence number is the segment's acknowledgement number
(RFC 793), which the client accepts (RFC 5961's exact match). Rewriting a dead member's
connections to a live CAS resets them at datapath and kernel speed, with no per-connection
work in the controller beyond the challenge that makes an idle client send.

Cookies name what a flow belongs to: ``Cookie(vip, member, kind)``, encoded once here.
"""

from __future__ import annotations

import ipaddress
import struct
from dataclasses import dataclass
from typing import Any, Iterable

OFP13, OFP15 = 0x04, 0x06
T_CLASSIFY, T_SERVICE, T_CONNTRACK, T_DELIVER = 0, 1, 2, 3
PRIO_CONN, PRIO_VIP_CTRL, PRIO_GUARD_ALLOW, PRIO_GUARD_DROP, PRIO_REPLY, PRIO_MISS = 400, 300, 250, 240, 200, 0
PRIO_DEAD, PRIO_NEW_SYN, PRIO_NEW_OTHER, PRIO_EST = 300, 200, 190, 180
PRIO_REPLY_ANY = 100  # table 3: replies by NORMAL; those to a known client at 101-109 leave by its port
ETH_IP, ETH_ARP, PROTO_ICMP, PROTO_TCP = 0x0800, 0x0806, 1, 6
CT_NEW, CT_EST, CT_TRK = 0x01, 0x02, 0x20
ZONE_BASE = 0xCA50
METER_ID = 1
OFPGC_ADD_OR_MOD = 0x8000  # Open vSwitch extension: add the group, or modify it if it exists
NTR_VENDOR_ID, NTRT_SELECTION_METHOD = 0x0000154D, 1
COOKIE_TAG = 0xCA5
FORWARD, REVERSE, GUARD, BASE, DEAD, DELIVER, SERVICE, RESET, STRAY = 1, 2, 3, 4, 5, 6, 7, 8, 9
TCP_SYN, TCP_RST = 0x002, 0x004
PRIO_SURVIVOR_RST = 250
PRIO_STRAY = PRIO_NEW_OTHER + 1
NX_VENDOR_ID, NXT_CT_FLUSH = 0x00002320, 32  # Open vSwitch's conntrack flush (OVS 3.1 and later)
NXT_CT_ORIG_TUPLE, NXT_CT_ZONE_ID = 0, 2
NXT_CT_TUPLE_SRC, NXT_CT_TUPLE_DST, NXT_CT_TUPLE_SRC_PORT, NXT_CT_TUPLE_DST_PORT = 0, 1, 2, 3
OFPT_EXPERIMENTER = 4


@dataclass(frozen=True)
class Cookie:
    """What a flow belongs to: a VIP (1-based), a member (1-based, 0 = none) and a kind."""

    vip: int
    member: int
    kind: int

    def encode(self) -> int:
        return (COOKIE_TAG << 48) | (self.vip << 32) | (self.member << 16) | self.kind

    @staticmethod
    def decode(value: int) -> "Cookie | None":
        if value >> 48 != COOKIE_TAG:
            return None
        return Cookie((value >> 32) & 0xFFFF, (value >> 16) & 0xFFFF, value & 0xFFFF)

    @staticmethod
    def tag_mask() -> tuple[int, int]:
        """(cookie, mask) of every flow the NLB made."""
        return COOKIE_TAG << 48, 0xFFFF << 48

    def member_mask(self) -> tuple[int, int]:
        """(cookie, mask) of every flow of this VIP's member, whatever its kind."""
        return self.encode() & ~0xFFFF, 0xFFFF_FFFF_FFFF_0000


def zone_of(vip_index: int) -> int:
    return ZONE_BASE + vip_index


CONTROLLER_GROUP = 255  # an indirect group to the controller, always live: what a fast-failover bucket falls to


def member_group_id(vip_index: int, member_index: int) -> int:
    """The fast-failover group delivering to one member (the VIP's select group is its index)."""
    return vip_index * 256 + member_index


def stray_group_id(vip_index: int) -> int:
    """The fast-failover group that takes a VIP's stray segments to a live member (members are 1-based)."""
    return member_group_id(vip_index, 0)


def _nx_property(kind: int, value: bytes) -> bytes:
    """An OpenFlow property (type, length, value, padded to 8 bytes)."""
    return struct.pack("!HH", kind, 4 + len(value)) + value + b"\0" * (-(4 + len(value)) % 8)


def ct_flush_bytes(version: int, zone: int, client: tuple[str, int], service: tuple[str, int], xid: int = 0) -> bytes:
    """Open vSwitch's NXT_CT_FLUSH (3.1 and later) of one connection: its original tuple
    (client address and port -> VIP address and port, TCP) in ``zone``, as ``ovs-ofctl
    ct-flush`` sends it (a test decodes it with ``ovs-ofctl ofp-print``); a full tuple is
    looked up, not searched for. Addresses are IPv4-mapped IPv6; a nested property's own
    properties start 8 bytes in. Built with struct alone: a failover sends one per connection."""
    (src, sport), (dst, dport) = client, service
    mapped = lambda ip: ipaddress.IPv6Address(f"::ffff:{ip}").packed  # noqa: E731
    inner = (_nx_property(NXT_CT_TUPLE_SRC, mapped(src)) + _nx_property(NXT_CT_TUPLE_DST, mapped(dst))
             + _nx_property(NXT_CT_TUPLE_SRC_PORT, struct.pack("!H", sport))
             + _nx_property(NXT_CT_TUPLE_DST_PORT, struct.pack("!H", dport)))
    body = (struct.pack("!IIB7x", NX_VENDOR_ID, NXT_CT_FLUSH, PROTO_TCP)
            + struct.pack("!HH4x", NXT_CT_ORIG_TUPLE, 8 + len(inner)) + inner
            + _nx_property(NXT_CT_ZONE_ID, struct.pack("!H", zone)))
    return struct.pack("!BBHI", version, OFPT_EXPERIMENTER, 8 + len(body), xid) + body


class NtrSelectionMethod:
    """The group property Open vSwitch reads to hash only some fields (a Netronome
    extension, OpenFlow 1.5): ``selection_method=hash,fields(...)`` with optional masks,
    serialised exactly as ovs-ofctl does (OXM headers followed by the masks as values)."""

    OXM = {"ip_src": (0x8000, 11, 4), "ip_dst": (0x8000, 12, 4), "tcp_src": (0x8000, 13, 2),
           "tcp_dst": (0x8000, 14, 2)}

    def __init__(self, fields: Iterable[tuple[str, bytes]]):
        self.fields = list(fields)

    def serialize(self) -> bytes:
        oxms = b""
        for name, mask in self.fields:
            oxm_class, field, size = self.OXM[name]
            oxms += struct.pack("!I", (oxm_class << 16) | (field << 9) | size) + mask
        prop = struct.pack("!HHII4x16sQ", 0xFFFF, 40 + len(oxms), NTR_VENDOR_ID, NTRT_SELECTION_METHOD, b"hash",
                           0) + oxms
        return prop + b"\0" * (-len(prop) % 8)


HASH_FIELDS = {  # what a client's connection is hashed on, per affinity (as Windows NLB)
    "none": [("ip_src", b"\xff" * 4), ("ip_dst", b"\xff" * 4), ("tcp_src", b"\xff" * 2), ("tcp_dst", b"\xff" * 2)],
    "single": [("ip_src", b"\xff" * 4)],
    "network": [("ip_src", b"\xff\xff\xff\x00")],
}


OFPT_PACKET_OUT, OFPP_CONTROLLER_NO, OFP_NO_BUFFER_ID, OFPCML_MAX = 13, 0xFFFFFFFD, 0xFFFFFFFF, 0xFFE5


def packet_out_bytes(version: int, port: int, data: bytes, xid: int = 0) -> bytes:
    """One OFPT_PACKET_OUT sending ``data`` out of ``port``, as os-ken's OFPPacketOut
    serialises it (tests compare the two byte for byte), built with struct alone: a
    failover sends one per connection, and the framework's serialiser costs tens of us each.
    """
    action = struct.pack("!HHIH6x", 0, 16, port, OFPCML_MAX)  # OFPAT_OUTPUT (max_len as os-ken sets it)
    if version >= OFP15:  # buffer_id, actions_len, pad, then match(in_port = CONTROLLER)
        match = struct.pack("!HHIII", 1, 12, (0x8000 << 16) | (0 << 9) | 4, OFPP_CONTROLLER_NO, 0)
        body = struct.pack("!IH2x", OFP_NO_BUFFER_ID, len(action)) + match + action
    else:  # buffer_id, in_port, actions_len, pad
        body = struct.pack("!IIH6x", OFP_NO_BUFFER_ID, OFPP_CONTROLLER_NO, len(action)) + action
    return struct.pack("!BBHI", version, OFPT_PACKET_OUT, 8 + len(body) + len(data), xid) + body + data


class FlowBuilder:
    """Messages for one switch, in the OpenFlow version it speaks."""

    def __init__(self, dp: Any):
        self.dp = dp
        self.ofp = dp.ofproto
        self.parser = dp.ofproto_parser
        self.version = self.ofp.OFP_VERSION

    # ---- primitives ---------------------------------------------------------------------

    def flow(self, table: int, priority: int, match, actions: list | None = None, goto: int | None = None,
             cookie: Cookie | None = None, idle_timeout: int = 0, flags: int = 0, meter: bool = False):
        p = self.parser
        inst = []
        actions = list(actions or [])
        if meter and self.version == OFP15:
            actions.insert(0, p.OFPActionMeter(METER_ID))
        elif meter:
            inst.append(p.OFPInstructionMeter(METER_ID))
        if actions:
            inst.append(p.OFPInstructionActions(self.ofp.OFPIT_APPLY_ACTIONS, actions))
        if goto is not None:
            inst.append(p.OFPInstructionGotoTable(goto))
        return p.OFPFlowMod(datapath=self.dp, table_id=table, priority=priority, match=match, instructions=inst,
                            cookie=cookie.encode() if cookie else 0, idle_timeout=idle_timeout, flags=flags)

    def delete(self, cookie: int, mask: int, table: int | None = None, match=None):
        ofp = self.ofp
        return self.parser.OFPFlowMod(
            datapath=self.dp, command=ofp.OFPFC_DELETE, table_id=ofp.OFPTT_ALL if table is None else table,
            out_port=ofp.OFPP_ANY, out_group=ofp.OFPG_ANY, cookie=cookie, cookie_mask=mask,
            match=match or self.parser.OFPMatch())

    def to_controller(self) -> list:
        return [self.parser.OFPActionOutput(self.ofp.OFPP_CONTROLLER, self.ofp.OFPCML_NO_BUFFER)]

    def packet_out(self, port: int, data: bytes, actions: list | None = None):
        """A frame out of ``port`` (or through ``actions``), as if from the controller."""
        p, ofp = self.parser, self.ofp
        actions = actions or [p.OFPActionOutput(port)]
        if self.version >= OFP15:
            return p.OFPPacketOut(datapath=self.dp, buffer_id=ofp.OFP_NO_BUFFER,
                                  match=p.OFPMatch(in_port=ofp.OFPP_CONTROLLER), actions=actions, data=data)
        return p.OFPPacketOut(datapath=self.dp, buffer_id=ofp.OFP_NO_BUFFER, in_port=ofp.OFPP_CONTROLLER,
                              actions=actions, data=data)

    def port_desc_request(self):
        return self.parser.OFPPortDescStatsRequest(self.dp, 0)

    def our_flows_request(self):
        cookie, mask = Cookie.tag_mask()
        if self.version >= OFP15:  # 1.5's flow *stats* carry no cookie nor instructions: ask for flow descs
            return self.parser.OFPFlowDescStatsRequest(self.dp, cookie=cookie, cookie_mask=mask)
        return self.parser.OFPFlowStatsRequest(self.dp, cookie=cookie, cookie_mask=mask)

    def meter(self, rate_pps: int, burst: int) -> list:
        """The meter every controller-bound flow passes (a flood costs the switch, not us)."""
        p, ofp = self.parser, self.ofp
        band = p.OFPMeterBandDrop(rate=rate_pps, burst_size=burst)
        return [p.OFPMeterMod(self.dp, command=ofp.OFPMC_DELETE, meter_id=METER_ID),
                p.OFPMeterMod(self.dp, command=ofp.OFPMC_ADD, flags=ofp.OFPMF_PKTPS | ofp.OFPMF_BURST,
                              meter_id=METER_ID, bands=[band])]

    # ---- the pipeline -------------------------------------------------------------------

    def table_miss(self) -> list:
        p = self.parser
        return [self.flow(T_CLASSIFY, PRIO_MISS, p.OFPMatch(), [p.OFPActionOutput(self.ofp.OFPP_NORMAL)])]

    def vip_base(self, vip) -> list:
        """ARP and ping for the VIP go to the controller, through the meter."""
        p = self.parser
        cookie = Cookie(vip.index, 0, BASE)
        return [self.flow(T_CLASSIFY, PRIO_VIP_CTRL, p.OFPMatch(eth_type=ETH_ARP, arp_tpa=vip.ip), self.to_controller(),
                          cookie=cookie, meter=True),
                self.flow(T_CLASSIFY, PRIO_VIP_CTRL, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_ICMP, ipv4_dst=vip.ip),
                          self.to_controller(), cookie=cookie, meter=True)]

    def guard(self, vip, allowed: list[tuple[int, str]]) -> list:
        """Only the listed (port, source prefix) pairs may send to the VIP; without a list,
        every source may (the guard is off)."""
        p = self.parser
        cookie = Cookie(vip.index, 0, GUARD)
        if not allowed:
            return [self.flow(T_CLASSIFY, PRIO_GUARD_ALLOW, p.OFPMatch(eth_type=ETH_IP, ipv4_dst=vip.ip),
                              goto=T_SERVICE, cookie=cookie)]
        out = []
        for port, prefix in allowed:
            net = ipaddress.IPv4Network(prefix)
            source = str(net.network_address) if net.prefixlen == 32 else (str(net.network_address), str(net.netmask))
            out.append(self.flow(T_CLASSIFY, PRIO_GUARD_ALLOW,
                                 p.OFPMatch(in_port=port, eth_type=ETH_IP, ipv4_src=source, ipv4_dst=vip.ip),
                                 goto=T_SERVICE, cookie=cookie))
        out.append(self.flow(T_CLASSIFY, PRIO_GUARD_DROP, p.OFPMatch(eth_type=ETH_IP, ipv4_dst=vip.ip), [],
                             cookie=cookie))
        return out + self.arp_guard(allowed, cookie)

    def arp_guard(self, allowed: list[tuple[int, str]], cookie: "Cookie") -> list:
        """ARP that claims a client's address comes from that client's port, or is dropped:
        a host that answers ARP for another client's address (it added that address) would
        otherwise teach the CAS to send the client's replies to it."""
        p, normal = self.parser, [self.parser.OFPActionOutput(self.ofp.OFPP_NORMAL)]
        out, sources = [], []
        for port, prefix in allowed:
            net = ipaddress.IPv4Network(prefix)
            if net.prefixlen == 0:
                continue  # "anyone through this port": no address to protect
            source = str(net.network_address) if net.prefixlen == 32 else (str(net.network_address), str(net.netmask))
            out.append(self.flow(T_CLASSIFY, PRIO_GUARD_ALLOW, p.OFPMatch(in_port=port, eth_type=ETH_ARP, arp_spa=source),
                                 normal, cookie=cookie))
            if source not in sources:
                sources.append(source)
        out += [self.flow(T_CLASSIFY, PRIO_GUARD_DROP, p.OFPMatch(eth_type=ETH_ARP, arp_spa=source), [], cookie=cookie)
                for source in sources]
        return out

    def service_to_controller(self, vip) -> list:
        """Controller dataplane: every TCP segment to the VIP that no pinned flow carries."""
        p = self.parser
        return [self.flow(T_SERVICE, 100, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip),
                          self.to_controller(), cookie=Cookie(vip.index, 0, SERVICE), meter=True),
                self.flow(T_SERVICE, 0, p.OFPMatch(), [], cookie=Cookie(vip.index, 0, SERVICE))]

    # ---- controller dataplane: one pair of flows per connection --------------------------

    def pin(self, vip, member_index: int, member, out_port: int, key: tuple, client_mac: str, in_port: int,
            idle_timeout: int) -> tuple[list, list]:
        """The two flows of one connection, and the forward actions (for its first packet)."""
        p, ofp = self.parser, self.ofp
        client_ip, client_port, _, service_port = key
        forward = [p.OFPActionSetField(eth_dst=member.mac), p.OFPActionSetField(ipv4_dst=member.ip),
                   p.OFPActionOutput(out_port)]
        reverse = [p.OFPActionSetField(eth_src=vip.mac), p.OFPActionSetField(ipv4_src=vip.ip),
                   p.OFPActionSetField(eth_dst=client_mac), p.OFPActionOutput(in_port)]
        return [
            self.flow(T_CLASSIFY, PRIO_CONN, p.OFPMatch(in_port=in_port, eth_type=ETH_IP, ip_proto=PROTO_TCP,
                                                        ipv4_src=client_ip, tcp_src=client_port, ipv4_dst=vip.ip,
                                                        tcp_dst=service_port),
                      forward, cookie=Cookie(vip.index, member_index, FORWARD), idle_timeout=idle_timeout,
                      flags=ofp.OFPFF_SEND_FLOW_REM),
            self.flow(T_CLASSIFY, PRIO_CONN, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_src=member.ip,
                                                        tcp_src=service_port, ipv4_dst=client_ip, tcp_dst=client_port),
                      reverse, cookie=Cookie(vip.index, member_index, REVERSE), idle_timeout=idle_timeout),
        ], forward

    def unpin_member(self, vip, member_index: int) -> list:
        """Delete every pinned flow of one member (its connections are gone)."""
        return [self.delete(Cookie(vip.index, member_index, kind).encode(), 0xFFFF_FFFF_FFFF_FFFF, table=T_CLASSIFY)
                for kind in (FORWARD, REVERSE)]

    # ---- switch dataplane: conntrack, NAT and a select group ------------------------------

    def ct(self, vip, table: int, commit: bool = False, nat_to: str | None = None, mark: int | None = None):
        p = self.parser
        inner = []
        if nat_to is not None:
            inner.append(p.NXActionNAT(flags=2, range_ipv4_min=nat_to, range_ipv4_max=nat_to))  # NX_NAT_F_DST
        elif not commit:
            inner.append(p.NXActionNAT(flags=0))  # apply the connection's existing NAT
        if mark is not None:
            inner.append(p.OFPActionSetField(ct_mark=mark))
        return p.NXActionCT(flags=1 if commit else 0, zone_src=None, zone_ofs_nbits=zone_of(vip.index),
                            recirc_table=table, alg=0, actions=inner)

    def switch_service(self, vip, members: list[tuple[int, Any]], allowed: list[tuple[int, str]] = ()) -> list:
        """Tables 1-3 for one VIP (everything but the group); ``allowed``: the (client port,
        source prefix) pairs the guard lets in, whose replies leave by that port."""
        p = self.parser
        svc, conn, deliver = (Cookie(vip.index, 0, k) for k in (SERVICE, BASE, DELIVER))
        out = []
        for port in sorted(vip.ports):
            out.append(self.flow(T_SERVICE, 100, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip,
                                                            tcp_dst=port), [self.ct(vip, T_CONNTRACK)], cookie=svc))
            for index, member in members:
                out.append(self.flow(T_CLASSIFY, PRIO_REPLY,
                                     p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_src=member.ip, tcp_src=port),
                                     [self.ct(vip, T_CONNTRACK)], cookie=Cookie(vip.index, index, BASE)))
        out += [
            self.flow(T_SERVICE, 90, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip),
                      self.to_controller(), cookie=svc, meter=True),
            self.flow(T_SERVICE, 0, p.OFPMatch(), [], cookie=svc),
            self.flow(T_CONNTRACK, PRIO_NEW_SYN, p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip,
                                                            ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW),
                                                            tcp_flags=(0x002, 0x016)),
                      [p.OFPActionGroup(vip.index)], cookie=conn),
            self.flow(T_CONNTRACK, PRIO_NEW_OTHER, p.OFPMatch(eth_type=ETH_IP, ipv4_dst=vip.ip,
                                                              ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW)),
                      self.to_controller(), cookie=conn, meter=True),
            self.flow(T_CONNTRACK, PRIO_EST, p.OFPMatch(eth_type=ETH_IP, ct_state=(CT_TRK | CT_EST, CT_TRK | CT_EST)),
                      goto=T_DELIVER, cookie=conn),
            self.flow(T_CONNTRACK, 20, p.OFPMatch(eth_type=ETH_IP, ipv4_dst=vip.ip), [], cookie=conn),
            self.flow(T_CONNTRACK, 10, p.OFPMatch(), [p.OFPActionOutput(self.ofp.OFPP_NORMAL)], cookie=conn),
            self.flow(T_DELIVER, PRIO_REPLY_ANY, p.OFPMatch(eth_type=ETH_IP, ipv4_src=vip.ip),
                      [p.OFPActionSetField(eth_src=vip.mac), p.OFPActionOutput(self.ofp.OFPP_NORMAL)], cookie=deliver),
            self.flow(T_DELIVER, 0, p.OFPMatch(), [], cookie=deliver),
        ]
        return out + self.replies_by_source(vip, allowed)

    def replies_by_source(self, vip, allowed: list[tuple[int, str]]) -> list:
        """A reply from the VIP leaves by its client's port, not by NORMAL: NORMAL would
        learn the VIP's MAC on whichever CAS port the reply came from, so the MAC would move
        between CAS ports with every reply, and each move makes Open vSwitch revalidate
        every datapath flow (about 150 moves a second at 1,000 sessions). Longer prefixes
        win; a destination no source covers (a host the guard does not list) still takes
        NORMAL."""
        p = self.parser
        deliver = Cookie(vip.index, 0, DELIVER)
        out = []
        for port, prefix in allowed:
            net = ipaddress.IPv4Network(prefix)
            match = dict(eth_type=ETH_IP, ipv4_src=vip.ip)
            if net.prefixlen:
                match["ipv4_dst"] = (str(net.network_address) if net.prefixlen == 32
                                     else (str(net.network_address), str(net.netmask)))
            out.append(self.flow(T_DELIVER, PRIO_REPLY_ANY + 1 + net.prefixlen // 4, p.OFPMatch(**match),
                                 [p.OFPActionSetField(eth_src=vip.mac), p.OFPActionOutput(port)], cookie=deliver))
        return out

    def to_survivor(self, survivor, port: int) -> list:
        """A dead member's client segment, readdressed to a live CAS (whose kernel resets it)."""
        p = self.parser
        return [p.OFPActionSetField(eth_dst=survivor.mac), p.OFPActionSetField(ipv4_dst=survivor.ip),
                p.OFPActionOutput(port)]

    def deliver_to(self, vip, index: int, member, port: int, survivors: list[tuple[Any, int]] = ()) -> list:
        """Member ``index``'s established connections: to its port while the port is live; as
        soon as the switch sees the port down, to the first of ``survivors`` (member, port)
        whose port is up, else to the controller (through the meter)."""
        p, ofp = self.parser, self.ofp
        gid = member_group_id(vip.index, index)
        watch = lambda port_no: [p.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_PORT, watch=port_no)]  # noqa: E731
        live = p.OFPBucket(bucket_id=1, actions=[p.OFPActionSetField(eth_dst=member.mac), p.OFPActionOutput(port)],
                           properties=watch(port))
        rescue = [p.OFPBucket(bucket_id=2 + k, actions=self.to_survivor(survivor, s_port), properties=watch(s_port))
                  for k, (survivor, s_port) in enumerate(survivors)]
        fallback = p.OFPBucket(bucket_id=2 + len(rescue), actions=[p.OFPActionGroup(CONTROLLER_GROUP)],
                               properties=[p.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_GROUP,
                                                                     watch=CONTROLLER_GROUP)])
        return [self.controller_group(),
                p.OFPGroupMod(self.dp, command=OFPGC_ADD_OR_MOD, type_=ofp.OFPGT_FF, group_id=gid,
                              buckets=[live, *rescue, fallback]),
                self.flow(T_DELIVER, 110, p.OFPMatch(eth_type=ETH_IP, ct_mark=index, ipv4_dst=member.ip),
                          [p.OFPActionGroup(gid)], cookie=Cookie(vip.index, index, DELIVER))]

    def controller_group(self):
        """The indirect group to the controller (through the meter), always live."""
        p, ofp = self.parser, self.ofp
        to_controller = p.OFPBucket(bucket_id=1, actions=[p.OFPActionMeter(METER_ID)] + self.to_controller())
        return p.OFPGroupMod(self.dp, command=OFPGC_ADD_OR_MOD, type_=ofp.OFPGT_INDIRECT, group_id=CONTROLLER_GROUP,
                             buckets=[to_controller])

    def strays(self, vip, members: list[tuple[Any, int]]) -> list:
        """A client segment to the VIP that conntrack does not know and that opens nothing (no
        SYN, no RST): a connection the switch forgot when its member died (``ct_flush_bytes``)
        or one that expired. It goes to the first of ``members`` (member, port) whose port is
        up, readdressed, whose kernel answers with an exact RST; with none up, to the
        controller, which answers the same. Its datapath flows are made when it comes, from
        the tables and port states as they are then."""
        p, ofp = self.parser, self.ofp
        gid = stray_group_id(vip.index)
        buckets = [p.OFPBucket(bucket_id=1 + k, actions=self.to_survivor(member, port),
                               properties=[p.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_PORT, watch=port)])
                   for k, (member, port) in enumerate(members)]
        buckets.append(p.OFPBucket(bucket_id=1 + len(buckets), actions=[p.OFPActionGroup(CONTROLLER_GROUP)],
                                   properties=[p.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_GROUP,
                                                                         watch=CONTROLLER_GROUP)]))
        return [self.controller_group(),
                p.OFPGroupMod(self.dp, command=OFPGC_ADD_OR_MOD, type_=ofp.OFPGT_FF, group_id=gid, buckets=buckets),
                self.flow(T_CONNTRACK, PRIO_STRAY,
                          p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip,
                                     ct_state=(CT_TRK | CT_NEW, CT_TRK | CT_NEW), tcp_flags=(0, TCP_SYN | TCP_RST)),
                          [p.OFPActionGroup(gid)], cookie=Cookie(vip.index, 0, STRAY))]

    def survivor_resets(self, vip, members: list[tuple[int, Any]]) -> list:
        """A CAS's RST for a connection conntrack does not know (+trk, not +est) answers a dead
        member's client segment it was sent: it leaves as the VIP, and a copy goes to the
        controller (metered, after the RST is on its way) so it can stop challenging. The RST
        is delivered by table 3's reply flows (resubmitted there), out of its client's port:
        NORMAL would move the VIP's MAC to the survivor's port (see replies_by_source)."""
        p = self.parser
        actions = [p.OFPActionSetField(eth_src=vip.mac), p.OFPActionSetField(ipv4_src=vip.ip),
                   p.NXActionResubmitTable(table_id=T_DELIVER), p.OFPActionMeter(METER_ID)] + self.to_controller()
        return [self.flow(T_CONNTRACK, PRIO_SURVIVOR_RST,
                          p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_src=member.ip,
                                     ct_state=(CT_TRK, CT_TRK | CT_EST), tcp_flags=(TCP_RST, TCP_RST)),
                          actions, cookie=Cookie(vip.index, index, RESET))
                for index, member in members]

    def group(self, vip, buckets: list[tuple[int, Any, int]], affinity: str, command: int = OFPGC_ADD_OR_MOD):
        """The VIP's select group: one bucket per member taking new connections (index,
        member, port), each following its port's liveness."""
        p, ofp = self.parser, self.ofp
        out = []
        for index, member, port in buckets:
            actions = [self.ct(vip, T_DELIVER, commit=True, nat_to=member.ip, mark=index)]
            props = [p.OFPGroupBucketPropWatch(type_=ofp.OFPGBPT_WATCH_PORT, watch=port),
                     p.OFPGroupBucketPropWeight(type_=ofp.OFPGBPT_WEIGHT, weight=100)]
            out.append(p.OFPBucket(bucket_id=index, actions=actions, properties=props))
        return p.OFPGroupMod(self.dp, command=command, type_=ofp.OFPGT_SELECT, group_id=vip.index, buckets=out,
                             properties=[NtrSelectionMethod(HASH_FIELDS[affinity])])

    def delete_group(self, vip):
        return self.parser.OFPGroupMod(self.dp, command=self.ofp.OFPGC_DELETE, group_id=vip.index)

    def dead_member(self, vip, index: int, member=None, survivor: tuple[Any, int] | None = None) -> list:
        """Packets of a dead member's connections go to the controller, which resets them;
        with a ``survivor`` (member, port), its clients' segments go to the survivor instead,
        whose kernel resets them (see the module's docstring)."""
        p = self.parser
        established = (CT_TRK | CT_EST, CT_TRK | CT_EST)
        out = [self.flow(T_CONNTRACK, PRIO_DEAD, p.OFPMatch(eth_type=ETH_IP, ct_state=established, ct_mark=index),
                         self.to_controller(), cookie=Cookie(vip.index, index, DEAD), meter=True)]
        if member is not None and survivor is not None:
            out.append(self.flow(T_CONNTRACK, PRIO_DEAD + 1,
                                 p.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ct_state=established, ct_mark=index,
                                            ipv4_dst=member.ip),
                                 self.to_survivor(*survivor), cookie=Cookie(vip.index, index, DEAD)))
        return out

    def forget_dead_member(self, vip, index: int) -> list:
        p = self.parser
        return [self.delete(Cookie(vip.index, index, DEAD).encode(), 0xFFFF_FFFF_FFFF_FFFF, table=T_CONNTRACK,
                            match=p.OFPMatch())]
