"""How the SDN NLB gets a dead CAS's clients reset fast (mixed into the app, SdnNlb).

A client whose CAS died learns it only when it next sends, or when it times out. The NLB
makes it learn at once: every client packet of a dead member's connection is answered
with an exact RST (in the switch dataplane by a surviving CAS's kernel, the segment
readdressed to it by the switch; in the controller dataplane by the controller), and
clients that send nothing are made to send by a challenge segment (``challenge``). In
the switch dataplane the NLB reads the
dead member's connections from the switch's conntrack (a copy refreshed every
``ct_refresh_ms``, and a fresh read at failover) and drops the datapath's cached flows
of those connections, so their next packet is translated by the tables as they are now
instead of waiting for the switch to revalidate its cache (tens of ms under load).
"""

from __future__ import annotations

import random

from controllers import nlb_frames as frames
from controllers.compat import MAIN_DISPATCHER, hub, ofp_event, set_ev_cls
from controllers.nlb_flows import packet_out_bytes, zone_of
from controllers.nlb_logic import Connection
from controllers.nlb_state import Vip, delete_datapath_flows, dump_conntrack, stale_datapath_flows
from labcommon.catalogue import NLB_EVICT, NLB_RELEARN
from labcommon.events import now_ns

CLOSED_STATES = ("TIME_WAIT", "CLOSED", "CLOSING", "LAST_ACK")  # nobody left to reset


class FailoverMixin:
    def _send_challenges(self, due: list) -> None:
        """Every challenge due now, written to each switch as one buffer: one entry of the
        framework's 16-deep send queue and one TLS write, not one per connection (a queue
        full of them made each wait for the sender thread)."""
        by_switch: dict[int, tuple[object, list[bytes]]] = {}
        for dp, vip, conn in due:
            frame = self.challenge_frame(vip, conn.key, conn.client_mac)
            by_switch.setdefault(id(dp), (dp, []))[1].append(
                packet_out_bytes(dp.ofproto.OFP_VERSION, conn.in_port, frame))
        for dp, messages in by_switch.values():
            self.stats["challenges"] += len(messages)
            dp.send(b"".join(messages))

    def _ct_connections(self, vip: Vip, index: int, name: str, entries) -> list[Connection]:
        """The live connections of member ``index`` among conntrack entries, as Connections."""
        out = []
        for entry in entries:
            if entry.mark != index or entry.state in CLOSED_STATES:
                continue
            port, mac = vip.client_port(entry.client_ip)
            if port is not None:
                out.append(Connection((entry.client_ip, entry.client_port, vip.ip, entry.service_port), name, mac,
                                      port, now_ns()))
        return out

    def _send_with_barrier(self, dp, msgs: list):
        """Send messages and a barrier; the event is set once the switch has applied them."""
        applied = hub.Event()
        barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
        dp.set_xid(barrier)
        self.barriers[(dp.id, barrier.xid)] = applied
        self._send(dp, msgs + [barrier])
        return applied

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply_handler(self, ev):
        if not self._live(ev.msg.datapath):
            return
        applied = self.barriers.pop((ev.msg.datapath.id, ev.msg.xid), None)
        if applied is not None:
            applied.set()

    def _failover_worker(self) -> None:
        while True:
            self._failover(*self.failovers.get())

    def _failover(self, dp, vip: Vip, index: int, name: str, reason: str, since: int,
                  applied) -> None:
        """Switch dataplane, a member just died: once the switch applied its dead-member flow
        (a dead port's fast-failover group needs no wait), challenge its clients known from
        the last periodic conntrack read at once; drop the datapath's cached flows of its
        connections, so that a packet still cached on the dead member's path takes the
        tables as they are now instead of waiting for the switch to revalidate it (the
        challenge schedule's next rounds, 1, 2, 3 ms on, cover answers lost before); then
        challenge any connection a fresh conntrack read adds."""
        if reason != "port_down":
            applied.wait(0.05)
        self.barriers.pop(next((k for k, v in list(self.barriers.items()) if v is applied), None), None)
        zone = zone_of(vip.index)
        known = self._ct_connections(vip, index, name, self.ct_cache.get(vip.index, []))
        self.challenger.add(dp, vip, known)
        challenged_at = now_ns()
        try:
            flushed = delete_datapath_flows(self.datapath_name, stale_datapath_flows(self.datapath_name, zone, index))
        except (OSError, ValueError):
            flushed = 0
        started = now_ns()
        conns = self._ct_connections(vip, index, name, dump_conntrack(zone, self.datapath_name))
        looked_up = now_ns()
        challenged = {c.key for c in known}
        self.challenger.add(dp, vip, [c for c in conns if c.key not in challenged])
        self.event_log.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=len(conns), fast_fail=True,
                            lookup_ms=round((looked_up - started) / 1e6, 2),
                            since_ms=round((challenged_at - since) / 1e6, 2),
                            flush_ms=round((started - challenged_at) / 1e6, 2),
                            cached=len(known), flushed=flushed)

    def _count_connections(self, vip: Vip) -> None:
        """Switch dataplane: the connections the datapath carries for a VIP when the
        controller (re)connects; they never depended on it (a restart re-learns nothing)."""
        entries = dump_conntrack(zone_of(vip.index), self.datapath_name)
        self.ct_cache[vip.index] = entries
        live = sum(1 for e in entries if e.state not in CLOSED_STATES)
        self.event_log.emit(NLB_RELEARN, dpid=vip.dpid, conns=live)

    def _conntrack_loop(self) -> None:
        """Keep a recent copy of each VIP's conntrack entries, so that a failover can
        challenge the dead member's clients without waiting for a read."""
        while True:
            for vip in self.vips:
                if vip.dpid in self.datapaths:
                    self.ct_cache[vip.index] = dump_conntrack(zone_of(vip.index), self.datapath_name)
            hub.sleep(self.ct_refresh_s)

    @staticmethod
    def challenge_frame(vip: Vip, key: tuple, client_mac: str) -> bytes:
        """One data segment the client must answer, without ever accepting its byte: its
        sequence number is random, so it is almost surely outside the client's window
        (answered with a duplicate ACK; segments carrying data are exempt from Linux's
        rate limit on such answers) and, if inside, its acknowledgement is random too and
        (RFC 5961) the client answers with a challenge ACK instead. Either answer takes the
        dead member's path, now to a survivor's kernel (switch dataplane) or the controller
        (its flows are gone), and is reset exactly."""
        client_ip, client_port, _, service_port = key
        return frames.challenge(vip.mac, vip.ip, service_port, client_mac, client_ip, client_port,
                                random.getrandbits(32), random.getrandbits(32))
