"""What the NLB's tests share: the lab the NLB sees, frames built with scapy (an
implementation independent of the NLB's own frame code), how a test reads the
OpenFlow messages the NLB decided, and how it drives the pure core (controllers/nlb_core.py)
directly: inputs with a time the test chooses, outputs checked. No app, hub or fake
datapath here (tests/fakes.py has those, for the app's own tests): a channel is a plain
object carrying the switch's protocol modules, which is all the core reads of os-ken's
Datapath.
"""

from __future__ import annotations

import ipaddress
import random
import struct
from dataclasses import dataclass
from types import SimpleNamespace

from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser, ofproto_v1_5, ofproto_v1_5_parser
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import ARP, Dot1AD, Dot1Q, Ether

from controllers.nlb_core import Emit, NlbCore, Send
from controllers.nlb_flows import FORWARD, REVERSE, T_CLASSIFY, Cookie, ct_flush_bytes, zone_of
from labcommon.programs import NlbConfig, NlbMember, NlbSource, NlbVip

OF13, OF15 = ofproto_v1_3.OFP_VERSION, ofproto_v1_5.OFP_VERSION
VERSIONS = {OF13: (ofproto_v1_3, ofproto_v1_3_parser), OF15: (ofproto_v1_5, ofproto_v1_5_parser)}
VERSION_IDS = {OF13: "of13", OF15: "of15"}

# ---- the lab's site 1, as topologies/plan.py lays it out -------------------------------------

VIP_IP, VIP_MAC = "10.1.0.100", "02:00:0a:01:00:64"
SERVICE_PORT, OTHER_SERVICE_PORT = 6001, 135
BRANCH_VIP = "10.2.0.100"


@dataclass(frozen=True)
class Host:
    name: str
    ip: str
    mac: str
    port_name: str
    port_no: int


MEMBERS = [Host(f"cas{n}", f"10.1.1.{n}", f"02:00:0a:01:01:{n:02x}", f"clab1-eth{n}", n) for n in (1, 2, 3)]
MEMBER = {m.name: m for m in MEMBERS}  # a member's index in its VIP is its port number
CLIENT = Host("cl1", "10.1.3.1", "02:00:0a:01:03:01", "clab1-eth10", 10)
OTHER_CLIENT = Host("cl2", "10.1.3.2", "02:00:0a:01:03:02", "clab1-eth11", 11)
SOURCES = [NlbSource(port_name=c.port_name, mac=c.mac, prefixes=[f"{c.ip}/32", f"10.1.{10 + i}.0/24"])
           for i, c in enumerate((CLIENT, OTHER_CLIENT))]


def config(dataplane: str = "controller", fast_fail: bool = True, affinity: str = "none", **extra) -> NlbConfig:
    hq = NlbVip(name="HQ", ip=VIP_IP, mac=VIP_MAC, dpid=1, ports=[SERVICE_PORT, OTHER_SERVICE_PORT],
                affinity=affinity, sources=SOURCES,
                members=[NlbMember(name=m.name, ip=m.ip, mac=m.mac, port_name=m.port_name) for m in MEMBERS])
    branch = NlbVip(name="Branch", ip=BRANCH_VIP, mac="02:00:0a:02:00:64", dpid=2, ports=[SERVICE_PORT],
                    members=[NlbMember(name="cas4", ip="10.2.1.1", mac="02:00:0a:02:01:01", port_name="clab2-eth1")])
    # the token bucket is tested on its own; here it must never drop a test's packets
    settings = {"conn_idle_s": 60, "packet_in_rate": 1e9, "packet_in_burst": 1e9, **extra}
    return NlbConfig(vips=[hq, branch], dataplane=dataplane, fast_fail=fast_fail, **settings)


# ---- frames (scapy) -------------------------------------------------------------------------------

def tcp_frame(sport: int, flags: str, seq: int = 1000, ack: int = 0, dport: int = SERVICE_PORT,
              src: Host = CLIENT, src_ip: str | None = None, dst_ip: str = VIP_IP, payload: bytes = b"",
              vlans: tuple[int, ...] = ()) -> bytes:
    frame = Ether(dst=VIP_MAC, src=src.mac)
    for vid in vlans:
        frame = frame / Dot1Q(vlan=vid)
    frame = frame / IP(src=src_ip or src.ip, dst=dst_ip) / TCP(sport=sport, dport=dport, seq=seq, ack=ack,
                                                               flags=flags, window=64240)
    return bytes(frame / payload) if payload else bytes(frame)


def syn(sport: int, **kw) -> bytes:
    return tcp_frame(sport, "S", **kw)


def arp_frame(op: int, target_ip: str, src: Host = CLIENT, vlans: tuple[int, ...] = ()) -> bytes:
    frame = Ether(dst="ff:ff:ff:ff:ff:ff", src=src.mac)
    for vid in vlans:
        frame = frame / Dot1Q(vlan=vid)
    return bytes(frame / ARP(op=op, hwsrc=src.mac, psrc=src.ip, hwdst="00:00:00:00:00:00", pdst=target_ip))


def icmp_echo(dst_ip: str = VIP_IP, ident: int = 0x1234, seq: int = 7, data: bytes = b"caslab-ping",
              vlans: tuple[int, ...] = ()) -> bytes:
    frame = Ether(dst=VIP_MAC, src=CLIENT.mac)
    for vid in vlans:
        frame = frame / Dot1Q(vlan=vid)
    return bytes(frame / IP(src=CLIENT.ip, dst=dst_ip) / ICMP(type=8, id=ident, seq=seq) / data)


def vlan_ids(frame: Ether) -> list[int]:
    """The VLAN ids of a scapy frame's tags (802.1Q and 802.1ad), outermost first."""
    ids, layer = [], frame.payload
    while isinstance(layer, (Dot1Q, Dot1AD)):
        ids.append(layer.vlan)
        layer = layer.payload
    return ids


def checksums_ok(data: bytes) -> bool:
    """The IPv4 header and TCP/ICMP checksums of a frame verify (scapy recomputes them)."""
    ip = Ether(data)[IP]
    fresh = ip.copy()
    del fresh.chksum
    for layer in (TCP, ICMP):
        if layer in fresh:
            del fresh[layer].chksum
    rebuilt = IP(bytes(fresh))
    return rebuilt.chksum == ip.chksum and all(rebuilt[layer].chksum == ip[layer].chksum
                                               for layer in (TCP, ICMP) if layer in ip)


# ---- reading OpenFlow messages ----------------------------------------------------------------------

def raw_messages(channel, buf: bytes) -> list:
    """The messages of a buffer the NLB writes raw (packet-outs, Open vSwitch's conntrack
    flushes), read back into os-ken's messages (a packet-out's match and actions by os-ken's
    own parsers), so that one that does not hold together fails here."""
    ofp, out, offset = channel.ofproto, [], 0
    kinds = (ofp.OFPT_PACKET_OUT, ofp.OFPT_EXPERIMENTER)
    while offset < len(buf):
        version, msg_type, length, xid = struct.unpack_from("!BBHI", buf, offset)
        assert version == ofp.OFP_VERSION and msg_type in kinds, (version, msg_type)
        assert length >= 8 and offset + length <= len(buf), (length, len(buf) - offset)
        msg = buf[offset:offset + length]
        out.append(_packet_out(channel, msg) if msg_type == kinds[0] else _experimenter(channel, msg))
        out[-1].xid = xid
        offset += length
    return out


def _experimenter(channel, msg: bytes):
    experimenter, exp_type = struct.unpack_from("!II", msg, 8)
    return channel.ofproto_parser.OFPExperimenter(channel, experimenter, exp_type, msg[16:])


def _packet_out(channel, msg: bytes):
    p, ofp = channel.ofproto_parser, channel.ofproto
    if ofp.OFP_VERSION >= OF15:
        buffer_id, actions_len = struct.unpack_from("!IH2x", msg, 8)
        match = p.OFPMatch.parser(msg, 16)
        at = 16 + match.length + (-match.length % 8)
        fields = {"match": match}
    else:
        buffer_id, in_port, actions_len = struct.unpack_from("!IIH6x", msg, 8)
        at, fields = 24, {"in_port": in_port}
    actions, end = [], at + actions_len
    while at < end:
        action = p.OFPAction.parser(msg, at)
        actions.append(action)
        at += action.len
    return p.OFPPacketOut(datapath=channel, buffer_id=buffer_id, actions=actions, data=msg[end:], **fields)


def of_class(msgs, name: str) -> list:
    return [m for m in msgs if type(m).__name__ == name]


def flow_mods(msgs, command: str = "ADD") -> list:
    return [m for m in of_class(msgs, "OFPFlowMod") if m.command == getattr(m.datapath.ofproto, f"OFPFC_{command}")]


def packet_outs(msgs) -> list:
    return of_class(msgs, "OFPPacketOut")


def group_mods(msgs) -> list:
    return of_class(msgs, "OFPGroupMod")


def apply_actions(flow) -> list:
    ofp = flow.datapath.ofproto
    return [a for i in flow.instructions if getattr(i, "type", None) == ofp.OFPIT_APPLY_ACTIONS for a in i.actions]


def set_fields(actions) -> dict:
    return {a.key: a.value for a in actions if type(a).__name__ == "OFPActionSetField"}


def outputs(actions) -> list[int]:
    return [a.port for a in actions if type(a).__name__ == "OFPActionOutput"]


def match_dict(match) -> dict:
    return dict(match.items())


def kind_of(flow) -> int:
    return Cookie.decode(flow.cookie).kind


def po_in_port(po) -> int:
    return po.in_port if po.datapath.ofproto.OFP_VERSION == OF13 else po.match["in_port"]


def ct_flushes(msgs) -> list:
    """Open vSwitch's conntrack flushes (NXT_CT_FLUSH) among ``msgs``."""
    return [m for m in of_class(msgs, "OFPExperimenter") if (m.experimenter, m.exp_type) == (0x2320, 32)]


def flush_tuple(msg) -> tuple[str, int]:
    """(client address, client port) of a conntrack flush of one connection to the VIP, in
    zone 1 (the whole message must be the one ct_flush_bytes builds for it)."""
    client_ip = ipaddress.IPv6Address(msg.data[20:36]).ipv4_mapped
    client_port = struct.unpack_from("!H", msg.data, 68)[0]
    assert msg.data == ct_flush_bytes(4, zone_of(1), (str(client_ip), client_port), (VIP_IP, SERVICE_PORT))[16:]
    return str(client_ip), client_port


def unpinned(msgs) -> list[int]:
    """Cookies of the exact deletes of pinned flows (table 0), in order."""
    out = []
    for m in flow_mods(msgs, "DELETE"):
        assert m.table_id == T_CLASSIFY and m.cookie_mask == 0xFFFF_FFFF_FFFF_FFFF
        out.append(m.cookie)
    return out


def unpin_of(member_index: int) -> list[int]:
    """The cookies ``unpinned`` finds when the HQ VIP's member ``member_index`` is evicted."""
    return [Cookie(1, member_index, FORWARD).encode(), Cookie(1, member_index, REVERSE).encode()]


# ---- the core, driven directly --------------------------------------------------------------------

S = 1_000_000_000
T0 = 5000 * S  # the monotonic clock at the start, in ns
WALL = 1.7e9  # the wall clock then, in s


def channel(dpid: int = 1, version: int = OF13):
    ofproto, parser = VERSIONS[version]
    return SimpleNamespace(id=dpid, ofproto=ofproto, ofproto_parser=parser)


def core_for(saved: dict | None = None, **kw) -> tuple[NlbCore, list]:
    """A started core on ``config(**kw)``, and what it said starting."""
    core = NlbCore(config(**kw), rng=random.Random(7))
    return core, core.start(saved or {}, T0, WALL)


def port_list(down: tuple[str, ...] = ()) -> list[tuple[int, str, bool]]:
    """The switch's ports as the core takes them: (number, name, up); ``down``: hosts whose link is down."""
    return [(h.port_no, h.port_name, h.name not in down) for h in MEMBERS + [CLIENT, OTHER_CLIENT]]


def connected(core: NlbCore, version: int = OF13, now: int = T0, dpid: int = 1):
    """A switch that connected and reported its ports, all up."""
    ch = channel(dpid, version)
    core.switch_connected(ch, False, now)
    core.port_desc(ch, port_list(), now)
    return ch


def link(core: NlbCore, ch, name: str, up: bool, now: int = T0) -> list:
    """A port status of member ``name``'s switch port."""
    return core.port_status(ch, MEMBER[name].port_no, MEMBER[name].port_name, up, False, now)


def of(outputs, kind) -> list:
    return [o for o in outputs if isinstance(o, kind)]


def emitted(outputs, event=None) -> list[dict]:
    return [o.fields for o in of(outputs, Emit) if event is None or o.event is event]


def sent(outputs) -> list:
    """What the outputs send, in order; raw buffers read back into os-ken's messages."""
    return [r for o in of(outputs, Send) for m in o.messages
            for r in (raw_messages(o.channel, m) if isinstance(m, bytes) else [m])]


def challenges_until(core: NlbCore, end: int) -> list:
    """What the timer thread would write by ``end``: each round of challenges when it is due."""
    out = []
    while (at := core.challenges.next_at()) is not None and at <= end:
        out += core.challenges_due(at)
    return out


def member_of(fwd) -> str:
    """The member a pinned connection's forward flow sends to."""
    return next(m.name for m in MEMBERS if m.ip == set_fields(apply_actions(fwd))["ipv4_dst"])


def pin(core: NlbCore, ch, sport: int, now: int = T0, client: Host = CLIENT, **frame) -> str:
    """A SYN through the controller dataplane: the member it was pinned to."""
    out = core.packet_in(ch, client.port_no, syn(sport, src=client, **frame), 0, now)
    [fwd] = [m for m in flow_mods(sent(out)) if kind_of(m) == FORWARD]
    return member_of(fwd)


def pin_until(core: NlbCore, ch, wanted: set[str], start: int = 43000, client: Host = CLIENT) -> dict:
    """Open connections until each wanted member has two; returns {key: member}."""
    got: dict = {}
    for sport in range(start, start + 500):
        got[(client.ip, sport, VIP_IP, SERVICE_PORT)] = pin(core, ch, sport, client=client)
        if all(list(got.values()).count(n) >= 2 for n in wanted):
            return got
    raise AssertionError("could not reach every member")


def chosen(core: NlbCore, ch, start: int, n: int = 60) -> set[str]:
    """The members that ``n`` new connections were pinned to."""
    return {pin(core, ch, start + i) for i in range(n)}


def conns_of(core: NlbCore) -> dict:
    """The HQ VIP's pinned connections (controller dataplane): key -> member."""
    return {k: c.backend for k, c in core.vips[0].conns.by_key.items()}
