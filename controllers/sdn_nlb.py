"""The SDN network load balancer: a Ryu/os-ken app that owns the array VIPs.

Two dataplanes, chosen by the config's ``dataplane``:

* ``switch`` (the default): Open vSwitch balances by itself. New connections to the VIP
  hit a select group that hashes the fields the affinity needs (5-tuple, client IP or
  client /24) over one bucket per CAS; each bucket follows its CAS port's liveness and
  commits the connection to conntrack with ``nat(dst=CAS)`` and the member in
  ``ct_mark``, so established connections stay on their CAS whatever the group does
  later. No packet reaches the controller in steady state (OVN's load balancer works so).
* ``controller``: the first packet of each connection is a packet-in; the app picks a CAS
  by consistent hashing (controllers/nlb_logic.py) and pins two exact rewrite flows.

Either way the app answers ARP and ping for the VIP, learns that a CAS is gone from port
status (link down) and from the health agents' probes, takes it out of rotation, and with
``fast_fail`` gets its clients reset within milliseconds, and idle clients are made to
send by a challenge segment. In the switch dataplane the switch readdresses a dead
member's client segments to a surviving CAS, whose kernel answers each with an exact RST
(no per-connection work here but the challenge; the app sees a copy of each reset); in
the controller dataplane every such segment reaches the controller, which answers it
with an exact RST. Admin down / up, drain (with a
deadline) and rejoin come from the admin API (controllers/nlb_api.py) and survive a
restart; a restarted controller re-learns the switch's connections. Only sources listed
per switch port may send to the VIP, and a meter bounds what reaches the controller.

Messages are built by controllers/nlb_flows.py, frames by controllers/nlb_frames.py
(no framework packet parser ever sees an untrusted frame). Config: ``CASLAB_NLB_CONFIG``.
"""

from __future__ import annotations

import json
import os
import threading
import time

from controllers import nlb_frames as frames
from controllers.nlb_challenger import Challenger
from controllers.nlb_failover import FailoverMixin
from controllers.nlb_membership import MembershipMixin
from controllers.nlb_probes import HealthMixin
from controllers.compat import (
    CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, BaseApp, hub, ofp_event, ofproto_v1_3, ofproto_v1_5, set_ev_cls,
)
from controllers.nlb_flows import FORWARD, RESET, REVERSE, Cookie, FlowBuilder
from controllers.nlb_logic import Connection
from controllers.nlb_state import (
    AdminState, TokenBucket, Vip,
)
from labcommon.catalogue import (
    NLB_CONN, NLB_RELEARN, NLB_RESET,
    NLB_SWITCH, NLB_SWITCH_ERROR, NLB_SWITCH_GONE, NLB_SWITCH_REFUSED, NLB_SWITCH_UNUSABLE, NLB_UP,
)
from labcommon.events import EventLog, NullLog, now_ns



class SdnNlb(MembershipMixin, FailoverMixin, HealthMixin, BaseApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION, ofproto_v1_5.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        path = os.environ.get("CASLAB_NLB_CONFIG")
        self.config = {"vips": []}
        if path:
            with open(path, encoding="utf-8") as handle:
                self.config = json.load(handle)
        c = self.config
        self.event_log = EventLog(c["events"], "nlb") if c.get("events") else NullLog()
        self.dataplane = c.get("dataplane", "controller")
        self.fast_fail = bool(c.get("fast_fail", True))
        self.conn_idle_s = int(c.get("conn_idle_s", 120))
        # Until the switch has re-evaluated its cached datapath flows (a few ms, tens under
        # load) a client's answer to a challenge may still take the dead CAS's path; hence a
        # dense schedule of retries early, and a sparse one later.
        self.challenge_delays_s = [float(d) / 1000 for d in c.get(
            "challenge_delays_ms", [1, 2, 3, 5, 7, 10, 14, 20, 30, 45, 70, 120, 250])]
        self.port_detection = bool(c.get("port_detection", True))  # Windows NLB emulation turns these off/on
        self.convergence_s = float(c.get("convergence_ms", 0)) / 1000
        self.datapath_name = c.get("datapath_name")
        health = c.get("health", {})
        self.vips = [Vip(i + 1, spec, int(health.get("fall", 2)), int(health.get("rise", 2)))
                     for i, spec in enumerate(c["vips"])]
        self.admin = AdminState.load(c.get("state_file"))
        self.limiter = TokenBucket(float(c.get("packet_in_rate", 5000)), float(c.get("packet_in_burst", 1000)))
        self.channels: dict[int, object] = {}  # dpid -> the one live connection that claimed it
        self.datapaths: dict[int, object] = {}  # the switches among them the NLB programs
        self.challenger = Challenger(self._send_challenges, self.challenge_delays_s, event_factory=hub.Event)
        self.barriers: dict[tuple[int, int], object] = {}  # (dpid, xid) -> hub.Event
        self.failovers = hub.Queue()  # served by one waiting thread (green or native, as the hub is)
        self.ct_cache: dict[int, list] = {}  # switch dataplane: vip index -> last conntrack read
        self.ct_refresh_s = float(c.get("ct_refresh_ms", 250)) / 1000
        self.lock = threading.RLock()
        self.stats = {"packet_in": 0, "conns": 0, "resets": 0, "challenges": 0, "arp": 0, "icmp": 0,
                      "dropped": 0, "malformed": 0}
        for vip in self.vips:
            self._restore_admin(vip)
        self.event_log.emit(NLB_UP, vips=[v.ip for v in self.vips], fast_fail=self.fast_fail, dataplane=self.dataplane)
        self._threads = [hub.spawn(self._guard_report), hub.spawn(self.challenger.run),
                         hub.spawn(self._failover_worker)]
        if self.dataplane == "switch" and self.fast_fail:
            self._threads.append(hub.spawn(self._conntrack_loop))
        if health.get("socket"):
            self._threads.append(hub.spawn(self._health_loop, health["socket"]))
        if c.get("api"):
            from controllers.nlb_api import serve_api
            self._threads.append(hub.spawn(serve_api, self, c["api"]))

    def _restore_admin(self, vip: Vip) -> None:
        """A restarted controller keeps what an admin set: admin down, drains, and what is
        left of a drain's deadline."""
        for name in vip.pool.members:
            saved = self.admin.get(vip.ip, name)
            vip.pool.set_state(name, admin_up=saved.get("admin_up", True) is True,
                               draining=saved.get("draining", False) is True)
            deadline = saved.get("drain_deadline_wall")
            if vip.pool.members[name].draining and isinstance(deadline, (int, float)):
                vip.drain_generation[name] += 1
                hub.spawn_after(max(0.0, deadline - time.time()), self._drain_deadline, vip, name,
                                vip.drain_generation[name])

    # ---- switch set-up -------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        with self.lock:
            live = self.channels.get(dp.id)
            if live is not None and live is not dp and can_send(live):
                # One connection per datapath id: a second claim (an impostor, or a switch
                # reconnecting before its old channel's death arrived) is hung up on; the
                # switch retries, and gets in once the old channel is gone.
                self.event_log.emit(NLB_SWITCH_REFUSED, dpid=dp.id)
                dp.close()
                return
            if live is not None and live is not dp:
                # the old channel can send nothing any more: os-ken ends a channel's sending
                # after a send timeout or error and waits for the switch to hang up, a death
                # that may never arrive (its receive loop takes TLS errors for read timeouts).
                # The switch has reconnected; the old channel is dead, the new one replaces it.
                self._forget_channel(live)
                live.close()
            self.channels[dp.id] = dp
        build = FlowBuilder(dp)
        msgs = build.table_miss()
        mine = self.vips_on(dp.id)
        if mine and self.dataplane == "switch" and dp.ofproto.OFP_VERSION < ofproto_v1_5.OFP_VERSION:
            # its select group's hash fields and bucket properties exist from OpenFlow 1.5 on
            self.event_log.emit(NLB_SWITCH_UNUSABLE, dpid=dp.id, reason="the switch dataplane needs OpenFlow 1.5; "
                                                                         "this switch speaks an older version")
            mine = []
        if mine:
            meter = self.config.get("meter", {})
            msgs += build.meter(int(meter.get("rate_pps", 2000)), int(meter.get("burst", 500)))
        for vip in mine:
            msgs += build.vip_base(vip)
        msgs += [build.port_desc_request()]
        if mine and self.dataplane == "controller":
            msgs.append(build.our_flows_request())
        with self.lock:
            if mine or not self.vips_on(dp.id):
                self.datapaths[dp.id] = dp
            self._send(dp, msgs)
        self.event_log.emit(NLB_SWITCH, dpid=dp.id)

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def channel_dead_handler(self, ev):
        """A switch's channel died: the switch is forgotten until it connects again (a
        message still queued from the dead channel is ignored by ``_live``)."""
        dp = ev.datapath
        with self.lock:
            if dp.id is None or self.channels.get(dp.id) is not dp:
                return  # never claimed a datapath id, a refused duplicate, or replaced already
            self._forget_channel(dp)

    def _forget_channel(self, dp) -> None:
        """The switch behind this channel is forgotten until it connects again (under the lock)."""
        del self.channels[dp.id]
        self.datapaths.pop(dp.id, None)
        self.event_log.emit(NLB_SWITCH_GONE, dpid=dp.id)

    def _live(self, dp) -> bool:
        """The message came over the channel that holds its datapath id."""
        return dp.id is not None and self.channels.get(dp.id) is dp

    def _programmed(self, dp) -> bool:
        """The message came from a switch the NLB programs, over its live channel."""
        return dp.id is not None and self.datapaths.get(dp.id) is dp

    def vips_on(self, dpid: int) -> list[Vip]:
        return [vip for vip in self.vips if vip.dpid == dpid]

    def _send(self, dp, msgs) -> None:
        for msg in msgs:
            dp.send_msg(msg)

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_handler(self, ev):
        dp = ev.msg.datapath
        if not self._programmed(dp):
            return  # a switch the NLB could not use (see switch_features_handler), or not its live channel
        with self.lock:
            for port in ev.msg.body:
                self._note_port(dp, port, install=False)
            for vip in self.vips_on(dp.id):
                self._install_vip(dp, vip)

    def _install_vip(self, dp, vip: Vip) -> None:
        """The VIP's guard and service flows (they need the port numbers the switch reported)."""
        build = FlowBuilder(dp)
        msgs = build.guard(vip, vip.allowed_sources())
        if self.dataplane == "switch":
            members = [(vip.member_index[m.name], m) for m in vip.pool.members.values()]
            hub.spawn(self._count_connections, vip)
            msgs.append(self._group(build, vip))  # before the flows that point at it
            msgs += build.switch_service(vip, members)
            if self.fast_fail:
                msgs += build.survivor_resets(vip, members)
            for index, member in members:
                port = vip.port_numbers.get(member.port_name)
                if port is not None:
                    msgs += build.deliver_to(vip, index, member, port,
                                             vip.survivors_of(member.name) if self.fast_fail else [])
                msgs += self._dead_flows(build, vip, member) if not member.in_service \
                    else build.forget_dead_member(vip, index)
            msgs += self._strays(build, vip)
        else:
            msgs += build.service_to_controller(vip)
        self._send(dp, msgs)

    def _strays(self, build: FlowBuilder, vip: Vip) -> list:
        """With fast_fail, the stray group and flow, over the members in service (a frozen
        CAS's port is up, but its kernel answers nothing); without it, nothing."""
        if not self.fast_fail:
            return []
        return build.strays(vip, [(m, vip.port_numbers[m.port_name]) for m in vip.pool.members.values()
                                  if m.in_service and m.port_name in vip.port_numbers])

    def _dead_flows(self, build: FlowBuilder, vip: Vip, member) -> list:
        """A dead member's flows: its clients' segments to a survivor (fast_fail) or the controller."""
        survivor = vip.survivor_for(member.name) if self.fast_fail else None
        return build.dead_member(vip, vip.member_index[member.name], member, survivor)

    def _group(self, build: FlowBuilder, vip: Vip):
        buckets = [(vip.member_index[m.name], m, vip.port_numbers[m.port_name]) for m in vip.pool.members.values()
                   if m.accepts_new and m.port_name in vip.port_numbers]
        return build.group(vip, buckets, vip.pool.affinity)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def error_handler(self, ev):
        """A message the switch refused: logged, so a broken pipeline is never silent."""
        msg = ev.msg
        if not self._live(msg.datapath):
            return
        # an experimenter error (Open vSwitch's NX errors) has no code, its exp_type instead
        code = msg.code if msg.code is not None else getattr(msg, "exp_type", None) or 0
        self.event_log.emit(NLB_SWITCH_ERROR, dpid=msg.datapath.id, type=int(msg.type), code=int(code),
                            data=bytes(msg.data or b"")[:64].hex())

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        dp, msg = ev.msg.datapath, ev.msg
        if not self._programmed(dp):
            return
        with self.lock:
            self._note_port(dp, msg.desc, gone=msg.reason == dp.ofproto.OFPPR_DELETE)

    def _note_port(self, dp, port, gone: bool = False, install: bool = True) -> None:
        """A port's number and state; a member or client port that is new (or renumbered)
        gets the VIP's flows and groups again, a member's link state drives its state."""
        name = port.name.decode() if isinstance(port.name, bytes) else port.name
        ofp = dp.ofproto
        up = not gone and not (port.state & ofp.OFPPS_LINK_DOWN) and not (port.config & ofp.OFPPC_PORT_DOWN)
        for vip in self.vips_on(dp.id):
            known = vip.port_numbers.get(name)
            vip.port_numbers[name] = port.port_no
            relevant = name in {m.port_name for m in vip.pool.members.values()} | \
                {s["port_name"] for s in vip.sources}
            if install and relevant and known != port.port_no and not gone:
                self._install_vip(dp, vip)
            for member in vip.pool.members.values():
                if self.port_detection and member.port_name == name and member.port_up != up:
                    self.set_member(vip, member.name, "port_down" if not up else "port_up", port_up=up)

    # ---- packets -------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        dp = msg.datapath
        if not self._live(dp) or not self.limiter.allow():
            return
        frame = frames.parse(msg.data)
        if frame is None:
            self.stats["malformed"] += 1
            return
        self.stats["packet_in"] += 1
        vips = {v.ip: v for v in self.vips_on(dp.id)}
        if frame.arp_op is not None:
            vip = vips.get(frame.arp_tpa)
            if vip is not None and frame.arp_op == frames.ARP_REQUEST:
                self.stats["arp"] += 1
                self._out(dp, msg.match["in_port"], frames.arp_reply(vip.mac, vip.ip, frame.arp_sha,
                                                                     frame.arp_spa, frame.vlans))
            return
        if _is_survivor_reset_copy(msg) and frame.is_tcp and frame.ip_src in vips:
            self._survivor_reset(vips[frame.ip_src], frame)
            return
        vip = vips.get(frame.ip_dst) or self._vip_of_member(vips, frame)
        if vip is None:
            return
        if frame.icmp_type == frames.ICMP_ECHO_REQUEST and frame.ip_dst == vip.ip:
            self.stats["icmp"] += 1
            self._out(dp, msg.match["in_port"], frames.icmp_echo_reply(frame, vip.mac, vip.ip))
        elif frame.is_tcp and self.dataplane == "controller":
            with self.lock:  # the connection table is shared with membership changes
                self._handle_tcp(dp, msg.match["in_port"], msg.data, frame, vip)
        elif frame.is_tcp:  # switch dataplane: nothing shared to change, no lock on this path
            self._handle_tcp(dp, msg.match["in_port"], msg.data, frame, vip)

    def _vip_of_member(self, vips: dict[str, Vip], frame: frames.Frame) -> Vip | None:
        """Switch dataplane: a client packet after NAT names the CAS, not the VIP."""
        return next((v for v in vips.values() if v.member_by_ip(frame.ip_dst or "") and frame.tcp_dst in v.ports),
                    None)

    def _handle_tcp(self, dp, in_port, data, seg: frames.Frame, vip: Vip) -> None:
        key = (seg.ip_src, seg.tcp_src, vip.ip, seg.tcp_dst)
        if self.dataplane == "controller":
            is_syn = seg.has(frames.SYN) and not seg.has(frames.ACK)
            if is_syn and seg.tcp_dst in vip.ports:
                conn = vip.conns.get(key)
                member = vip.pool.members.get(conn.backend) if conn else vip.pool.choose(seg.ip_src, seg.tcp_src)
                if member is not None and (member.accepts_new or conn is not None):
                    self._pin(dp, in_port, data, seg, key, member, vip)
                    return
            else:
                known = vip.conns.get(key)
                if known is not None:
                    member = vip.pool.members[known.backend]
                    if member.in_service:  # raced its own flow install: forward it the same way
                        self._pin(dp, in_port, data, seg, key, member, vip)
                        return
                    vip.conns.remove(key)  # pinned to a member that is gone: reset it below
                if not self.fast_fail and seg.tcp_dst in vip.ports:
                    return
        # A segment the switch had no way to forward: a dead CAS's client, a closed port or
        # a stray. Reset it so the client learns at once.
        reset = frames.reset_for(seg, vip.mac, vip.ip, seg.tcp_dst)
        if reset is not None:
            self.stats["resets"] += 1
            self._out(dp, in_port, reset)
            self.challenger.done(key)
            if self.dataplane == "switch":
                dead = vip.member_by_ip(seg.ip_dst or "")
                self.event_log.emit(NLB_RESET, vip=vip.ip, client=f"{seg.ip_src}:{seg.tcp_src}",
                                    member=dead.name if dead else None, via="controller")

    def _survivor_reset(self, vip: Vip, rst: frames.Frame) -> None:
        """The copy of a reset a survivor's kernel sent as the VIP (switch dataplane): the
        client has it already; stop challenging that connection and say it was reset."""
        key = (rst.ip_dst, rst.tcp_dst, vip.ip, rst.tcp_src)
        self.stats["resets"] += 1
        self.challenger.done(key)
        self.event_log.emit(NLB_RESET, vip=vip.ip, client=f"{rst.ip_dst}:{rst.tcp_dst}", member=None, via="survivor")

    def _pin(self, dp, in_port, data, seg: frames.Frame, key, member, vip: Vip) -> None:
        out_port = vip.port_numbers.get(member.port_name)
        if out_port is None:
            return
        build = FlowBuilder(dp)
        flows, forward = build.pin(vip, vip.member_index[member.name], member, out_port, key, seg.eth_src, in_port,
                                   self.conn_idle_s)
        self._send(dp, flows + [build.packet_out(out_port, data, forward)])
        if vip.conns.get(key) is None:
            vip.conns.add(Connection(key, member.name, seg.eth_src, in_port, now_ns(), seg.tcp_seq))
            self.stats["conns"] += 1
            self.event_log.emit(NLB_CONN, vip=vip.ip, client=f"{seg.ip_src}:{seg.tcp_src}", member=member.name)

    def _out(self, dp, port: int, data: bytes) -> None:
        dp.send_msg(FlowBuilder(dp).packet_out(port, data))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev):
        msg = ev.msg
        cookie = Cookie.decode(msg.cookie)
        if not self._live(msg.datapath) or cookie is None or cookie.kind != FORWARD or msg.reason != msg.datapath.ofproto.OFPRR_IDLE_TIMEOUT:
            return
        m = msg.match
        with self.lock:
            for vip in self.vips_on(msg.datapath.id):
                vip.conns.remove((m["ipv4_src"], m["tcp_src"], m["ipv4_dst"], m["tcp_dst"]))

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPFlowDescStatsReply], MAIN_DISPATCHER)
    def flow_stats_handler(self, ev):
        """Controller dataplane: re-learn the connections a previous controller pinned."""
        dp = ev.msg.datapath
        if not self._live(dp):
            return
        learned = 0
        with self.lock:
            for stat in ev.msg.body:
                cookie = Cookie.decode(stat.cookie)
                if cookie is None or cookie.kind != REVERSE:
                    continue
                vip = next((v for v in self.vips if v.index == cookie.vip and v.dpid == dp.id), None)
                member = vip.member_by_index(cookie.member) if vip else None
                if member is None or not member.in_service:
                    continue  # its flows were (or will be) evicted with the member
                fields, out_port = {}, 0
                for action in stat.instructions[0].actions:
                    if hasattr(action, "key"):
                        fields[action.key] = action.value
                    elif hasattr(action, "port"):
                        out_port = action.port
                key = (stat.match["ipv4_dst"], stat.match["tcp_dst"], vip.ip, stat.match["tcp_src"])
                if vip.conns.get(key) is None:
                    vip.conns.add(Connection(key, member.name, fields.get("eth_dst", ""), out_port, now_ns()))
                    learned += 1
        self.event_log.emit(NLB_RELEARN, dpid=dp.id, conns=learned)

    # ---- views for the admin API ---------------------------------------------------------

    def snapshot(self) -> dict:
        with self.lock:
            return {
                "stats": dict(self.stats), "fast_fail": self.fast_fail, "dataplane": self.dataplane,
                "vips": [{
                    "name": vip.name, "ip": vip.ip, "dpid": vip.dpid, "affinity": vip.pool.affinity,
                    "connections": len(vip.conns),
                    "members": [{"name": m.name, "ip": m.ip, "healthy": m.healthy, "port_up": m.port_up,
                                 "admin_up": m.admin_up, "draining": m.draining, "in_service": m.in_service,
                                 "accepts_new": m.accepts_new,
                                 "connections": vip.conns.count_by_backend().get(m.name, 0)}
                                for m in vip.pool.members.values()],
                } for vip in self.vips],
            }

    def find_vip(self, name_or_ip: str) -> Vip | None:
        return next((v for v in self.vips if name_or_ip in (v.name, v.ip)), None)


def can_send(dp) -> bool:
    """os-ken's Datapath can still send: its send loop has not ended (it drops its queue when
    it does), the channel is active, and its socket still reaches the switch it connected from
    (a socket closed or reset under it, or whose descriptor now belongs to another connection,
    does not)."""
    if getattr(dp, "send_q", ()) is None or not getattr(dp, "is_active", True):
        return False
    sock = getattr(dp, "socket", None)
    if sock is None:
        return True
    try:
        return tuple(sock.getpeername()) == tuple(dp.address)
    except OSError:
        return False


def _is_survivor_reset_copy(msg) -> bool:
    """A packet-in from the flow that passes a survivor's RST on as the VIP (its cookie says so)."""
    cookie = Cookie.decode(getattr(msg, "cookie", 0) or 0)
    return cookie is not None and cookie.kind == RESET
