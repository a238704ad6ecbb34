"""Test doubles for the SDN NLB app's shell (controllers/sdn_nlb.py): what the framework
gives it, so that its own work can be checked: dispatching framework events to the core,
carrying out the core's outputs through its one send path, serializing on OpenFlow 1.3
and 1.5, its threads and timer. The decisions are the core's, tested without any of this
(tests/nlb_lab.py drives the core directly).

* ``FakeDatapath``: what the app uses of os-ken's Datapath, for OpenFlow 1.3 or 1.5: it
  gives a message an xid (``set_xid``, as os-ken's), serializes it exactly as
  ``Datapath.send_msg`` does (so a message the real connection could not encode fails
  here too), checks the header and that the message belongs to its version's parser,
  reads raw buffers back into messages, and records them.
* ``FakeHub``: stands in for os-ken's hub in the app: ``spawn`` is recorded, never run
  (the app starts its threads in ``__init__``); a test runs a spawned function when it
  wants, a loop until it sleeps.
* ``NsClock``: the app's clock (monotonic ns), moved by the test.
* Builders of the events the app handles, in the datapath's version, delivered the way
  os-ken routes them: to every method whose ``set_ev_cls`` names the event.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import itertools
import json
import queue
import struct
import sys
import threading
from pathlib import Path

from os_ken.controller import ofp_event
from os_ken.controller.handler import DEAD_DISPATCHER
from os_ken.ofproto import ofproto_parser as any_parser

from controllers import compat, sdn_nlb
from labcommon.programs import CONTROLLER, config_json
from tests.nlb_lab import CLIENT, MEMBER, MEMBERS, OF13, OTHER_CLIENT, S, VERSIONS, config, raw_messages

# ---- threads and time ----------------------------------------------------------------------------


class StopLoop(Exception):
    """Ends a loop of the app that a test runs: FakeHub.sleep raises it."""


class FakeHub:
    """os-ken's hub as the app uses it: ``spawn`` records the call and runs nothing (the app
    starts its threads in ``__init__``; a test runs one when it wants); ``sleep`` records its
    wait and ends the loop that called it. Its events and queues are native ones: a test
    drives the app from one thread."""

    Event = threading.Event
    Queue = queue.Queue

    def __init__(self):
        self.spawned: list[functools.partial] = []
        self.sleeps: list[float] = []

    def spawn(self, func, *args, **kwargs):
        self.spawned.append(functools.partial(func, *args, **kwargs))
        return self.spawned[-1]

    def sleep(self, seconds) -> None:
        self.sleeps.append(seconds)
        raise StopLoop

    def called(self, name: str) -> list[functools.partial]:
        """The spawned calls of the function ``name``."""
        return [c for c in self.spawned if c.func.__name__ == name]

    def spawned_names(self) -> list[str]:
        return [c.func.__name__ for c in self.spawned]

    def run(self, name: str) -> None:
        """Run the spawned calls of ``name`` once each (a loop: until it sleeps), and forget them."""
        calls = self.called(name)
        self.spawned = [c for c in self.spawned if c not in calls]
        for call in calls:
            with contextlib.suppress(StopLoop):
                call()


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


class NsClock:
    """The app's clock (monotonic ns), moved by the test."""

    def __init__(self, start_s: float = 1000.0):
        self.now = round(start_s * S)

    def __call__(self) -> int:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += round(seconds * S)


# ---- the datapath ----------------------------------------------------------------------------

class FakeDatapath:
    """What the app uses of os-ken's Datapath: id, ofproto, ofproto_parser, set_xid, send_msg, send, close."""

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
        """Raw bytes, as os-ken's Datapath.send (packet-outs and conntrack flushes), each
        message read back into os-ken's (tests/nlb_lab.py: ``raw_messages``)."""
        self.sent += raw_messages(self, buf)

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


def deliver(app, ev, dp=None) -> list:
    """Hand ``ev`` to every handler of the app registered for its class; returns what the
    app sent meanwhile. Fails if no handler takes it (a missing @set_ev_cls)."""
    names = handler_names(type(app), type(ev))
    assert names, f"no handler of {type(app).__name__} for {type(ev).__name__}"
    for name in names:
        getattr(app, name)(ev)
    return (dp or ev.msg.datapath).take()


def event(msg):
    return ofp_event.ofp_msg_to_ev(msg)


def channel_dead(app, dp) -> list:
    """os-ken's notice that ``dp``'s connection ended (its state became DEAD_DISPATCHER)."""
    ev = ofp_event.EventOFPStateChange(dp)
    ev.state = DEAD_DISPATCHER
    return deliver(app, ev, dp)


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


def features(app, dp) -> list:
    return deliver(app, event(dp.ofproto_parser.OFPSwitchFeatures(dp, datapath_id=dp.id, n_buffers=0, n_tables=254,
                                                                  auxiliary_id=0, capabilities=0)))


def port_desc(app, dp, ports) -> list:
    msg = dp.ofproto_parser.OFPPortDescStatsReply(dp)
    msg.body = ports
    return deliver(app, event(msg))


def port_status(app, dp, port, reason: int | None = None) -> list:
    reason = dp.ofproto.OFPPR_MODIFY if reason is None else reason
    return deliver(app, event(dp.ofproto_parser.OFPPortStatus(dp, reason=reason, desc=port)))


def member_port(app, dp, name: str, **state) -> list:
    """A port status of member ``name``'s switch port (``link_down=True``, ``admin_down=True``)."""
    member = MEMBER[name]
    return port_status(app, dp, ofport(dp, member.port_name, member.port_no, **state))


def packet_in(app, dp, data: bytes, in_port: int = CLIENT.port_no, cookie: int = 0) -> list:
    ofp, parser = dp.ofproto, dp.ofproto_parser
    reason = 1  # OFPR_ACTION in 1.3, OFPR_APPLY_ACTION in 1.5: an output:CONTROLLER
    return deliver(app, event(parser.OFPPacketIn(dp, buffer_id=ofp.OFP_NO_BUFFER, total_len=len(data), reason=reason,
                                                 table_id=0, cookie=cookie, match=parser.OFPMatch(in_port=in_port),
                                                 data=data)))


def flow_removed(app, dp, flow, reason: int) -> list:
    """The switch's notice that ``flow`` (a flow mod the app sent) was removed."""
    parser = dp.ofproto_parser
    common = {"cookie": flow.cookie, "priority": flow.priority, "reason": reason, "table_id": flow.table_id,
              "idle_timeout": flow.idle_timeout, "hard_timeout": 0, "match": flow.match}
    if dp.ofproto.OFP_VERSION == OF13:
        msg = parser.OFPFlowRemoved(dp, duration_sec=1, duration_nsec=0, packet_count=1, byte_count=60, **common)
    else:
        msg = parser.OFPFlowRemoved(dp, stats=parser.OFPStats(duration=(1, 0)), **common)
    return deliver(app, event(msg))


def flow_stats_reply(app, dp, request, flows) -> list:
    """The switch's answer to the app's flow request ``request``, listing ``flows`` (flow
    mods, as if installed): OpenFlow 1.3's flow stats, or 1.5's flow descs (1.5's flow
    *stats* carry neither cookie nor instructions: the app must not ask for them)."""
    parser = dp.ofproto_parser
    if dp.ofproto.OFP_VERSION == OF13:
        assert type(request).__name__ == "OFPFlowStatsRequest"
        msg = parser.OFPFlowStatsReply(dp)
        msg.body = [parser.OFPFlowStats(table_id=f.table_id, duration_sec=5, duration_nsec=0, priority=f.priority,
                                        idle_timeout=f.idle_timeout, hard_timeout=0, flags=f.flags, cookie=f.cookie,
                                        packet_count=3, byte_count=180, match=f.match, instructions=f.instructions)
                    for f in flows]
    else:
        assert type(request).__name__ == "OFPFlowDescStatsRequest"
        msg = parser.OFPFlowDescStatsReply(dp)
        msg.body = [parser.OFPFlowDesc(table_id=f.table_id, priority=f.priority, idle_timeout=f.idle_timeout,
                                       hard_timeout=0, flags=f.flags, importance=0, cookie=f.cookie, match=f.match,
                                       stats=parser.OFPStats(duration=(5, 0)), instructions=f.instructions)
                    for f in flows]
    return deliver(app, event(msg))


def barrier_reply(app, dp, xid: int) -> list:
    msg = dp.ofproto_parser.OFPBarrierReply(dp)
    msg.xid = xid
    return deliver(app, event(msg))


def error_msg(app, dp, type_: int, code: int, data: bytes, exp_type: int | None = None) -> list:
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
    return deliver(app, event(any_parser.msg(dp, ofp.OFP_VERSION, ofp.OFPT_ERROR, len(msg.buf), 9, bytes(msg.buf))))


def ready(app, version: int = OF13, dpid: int = 1) -> FakeDatapath:
    """A switch that connected and reported its ports (all up); what it was sent is dropped."""
    dp = FakeDatapath(dpid, version)
    features(app, dp)
    port_desc(app, dp, all_ports(dp))
    return dp


# ---- the app ---------------------------------------------------------------------------------------

class AppFactory:
    """Builds SdnNlb apps from ``config(**kwargs)`` (tests/nlb_lab.py), written to the file
    ``CASLAB_NLB_CONFIG`` names as the engine writes it; every app logs its events to a file
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
