"""Test doubles for the SDN NLB app (controllers/sdn_nlb.py) and what its tests share.

* ``FakeDatapath``: what the app uses of os-ken's Datapath, for OpenFlow 1.3 or 1.5: it
  gives a message an xid (``set_xid``, as os-ken's), serializes it exactly as
  ``Datapath.send_msg`` does (so a message the real connection could not encode fails
  here too), checks the header and that the message belongs to its version's parser,
  and records it.
* ``FakeHub``: stands in for os-ken's hub in the app: ``spawn`` is recorded, never run
  (the app starts its threads in ``__init__``); a test runs one loop of a spawned
  function when it wants (``sleep`` raises ``StopLoop`` once the loop's budget is spent).
* ``NsClock``, ``drive``, ``fire_next``: a clock the test moves, and what the
  app's timer thread does (``SdnNlb.tick``) run on the fake time. The core's own tests
  (test_nlb_core.py) need none of this.
* Builders of the events the app handles (features, port desc, port status, packet-in,
  flow removed, flow stats, barrier reply, error), in the datapath's version, delivered
  the way os-ken routes them: to every method whose ``set_ev_cls`` names the event.
* The lab-shaped config (one VIP per site, three CAS, two client ports) and frames built
  with scapy, an implementation independent of the app's own frame code.
"""

from __future__ import annotations

import functools
import inspect
import itertools
import json
import struct
import sys
import queue
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.ofproto import ofproto_parser as any_parser
from os_ken.ofproto import ofproto_v1_3, ofproto_v1_3_parser, ofproto_v1_5, ofproto_v1_5_parser
from scapy.layers.inet import ICMP, IP, TCP
from scapy.layers.l2 import Dot1AD, ARP, Dot1Q, Ether

from controllers import compat, sdn_nlb
from controllers.nlb_flows import FORWARD, REVERSE, T_CLASSIFY, Cookie
from labcommon.programs import CONTROLLER, NlbConfig, NlbMember, NlbSource, NlbVip, config_json

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
MEMBER = {m.name: m for m in MEMBERS}
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


# ---- threads, timers and time ------------------------------------------------------------------

class StopLoop(Exception):
    """Raised by FakeHub.sleep when a loop run by the test has used its budget."""


@dataclass
class Call:
    func: Callable
    args: tuple
    kwargs: dict

    @property
    def name(self) -> str:
        return getattr(self.func, "__name__", repr(self.func))

    def __call__(self):
        return self.func(*self.args, **self.kwargs)


class FakeHub:
    def __init__(self):
        self.spawned: list[Call] = []
        self.sleeps: list[float] = []
        self.sleep_budget: int | None = None

    def spawn(self, func, *args, **kwargs):
        self.spawned.append(Call(func, args, kwargs))
        return self.spawned[-1]

    def sleep(self, seconds) -> None:
        self.sleeps.append(seconds)
        if self.sleep_budget is not None:
            self.sleep_budget -= 1
            if self.sleep_budget < 0:
                raise StopLoop

    # the hub's own primitives (native ones: a test drives the app from one thread)
    Event = threading.Event
    Queue = queue.Queue

    def spawned_names(self) -> list[str]:
        return [c.name for c in self.spawned]

    def run_loop(self, name: str, sleeps: int = 1) -> None:
        """Run the spawned function ``name`` until it has slept ``sleeps`` times."""
        [call] = [c for c in self.spawned if c.name == name]
        self.sleep_budget = sleeps
        try:
            call()
        except StopLoop:
            pass
        finally:
            self.sleep_budget = None

    def run_spawned(self, name: str) -> list:
        """Run (once each, and forget) the spawned calls of ``name``; returns what they returned."""
        calls = [c for c in self.spawned if c.name == name]
        self.spawned = [c for c in self.spawned if c.name != name]
        return [c() for c in calls]


def install_fake_hub(monkeypatch) -> FakeHub:
    """Replace ``hub`` in every loaded controllers module that took it from compat."""
    fake = FakeHub()
    patched = []
    for name, module in list(sys.modules.items()):
        if name.startswith("controllers.") and name != "controllers.compat" \
                and getattr(module, "hub", None) is compat.hub:
            monkeypatch.setattr(module, "hub", fake)
            patched.append(name)
    assert "controllers.sdn_nlb" in patched
    return fake


S = 1_000_000_000


class NsClock:
    """The app's clock (monotonic ns), moved by the test."""

    def __init__(self, start_s: float = 1000.0):
        self.now = round(start_s * S)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * S)


def drive(app, seconds: float) -> int:
    """Do what the app's timer thread does for ``seconds`` of its fake time (it must run on
    an NsClock); returns how many challenges were sent."""
    clock = app.clock
    end, before = clock.now + round(seconds * S), app.core.stats["challenges"]
    while True:
        app.tick()
        at = app.core.next_wake()
        if at is None or at > end:
            break
        clock.now = max(clock.now, at)
    clock.now = end
    return app.core.stats["challenges"] - before


def challenge_wait(app) -> float | None:
    """Seconds until the app's next challenges are due (None: nothing scheduled)."""
    at = app.core.challenges.next_at()
    return None if at is None else (at - app.clock.now) / S


def timer_delays(app, kind: str) -> list[float]:
    """Seconds from now to each of the core's pending timers of ``kind`` (drain, converge, guard)."""
    return sorted((at - app.clock.now) / S for at, _, k, _ in app.core.timers if k == kind)


def fire_next(app, kind: str) -> None:
    """Move the app's clock to its next timer of ``kind`` and run the timer thread's step."""
    app.clock.now = max(app.clock.now, min(at for at, _, k, _ in app.core.timers if k == kind))
    app.tick()


def call_with_watchdog(func: Callable, *args, timeout_s: float = 2.0) -> Any:
    """Run ``func`` in a thread; fail if it does not return in time; re-raise what it raised."""
    result: dict[str, Any] = {}

    def target():
        try:
            result["value"] = func(*args)
        except BaseException as exc:  # noqa: BLE001  (handed to the test thread)
            result["error"] = exc

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise AssertionError(f"{getattr(func, '__name__', func)} did not return within {timeout_s} s")
    if "error" in result:
        raise result["error"]
    return result.get("value")


# ---- the datapath ----------------------------------------------------------------------------

class FakeDatapath:
    """What the app uses of os-ken's Datapath: id, ofproto, ofproto_parser, set_xid, send_msg."""

    def __init__(self, dpid: int = 1, version: int = OF13):
        self.id = dpid
        self.ofproto, self.ofproto_parser = VERSIONS[version]
        self.xid = 0
        self.sent: list = []
        self.lock = threading.Lock()
        self.closed = False

    def close(self) -> None:
        """As os-ken's: the app hangs up on this connection (its DEAD notice is the test's to deliver)."""
        self.closed = True

    def set_xid(self, msg) -> int:
        self.xid = (self.xid + 1) & self.ofproto.MAX_XID
        msg.set_xid(self.xid)
        return self.xid

    def send_msg(self, msg) -> None:
        assert isinstance(msg, self.ofproto_parser.MsgBase)
        assert sys.modules[type(msg).__module__] is self.ofproto_parser, \
            f"{type(msg).__module__}.{type(msg).__name__} sent to an OpenFlow {self.ofproto.OFP_VERSION:#x} switch"
        assert msg.datapath is self
        with self.lock:
            if msg.xid is None:
                self.set_xid(msg)
            msg.serialize()
        version, msg_type, length, xid = struct.unpack_from("!BBHI", bytes(msg.buf))
        assert (version, msg_type, length, xid) == (self.ofproto.OFP_VERSION, msg.msg_type, len(msg.buf), msg.xid)
        self.sent.append(msg)

    def send(self, buf: bytes) -> None:
        """Raw bytes, as os-ken's Datapath.send. Packet-outs and experimenter messages (Open
        vSwitch's conntrack flush) are sent raw; each is read back into os-ken's message
        (a packet-out's match and actions by os-ken's own parsers), so a hand-built message
        that does not hold together fails here."""
        offset = 0
        kinds = (self.ofproto.OFPT_PACKET_OUT, self.ofproto.OFPT_EXPERIMENTER)
        while offset < len(buf):
            version, msg_type, length, xid = struct.unpack_from("!BBHI", buf, offset)
            assert version == self.ofproto.OFP_VERSION and msg_type in kinds, (version, msg_type)
            assert length >= 8 and offset + length <= len(buf), (length, len(buf) - offset)
            msg = buf[offset:offset + length]
            self.sent.append(self._packet_out(msg, xid) if msg_type == kinds[0] else self._experimenter(msg, xid))
            offset += length

    def _experimenter(self, msg: bytes, xid: int):
        experimenter, exp_type = struct.unpack_from("!II", msg, 8)
        out = self.ofproto_parser.OFPExperimenter(self, experimenter, exp_type, msg[16:])
        out.xid = xid
        return out

    def _packet_out(self, msg: bytes, xid: int):
        p, ofp = self.ofproto_parser, self.ofproto
        if ofp.OFP_VERSION >= 0x06:
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
        out = p.OFPPacketOut(datapath=self, buffer_id=buffer_id, actions=actions, data=msg[end:], **fields)
        out.xid = xid
        return out

    def take(self) -> list:
        sent, self.sent = self.sent, []
        return sent


# ---- events, routed as os-ken routes them --------------------------------------------------------

@functools.cache
def handler_names(app_class: type, event_class: type) -> tuple[str, ...]:
    """The methods of ``app_class`` whose @set_ev_cls names ``event_class`` (what os-ken's
    app manager registers, found the same way)."""
    return tuple(name for name, func in inspect.getmembers(app_class, inspect.isfunction)
                 if event_class in getattr(func, "callers", {}))


def deliver(app, ev) -> list:
    """Hand ``ev`` to every handler of the app registered for its class; returns what the
    app sent meanwhile. Fails if no handler takes it (a missing @set_ev_cls)."""
    names = handler_names(type(app), type(ev))
    assert names, f"no handler of {type(app).__name__} for {type(ev).__name__}"
    for name in names:
        getattr(app, name)(ev)
    return ev.msg.datapath.take()


def event(msg):
    return ofp_event.ofp_msg_to_ev(msg)


def channel_dead(app, dp) -> list:
    """os-ken's notice that ``dp``'s connection ended (its state became DEAD_DISPATCHER),
    handed to the app's handlers as os-ken would; returns what the app sent meanwhile."""
    ev = ofp_event.EventOFPStateChange(dp)
    ev.state = DEAD_DISPATCHER
    names = handler_names(type(app), type(ev))
    assert names, f"no handler of {type(app).__name__} for EventOFPStateChange"
    for name in names:
        getattr(app, name)(ev)
    return dp.take()


def ofport(dp, name: str, port_no: int, link_down: bool = False, admin_down: bool = False):
    ofp, parser = dp.ofproto, dp.ofproto_parser
    common = {"port_no": port_no, "hw_addr": f"aa:bb:cc:00:00:{port_no & 0xFF:02x}", "name": name.encode(),
              "config": ofp.OFPPC_PORT_DOWN if admin_down else 0,
              "state": ofp.OFPPS_LINK_DOWN if link_down else ofp.OFPPS_LIVE}
    if ofp.OFP_VERSION == OF13:
        return parser.OFPPort(curr=0, advertised=0, supported=0, peer=0, curr_speed=0, max_speed=0, **common)
    return parser.OFPPort(length=ofp.OFP_PORT_SIZE, properties=[], **common)


def all_ports(dp) -> list:
    return [ofport(dp, h.port_name, h.port_no) for h in MEMBERS + [CLIENT, OTHER_CLIENT]]


def features_event(dp):
    return event(dp.ofproto_parser.OFPSwitchFeatures(dp, datapath_id=dp.id, n_buffers=0, n_tables=254,
                                                     auxiliary_id=0, capabilities=0))


def port_desc_event(dp, ports):
    msg = dp.ofproto_parser.OFPPortDescStatsReply(dp)
    msg.body = ports
    return event(msg)


def port_status_event(dp, port, reason: int | None = None):
    reason = dp.ofproto.OFPPR_MODIFY if reason is None else reason
    return event(dp.ofproto_parser.OFPPortStatus(dp, reason=reason, desc=port))


def packet_in_event(dp, data: bytes, in_port: int = CLIENT.port_no):
    ofp, parser = dp.ofproto, dp.ofproto_parser
    reason = 1  # OFPR_ACTION in 1.3, OFPR_APPLY_ACTION in 1.5: an output:CONTROLLER
    return event(parser.OFPPacketIn(dp, buffer_id=ofp.OFP_NO_BUFFER, total_len=len(data), reason=reason, table_id=0,
                                    cookie=0, match=parser.OFPMatch(in_port=in_port), data=data))


def flow_removed_event(dp, flow, reason: int):
    """The switch's notice that ``flow`` (a flow mod the app sent) was removed."""
    parser = dp.ofproto_parser
    common = {"cookie": flow.cookie, "priority": flow.priority, "reason": reason, "table_id": flow.table_id,
              "idle_timeout": flow.idle_timeout, "hard_timeout": 0, "match": flow.match}
    if dp.ofproto.OFP_VERSION == OF13:
        return event(parser.OFPFlowRemoved(dp, duration_sec=1, duration_nsec=0, packet_count=1, byte_count=60,
                                           **common))
    return event(parser.OFPFlowRemoved(dp, stats=parser.OFPStats(duration=(1, 0)), **common))


def flow_stats_reply_event(dp, request, flows):
    """The switch's answer to the app's flow request ``request``, listing ``flows`` (flow
    mods, as if installed), in the form the request asked for: an OpenFlow 1.5 flow
    *stats* entry carries neither cookie nor instructions, a flow *desc* entry does."""
    parser = dp.ofproto_parser
    kind = type(request).__name__
    if kind == "OFPFlowDescStatsRequest":
        msg = parser.OFPFlowDescStatsReply(dp)
        msg.body = [parser.OFPFlowDesc(table_id=f.table_id, priority=f.priority, idle_timeout=f.idle_timeout,
                                       hard_timeout=0, flags=f.flags, importance=0, cookie=f.cookie, match=f.match,
                                       stats=parser.OFPStats(duration=(5, 0)), instructions=f.instructions)
                    for f in flows]
    elif dp.ofproto.OFP_VERSION == OF13:
        assert kind == "OFPFlowStatsRequest", kind
        msg = parser.OFPFlowStatsReply(dp)
        msg.body = [parser.OFPFlowStats(table_id=f.table_id, duration_sec=5, duration_nsec=0, priority=f.priority,
                                        idle_timeout=f.idle_timeout, hard_timeout=0, flags=f.flags, cookie=f.cookie,
                                        packet_count=3, byte_count=180, match=f.match, instructions=f.instructions)
                    for f in flows]
    else:
        assert kind == "OFPFlowStatsRequest", kind
        msg = parser.OFPFlowStatsReply(dp)
        msg.body = [parser.OFPFlowStats(table_id=f.table_id, reason=0, priority=f.priority, match=f.match,
                                        stats=parser.OFPStats(duration=(5, 0))) for f in flows]
    return event(msg)


def barrier_reply_event(dp, xid: int):
    msg = dp.ofproto_parser.OFPBarrierReply(dp)
    msg.xid = xid
    return event(msg)


def error_event(dp, type_: int, code: int, data: bytes, exp_type: int | None = None):
    """An error as it arrives: serialized and parsed back by os-ken (experimenter errors,
    Open vSwitch's NX ones, then carry exp_type and no code)."""
    ofp, parser = dp.ofproto, dp.ofproto_parser
    if exp_type is None:
        msg = parser.OFPErrorMsg(dp, type_=type_, code=code, data=data)
    else:
        msg = parser.OFPErrorMsg(dp, type_=ofp.OFPET_EXPERIMENTER, data=data)
        msg.exp_type, msg.experimenter = exp_type, 0x2320
    msg.set_xid(9)
    msg.serialize()
    return event(any_parser.msg(dp, ofp.OFP_VERSION, ofp.OFPT_ERROR, len(msg.buf), 9, bytes(msg.buf)))


# what a test usually does: deliver one event, get what the app sent in answer

def features(app, dp) -> list:
    return deliver(app, features_event(dp))


def port_desc(app, dp, ports) -> list:
    return deliver(app, port_desc_event(dp, ports))


def port_status(app, dp, port, reason: int | None = None) -> list:
    return deliver(app, port_status_event(dp, port, reason))


def packet_in(app, dp, data: bytes, in_port: int = CLIENT.port_no) -> list:
    return deliver(app, packet_in_event(dp, data, in_port))


def flow_removed(app, dp, flow, reason: int) -> list:
    return deliver(app, flow_removed_event(dp, flow, reason))


def flow_stats_reply(app, dp, request, flows) -> list:
    return deliver(app, flow_stats_reply_event(dp, request, flows))


def barrier_reply(app, dp, xid: int) -> list:
    return deliver(app, barrier_reply_event(dp, xid))


def error_msg(app, dp, type_: int, code: int, data: bytes, exp_type: int | None = None) -> list:
    return deliver(app, error_event(dp, type_, code, data, exp_type))


def member_port(app, dp, name: str, **state) -> list:
    """A port status of member ``name``'s switch port (``link_down=True``, ``admin_down=True``)."""
    member = MEMBER[name]
    return port_status(app, dp, ofport(dp, member.port_name, member.port_no, **state))


def ready(app, version: int = OF13, dpid: int = 1) -> FakeDatapath:
    """A switch that connected and reported its ports (all up); what it was sent is dropped."""
    dp = FakeDatapath(dpid, version)
    features(app, dp)
    port_desc(app, dp, all_ports(dp))
    return dp


# ---- the app ---------------------------------------------------------------------------------------

class AppFactory:
    """Builds SdnNlb apps from ``config(**kwargs)``; every app logs its events to a file
    (strictly checked against the catalogue) and runs on the fake clock ``self.clock``."""

    def __init__(self, tmp_path: Path, monkeypatch, hub: FakeHub):
        self.tmp_path, self.monkeypatch, self.hub = tmp_path, monkeypatch, hub
        self.serial = itertools.count()
        self.clock = NsClock()
        monkeypatch.setattr(sdn_nlb, "now_ns", self.clock)

    def __call__(self, **kwargs):
        n = next(self.serial)
        kwargs.setdefault("events", str(self.tmp_path / f"events-{n}.jsonl"))
        path = self.tmp_path / f"nlb-{n}.json"
        path.write_text(config_json(CONTROLLER, config(**kwargs)), encoding="utf-8")
        self.monkeypatch.setenv("CASLAB_NLB_CONFIG", str(path))
        return sdn_nlb.SdnNlb()


def events(app, name: str | None = None) -> list[dict]:
    """What the app logged so far (line-buffered), optionally one kind."""
    lines = Path(app.event_log.path).read_text(encoding="utf-8").splitlines()
    out = [json.loads(line) for line in lines]
    return [e for e in out if name is None or e["ev"] == name]


# ---- looking at what the app sent ----------------------------------------------------------------

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


# ---- the controller dataplane's connections ------------------------------------------------------

def conns_of(app) -> dict:
    """The HQ VIP's pinned connections (controller dataplane): key -> member."""
    return {k: c.backend for k, c in app.core.vips[0].conns.by_key.items()}


def pin_until(app, dp, wanted: set[str], start: int = 43000, client=CLIENT) -> dict:
    """Open connections until each wanted member has two; returns {key: member}."""
    got: dict = {}
    for sport in range(start, start + 500):
        msgs = packet_in(app, dp, syn(sport, src=client), in_port=client.port_no)
        [fwd] = [m for m in flow_mods(msgs) if kind_of(m) == FORWARD]
        ip = set_fields(apply_actions(fwd))["ipv4_dst"]
        got[(client.ip, sport, VIP_IP, SERVICE_PORT)] = next(m.name for m in MEMBERS if m.ip == ip)
        if all(list(got.values()).count(n) >= 2 for n in wanted):
            return got
    raise AssertionError("could not reach every member")


def chosen(app, dp, start: int, n: int = 60) -> set[str]:
    """The members that ``n`` new connections were pinned to."""
    return {pin_member(app, dp, start + i) for i in range(n)}


def pin_member(app, dp, sport: int) -> str:
    """Send a SYN (controller dataplane); the member its forward flow points at."""
    [fwd] = [m for m in flow_mods(packet_in(app, dp, syn(sport))) if kind_of(m) == FORWARD]
    return next(m.name for m in MEMBERS if m.ip == set_fields(apply_actions(fwd))["ipv4_dst"])


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
