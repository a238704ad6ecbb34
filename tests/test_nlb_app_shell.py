"""The SDN NLB app's shell (controllers/sdn_nlb.py), driven as os-ken drives it through the
doubles of tests/fakes.py: the configuration it reads and the threads it starts; every
framework event dispatched to the core (OpenFlow 1.3 and 1.5); the core's outputs carried
out by the one send path, ``_execute`` (messages serialized as os-ken does, raw buffers,
events, wake-ups, saved admin state, conntrack reads, failovers); its threads (the timer,
the failover worker, the conntrack reader, the health socket); what the admin API calls.
What the core decides is tested without the app (test_nlb_core*.py); the channels' claims
and deaths are in test_nlb_app_channel.py."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controllers import nlb_io
from controllers.nlb_core import Close, Emit, Failover, ReadConntrack, SaveAdmin, Send, Wake
from controllers.nlb_flows import FORWARD, RESET, Cookie, FlowBuilder, packet_out_bytes, zone_of
from controllers.nlb_state import CtEntry
from labcommon.catalogue import (
    LB_MEMBER, NLB_EVICT, NLB_HEALTH_SOCKET_ERROR, NLB_RELEARN, NLB_RESET, NLB_SWITCH_ERROR, NLB_UP,
)
from labcommon.programs import NlbApi, NlbHealth
from tests.fakes import (
    FakeDatapath, StopLoop, all_ports, barrier_reply, error_msg, events, features, flow_removed, flow_stats_reply,
    member_port, ofport, packet_in, port_desc, port_status, ready,
)
from tests.nlb_lab import (
    BRANCH_VIP, CLIENT, MEMBER, OF15, OTHER_CLIENT, OTHER_SERVICE_PORT, S, SERVICE_PORT, VIP_IP, VIP_MAC,
    arp_frame, checksums_ok, ct_flushes, flow_mods, flush_tuple, group_mods, icmp_echo, kind_of, of_class, outputs,
    packet_outs, syn, tcp_frame,
)


class FakeConntrack:
    """The switch's conntrack, as the app reads it (controllers/nlb_io.py)."""

    def __init__(self, monkeypatch):
        self.entries: list[CtEntry] = []
        self.calls: list[tuple] = []
        monkeypatch.setattr(nlb_io, "dump_conntrack", self.dump)

    def dump(self, zone, datapath=None):
        self.calls.append(("dump", zone, datapath))
        return list(self.entries)


@pytest.fixture
def conntrack(monkeypatch) -> FakeConntrack:
    return FakeConntrack(monkeypatch)


def ct(client_ip: str, client_port: int, mark: int, state: str = "ESTABLISHED") -> CtEntry:
    return CtEntry(client_ip, client_port, VIP_IP, SERVICE_PORT, zone_of(1), mark, state)


def pinned_on(app, dp, name: str, start: int = 43000) -> list[tuple]:
    """Open connections through the controller dataplane until two are on ``name``."""
    keys = []
    for sport in range(start, start + 400):
        if member_of(packet_in(app, dp, syn(sport))) == name:
            keys.append((CLIENT.ip, sport, VIP_IP, SERVICE_PORT))
            if len(keys) == 2:
                return keys
    raise AssertionError(f"nothing pinned to {name}")


def member_of(msgs) -> str:
    """The member a SYN's answer pins the connection to."""
    [fwd] = [m for m in flow_mods(msgs) if kind_of(m) == FORWARD]
    return next(name for name, m in MEMBER.items() if Cookie.decode(fwd.cookie).member == m.port_no)


# ---- its configuration and its threads ---------------------------------------------------------


def test_app_reads_its_config_and_starts_no_thread_itself(make_app, hub):
    app = make_app(fast_fail=False, affinity="single")
    assert [v.ip for v in app.core.vips] == [VIP_IP, BRANCH_VIP] and app.core.dataplane == "controller"
    assert app.core.fast_fail is False and app.core.conn_idle_s == 60
    hq = app.core.vips[0]
    assert hq.index == 1 and hq.dpid == 1 and hq.ports == {SERVICE_PORT, OTHER_SERVICE_PORT}
    assert hq.pool.affinity == "single" and hq.member_index == {"cas1": 1, "cas2": 2, "cas3": 3}
    assert app.find_vip("HQ") is hq and app.find_vip(VIP_IP) is hq and app.find_vip("nope") is None
    # recorded, not run: the timer (guard report, deadlines, challenges) and the failover worker
    assert hub.spawned_names() == ["_timer_loop", "_failover_worker"] and hub.sleeps == []
    [up] = events(app, NLB_UP)
    assert (up["vips"], up["fast_fail"], up["dataplane"]) == ([VIP_IP, BRANCH_VIP], False, "controller")


def test_app_without_config_has_no_vips(monkeypatch, hub):
    from controllers.sdn_nlb import SdnNlb

    monkeypatch.delenv("CASLAB_NLB_CONFIG", raising=False)
    app = SdnNlb()
    assert app.core.vips == [] and app.snapshot()["vips"] == []


def test_the_switch_dataplane_spawns_the_conntrack_reader_only_with_fast_fail(make_app, hub):
    make_app(dataplane="switch")
    assert hub.spawned_names() == ["_timer_loop", "_failover_worker", "_conntrack_loop"]
    hub.spawned.clear()
    make_app(dataplane="switch", fast_fail=False)
    assert "_conntrack_loop" not in hub.spawned_names()


def test_the_admin_api_is_served_from_a_thread_of_its_own(make_app, hub, tmp_path):
    api = NlbApi(port=4242, token_file=str(tmp_path / "token"))
    app = make_app(api=api)
    [served] = hub.called("serve_api")
    assert served.args == (app, api)


# ---- framework events reach the core -----------------------------------------------------------


def test_port_desc_and_port_status_say_which_ports_are_up_and_which_are_gone(make_app, version):
    app = make_app()
    dp = FakeDatapath(1, version)
    features(app, dp)
    cas1, cas2, *rest = all_ports(dp)
    port_desc(app, dp, [ofport(dp, "clab1-eth1", 1, link_down=True), ofport(dp, "clab1-eth2", 2, admin_down=True),
                        *rest])
    members = app.core.vips[0].pool.members
    assert app.core.vips[0].port_numbers["clab1-eth3"] == 3  # the name, as bytes from the switch
    assert (members["cas1"].port_up, members["cas2"].port_up, members["cas3"].port_up) == (False, False, True)
    port_status(app, dp, ofport(dp, "clab1-eth3", 3), reason=dp.ofproto.OFPPR_DELETE)
    assert not members["cas3"].port_up  # deleted: gone, whatever its state said
    member_port(app, dp, "cas1")
    assert members["cas1"].port_up


def test_a_packet_in_reaches_the_core_with_its_port_and_data(make_app, version):
    app = make_app()
    dp = ready(app, version)
    [po] = packet_in(app, dp, arp_frame(1, VIP_IP), in_port=OTHER_CLIENT.port_no)
    assert outputs(po.actions) == [OTHER_CLIENT.port_no] and Ether(po.data).src == VIP_MAC


def test_a_packet_ins_cookie_reaches_the_core(make_app):
    """A survivor's reset copy is told by its flow's cookie (switch dataplane)."""
    app = make_app(dataplane="switch")
    dp = ready(app, OF15)
    rst = tcp_frame(SERVICE_PORT, "R", seq=5, dport=40020, src_ip=VIP_IP, dst_ip=CLIENT.ip)
    assert packet_in(app, dp, rst, MEMBER["cas3"].port_no, cookie=Cookie(1, 3, RESET).encode()) == []
    [reset] = events(app, NLB_RESET)
    assert (reset["client"], reset["via"]) == (f"{CLIENT.ip}:40020", "survivor")


def test_only_a_forward_flows_idle_timeout_ends_its_connection(make_app, version):
    app = make_app()
    dp = ready(app, version)
    [fwd] = [m for m in flow_mods(packet_in(app, dp, syn(40020))) if kind_of(m) == FORWARD]
    flow_removed(app, dp, fwd, dp.ofproto.OFPRR_DELETE)  # deleted on purpose: evict's business
    assert len(app.core.vips[0].conns) == 1
    flow_removed(app, dp, fwd, dp.ofproto.OFPRR_IDLE_TIMEOUT)
    assert len(app.core.vips[0].conns) == 0


def test_a_restarted_app_relearns_from_the_flow_entries_the_switch_reports(make_app, version):
    """OpenFlow 1.3's flow stats, 1.5's flow descs: what os-ken parses of each carries what
    the core reads (cookie, match, the rewrite actions)."""
    old = make_app()
    old_dp = ready(old, version)
    flows = [f for i in range(10) for f in flow_mods(packet_in(old, old_dp, syn(43000 + i)))]
    new = make_app()
    dp = FakeDatapath(1, version)
    msgs = features(new, dp)
    [request] = of_class(msgs, "OFPFlowStatsRequest") + of_class(msgs, "OFPFlowDescStatsRequest")
    port_desc(new, dp, all_ports(dp))
    flow_stats_reply(new, dp, request, flows)
    pinned = {k: (c.backend, c.client_mac, c.in_port) for k, c in old.core.vips[0].conns.by_key.items()}
    assert {k: (c.backend, c.client_mac, c.in_port) for k, c in new.core.vips[0].conns.by_key.items()} == pinned
    assert [e["conns"] for e in events(new, NLB_RELEARN)] == [10]


def test_switch_errors_are_logged_including_experimenter_ones(make_app, version):
    app = make_app()
    dp = ready(app, version)
    error_msg(app, dp, dp.ofproto.OFPET_BAD_ACTION, 4, b"\x06\x0e\x00\x50" + b"\x00" * 80)
    error_msg(app, dp, 0, 0, b"\x06\x0f\x00\x10", exp_type=11)  # an Open vSwitch NX error
    first, second = events(app, NLB_SWITCH_ERROR)
    assert (first["type"], first["code"], first["data"]) == (2, 4, ("060e0050" + "00" * 80)[:128])
    assert (second["type"], second["code"], second["data"]) == (0xFFFF, 11, "060f0010")


def test_a_barrier_reply_releases_only_its_own_failover(make_app, conntrack):
    app = make_app(dataplane="switch")
    dp = ready(app, OF15)
    app.admin_set(app.core.vips[0], "cas1", up=False)
    [barrier] = of_class(dp.take(), "OFPBarrierRequest")
    item = app.failovers.get_nowait()
    applied = app.barriers[(dp.id, item.barrier_xid)]
    assert not applied.is_set()
    barrier_reply(app, dp, barrier.xid + 1000)  # somebody else's barrier
    assert not applied.is_set()
    barrier_reply(app, dp, barrier.xid)
    assert applied.is_set() and app.barriers == {}
    app._failover(item)
    assert events(app, NLB_EVICT)[-1]["reason"] == "admin_down"


# ---- the one way out ----------------------------------------------------------------------------


def test_execute_carries_out_each_output_in_order(make_app, hub, version):
    app = make_app()
    dp = FakeDatapath(1, version)
    build = FlowBuilder(dp)
    raw = packet_out_bytes(version, CLIENT.port_no, arp_frame(2, CLIENT.ip))
    app.wakeup.clear()
    app._execute([Send(dp, build.table_miss() + [raw]), Emit.emit(LB_MEMBER, ts=123, vip=VIP_IP, member="cas1",
                  reason="test", alive=True, draining=False, accepts_new=True), Wake(0), Close(dp),
                  SaveAdmin(VIP_IP, "cas1", {"admin_up": False}), ReadConntrack(1)])
    miss, po = dp.take()  # serialized as os-ken does, the raw buffer read back
    assert type(miss).__name__ == "OFPFlowMod" and outputs(po.actions) == [CLIENT.port_no]
    assert events(app, LB_MEMBER)[-1]["ts"] == 123 and app.wakeup.is_set() and dp.closed
    assert app.admin.get(VIP_IP, "cas1") == {"admin_up": False}
    assert [c.args for c in hub.called("_relearn")] == [(1,)]
    failover = Failover(dp, 1, 1, "cas1", "admin_down", 0, 77)
    app._execute([failover])
    assert app.failovers.get_nowait() is failover and not app.barriers[(1, 77)].is_set()
    with pytest.raises(TypeError, match="no way to execute"):
        app._execute([object()])


def test_events_are_logged_with_their_catalogue_fields_and_the_cores_time(make_app, version):
    app = make_app()
    dp = ready(app, version)
    pinned_on(app, dp, "cas1")
    app.clock.advance(2.5)
    member_port(app, dp, "cas1", link_down=True)
    kinds = [e["ev"] for e in events(app)]
    for kind in ("nlb_up", "nlb_switch", "nlb_conn", "lb_member", "nlb_evict"):
        assert kind in kinds
    [change] = events(app, LB_MEMBER)
    assert change["ts"] == app.clock.now and change["reason"] == "port_down"
    [evict] = events(app, NLB_EVICT)
    assert evict["ts"] >= change["ts"] and evict["member"] == "cas1"


@pytest.mark.parametrize("dataplane", ["controller", "switch"])
def test_every_message_the_app_sends_serializes(make_app, conntrack, version, dataplane):
    """Whatever the core decides leaves through ``_execute``: each message must encode as
    os-ken encodes it, in the switch's version (the switch dataplane refuses OpenFlow 1.3:
    only its table-miss flow then)."""
    app = make_app(dataplane=dataplane)
    dp = FakeDatapath(1, version)
    sent = features(app, dp) + port_desc(app, dp, all_ports(dp))
    for frame in (arp_frame(1, VIP_IP), icmp_echo(), syn(40001), tcp_frame(40002, "A", ack=9)):
        sent += packet_in(app, dp, frame)
    if dataplane == "controller":
        pinned_on(app, dp, "cas2")
    conntrack.entries = [ct(CLIENT.ip, 40003, 2)]
    app.core.ct_cache[1] = list(conntrack.entries)
    sent += member_port(app, dp, "cas2", link_down=True)
    while not app.failovers.empty():
        app._failover(app.failovers.get_nowait())
    app.clock.advance(1)
    app.tick()
    vip = app.core.vips[0]
    app.drain(vip, "cas1")
    app.set_affinity(vip, "network")
    app.rejoin(vip, "cas1")
    sent += dp.take()
    kinds = {type(m).__name__ for m in sent}
    if dataplane == "switch" and version != OF15:
        assert "OFPGroupMod" not in kinds and "OFPMeterMod" not in kinds
        return
    assert {"OFPFlowMod", "OFPMeterMod", "OFPPortDescStatsRequest", "OFPPacketOut"} <= kinds
    if dataplane == "switch":
        assert {"OFPGroupMod", "OFPBarrierRequest", "OFPExperimenter"} <= kinds
    else:
        assert "OFPFlowStatsRequest" in kinds or "OFPFlowDescStatsRequest" in kinds


# ---- the threads -----------------------------------------------------------------------------------


def test_the_timer_step_writes_the_challenges_due_in_one_buffer(make_app, version):
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    on_cas2 = pinned_on(app, dp, "cas2")
    member_port(app, dp, "cas2", link_down=True)
    app.tick()
    assert dp.take() == []  # not due yet
    app.clock.advance(0.001)
    app.tick()
    challenges = packet_outs(dp.take())
    assert sorted((Ether(po.data)[IP].dst, Ether(po.data)[TCP].dport) for po in challenges) == \
        sorted(k[:2] for k in on_cas2)
    for po in challenges:
        assert outputs(po.actions) == [CLIENT.port_no] and Ether(po.data).dst == CLIENT.mac and checksums_ok(po.data)


def test_the_timer_thread_sends_due_challenges_by_itself(make_app, version):
    """The app's own timer thread, on the real clock: woken by the eviction, it sends the
    challenges when they are due, without a test driving it."""
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    on_cas2 = len(pinned_on(app, dp, "cas2"))
    app.clock = time.monotonic_ns
    stop = threading.Event()

    class Wakeup(threading.Event):
        def wait(self, timeout=None):
            if stop.is_set():
                raise StopLoop
            return super().wait(0.05 if timeout is None else min(timeout, 0.05))

    def run():
        with contextlib.suppress(StopLoop):
            app._timer_loop()

    app.wakeup = Wakeup()
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    member_port(app, dp, "cas2", link_down=True)
    deadline = time.monotonic() + 5
    while app.core.stats["challenges"] < 3 * on_cas2 and time.monotonic() < deadline:
        time.sleep(0.005)
    stop.set()
    thread.join(2)
    assert app.core.stats["challenges"] >= 3 * on_cas2 and not thread.is_alive()


def test_the_failover_worker_flushes_then_challenges_the_members_clients(make_app, conntrack):
    from controllers.sdn_nlb import FIRST_WAVE_WAIT_S

    app = make_app(dataplane="switch", datapath_name="netdev@ovs-netdev")
    dp = ready(app, OF15)
    known = [ct(CLIENT.ip, 40001, 2), ct("10.1.10.7", 40002, 2)]
    app.core.ct_cache[1] = known + [ct(CLIENT.ip, 40003, 1), ct(CLIENT.ip, 40004, 2, "TIME_WAIT")]
    conntrack.entries = app.core.ct_cache[1] + [ct(OTHER_CLIENT.ip, 40005, 2), ct("192.0.2.9", 40006, 2)]
    member_port(app, dp, "cas2", link_down=True)
    assert events(app, NLB_EVICT) == []
    item = app.failovers.get_nowait()
    assert (item.channel, item.name, item.reason) == (dp, "cas2", "port_down")
    app._failover(item)
    # the switch forgets each connection before its client is challenged: the last read's at
    # once, then the ones a fresh read adds (its answers are strays, sent to a survivor by the
    # tables as they are, never by a datapath flow cached for the dead port)
    # the first wave's challenges are written by the worker itself, before the fresh read (which
    # waited for their resets: none came here, so it waited FIRST_WAVE_WAIT_S); the fresh
    # read's connection is challenged on the timer thread's next turn
    assert conntrack.calls == [("dump", zone_of(1), "netdev@ovs-netdev")]
    sent = dp.take()
    flushed = [flush_tuple(m) for m in ct_flushes(sent)]
    assert flushed == [(CLIENT.ip, 40001), ("10.1.10.7", 40002), (OTHER_CLIENT.ip, 40005)]
    first_wave = packet_outs(sent)
    assert sorted(Ether(po.data)[TCP].dport for po in first_wave) == [40001, 40002]
    assert sent.index(first_wave[0]) > max(sent.index(m) for m in ct_flushes(sent)[:2]), \
        "a connection is forgotten before its client is challenged"
    assert sent.index(first_wave[-1]) < sent.index(ct_flushes(sent)[2]), "the first wave left before the fresh read"
    wanted = {(CLIENT.ip, 40001), ("10.1.10.7", 40002), (OTHER_CLIENT.ip, 40005)}  # live, on cas2, from a source
    assert {k[:2] for k in app.core.challenges.pending} == wanted
    [evict] = events(app, NLB_EVICT)
    assert (evict["member"], evict["conns"], evict["cached"], evict["fast_fail"]) == ("cas2", 2 + 1, 2, True)
    assert evict["lookup_ms"] < FIRST_WAVE_WAIT_S * 1000, "the read's own time, without the wait before it"
    app.tick()  # the fresh one at once, then everything on the schedule
    challenges = first_wave + [po for po in packet_outs(dp.take()) if Ether(po.data)[TCP].dport == 40005]
    assert len(challenges) == 3
    for po in challenges:
        frame = Ether(po.data)
        client = OTHER_CLIENT if frame[IP].dst == OTHER_CLIENT.ip else CLIENT
        assert outputs(po.actions) == [client.port_no] and frame.dst == client.mac
        assert (frame.src, frame[IP].src, frame[TCP].sport) == (VIP_MAC, VIP_IP, SERVICE_PORT) and checksums_ok(po.data)


def test_the_conntrack_is_read_when_a_vip_is_installed_off_the_handlers_thread(make_app, hub, conntrack):
    conntrack.entries = [ct(CLIENT.ip, 40001, 1), ct(CLIENT.ip, 40002, 2, "TIME_WAIT")]
    app = make_app(dataplane="switch")
    ready(app, OF15)
    assert conntrack.calls == [] and events(app, NLB_RELEARN) == []  # spawned, not read in the handler
    hub.run("_relearn")
    assert conntrack.calls == [("dump", zone_of(1), None)] and app.core.ct_cache == {1: conntrack.entries}
    [relearn] = events(app, NLB_RELEARN)
    assert (relearn["dpid"], relearn["conns"]) == (1, 1)  # a closing connection is nobody's to reset


def test_the_conntrack_reader_keeps_a_copy_per_connected_vip(make_app, hub, conntrack):
    app = make_app(dataplane="switch")
    ready(app, OF15)
    conntrack.entries = [ct(CLIENT.ip, 40001, 1)]
    hub.run("_conntrack_loop")
    assert app.core.ct_cache == {1: conntrack.entries} and hub.sleeps == [0.25]
    assert conntrack.calls == [("dump", zone_of(1), None)]  # the Branch VIP's switch is not connected


@pytest.fixture
def short_dir():
    """A directory for a Unix socket (its path must fit in 107 bytes, tmp_path may not)."""
    path = tempfile.mkdtemp(prefix="nlb", dir="/tmp")
    yield path
    shutil.rmtree(path, ignore_errors=True)


def is_private_socket(path: str) -> bool:
    try:
        mode = os.stat(path).st_mode
    except OSError:
        return False
    return stat.S_ISSOCK(mode) and mode & 0o777 == 0o600


def test_no_datagram_stops_the_health_socket(make_app, hub, short_dir):
    path = os.path.join(short_dir, "health.sock")
    open(path, "w").close()  # a stale file from a previous run is replaced
    app = make_app(health=NlbHealth(socket=path, fall=2))
    [loop] = hub.called("_health_loop")
    threading.Thread(target=loop, daemon=True).start()  # blocks on the socket for good: a daemon
    deadline = time.monotonic() + 5
    while not is_private_socket(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert is_private_socket(path)
    garbage = [b"", b"\xff\xfe\x00", b"not json", b"[1, 2]", b"null", b'{"vip": 1}', b"[" * 5000 + b"]" * 5000,
               b'{"vip": "10.1.0.100"}', b'{"vip": "10.9.9.9", "member": "cas1", "ok": false}',
               json.dumps({"vip": VIP_IP, "member": "cas9", "ok": False}).encode(), b"x" * 4096]
    report = json.dumps({"vip": VIP_IP, "member": "cas2", "ok": False, "detail": "refused" * 40}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sender:
        for datagram in garbage + [report, report]:
            sender.sendto(datagram, path)
    # the health thread marks the member down, evicts it, then logs the change: wait for the log
    while not events(app, LB_MEMBER) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not app.core.vips[0].pool.members["cas2"].healthy
    [change] = events(app, LB_MEMBER)
    assert change["member"] == "cas2" and change["reason"] == "probe_down:" + ("refused" * 40)[:100]
    assert all(m.healthy for n, m in app.core.vips[0].pool.members.items() if n != "cas2")


def test_a_health_socket_that_cannot_be_opened_is_reported(make_app, hub, short_dir):
    path = os.path.join(short_dir, "x" * 120)  # over the 107 bytes of a socket address
    app = make_app(health=NlbHealth(socket=path))
    [loop] = hub.called("_health_loop")
    assert loop() is None  # returns instead of dying silently
    [error] = events(app, NLB_HEALTH_SOCKET_ERROR)
    assert error["path"] == path and error["reason"]


# ---- what the admin API calls ---------------------------------------------------------------------


def test_the_admin_apis_calls_reach_the_core_and_what_they_decide_leaves(make_app, conntrack):
    app = make_app(dataplane="switch")
    dp = ready(app, OF15)
    vip = app.find_vip("HQ")
    app.wakeup.clear()
    before = time.time()
    app.drain(vip, "cas2", deadline_s=30)
    assert app.wakeup.is_set()  # the timer thread recomputes its wait for the deadline
    assert [at - app.clock.now for at, _, kind, _ in app.core.timers if kind == "drain"] == [30 * S]
    assert before + 30 <= app.admin.get(VIP_IP, "cas2")["drain_deadline_wall"] <= time.time() + 30
    app.rejoin(vip, "cas2")
    app.set_affinity(vip, "network")
    select_groups = [g for g in group_mods(dp.take()) if g.group_id == 1]  # drain, rejoin, affinity
    assert len(select_groups) == 3 and app.admin.get(VIP_IP, "cas2")["draining"] is False
    app.admin_set(vip, "cas1", up=False)
    assert of_class(dp.take(), "OFPBarrierRequest") and not app.failovers.empty()
    snap = json.loads(json.dumps(app.snapshot()))  # the API serves it as JSON
    assert snap["vips"][0]["affinity"] == "network" and not snap["vips"][0]["members"][0]["admin_up"]


def test_admin_state_survives_a_restart(make_app, version, tmp_path):
    state = str(tmp_path / "state" / "nlb-admin.json")
    app = make_app(state_file=state)
    app.admin_set(app.core.vips[0], "cas1", up=False)
    app.drain(app.core.vips[0], "cas2")
    again = make_app(state_file=state)
    members = again.core.vips[0].pool.members
    assert (members["cas1"].admin_up, members["cas1"].in_service) == (False, False)
    assert (members["cas2"].draining, members["cas2"].accepts_new) == (True, False)
    assert members["cas3"].accepts_new and again.core.vips[1].pool.members["cas4"].accepts_new
    dp = ready(again, version)
    assert {member_of(packet_in(again, dp, syn(52000 + i))) for i in range(30)} == {"cas3"}
