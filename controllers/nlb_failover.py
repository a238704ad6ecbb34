"""How the SDN NLB gets a dead CAS's clients reset fast (mixed into the app, SdnNlb).

A client whose CAS died learns it only when it next sends, or when it times out. The NLB
makes it learn at once: every client packet of a dead member's connection is answered
with an exact RST (in the switch dataplane by a surviving CAS's kernel, the segment
readdressed to it by the switch; in the controller dataplane by the controller), and
clients that send nothing are made to send by a challenge segment (``challenge``). In
the switch dataplane the NLB reads the dead member's connections from the switch's
conntrack (a copy refreshed every ``ct_refresh_ms``, less often when a read is slow, and
a fresh read at failover) and has the switch forget each before challenging it, so that
its next packet is a stray that the tables as they are now send to a survivor, instead
of a datapath flow cached for the dead port until the switch revalidates its cache.
"""

from __future__ import annotations

import random
import time

from controllers import nlb_frames as frames
from controllers.compat import MAIN_DISPATCHER, hub, ofp_event, set_ev_cls
from controllers.nlb_flows import ct_flush_bytes, packet_out_bytes, zone_of
from controllers.nlb_logic import Connection
from controllers.nlb_state import Vip, dump_conntrack
from labcommon.catalogue import NLB_EVICT, NLB_RELEARN
from labcommon.events import now_ns

CLOSED_STATES = ("TIME_WAIT", "CLOSED", "CLOSING", "LAST_ACK")  # nobody left to reset
READ_SHARE = 0.05  # of the switch's main thread, at most, spent on the periodic conntrack reads


def read_interval(read_s: float, floor_s: float) -> float:
    """Seconds to wait before the next conntrack read, given how long the last one took."""
    return max(floor_s, read_s / READ_SHARE - read_s)


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
        """Switch dataplane, a member just died: once the switch applied its dead-member flows
        (a dead port's fast-failover group needs no wait), the clients known from the last
        periodic conntrack read are forgotten by the switch and challenged, in one buffer
        (``_forget_and_challenge``); then a fresh read finds the connections opened since,
        which get the same. The read holds the switch's main thread, which forwards the
        lab's packets, tens of ms at a thousand sessions: it comes after the first wave."""
        if reason != "port_down":
            applied.wait(0.05)
        self.barriers.pop(next((k for k, v in list(self.barriers.items()) if v is applied), None), None)
        known = self._ct_connections(vip, index, name, self.ct_cache.get(vip.index, []))
        self._forget_and_challenge(dp, vip, known)
        challenged_at = now_ns()
        conns = self._ct_connections(vip, index, name, dump_conntrack(zone_of(vip.index), self.datapath_name))
        looked_up = now_ns()
        challenged = {c.key for c in known}
        fresh = [c for c in conns if c.key not in challenged]
        self._forget_and_challenge(dp, vip, fresh)
        self.event_log.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=len(known) + len(fresh),
                            fast_fail=True, lookup_ms=round((looked_up - challenged_at) / 1e6, 2),
                            since_ms=round((challenged_at - since) / 1e6, 2), cached=len(known))

    def _forget_and_challenge(self, dp, vip: Vip, conns: list[Connection]) -> None:
        """The switch forgets each connection (a conntrack flush of its tuple), then each
        client is challenged: its answer, and any segment it sends, is a stray that the tables
        as they are now send to a survivor, instead of a datapath flow cached for the dead
        member's port until the switch revalidates it (a hundred ms and more at a thousand
        sessions). The flushes go first, in one write."""
        if not conns:
            return
        version, zone = dp.ofproto.OFP_VERSION, zone_of(vip.index)
        dp.send(b"".join(ct_flush_bytes(version, zone, c.key[:2], c.key[2:]) for c in conns))
        self.challenger.add(dp, vip, conns)

    def _count_connections(self, vip: Vip) -> None:
        """Switch dataplane: the connections the datapath carries for a VIP when the
        controller (re)connects; they never depended on it (a restart re-learns nothing)."""
        entries = dump_conntrack(zone_of(vip.index), self.datapath_name)
        self.ct_cache[vip.index] = entries
        live = sum(1 for e in entries if e.state not in CLOSED_STATES)
        self.event_log.emit(NLB_RELEARN, dpid=vip.dpid, conns=live)

    def _conntrack_loop(self) -> None:
        """Keep a recent copy of each VIP's conntrack entries, so that a failover can
        challenge the dead member's clients without waiting for a read. A read holds the
        switch's main thread (which forwards the lab's packets in the userspace datapath):
        reads are spaced so that they take at most READ_SHARE of its time."""
        while True:
            started = time.monotonic()
            for vip in self.vips:
                if vip.dpid in self.datapaths:
                    self.ct_cache[vip.index] = dump_conntrack(zone_of(vip.index), self.datapath_name)
            hub.sleep(read_interval(time.monotonic() - started, self.ct_refresh_s))

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
