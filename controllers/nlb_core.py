"""The SDN NLB's decisions, as a pure core (Faucet's ``Valve`` way): inputs go in with
``now``, outputs come out; the app (controllers/sdn_nlb.py) only turns framework events
into calls and executes what comes back, through one path.

Inputs (one method each, ``now`` in monotonic nanoseconds): a switch connecting or its
channel dying, its ports, packet-ins, flow removals and flow stats, a switch error, the
health agents' probe results, the admin API's requests (admin down/up, drain, rejoin,
affinity), conntrack reads, the two halves of a failover, and ``tick`` (drain deadlines,
convergence delays, the guard report) and ``challenges_due`` (the challenge schedule,
also in two steps: ``challenges.due`` under the app's lock, ``challenge_writes`` off it).

Outputs (small declared records): ``Send`` (OpenFlow messages, or raw bytes written as
one buffer, to one channel), ``Emit`` (an event of labcommon/catalogue.py), ``Wake`` (the
next time ``tick``/``challenges_due`` want to run), ``Close`` (hang up on a channel),
``SaveAdmin`` (what an admin set, to keep across a restart), ``ReadConntrack`` (read a
VIP's conntrack zone and hand it back to ``conntrack_read``) and ``Failover`` (run the
switch dataplane's fast failover: wait for the barrier, then ``failover_cached``, read
the conntrack, ``failover_fresh``).

The core never calls the hub, a clock, a socket, a file or a process. A channel is
whatever the framework gave (os-ken's Datapath): the core keeps it to know which
connection holds a datapath id and reads its ``ofproto``/``ofproto_parser`` to build
messages in the switch's version (controllers/nlb_flows.py); it never sends on it.
Tests drive it with a plain object carrying those two modules.

Not thread-safe: the app holds one lock around every call.
"""

from __future__ import annotations

import heapq
import itertools
import random
from dataclasses import dataclass, field
from typing import Any

from controllers import nlb_frames as frames
from controllers.nlb_challenger import ChallengeSchedule
from controllers.nlb_flows import (
    FORWARD, OFP15, RESET, REVERSE, Cookie, FlowBuilder, ct_flush_bytes, packet_out_bytes, zone_of,
)
from controllers.nlb_logic import Connection
from controllers.nlb_state import CtEntry, TokenBucket, Vip
from labcommon.catalogue import (
    LB_MEMBER, NLB_CONN, NLB_CONVERGING, NLB_EVICT, NLB_GUARD, NLB_RELEARN, NLB_RESET, NLB_SWITCH, NLB_SWITCH_ERROR,
    NLB_SWITCH_GONE, NLB_SWITCH_REFUSED, NLB_SWITCH_UNUSABLE, NLB_UP,
)
from labcommon.programs import NlbConfig

S = 1_000_000_000  # nanoseconds in a second
CLOSED_STATES = ("TIME_WAIT", "CLOSED", "CLOSING", "LAST_ACK")  # nobody left to reset
READ_SHARE = 0.05  # of the switch's main thread, at most, spent on the periodic conntrack reads
GUARD_PERIOD = 1 * S  # how often the packet-ins the rate limit refused are reported
BARRIER_XID_BASE = 0x4E4C0000  # the barriers the core asks for ("NL"), told apart from os-ken's own xids


# Controller dataplane: a dead member's connection is first challenged this long after its flows'
# delete was sent (the switch applies it to its cached datapath flows in about a ms when idle).
FLOW_SETTLE_S = 0.001


def read_interval(read_s: float, floor_s: float) -> float:
    """Seconds to wait before the next conntrack read, given how long the last one took."""
    return max(floor_s, read_s / READ_SHARE - read_s)


# ---- outputs ----------------------------------------------------------------------------------


@dataclass(frozen=True, eq=False)
class Send:
    """Messages for one channel, in order: OpenFlow messages (sent one by one) or bytes
    (each written as one buffer)."""

    channel: Any
    messages: list


@dataclass(frozen=True, eq=False)
class Emit:
    event: Any
    fields: dict
    ts: int | None = None  # None: stamped when it is written

    @classmethod
    def emit(cls, event, ts: int | None = None, **fields) -> "Emit":
        """Made as the event log is called (tests/test_catalogue.py finds producers so)."""
        return cls(event, fields, ts)


@dataclass(frozen=True)
class Wake:
    at: int  # monotonic ns: tick / challenges_due have work then


@dataclass(frozen=True, eq=False)
class Close:
    channel: Any


@dataclass(frozen=True, eq=False)
class SaveAdmin:
    vip: str
    member: str
    values: dict


@dataclass(frozen=True)
class ReadConntrack:
    vip_index: int  # read zone_of(vip_index), then conntrack_read(vip_index, entries, relearn=True)


@dataclass(eq=False)
class Failover:
    """Switch dataplane, fast_fail: a member died and its flows are on their way, followed
    by the barrier ``barrier_xid``; the app's failover worker runs it in steps (see
    ``failover_cached``), the record keeping what each step found."""

    channel: Any
    vip_index: int
    member_index: int
    name: str
    reason: str
    since: int  # ns, when the member was evicted
    barrier_xid: int
    known: list = field(default_factory=list)  # the connections of the cached read
    fresh: list | None = None  # those the fresh read added (None: not read yet)
    challenged_at: int = 0  # ns, when the first wave was written
    read_from: int = 0  # ns, the fresh read's start (after the first wave's resets, or a limit)
    looked_up: int = 0  # ns, its end


# ---- the core ---------------------------------------------------------------------------------


class NlbCore:
    def __init__(self, config: NlbConfig, rng: random.Random | None = None):
        self.dataplane = config.dataplane
        self.fast_fail = config.fast_fail
        self.conn_idle_s = config.conn_idle_s
        self.challenge_delays_s = [d / 1000 for d in config.challenge_delays_ms]
        self.port_detection = config.port_detection  # Windows NLB emulation turns these off/on
        self.convergence_ns = round(config.convergence_ms * 1e6)
        self.meter = config.meter
        self.vips = [Vip(i + 1, spec, config.health.fall, config.health.rise) for i, spec in enumerate(config.vips)]
        self.limiter = TokenBucket(config.packet_in_rate, config.packet_in_burst)
        self.channels: dict[int, Any] = {}  # dpid -> the one live connection that claimed it
        self.datapaths: dict[int, Any] = {}  # the switches among them the NLB programs
        self.challenges = ChallengeSchedule(self.challenge_delays_s, settle_s=FLOW_SETTLE_S)
        self.ct_cache: dict[int, list[CtEntry]] = {}  # switch dataplane: vip index -> last conntrack read
        self.stats = {"packet_in": 0, "conns": 0, "resets": 0, "challenges": 0, "arp": 0, "icmp": 0,
                      "dropped": 0, "malformed": 0}
        self.timers: list[tuple[int, int, str, tuple]] = []  # (at, serial, kind, args)
        self.serial = itertools.count()
        self.xids = itertools.count(BARRIER_XID_BASE)
        self.rng = rng or random.Random()

    # ---- time -----------------------------------------------------------------------------

    def start(self, saved: dict, now: int, wall: float) -> list:
        """The app started: what an admin set before (``saved``: vip -> member -> values, as
        AdminState keeps them) is restored, a drain's deadline with what is left of it
        (``wall``: the wall clock in seconds, the deadline is kept as one)."""
        self.limiter.stamp = now / S
        out = []
        for vip in self.vips:
            for name in vip.pool.members:
                values = saved.get(vip.ip, {}).get(name, {})
                vip.pool.set_state(name, admin_up=values.get("admin_up", True) is True,
                                   draining=values.get("draining", False) is True)
                deadline = values.get("drain_deadline_wall")
                if vip.pool.members[name].draining and isinstance(deadline, (int, float)):
                    vip.drain_generation[name] += 1
                    out += self._timer(now + max(0, round((deadline - wall) * S)), "drain", vip.index, name,
                                       vip.drain_generation[name])
        out.append(Emit.emit(NLB_UP, vips=[v.ip for v in self.vips], fast_fail=self.fast_fail,
                                 dataplane=self.dataplane))
        return out + self._timer(now + GUARD_PERIOD, "guard")

    def _timer(self, at: int, kind: str, *args) -> list:
        heapq.heappush(self.timers, (at, next(self.serial), kind, args))
        return [Wake(at)]

    def next_wake(self) -> int | None:
        """The earliest time ``tick`` or ``challenges_due`` has work (monotonic ns)."""
        times = [t for t in (self.timers[0][0] if self.timers else None, self.challenges.next_at()) if t is not None]
        return min(times) if times else None

    def tick(self, now: int) -> list:
        """Timers due at ``now``: drain deadlines, convergence delays, the guard report."""
        out = []
        while self.timers and self.timers[0][0] <= now:
            _, _, kind, args = heapq.heappop(self.timers)
            if kind == "drain":
                out += self._drain_deadline(now, *args)
            elif kind == "converge":
                index, name, reason, healthy = args
                out += self._set_member(self._vip(index), name, reason, now, healthy=healthy)
            elif kind == "guard":
                refused = self.limiter.take_refused()
                if refused:
                    self.stats["dropped"] += refused
                    out.append(Emit.emit(NLB_GUARD, reason="rate_limited", count=refused))
                out += self._timer(now + GUARD_PERIOD, "guard")
        return out

    def challenges_due(self, now: int) -> list:
        """Every challenge due at ``now``, as ``challenge_writes`` makes them."""
        return self.challenge_writes(self.challenges.due(now))

    def challenge_writes(self, due: list) -> list:
        """Challenges (``ChallengeSchedule.due``'s entries) written to each switch as one
        buffer: one entry of the framework's 16-deep send queue and one TLS write, not one
        per connection (a queue full of them made each wait for the sender thread). Reads
        no state but the entries: the app builds them off its lock, as packet-ins wait on it."""
        by_switch: dict[int, tuple[Any, list[bytes]]] = {}
        for channel, vip, conn in due:
            frame = self.challenge_frame(vip, conn.key, conn.client_mac)
            by_switch.setdefault(id(channel), (channel, []))[1].append(
                packet_out_bytes(channel.ofproto.OFP_VERSION, conn.in_port, frame))
        out = []
        for channel, messages in by_switch.values():
            self.stats["challenges"] += len(messages)
            out.append(Send(channel, [b"".join(messages)]))
        return out

    # ---- switch set-up ----------------------------------------------------------------------

    def switch_connected(self, channel, live_can_send: bool, now: int) -> list:
        """A switch's features reply on ``channel``. ``live_can_send``: the channel that holds
        its datapath id now (another one) can still send (the app asks the framework)."""
        dpid = channel.id
        live = self.channels.get(dpid)
        out: list = []
        if live is not None and live is not channel and live_can_send:
            # One connection per datapath id: a second claim (an impostor, or a switch
            # reconnecting before its old channel's death arrived) is hung up on; the
            # switch retries, and gets in once the old channel is gone.
            return [Emit.emit(NLB_SWITCH_REFUSED, dpid=dpid), Close(channel)]
        if live is not None and live is not channel:
            # the old channel can send nothing any more: os-ken ends a channel's sending
            # after a send timeout or error and waits for the switch to hang up, a death
            # that may never arrive (its receive loop takes TLS errors for read timeouts).
            # The switch has reconnected; the old channel is dead, the new one replaces it.
            out += self._forget_channel(live) + [Close(live)]
        self.channels[dpid] = channel
        build = FlowBuilder(channel)
        msgs = build.table_miss()
        mine = self.vips_on(dpid)
        if mine and self.dataplane == "switch" and channel.ofproto.OFP_VERSION < OFP15:
            # its select group's hash fields and bucket properties exist from OpenFlow 1.5 on
            out.append(Emit.emit(NLB_SWITCH_UNUSABLE, dpid=dpid, reason="the switch dataplane needs OpenFlow 1.5; "
                                                                         "this switch speaks an older version"))
            mine = []
        if mine:
            msgs += build.meter(self.meter.rate_pps, self.meter.burst)
        for vip in mine:
            msgs += build.vip_base(vip)
        msgs += [build.port_desc_request()]
        if mine and self.dataplane == "controller":
            msgs.append(build.our_flows_request())
        if mine or not self.vips_on(dpid):
            self.datapaths[dpid] = channel
        return out + [Send(channel, msgs), Emit.emit(NLB_SWITCH, dpid=dpid)]

    def channel_dead(self, channel) -> list:
        """A switch's channel died: the switch is forgotten until it connects again."""
        if channel.id is None or self.channels.get(channel.id) is not channel:
            return []  # never claimed a datapath id, a refused duplicate, or replaced already
        return self._forget_channel(channel)

    def _forget_channel(self, channel) -> list:
        del self.channels[channel.id]
        self.datapaths.pop(channel.id, None)
        return [Emit.emit(NLB_SWITCH_GONE, dpid=channel.id)]

    def is_live(self, channel) -> bool:
        """The message came over the channel that holds its datapath id."""
        return channel.id is not None and self.channels.get(channel.id) is channel

    def _programmed(self, channel) -> bool:
        """The message came from a switch the NLB programs, over its live channel."""
        return channel.id is not None and self.datapaths.get(channel.id) is channel

    def vips_on(self, dpid: int) -> list[Vip]:
        return [vip for vip in self.vips if vip.dpid == dpid]

    def port_desc(self, channel, ports: list[tuple[int, str, bool]], now: int) -> list:
        """The switch's ports, (number, name, up), in answer to the features handshake."""
        if not self._programmed(channel):
            return []  # a switch the NLB could not use (see switch_connected), or not its live channel
        out = []
        for port_no, name, up in ports:
            out += self._note_port(channel, port_no, name, up, now, install=False)
        for vip in self.vips_on(channel.id):
            out += self._install_vip(channel, vip)
        return out

    def port_status(self, channel, port_no: int, name: str, up: bool, gone: bool, now: int) -> list:
        if not self._programmed(channel):
            return []
        return self._note_port(channel, port_no, name, up and not gone, now, gone=gone)

    def _note_port(self, channel, port_no: int, name: str, up: bool, now: int, gone: bool = False,
                   install: bool = True) -> list:
        """A port's number and state; a member or client port that is new (or renumbered)
        gets the VIP's flows and groups again, a member's link state drives its state."""
        out = []
        for vip in self.vips_on(channel.id):
            known = vip.port_numbers.get(name)
            vip.port_numbers[name] = port_no
            relevant = name in {m.port_name for m in vip.pool.members.values()} | \
                {s.port_name for s in vip.sources}
            if install and relevant and known != port_no and not gone:
                out += self._install_vip(channel, vip)
            for member in vip.pool.members.values():
                if self.port_detection and member.port_name == name and member.port_up != up:
                    out += self._set_member(vip, member.name, "port_down" if not up else "port_up", now, port_up=up)
        return out

    def _install_vip(self, channel, vip: Vip) -> list:
        """The VIP's guard and service flows (they need the port numbers the switch reported)."""
        build = FlowBuilder(channel)
        allowed = vip.allowed_sources()
        msgs = build.guard(vip, allowed)
        out: list = []
        if self.dataplane == "switch":
            members = [(vip.member_index[m.name], m) for m in vip.pool.members.values()]
            out.append(ReadConntrack(vip.index))
            msgs.append(self._group(build, vip))  # before the flows that point at it
            msgs += build.switch_service(vip, members, allowed)
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
        return out + [Send(channel, msgs)]

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

    def switch_error(self, channel, type_: int, code: int, data: bytes) -> list:
        """A message the switch refused: logged, so a broken pipeline is never silent."""
        if not self.is_live(channel):
            return []
        return [Emit.emit(NLB_SWITCH_ERROR, dpid=channel.id, type=type_, code=code, data=data[:64].hex())]

    # ---- membership ---------------------------------------------------------------------------

    def _vip(self, index: int) -> Vip:
        return self.vips[index - 1]

    def _set_member(self, vip: Vip, name: str, reason: str, now: int, **changes) -> list:
        """Apply a link / health / admin / drain change and act on what it changed: evict
        a member that stopped serving, re-admit one that came back, re-program the select
        group when the set of members taking new connections changed."""
        member = vip.pool.members[name]
        was_serving, was_accepting = member.in_service, member.accepts_new
        vip.pool.set_state(name, **changes)
        dp = self.datapaths.get(vip.dpid)
        out = []
        if was_serving and not member.in_service:
            out += self._evict(vip, name, reason, now)  # first: its clients are waiting
        elif member.in_service and (not was_serving or (member.accepts_new and not was_accepting)) \
                and self.dataplane == "switch" and dp is not None:  # back, or rejoined after a drain deadline
            build = FlowBuilder(dp)
            out.append(Send(dp, build.forget_dead_member(vip, vip.member_index[name]) + self._strays(build, vip)))
        if self.dataplane == "switch" and dp is not None and was_accepting != member.accepts_new:
            out.append(Send(dp, [self._group(FlowBuilder(dp), vip)]))
        out.append(Emit.emit(LB_MEMBER, vip=vip.ip, member=name, reason=reason, alive=member.in_service,
                             draining=member.draining, accepts_new=member.accepts_new, ts=now))
        return out

    def _evict(self, vip: Vip, name: str, reason: str, now: int) -> list:
        """Every connection on ``name`` is over: stop forwarding it and reset its clients."""
        dp = self.datapaths.get(vip.dpid)
        index = vip.member_index[name]
        if self.dataplane == "switch":
            if dp is None:
                return []
            build = FlowBuilder(dp)
            # this one, and every other dead one (its survivor may have been this one)
            dead = [m for m in vip.pool.members.values() if m.name == name or not m.in_service]
            # strays (the connections the failover will make the switch forget) to members in service only
            msgs = self._strays(build, vip) + [f for m in dead for f in self._dead_flows(build, vip, m)]
            barrier = dp.ofproto_parser.OFPBarrierRequest(dp)
            barrier.set_xid(next(self.xids) & 0xFFFFFFFF)
            out: list = [Send(dp, msgs + [barrier])]
            if self.fast_fail:
                out.append(Failover(dp, vip.index, index, name, reason, now, barrier.xid))
            else:
                out.append(Emit.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=0,
                                            fast_fail=False))
            return out
        conns = vip.conns.on_backend(name)
        out = []
        if dp is not None:
            out.append(Send(dp, FlowBuilder(dp).unpin_member(vip, index)))
            if self.fast_fail and conns:
                out += self._challenge(dp, vip, conns, now, at_once=False)  # after the flow delete, not before
        for conn in conns:
            vip.conns.remove(conn.key)
        return out + [Emit.emit(NLB_EVICT, vip=vip.ip, member=name, reason=reason, conns=len(conns),
                                       fast_fail=self.fast_fail)]

    def _challenge(self, channel, vip: Vip, conns: list[Connection], now: int, at_once: bool = True) -> list:
        self.challenges.add(channel, vip, conns, now, at_once)
        return [Wake(self.challenges.next_at())]

    def admin_set(self, vip: Vip, name: str, up: bool, now: int) -> list:
        return [SaveAdmin(vip.ip, name, {"admin_up": up})] + \
            self._set_member(vip, name, "admin_up" if up else "admin_down", now, admin_up=up)

    def drain(self, vip: Vip, name: str, deadline_s: float | None, now: int, wall: float) -> list:
        """Stop new connections to ``name``; with a deadline, evict what is left then (the
        deadline is saved as a wall-clock time, so a restart keeps what is left of it)."""
        vip.drain_generation[name] += 1
        generation = vip.drain_generation[name]
        out: list = [SaveAdmin(vip.ip, name, {"draining": True, "drain_deadline_wall":
                                              None if deadline_s is None else wall + deadline_s})]
        out += self._set_member(vip, name, "drain", now, draining=True)
        if deadline_s is not None:
            out += self._timer(now + round(deadline_s * S), "drain", vip.index, name, generation)
        return out

    def _drain_deadline(self, now: int, index: int, name: str, generation: int) -> list:
        vip = self._vip(index)  # a rejoin (or a newer drain) since then makes this timer stale
        if vip.pool.members[name].draining and vip.drain_generation[name] == generation:
            return self._evict(vip, name, "drain_deadline", now)
        return []

    def rejoin(self, vip: Vip, name: str, now: int) -> list:
        vip.drain_generation[name] += 1
        return [SaveAdmin(vip.ip, name, {"draining": False, "drain_deadline_wall": None})] + \
            self._set_member(vip, name, "rejoin", now, draining=False)

    def set_affinity(self, vip: Vip, affinity: str, now: int) -> list:
        vip.pool.affinity = affinity
        dp = self.datapaths.get(vip.dpid)
        if self.dataplane == "switch" and dp is not None:
            return [Send(dp, [self._group(FlowBuilder(dp), vip)])]
        return []

    def set_member(self, vip: Vip, name: str, reason: str, now: int, **changes) -> list:
        """A change of a member's state from outside the usual inputs (tests, tools)."""
        return self._set_member(vip, name, reason, now, **changes)

    def probe(self, vip_ip: str, name: str, ok: bool, detail: str, now: int) -> list:
        """A health agent's probe result: fall/rise counted (nlb_logic.HealthTracker); a
        convergence delay (the Windows NLB emulation) postpones the verdict."""
        vip = next((v for v in self.vips if v.ip == vip_ip), None)
        if vip is None or name not in vip.health:
            return []
        flipped = vip.health[name].record(ok)
        if flipped is None:
            return []
        reason = "probe_up" if flipped else f"probe_down:{detail}"
        if self.convergence_ns > 0:
            return [Emit.emit(NLB_CONVERGING, vip=vip.ip, member=name, alive=flipped)] + \
                self._timer(now + self.convergence_ns, "converge", vip.index, name, reason, flipped)
        return self._set_member(vip, name, reason, now, healthy=flipped)

    # ---- fast failover (switch dataplane) -----------------------------------------------------

    # A failover runs in the app's failover worker, in steps, with the lock only around each
    # call: the sends and the conntrack read are the failover's latency.
    #   failover_cached    the clients known from the last periodic read: their flushes
    #   failover_challenge ... then their challenges (after the flushes are written), which
    #                      the failover worker writes itself at once
    #   (the app reads the conntrack afresh: it holds the switch's main thread, which
    #   forwards the lab's packets, tens of ms at a thousand sessions: so only once the first
    #   wave's resets are through, or after a limit)
    #   failover_fresh     the clients the fresh read adds: their flushes
    #   failover_challenge ... then their challenges, and the eviction is told (NLB_EVICT)

    def failover_cached(self, fo: Failover, now: int) -> list:
        """A member just died and the switch applied its dead-member flows (or 50 ms
        passed): the switch forgets the connections of the last periodic read (a
        conntrack flush of each), so that each client's answer to its challenge, and any
        segment it sends, is a stray that the tables as they are now send to a survivor,
        instead of a datapath flow cached for the dead member's port until the switch
        revalidates it (a hundred ms and more at a thousand sessions)."""
        vip = self._vip(fo.vip_index)
        fo.known[:] = self._ct_connections(vip, fo.member_index, fo.name, self.ct_cache.get(vip.index, []), now)
        return self._flushes(fo.channel, vip, fo.known)

    def failover_fresh(self, fo: Failover, entries: list[CtEntry], challenged_at: int, looked_up: int,
                       now: int, read_from: int | None = None) -> list:
        """The fresh read (taken between ``read_from``, by default ``challenged_at``, when
        the first wave was written, and ``looked_up``): the connections it adds are
        forgotten the same way."""
        vip = self._vip(fo.vip_index)
        challenged = {c.key for c in fo.known}
        fo.fresh = [c for c in self._ct_connections(vip, fo.member_index, fo.name, entries, now)
                    if c.key not in challenged]
        fo.challenged_at, fo.looked_up = challenged_at, looked_up
        fo.read_from = challenged_at if read_from is None else read_from
        return self._flushes(fo.channel, vip, fo.fresh)

    def failover_challenge(self, fo: Failover, now: int) -> list:
        """The connections just flushed are challenged (at once, then on the schedule);
        after the fresh read's, the eviction is told, with how long the read took
        (``lookup_ms``) and how long after the eviction the first wave went (``since_ms``)."""
        vip = self._vip(fo.vip_index)
        if fo.fresh is None:
            return self._challenge(fo.channel, vip, fo.known, now) if fo.known else []
        out = self._challenge(fo.channel, vip, fo.fresh, now) if fo.fresh else []
        return out + [Emit.emit(NLB_EVICT, vip=vip.ip, member=fo.name, reason=fo.reason,
                                conns=len(fo.known) + len(fo.fresh), fast_fail=True,
                                lookup_ms=round((fo.looked_up - fo.read_from) / 1e6, 2),
                                since_ms=round((fo.challenged_at - fo.since) / 1e6, 2), cached=len(fo.known))]

    def _flushes(self, channel, vip: Vip, conns: list[Connection]) -> list:
        """Open vSwitch's conntrack flush of each connection, in one write."""
        if not conns:
            return []
        version, zone = channel.ofproto.OFP_VERSION, zone_of(vip.index)
        return [Send(channel, [b"".join(ct_flush_bytes(version, zone, c.key[:2], c.key[2:]) for c in conns)])]

    def _ct_connections(self, vip: Vip, index: int, name: str, entries, now: int) -> list[Connection]:
        """The live connections of member ``index`` among conntrack entries, as Connections."""
        out = []
        for entry in entries:
            if entry.mark != index or entry.state in CLOSED_STATES:
                continue
            port, mac = vip.client_port(entry.client_ip)
            if port is not None:
                out.append(Connection((entry.client_ip, entry.client_port, vip.ip, entry.service_port), name, mac,
                                      port, now))
        return out

    def conntrack_read(self, vip_index: int, entries: list[CtEntry], now: int, relearn: bool = False) -> list:
        """A read of the VIP's conntrack zone: kept for the next failover; the first read
        after the switch connected says how many connections it carries (they never
        depended on the controller: a restart re-learns nothing)."""
        self.ct_cache[vip_index] = entries
        if not relearn:
            return []
        live = sum(1 for e in entries if e.state not in CLOSED_STATES)
        return [Emit.emit(NLB_RELEARN, dpid=self._vip(vip_index).dpid, conns=live)]

    def vips_to_read(self) -> list[int]:
        """The VIPs whose switch is connected (the periodic conntrack read's list)."""
        return [vip.index for vip in self.vips if vip.dpid in self.datapaths]

    # ---- packets ------------------------------------------------------------------------------

    def packet_in(self, channel, in_port: int, data: bytes, cookie: int, now: int) -> list:
        if not self.is_live(channel) or not self.limiter.allow(now / S):
            return []
        frame = frames.parse(data)
        if frame is None:
            self.stats["malformed"] += 1
            return []
        self.stats["packet_in"] += 1
        vips = {v.ip: v for v in self.vips_on(channel.id)}
        if frame.arp_op is not None:
            vip = vips.get(frame.arp_tpa)
            if vip is not None and frame.arp_op == frames.ARP_REQUEST:
                self.stats["arp"] += 1
                return self._out(channel, in_port, frames.arp_reply(vip.mac, vip.ip, frame.arp_sha, frame.arp_spa,
                                                                    frame.vlans))
            return []
        decoded = Cookie.decode(cookie or 0)
        if decoded is not None and decoded.kind == RESET and frame.is_tcp and frame.ip_src in vips:
            return self._survivor_reset(vips[frame.ip_src], frame)
        vip = vips.get(frame.ip_dst) or self._vip_of_member(vips, frame)
        if vip is None:
            return []
        if frame.icmp_type == frames.ICMP_ECHO_REQUEST and frame.ip_dst == vip.ip:
            self.stats["icmp"] += 1
            return self._out(channel, in_port, frames.icmp_echo_reply(frame, vip.mac, vip.ip))
        if frame.is_tcp:
            return self._handle_tcp(channel, in_port, data, frame, vip, now)
        return []

    def _vip_of_member(self, vips: dict[str, Vip], frame: frames.Frame) -> Vip | None:
        """Switch dataplane: a client packet after NAT names the CAS, not the VIP."""
        return next((v for v in vips.values() if v.member_by_ip(frame.ip_dst or "") and frame.tcp_dst in v.ports),
                    None)

    def _handle_tcp(self, channel, in_port: int, data: bytes, seg: frames.Frame, vip: Vip, now: int) -> list:
        key = (seg.ip_src, seg.tcp_src, vip.ip, seg.tcp_dst)
        if self.dataplane == "controller":
            is_syn = seg.has(frames.SYN) and not seg.has(frames.ACK)
            if is_syn and seg.tcp_dst in vip.ports:
                conn = vip.conns.get(key)
                member = vip.pool.members.get(conn.backend) if conn else vip.pool.choose(seg.ip_src, seg.tcp_src)
                if member is not None and (member.accepts_new or conn is not None):
                    return self._pin(channel, in_port, data, seg, key, member, vip, now)
            else:
                known = vip.conns.get(key)
                if known is not None:
                    member = vip.pool.members[known.backend]
                    if member.in_service:  # raced its own flow install: forward it the same way
                        return self._pin(channel, in_port, data, seg, key, member, vip, now)
                    vip.conns.remove(key)  # pinned to a member that is gone: reset it below
                if not self.fast_fail and seg.tcp_dst in vip.ports:
                    return []
        # A segment the switch had no way to forward: a dead CAS's client, a closed port or
        # a stray. Reset it so the client learns at once.
        reset = frames.reset_for(seg, vip.mac, vip.ip, seg.tcp_dst)
        if reset is None:
            return []
        self.stats["resets"] += 1
        out = self._out(channel, in_port, reset)
        self.challenges.done(key)
        if self.dataplane == "switch":
            dead = vip.member_by_ip(seg.ip_dst or "")
            out.append(Emit.emit(NLB_RESET, vip=vip.ip, client=f"{seg.ip_src}:{seg.tcp_src}",
                                        member=dead.name if dead else None, via="controller"))
        return out

    def _survivor_reset(self, vip: Vip, rst: frames.Frame) -> list:
        """The copy of a reset a survivor's kernel sent as the VIP (switch dataplane): the
        client has it already; stop challenging that connection and say it was reset."""
        key = (rst.ip_dst, rst.tcp_dst, vip.ip, rst.tcp_src)
        self.stats["resets"] += 1
        self.challenges.done(key)
        return [Emit.emit(NLB_RESET, vip=vip.ip, client=f"{rst.ip_dst}:{rst.tcp_dst}", member=None,
                                 via="survivor")]

    def _pin(self, channel, in_port: int, data: bytes, seg: frames.Frame, key, member, vip: Vip, now: int) -> list:
        out_port = vip.port_numbers.get(member.port_name)
        if out_port is None:
            return []
        build = FlowBuilder(channel)
        flows, forward = build.pin(vip, vip.member_index[member.name], member, out_port, key, seg.eth_src, in_port,
                                   self.conn_idle_s)
        out: list = [Send(channel, flows + [build.packet_out(out_port, data, forward)])]
        if vip.conns.get(key) is None:
            vip.conns.add(Connection(key, member.name, seg.eth_src, in_port, now, seg.tcp_seq))
            self.stats["conns"] += 1
            out.append(Emit.emit(NLB_CONN, vip=vip.ip, client=f"{seg.ip_src}:{seg.tcp_src}",
                                       member=member.name))
        return out

    def _out(self, channel, port: int, data: bytes) -> list:
        return [Send(channel, [FlowBuilder(channel).packet_out(port, data)])]

    def flow_removed(self, channel, cookie: int, idle_timeout: bool, match) -> list:
        """A pinned connection's forward flow expired: the connection is over."""
        decoded = Cookie.decode(cookie)
        if not self.is_live(channel) or decoded is None or decoded.kind != FORWARD or not idle_timeout:
            return []
        for vip in self.vips_on(channel.id):
            vip.conns.remove((match["ipv4_src"], match["tcp_src"], match["ipv4_dst"], match["tcp_dst"]))
        return []

    def flow_stats(self, channel, body: list, now: int) -> list:
        """Controller dataplane: re-learn the connections a previous controller pinned (the
        switch's reverse flows, as os-ken parsed them)."""
        if not self.is_live(channel):
            return []
        learned = 0
        for stat in body:
            cookie = Cookie.decode(stat.cookie)
            if cookie is None or cookie.kind != REVERSE:
                continue
            vip = next((v for v in self.vips if v.index == cookie.vip and v.dpid == channel.id), None)
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
                vip.conns.add(Connection(key, member.name, fields.get("eth_dst", ""), out_port, now))
                learned += 1
        return [Emit.emit(NLB_RELEARN, dpid=channel.id, conns=learned)]

    # ---- views for the admin API ------------------------------------------------------------

    def snapshot(self) -> dict:
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

    def challenge_frame(self, vip: Vip, key: tuple, client_mac: str) -> bytes:
        """One data segment the client must answer, without ever accepting its byte: its
        sequence number is random, so it is almost surely outside the client's window
        (answered with a duplicate ACK; segments carrying data are exempt from Linux's
        rate limit on such answers) and, if inside, its acknowledgement is random too and
        (RFC 5961) the client answers with a challenge ACK instead. Either answer takes the
        dead member's path, now to a survivor's kernel (switch dataplane) or the controller
        (its flows are gone), and is reset exactly."""
        client_ip, client_port, _, service_port = key
        return frames.challenge(vip.mac, vip.ip, service_port, client_mac, client_ip, client_port,
                                self.rng.getrandbits(32), self.rng.getrandbits(32))
