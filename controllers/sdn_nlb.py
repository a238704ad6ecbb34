"""The SDN network load balancer: a Ryu/os-ken app (OpenFlow 1.3) that owns the array VIPs.

What it does, per VIP (one per array or site):

* answers ARP and ICMP echo for the VIP with the VIP's own MAC;
* on a connection's first packet (the SYN) picks a live CAS with the consistent-hashing
  table (affinity none/single/network, as Windows NLB), and installs two exact-match flows
  that rewrite VIP <-> CAS: every later packet stays in the switch;
* notices a CAS going away by port status (link down) and by active probes reported by
  the health agent (``controllers.health_agent``), deletes that CAS's flows and, with
  ``fast_fail``, makes the switch reset its clients' connections (see ``_challenge``);
* answers packets of unknown connections to the VIP with a TCP RST whose sequence number
  the client accepts, so clients reconnect at once instead of waiting for a timeout;
* drains and rejoins members without touching any other session;
* after a restart, re-learns the connection table from the flows left in the switch
  (OVS fail mode ``secure`` keeps them forwarding meanwhile).

Everything else on the switch goes through the NORMAL (L2 learning) pipeline.
Config comes from the JSON file named by ``CASLAB_NLB_CONFIG``; see ``caslab/modes.py``.
"""

from __future__ import annotations

import json
import os
import random
import threading

from labcommon.catalogue import (
    LB_MEMBER, NLB_CONN, NLB_CONVERGING, NLB_EVICT, NLB_HEALTH_SOCKET_ERROR, NLB_RELEARN, NLB_SWITCH, NLB_UP,
)
from labcommon.events import EventLog, NullLog, now_ns
from controllers.compat import (
    CONFIG_DISPATCHER, MAIN_DISPATCHER, BaseApp, arp, ethernet, hub, icmp, ipv4, ofp_event,
    ofproto_v1_3, packet, set_ev_cls, tcp,
)
from controllers.nlb_logic import Connection, ConnectionTable, HealthTracker, Member, Pool

ETH_ARP, ETH_IP = 0x0806, 0x0800
PROTO_ICMP, PROTO_TCP = 1, 6
COOKIE_TAG = 0xCA5 << 48
COOKIE_MASK_MEMBER = 0xFFFF_FFFF_FFFF_0000
FORWARD, REVERSE = 1, 2
PRIO_CONN, PRIO_VIP_CTRL, PRIO_VIP_TCP, PRIO_MISS = 300, 200, 100, 0


def tcp_options_sane(data: bytes) -> bool:
    """False for an IPv4/TCP frame whose options os-ken's parser would loop on forever.

    An option other than EOL/NOP with a length below 2 makes os-ken's TCP option parser
    spin, so any client could hang the controller with one crafted SYN.
    """
    if len(data) < 34 or data[12:14] != b"\x08\x00" or data[23] != PROTO_TCP:
        return True
    tcp_at = 14 + (data[14] & 0x0F) * 4
    if len(data) < tcp_at + 20:
        return True
    end = min(len(data), tcp_at + (data[tcp_at + 12] >> 4) * 4)
    i = tcp_at + 20
    while i < end:
        kind = data[i]
        if kind == 0:
            return True
        if kind == 1:
            i += 1
            continue
        if i + 1 >= end or data[i + 1] < 2:
            return False
        i += data[i + 1]
    return True


def member_cookie(vip_index: int, member_index: int, direction: int = 0) -> int:
    return COOKIE_TAG | (vip_index << 32) | (member_index << 16) | direction


class Vip:
    """One VIP: its address, the switch it lives on, its pool and its connections."""

    def __init__(self, index: int, spec: dict):
        self.index = index
        self.name = spec["name"]
        self.ip = spec["ip"]
        self.mac = spec["mac"]
        self.dpid = int(spec["dpid"])
        self.ports = set(int(p) for p in spec["ports"])
        members = [Member(m["name"], m["ip"], m["mac"], m["port_name"]) for m in spec["members"]]
        self.member_index = {m.name: i + 1 for i, m in enumerate(members)}
        self.pool = Pool({m.name: m for m in members}, affinity=spec.get("affinity", "none"))
        self.conns = ConnectionTable()
        self.port_numbers: dict[str, int] = {}
        self.health = {m.name: HealthTracker() for m in members}

    def member_by_ip(self, ip: str) -> Member | None:
        return next((m for m in self.pool.members.values() if m.ip == ip), None)


class SdnNlb(BaseApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("CASLAB_NLB_CONFIG")
        self.config = {"vips": []}
        if path:
            with open(path, encoding="utf-8") as handle:
                self.config = json.load(handle)
        self.event_log = EventLog(self.config["events"], "nlb") if self.config.get("events") else NullLog()
        self.fast_fail = bool(self.config.get("fast_fail", True))
        self.conn_idle_s = int(self.config.get("conn_idle_s", 120))
        delays = self.config.get("challenge_delays_ms", [5, 25, 60, 120, 250])
        if "challenge_delay_ms" in self.config:
            delays = [self.config["challenge_delay_ms"]]
        self.challenge_delays_s = [float(d) / 1000 for d in delays]
        self.pending_resets: dict[tuple, Connection] = {}
        # Windows NLB emulation (caslab/modes.py) turns these off/on: it only learns of a
        # dead host from missed heartbeats and then needs a convergence round.
        self.port_detection = bool(self.config.get("port_detection", True))
        self.convergence_s = float(self.config.get("convergence_ms", 0)) / 1000
        self.vips = [Vip(i + 1, spec) for i, spec in enumerate(self.config["vips"])]
        for vip in self.vips:
            for name, tracker in vip.health.items():
                tracker.fall = int(self.config.get("health", {}).get("fall", 2))
                tracker.rise = int(self.config.get("health", {}).get("rise", 2))
        self.datapaths: dict[int, object] = {}
        self.lock = threading.RLock()
        self.stats = {"packet_in": 0, "conns": 0, "resets": 0, "challenges": 0, "arp": 0, "icmp": 0}
        self.event_log.emit(NLB_UP, vips=[v.ip for v in self.vips], fast_fail=self.fast_fail)
        self._threads = []
        health_socket = self.config.get("health", {}).get("socket")
        if health_socket:
            self._threads.append(hub.spawn(self._health_loop, health_socket))
        api = self.config.get("api")
        if api:
            from controllers.nlb_api import serve_api
            self._threads.append(hub.spawn(serve_api, self, api.get("host", "127.0.0.1"), int(api["port"])))

    # ---- switch set-up -------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        parser = dp.ofproto_parser
        self.datapaths[dp.id] = dp
        self.add_flow(dp, PRIO_MISS, parser.OFPMatch(), [parser.OFPActionOutput(dp.ofproto.OFPP_NORMAL)])
        to_ctrl = [parser.OFPActionOutput(dp.ofproto.OFPP_CONTROLLER, dp.ofproto.OFPCML_NO_BUFFER)]
        for vip in self.vips_on(dp.id):
            self.add_flow(dp, PRIO_VIP_CTRL, parser.OFPMatch(eth_type=ETH_ARP, arp_tpa=vip.ip), to_ctrl)
            self.add_flow(dp, PRIO_VIP_CTRL, parser.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_ICMP, ipv4_dst=vip.ip), to_ctrl)
            self.add_flow(dp, PRIO_VIP_TCP, parser.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_dst=vip.ip), to_ctrl)
        dp.send_msg(parser.OFPPortDescStatsRequest(dp, 0))
        dp.send_msg(parser.OFPFlowStatsRequest(dp, cookie=COOKIE_TAG, cookie_mask=0xFFFF << 48))
        self.event_log.emit(NLB_SWITCH, dpid=dp.id)

    def vips_on(self, dpid: int) -> list[Vip]:
        return [vip for vip in self.vips if vip.dpid == dpid]

    def add_flow(self, dp, priority, match, actions, cookie=0, idle_timeout=0, flags=0):
        parser = dp.ofproto_parser
        inst = [parser.OFPInstructionActions(dp.ofproto.OFPIT_APPLY_ACTIONS, actions)]
        dp.send_msg(parser.OFPFlowMod(datapath=dp, priority=priority, match=match, instructions=inst,
                                      cookie=cookie, idle_timeout=idle_timeout, flags=flags))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_handler(self, ev):
        dp = ev.msg.datapath
        with self.lock:
            for port in ev.msg.body:
                self._note_port(dp, port)

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        dp, msg = ev.msg.datapath, ev.msg
        with self.lock:
            gone = msg.reason == dp.ofproto.OFPPR_DELETE
            self._note_port(dp, msg.desc, gone=gone)

    def _note_port(self, dp, port, gone: bool = False) -> None:
        name = port.name.decode() if isinstance(port.name, bytes) else port.name
        up = not gone and not (port.state & dp.ofproto.OFPPS_LINK_DOWN) and not (port.config & dp.ofproto.OFPPC_PORT_DOWN)
        for vip in self.vips_on(dp.id):
            vip.port_numbers[name] = port.port_no
            for member in vip.pool.members.values():
                if self.port_detection and member.port_name == name and member.port_up != up:
                    self.set_member(vip, member.name, "port_down" if not up else "port_up", port_up=up)

    # ---- membership ----------------------------------------------------------------

    def set_member(self, vip: Vip, name: str, reason: str, **changes) -> None:
        """Apply a health/drain change; a member that stops taking traffic loses its flows."""
        with self.lock:
            member = vip.pool.members[name]
            was_alive = member.alive and member.port_up
            vip.pool.set_state(name, **changes)
            alive = member.alive and member.port_up
            self.event_log.emit(LB_MEMBER, vip=vip.ip, member=name, reason=reason, alive=alive,
                             draining=member.draining, accepts_new=member.accepts_new)
            if was_alive and not alive:
                self.evict(vip, name, reason)

    def evict(self, vip: Vip, name: str, reason: str) -> int:
        """Drop every connection pinned to ``name``: delete its flows, reset its clients."""
        dp = self.datapaths.get(vip.dpid)
        conns = vip.conns.on_backend(name)
        if dp is not None:
            parser = dp.ofproto_parser
            dp.send_msg(parser.OFPFlowMod(
                datapath=dp, command=dp.ofproto.OFPFC_DELETE, table_id=dp.ofproto.OFPTT_ALL,
                out_port=dp.ofproto.OFPP_ANY, out_group=dp.ofproto.OFPG_ANY,
                cookie=member_cookie(vip.index, vip.member_index[name]), cookie_mask=COOKIE_MASK_MEMBER,
                match=parser.OFPMatch()))
            if self.fast_fail and conns:
                # OVS applies a flow delete to its datapath cache asynchronously (usually a
                # few ms, sometimes tens): a client's answer that arrives before then still
                # follows the dead CAS's flow and is lost. So challenge again on a schedule
                # until the client has answered and been reset.
                keys = [conn.key for conn in conns]
                self.pending_resets.update({conn.key: conn for conn in conns})
                for i, delay in enumerate(self.challenge_delays_s):
                    last = i == len(self.challenge_delays_s) - 1
                    hub.spawn_after(delay, self._challenge_pending, dp, vip, keys, last)
        for conn in conns:
            vip.conns.remove(conn.key)
        self.event_log.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=len(conns),
                         fast_fail=self.fast_fail)
        return len(conns)

    def drain(self, vip: Vip, name: str, deadline_s: float | None = None) -> None:
        self.set_member(vip, name, "drain", draining=True)
        if deadline_s is not None:
            hub.spawn_after(deadline_s, self._drain_deadline, vip, name)

    def _drain_deadline(self, vip: Vip, name: str) -> None:
        with self.lock:
            if vip.pool.members[name].draining:
                self.evict(vip, name, "drain_deadline")

    def rejoin(self, vip: Vip, name: str) -> None:
        self.set_member(vip, name, "rejoin", draining=False)

    # ---- health agent --------------------------------------------------------------

    def _health_loop(self, path: str) -> None:
        import socket

        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
        except OSError as exc:  # e.g. a path over 107 bytes: say so instead of dying silently
            self.event_log.emit(NLB_HEALTH_SOCKET_ERROR, path=path, reason=str(exc))
            return
        while True:
            data = sock.recv(4096)
            try:
                report = json.loads(data)
                self.on_probe(report["vip"], report["member"], bool(report["ok"]), report.get("detail", ""))
            except (ValueError, KeyError, TypeError):
                continue

    def on_probe(self, vip_ip: str, name: str, ok: bool, detail: str = "") -> None:
        with self.lock:
            vip = next((v for v in self.vips if v.ip == vip_ip), None)
            if vip is None or name not in vip.health:
                return
            flipped = vip.health[name].record(ok)
            if flipped is None:
                return
            reason = "probe_up" if flipped else f"probe_down:{detail}"
            if self.convergence_s > 0:
                self.event_log.emit(NLB_CONVERGING, vip=vip.ip, member=name, alive=flipped)
                hub.spawn_after(self.convergence_s, self.set_member, vip, name, reason, alive=flipped)
            else:
                self.set_member(vip, name, reason, alive=flipped)

    # ---- packets -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        dp = msg.datapath
        in_port = msg.match["in_port"]
        if not tcp_options_sane(msg.data):
            return
        try:
            pkt = packet.Packet(msg.data)
        except Exception:  # noqa: BLE001 - os-ken's parsers raise many kinds on garbage
            return
        eth = pkt.get_protocol(ethernet.ethernet)
        if eth is None:
            return
        with self.lock:
            self.stats["packet_in"] += 1
            vips = {v.ip: v for v in self.vips_on(dp.id)}
            arp_pkt = pkt.get_protocol(arp.arp)
            if arp_pkt is not None:
                vip = vips.get(arp_pkt.dst_ip)
                if vip is not None and arp_pkt.opcode == arp.ARP_REQUEST:
                    self._reply_arp(dp, in_port, eth, arp_pkt, vip)
                return
            ip = pkt.get_protocol(ipv4.ipv4)
            vip = vips.get(ip.dst) if ip is not None else None
            if vip is None:
                return
            icmp_pkt = pkt.get_protocol(icmp.icmp)
            if icmp_pkt is not None and icmp_pkt.type == icmp.ICMP_ECHO_REQUEST:
                self._reply_icmp(dp, in_port, eth, ip, icmp_pkt, vip)
                return
            tcp_pkt = pkt.get_protocol(tcp.tcp)
            if tcp_pkt is not None:
                self._handle_tcp(dp, in_port, msg.data, eth, ip, tcp_pkt, vip)

    def _handle_tcp(self, dp, in_port, data, eth, ip, seg, vip: Vip) -> None:
        key = (ip.src, seg.src_port, vip.ip, seg.dst_port)
        is_syn = seg.has_flags(tcp.TCP_SYN) and not seg.has_flags(tcp.TCP_ACK)
        if is_syn and seg.dst_port in vip.ports:
            conn = vip.conns.get(key)
            member = vip.pool.members.get(conn.backend) if conn else vip.pool.choose(ip.src, seg.src_port)
            if member is None or not member.accepts_new and conn is None:
                self._reset(dp, in_port, eth, ip, seg, vip)
                return
            self._pin(dp, in_port, data, eth, key, member, vip, client_isn=seg.seq)
            return
        known = vip.conns.get(key)
        if known is not None:
            member = vip.pool.members[known.backend]
            if member.alive and member.port_up:  # raced its own flow install: forward it the same way
                self._pin(dp, in_port, data, eth, key, member, vip)
                return
            vip.conns.remove(key)  # pinned to a member that is gone: fall through to the reset
        if seg.has_flags(tcp.TCP_RST):
            return
        # A packet of a connection the switch has no flow for: a dead CAS's client, a
        # closed port, or a stray. Reset it so the client learns at once.
        if self.fast_fail or seg.dst_port not in vip.ports:
            self._reset(dp, in_port, eth, ip, seg, vip)
            self.pending_resets.pop(key, None)

    def _pin(self, dp, in_port, data, eth, key, member: Member, vip: Vip, client_isn: int | None = None) -> None:
        parser = dp.ofproto_parser
        out_port = vip.port_numbers.get(member.port_name)
        if out_port is None:
            return
        client_ip, client_port, _, service_port = key
        flags = dp.ofproto.OFPFF_SEND_FLOW_REM
        index = vip.member_index[member.name]
        forward = [parser.OFPActionSetField(eth_dst=member.mac), parser.OFPActionSetField(ipv4_dst=member.ip),
                   parser.OFPActionOutput(out_port)]
        self.add_flow(dp, PRIO_CONN, parser.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_src=client_ip,
                                                     tcp_src=client_port, ipv4_dst=vip.ip, tcp_dst=service_port),
                      forward, cookie=member_cookie(vip.index, index, FORWARD), idle_timeout=self.conn_idle_s,
                      flags=flags)
        reverse = [parser.OFPActionSetField(eth_src=vip.mac), parser.OFPActionSetField(ipv4_src=vip.ip),
                   parser.OFPActionSetField(eth_dst=eth.src), parser.OFPActionOutput(in_port)]
        self.add_flow(dp, PRIO_CONN, parser.OFPMatch(eth_type=ETH_IP, ip_proto=PROTO_TCP, ipv4_src=member.ip,
                                                     tcp_src=service_port, ipv4_dst=client_ip, tcp_dst=client_port),
                      reverse, cookie=member_cookie(vip.index, index, REVERSE), idle_timeout=self.conn_idle_s)
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=dp.ofproto.OFP_NO_BUFFER, in_port=in_port,
                                        actions=forward, data=data))
        if vip.conns.get(key) is None:
            vip.conns.add(Connection(key, member.name, eth.src, in_port, now_ns(), client_isn))
            self.stats["conns"] += 1
            self.event_log.emit(NLB_CONN, vip=vip.ip, client=f"{client_ip}:{client_port}", member=member.name)

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev):
        msg = ev.msg
        if msg.cookie & (0xFFFF << 48) != COOKIE_TAG or msg.cookie & 0xFFFF != FORWARD \
                or msg.reason != msg.datapath.ofproto.OFPRR_IDLE_TIMEOUT:
            return
        match = msg.match
        with self.lock:
            for vip in self.vips_on(msg.datapath.id):
                vip.conns.remove((match["ipv4_src"], match["tcp_src"], match["ipv4_dst"], match["tcp_dst"]))

    @set_ev_cls(ofp_event.EventOFPFlowStatsReply, MAIN_DISPATCHER)
    def flow_stats_handler(self, ev):
        """Re-learn pinned connections from the flows a previous controller left behind."""
        dp = ev.msg.datapath
        learned = 0
        with self.lock:
            for stat in ev.msg.body:
                if stat.cookie & (0xFFFF << 48) != COOKIE_TAG or stat.cookie & 0xFFFF != REVERSE:
                    continue
                vip_index, member_index = (stat.cookie >> 32) & 0xFFFF, (stat.cookie >> 16) & 0xFFFF
                vip = next((v for v in self.vips if v.index == vip_index and v.dpid == dp.id), None)
                if vip is None:
                    continue
                name = next((n for n, i in vip.member_index.items() if i == member_index), None)
                fields = {}
                out_port = None
                for action in stat.instructions[0].actions:
                    if hasattr(action, "key"):
                        fields[action.key] = action.value
                    elif hasattr(action, "port"):
                        out_port = action.port
                key = (stat.match["ipv4_dst"], stat.match["tcp_dst"], vip.ip, stat.match["tcp_src"])
                member = vip.pool.members.get(name) if name else None
                if member is None or not (member.alive and member.port_up):
                    continue  # its flows were (or will be) evicted with the member
                if vip.conns.get(key) is None:
                    vip.conns.add(Connection(key, name, fields.get("eth_dst", ""), out_port or 0, now_ns()))
                    learned += 1
        self.event_log.emit(NLB_RELEARN, dpid=dp.id, conns=learned)

    # ---- crafted replies -----------------------------------------------------------

    def _send(self, dp, port, pkt) -> None:
        pkt.serialize()
        parser = dp.ofproto_parser
        dp.send_msg(parser.OFPPacketOut(datapath=dp, buffer_id=dp.ofproto.OFP_NO_BUFFER,
                                        in_port=dp.ofproto.OFPP_CONTROLLER,
                                        actions=[parser.OFPActionOutput(port)], data=pkt.data))

    def _reply_arp(self, dp, in_port, eth, req, vip: Vip) -> None:
        self.stats["arp"] += 1
        pkt = packet.Packet()
        pkt.add_protocol(ethernet.ethernet(ethertype=ETH_ARP, dst=eth.src, src=vip.mac))
        pkt.add_protocol(arp.arp(opcode=arp.ARP_REPLY, src_mac=vip.mac, src_ip=vip.ip,
                                 dst_mac=req.src_mac, dst_ip=req.src_ip))
        self._send(dp, in_port, pkt)

    def _reply_icmp(self, dp, in_port, eth, ip, echo, vip: Vip) -> None:
        self.stats["icmp"] += 1
        pkt = packet.Packet()
        pkt.add_protocol(ethernet.ethernet(ethertype=ETH_IP, dst=eth.src, src=vip.mac))
        pkt.add_protocol(ipv4.ipv4(dst=ip.src, src=vip.ip, proto=PROTO_ICMP))
        pkt.add_protocol(icmp.icmp(type_=icmp.ICMP_ECHO_REPLY, code=0, csum=0, data=echo.data))
        self._send(dp, in_port, pkt)

    def _tcp_to_client(self, dp, port, client_mac, client_ip, client_port, vip: Vip, service_port,
                       seq, ack, bits, payload: bytes = b"") -> None:
        pkt = packet.Packet()
        pkt.add_protocol(ethernet.ethernet(ethertype=ETH_IP, dst=client_mac, src=vip.mac))
        pkt.add_protocol(ipv4.ipv4(dst=client_ip, src=vip.ip, proto=PROTO_TCP))
        pkt.add_protocol(tcp.tcp(src_port=service_port, dst_port=client_port, seq=seq & 0xFFFFFFFF,
                                 ack=ack & 0xFFFFFFFF, bits=bits, window_size=0))
        if payload:
            pkt.add_protocol(payload)
        self._send(dp, port, pkt)

    def _reset(self, dp, in_port, eth, ip, seg, vip: Vip) -> None:
        """RST that the client's TCP accepts: for a SYN, RST|ACK of it; else seq = its ack."""
        self.stats["resets"] += 1
        if seg.has_flags(tcp.TCP_SYN) and seg.has_flags(tcp.TCP_ACK):
            seq, ack, bits = seg.ack, 0, tcp.TCP_RST
        elif seg.has_flags(tcp.TCP_SYN):
            seq, ack, bits = 0, seg.seq + 1, tcp.TCP_RST | tcp.TCP_ACK
        elif seg.has_flags(tcp.TCP_ACK):
            seq, ack, bits = seg.ack, 0, tcp.TCP_RST
        else:
            return
        self._tcp_to_client(dp, in_port, eth.src, ip.src, seg.src_port, vip, seg.dst_port, seq, ack, bits)

    def _challenge_pending(self, dp, vip: Vip, keys: list, last: bool) -> None:
        with self.lock:
            for key in keys:
                conn = self.pending_resets.pop(key, None) if last else self.pending_resets.get(key)
                if conn is not None:
                    self._challenge(dp, vip, conn)

    def _challenge(self, dp, vip: Vip, conn: Connection) -> None:
        """Make a dead CAS's client reveal its sequence state so it can be reset now.

        We never saw the server's sequence numbers (the switch forwarded them), so we send
        two one-byte segments whose sequence numbers are 2^31 apart: at least one lies
        outside the client's receive window, and the client answers it with a duplicate
        ACK (RFC 793). That ACK has no flow any more, reaches ``_handle_tcp`` and gets an
        exact RST. The byte matters: Linux rate-limits answers to out-of-window segments
        to one per 500 ms, but not for segments that carry data, so a retry is answered.
        The ack field lies 2^31 behind the client's first sequence number, so even the
        segment that falls inside the window is refused and its byte never delivered.
        """
        client_ip, client_port, _, service_port = conn.key
        self.stats["challenges"] += 1
        base = random.getrandbits(32)
        ack = (conn.client_isn - (1 << 31)) if conn.client_isn is not None else random.getrandbits(32)
        for seq in (base, base + (1 << 31)):
            self._tcp_to_client(dp, conn.in_port, conn.client_mac, client_ip, client_port, vip, service_port,
                                seq, ack, tcp.TCP_ACK, payload=b"\x00")

    # ---- views for the admin API ---------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "stats": dict(self.stats),
                "fast_fail": self.fast_fail,
                "vips": [{
                    "name": vip.name, "ip": vip.ip, "dpid": vip.dpid, "affinity": vip.pool.affinity,
                    "connections": len(vip.conns),
                    "members": [{"name": m.name, "ip": m.ip, "alive": m.alive, "port_up": m.port_up,
                                 "draining": m.draining, "accepts_new": m.accepts_new,
                                 "connections": vip.conns.count_by_backend().get(m.name, 0)}
                                for m in vip.pool.members.values()],
                } for vip in self.vips],
            }

    def find_vip(self, name_or_ip: str) -> Vip | None:
        return next((v for v in self.vips if name_or_ip in (v.name, v.ip)), None)
