"""The SDN network load balancer: a Ryu/os-ken app that owns the array VIPs.

Two dataplanes, chosen by the config's ``dataplane``:

* ``switch`` (the spec's default, ``nlb.dataplane``): Open vSwitch balances by itself.
  New connections to the VIP hit a select group that hashes the fields the affinity needs
  (5-tuple, client IP or client /24) over one bucket per CAS; each bucket follows its CAS
  port's liveness and commits the connection to conntrack with ``nat(dst=CAS)`` and the
  member in ``ct_mark``, so established connections stay on their CAS whatever the group
  does later. No packet reaches the controller in steady state (OVN's load balancer works so).
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

This file is the shell: every decision is made by the pure core (controllers/nlb_core.py,
inputs with ``now`` in, outputs out); the handlers here turn framework events into core
calls, under one lock, and ``_execute`` carries out what comes back (the one place
messages leave, events are written, timers are woken, admin state is saved, conntrack is
read). Threads: the timer (the core's timers and challenge schedule), the failover
worker, the conntrack reader (switch dataplane with fast_fail), the health socket and
the admin API. Messages are built by controllers/nlb_flows.py, frames by
controllers/nlb_frames.py (no framework packet parser ever sees an untrusted frame);
the conntrack and the admin state file are behind controllers/nlb_io.py. Config: the
file ``CASLAB_NLB_CONFIG`` names, an ``NlbConfig`` (labcommon/programs.py) read strictly.
"""

from __future__ import annotations

import json
import os
import threading
import time

from controllers.compat import (
    CONFIG_DISPATCHER, DEAD_DISPATCHER, MAIN_DISPATCHER, BaseApp, hub, ofp_event, ofproto_v1_3, ofproto_v1_5, set_ev_cls,
    timed_event,
)
from controllers.nlb_core import (
    Close, Emit, Failover, NlbCore, ReadConntrack, SaveAdmin, Send, Wake, read_interval,
)
from controllers.nlb_flows import zone_of
from controllers.nlb_io import AdminState, OvsConntrack
from controllers.nlb_state import Vip
from labcommon.catalogue import NLB_HEALTH_SOCKET_ERROR
from labcommon.events import EventLog, NullLog, now_ns
from labcommon.programs import CONTROLLER, ConfigError, NlbConfig, read_config
from labcommon.protocol import MAX_DEPTH, nesting_depth


FIRST_WAVE_WAIT_S = 0.05  # a failover's fresh conntrack read waits this long at most for the first wave


class SdnNlb(BaseApp):
    OFP_VERSIONS = [ofproto_v1_3.OFP_VERSION, ofproto_v1_5.OFP_VERSION]

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.config = c = read_nlb_config(os.environ.get("CASLAB_NLB_CONFIG"))
        self.event_log = EventLog(c.events, "nlb") if c.events else NullLog()
        self.clock = now_ns  # monotonic ns: the ``now`` of every core call
        self.core = NlbCore(c)
        self.admin = AdminState.load(c.state_file)
        self.conntrack = OvsConntrack(c.datapath_name)  # a ConntrackReader
        self.ct_refresh_s = c.ct_refresh_ms / 1000
        self.lock = threading.RLock()  # around every core call; I/O off it where latency matters
        self.wakeup = timed_event()  # the timer thread's: set when the core's next wake-up may be earlier
        self.barriers: dict[tuple[int, int], object] = {}  # (dpid, xid) -> an event, set once applied
        self.failovers = hub.Queue()  # served by one waiting thread (green or native, as the hub is)
        self._call(self.core.start, self.admin.members, wall=time.time())
        self._threads = [hub.spawn(self._timer_loop), hub.spawn(self._failover_worker)]
        if self.core.dataplane == "switch" and self.core.fast_fail:
            self._threads.append(hub.spawn(self._conntrack_loop))
        if c.health.socket:
            self._threads.append(hub.spawn(self._health_loop, c.health.socket))
        if c.api:
            from controllers.nlb_api import serve_api
            self._threads.append(hub.spawn(serve_api, self, c.api))

    # ---- the one way out ----------------------------------------------------------------------

    def _call(self, method, *args, **kwargs) -> list:
        """One core call with ``now``, and what it decided carried out, both under the lock
        (so that two threads' messages to a switch leave in the order they were decided)."""
        with self.lock:
            outputs = method(*args, now=self.clock(), **kwargs)
            self._execute(outputs)
        return outputs

    def _execute(self, outputs: list) -> None:
        """Carry out the core's outputs, in order: the only place messages leave the app."""
        for out in outputs:  # a failover's barrier is awaited before its reply can come
            if isinstance(out, Failover):
                self.barriers[(out.channel.id, out.barrier_xid)] = timed_event()
        for out in outputs:
            if isinstance(out, Send):
                for msg in out.messages:
                    if isinstance(msg, bytes):
                        out.channel.send(msg)
                    else:
                        out.channel.send_msg(msg)
            elif isinstance(out, Emit):
                self.event_log.emit(event=out.event, ts=out.ts, **out.fields)  # named by the core's Emit.emit
            elif isinstance(out, Wake):
                self.wakeup.set()
            elif isinstance(out, Close):
                out.channel.close()
            elif isinstance(out, SaveAdmin):
                self.admin.set(out.vip, out.member, **out.values)
            elif isinstance(out, ReadConntrack):
                hub.spawn(self._relearn, out.vip_index)
            elif isinstance(out, Failover):
                self.failovers.put(out)
            else:
                raise TypeError(f"no way to execute {out!r}")

    # ---- switch set-up -------------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPSwitchFeatures, CONFIG_DISPATCHER)
    def switch_features_handler(self, ev):
        dp = ev.msg.datapath
        with self.lock:
            live = self.core.channels.get(dp.id)
            self._call(self.core.switch_connected, dp, live is not None and live is not dp and can_send(live))

    @set_ev_cls(ofp_event.EventOFPStateChange, DEAD_DISPATCHER)
    def channel_dead_handler(self, ev):
        """A switch's channel died: the switch is forgotten until it connects again (a
        message still queued from the dead channel is ignored by the core)."""
        with self.lock:
            self._execute(self.core.channel_dead(ev.datapath))

    @set_ev_cls(ofp_event.EventOFPPortDescStatsReply, MAIN_DISPATCHER)
    def port_desc_handler(self, ev):
        dp = ev.msg.datapath
        self._call(self.core.port_desc, dp, [(p.port_no, port_name(p), port_up(dp, p)) for p in ev.msg.body])

    @set_ev_cls(ofp_event.EventOFPPortStatus, MAIN_DISPATCHER)
    def port_status_handler(self, ev):
        dp, msg = ev.msg.datapath, ev.msg
        self._call(self.core.port_status, dp, msg.desc.port_no, port_name(msg.desc), port_up(dp, msg.desc),
                   msg.reason == dp.ofproto.OFPPR_DELETE)

    @set_ev_cls(ofp_event.EventOFPErrorMsg, MAIN_DISPATCHER)
    def error_handler(self, ev):
        msg = ev.msg
        # an experimenter error (Open vSwitch's NX errors) has no code, its exp_type instead
        code = msg.code if msg.code is not None else getattr(msg, "exp_type", None) or 0
        with self.lock:
            self._execute(self.core.switch_error(msg.datapath, int(msg.type), int(code), bytes(msg.data or b"")))

    # ---- packets and flows ---------------------------------------------------------------------

    @set_ev_cls(ofp_event.EventOFPPacketIn, MAIN_DISPATCHER)
    def packet_in_handler(self, ev):
        msg = ev.msg
        self._call(self.core.packet_in, msg.datapath, msg.match["in_port"], msg.data, getattr(msg, "cookie", 0))

    @set_ev_cls(ofp_event.EventOFPFlowRemoved, MAIN_DISPATCHER)
    def flow_removed_handler(self, ev):
        msg = ev.msg
        with self.lock:
            self._execute(self.core.flow_removed(msg.datapath, msg.cookie,
                                                 msg.reason == msg.datapath.ofproto.OFPRR_IDLE_TIMEOUT, msg.match))

    @set_ev_cls([ofp_event.EventOFPFlowStatsReply, ofp_event.EventOFPFlowDescStatsReply], MAIN_DISPATCHER)
    def flow_stats_handler(self, ev):
        """Controller dataplane: re-learn the connections a previous controller pinned."""
        self._call(self.core.flow_stats, ev.msg.datapath, ev.msg.body)

    @set_ev_cls(ofp_event.EventOFPBarrierReply, MAIN_DISPATCHER)
    def barrier_reply_handler(self, ev):
        with self.lock:
            if not self.core.is_live(ev.msg.datapath):
                return
            applied = self.barriers.pop((ev.msg.datapath.id, ev.msg.xid), None)
        if applied is not None:
            applied.set()

    # ---- the threads ---------------------------------------------------------------------------

    def _timer_loop(self) -> None:
        while True:
            with self.lock:
                at = self.core.next_wake()
            self.wakeup.wait(None if at is None else max(0.0, (at - self.clock()) / 1e9))
            self.wakeup.clear()
            self.tick()

    def tick(self) -> None:
        """What the core's timers and challenge schedule have due now (the timer thread's one
        step). The challenges are built and written off the lock (a thousand of them take
        milliseconds, which the packet-ins carrying their answers would wait)."""
        self._call(self.core.tick)
        self._write_due_challenges()

    def _write_due_challenges(self) -> None:
        """The challenges due now, built and written off the lock, from the calling thread."""
        with self.lock:
            due = self.core.challenges.due(self.clock())
        self._execute(self.core.challenge_writes(due))

    def _failover_worker(self) -> None:
        while True:
            self._failover(self.failovers.get())

    def _failover(self, fo: Failover) -> None:
        """Switch dataplane, a member just died: once the switch applied its dead-member flows
        (a dead port's fast-failover group needs no wait), the clients known from the last
        periodic conntrack read are forgotten and challenged; then a fresh read finds the
        connections opened since, which get the same. Sends and the read are off the lock:
        this path is the failover's latency."""
        applied = self.barriers.get((fo.channel.id, fo.barrier_xid))
        if fo.reason != "port_down" and applied is not None:
            applied.wait(0.05)
        self.barriers.pop((fo.channel.id, fo.barrier_xid), None)
        with self.lock:
            flushes = self.core.failover_cached(fo, now=self.clock())
        self._execute(flushes)  # the switch forgets them before they are challenged
        self._call(self.core.failover_challenge, fo)
        self._write_due_challenges()  # the first wave leaves now, not at the timer thread's next turn
        challenged_at = self.clock()
        self._await_first_wave(fo)
        read_from = self.clock()
        entries = self.conntrack.dump(zone_of(fo.vip_index))
        looked_up = self.clock()
        with self.lock:
            flushes = self.core.failover_fresh(fo, entries, challenged_at, looked_up, read_from=read_from,
                                               now=self.clock())
        self._execute(flushes)
        self._call(self.core.failover_challenge, fo)

    def _await_first_wave(self, fo: Failover) -> None:
        """The fresh read holds the switch's main thread, which forwards the lab's packets,
        for tens of ms at a thousand sessions: it waits until the first wave's challenges,
        their answers and the survivors' resets are through (the NLB has seen each of those
        connections reset), FIRST_WAVE_WAIT_S at most (a reset's copy to the NLB is metered
        and may be dropped)."""
        keys = [c.key for c in fo.known]
        deadline = time.monotonic() + FIRST_WAVE_WAIT_S
        pause = timed_event()  # never set: its timed wait is a sleep (a test's fake hub ends hub.sleep)
        while keys and time.monotonic() < deadline:
            with self.lock:
                keys = [k for k in keys if k in self.core.challenges.pending]
            if keys:
                pause.wait(0.002)

    def _relearn(self, vip_index: int) -> None:
        """Switch dataplane: the connections the datapath carries for a VIP when the
        controller (re)connects."""
        entries = self.conntrack.dump(zone_of(vip_index))
        self._call(self.core.conntrack_read, vip_index, entries, relearn=True)

    def _conntrack_loop(self) -> None:
        """Keep a recent copy of each VIP's conntrack entries, so that a failover can
        challenge the dead member's clients without waiting for a read. A read holds the
        switch's main thread (which forwards the lab's packets in the userspace datapath):
        reads are spaced so that they take at most READ_SHARE of its time."""
        while True:
            started = time.monotonic()
            with self.lock:
                indexes = self.core.vips_to_read()
            for index in indexes:
                entries = self.conntrack.dump(zone_of(index))
                self._call(self.core.conntrack_read, index, entries)
            hub.sleep(read_interval(time.monotonic() - started, self.ct_refresh_s))

    def _health_loop(self, path: str) -> None:
        """The health agents' probe reports, on a Unix datagram socket: no datagram can stop
        the loop; each is checked (UTF-8, nesting, fields) and anything wrong is skipped."""
        import socket

        if os.path.exists(path):
            os.unlink(path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            sock.bind(path)
            os.chmod(path, 0o600)
        except OSError as exc:  # e.g. a path over 107 bytes: say so instead of dying silently
            self.event_log.emit(NLB_HEALTH_SOCKET_ERROR, path=path, reason=str(exc))
            return
        while True:
            data = sock.recv(4096)
            try:  # no datagram can stop the loop, whatever it holds
                text = data.decode("utf-8")
                if nesting_depth(text) > MAX_DEPTH:
                    continue
                report = json.loads(text)
                self.on_probe(str(report["vip"]), str(report["member"]), report["ok"] is True,
                              str(report.get("detail", ""))[:100])
            except Exception:  # noqa: BLE001
                continue

    # ---- what the admin API and the health socket call -------------------------------------------

    def on_probe(self, vip_ip: str, name: str, ok: bool, detail: str = "") -> None:
        self._call(self.core.probe, vip_ip, name, ok, detail)

    def admin_set(self, vip: Vip, name: str, up: bool) -> None:
        self._call(self.core.admin_set, vip, name, up)

    def drain(self, vip: Vip, name: str, deadline_s: float | None = None) -> None:
        self._call(self.core.drain, vip, name, deadline_s, wall=time.time())

    def rejoin(self, vip: Vip, name: str) -> None:
        self._call(self.core.rejoin, vip, name)

    def set_affinity(self, vip: Vip, affinity: str) -> None:
        self._call(self.core.set_affinity, vip, affinity)

    def snapshot(self) -> dict:
        with self.lock:
            return self.core.snapshot()

    def find_vip(self, name_or_ip: str) -> Vip | None:
        with self.lock:
            return self.core.find_vip(name_or_ip)


def read_nlb_config(path: str | None) -> NlbConfig:
    """The app's typed configuration (labcommon/programs.py) from ``path``; none: no VIP.
    A file its record does not allow stops the controller, naming the file and the key (as
    ``labcommon.runtime.load_config`` stops an in-host program; that module needs uvloop,
    which upstream Ryu's venv lacks)."""
    if not path:
        return NlbConfig(vips=[])
    try:
        return read_config(CONTROLLER, path)
    except ConfigError as exc:
        raise SystemExit(f"controllers.sdn_nlb: {exc}") from None


def port_name(port) -> str:
    return port.name.decode() if isinstance(port.name, bytes) else port.name


def port_up(dp, port) -> bool:
    ofp = dp.ofproto
    return not (port.state & ofp.OFPPS_LINK_DOWN) and not (port.config & ofp.OFPPC_PORT_DOWN)


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
