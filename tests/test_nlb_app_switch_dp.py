"""The SDN NLB app's switch dataplane (``dataplane = "switch"``): Open vSwitch balances with
a select group and conntrack NAT; the app programs it and resets a dead member's clients.
Against a fake OpenFlow 1.5 datapath (group bucket properties exist only in 1.5), with the
conntrack reader of controllers/nlb_io.py replaced by a fake."""

from __future__ import annotations

import ipaddress
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controllers import nlb_io
from controllers.nlb_flows import (
    BASE, CONTROLLER_GROUP, DEAD, DELIVER, GUARD, HASH_FIELDS, OFPGC_ADD_OR_MOD, PRIO_DEAD, PRIO_SURVIVOR_RST, RESET,
    PRIO_STRAY, SERVICE, T_CONNTRACK, T_DELIVER, Cookie, ct_flush_bytes, member_group_id, stray_group_id,
    zone_of,
)
from controllers.nlb_state import CtEntry
from labcommon.catalogue import LB_MEMBER, NLB_EVICT, NLB_RELEARN, NLB_RESET, NLB_SWITCH_UNUSABLE
from labcommon.programs import NlbHealth
from tests.fakes import (
    CLIENT, MEMBER, MEMBERS, OF13, OF15, OTHER_CLIENT, SERVICE_PORT, VIP_IP, VIP_MAC, FakeDatapath,
    all_ports, apply_actions, barrier_reply, checksums_ok, deliver, drive, events, features, fire_next, flow_mods,
    group_mods,
    kind_of, match_dict, of_class, ofport, outputs, packet_in, packet_in_event, packet_outs, port_desc, port_status,
    ready, syn, tcp_frame,
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


def ct_flushes(msgs) -> list:
    """The NXT_CT_FLUSH messages among ``msgs``."""
    return [m for m in of_class(msgs, "OFPExperimenter") if (m.experimenter, m.exp_type) == (0x2320, 32)]


def stray_targets(msgs) -> list[str]:
    """The addresses the stray group sends to, in bucket order (its last bucket: the controller)."""
    [group] = [g for g in group_mods(msgs) if g.group_id == stray_group_id(1)]
    return [rewrite_target(b.actions)[1] for b in group.buckets[:-1]]


def flush_tuple(msg) -> tuple[str, int]:
    """(client address, client port) of a conntrack flush of one connection to the VIP, in
    zone 1 (the whole message must be the one ct_flush_bytes builds for it)."""
    client_ip, client_port = ipaddress.IPv6Address(msg.data[20:36]).ipv4_mapped, struct.unpack_from("!H", msg.data, 68)[0]
    assert msg.data == ct_flush_bytes(4, zone_of(1), (str(client_ip), client_port), (VIP_IP, SERVICE_PORT))[16:]
    return str(client_ip), client_port


@pytest.fixture
def conntrack(monkeypatch) -> FakeConntrack:
    return FakeConntrack(monkeypatch)


def ct(client_ip: str, client_port: int, mark: int, state: str = "ESTABLISHED") -> CtEntry:
    return CtEntry(client_ip, client_port, VIP_IP, SERVICE_PORT, zone_of(1), mark, state)


def buckets(group) -> list[tuple]:
    """(bucket id, watched port, NAT address, ct_mark) of each bucket of the select group."""
    out = []
    for b in group.buckets:
        [action] = b.actions
        [nat, mark] = action.actions
        [watch] = [p.watch for p in b.properties if type(p).__name__ == "OFPGroupBucketPropWatch"]
        assert action.flags == 1 and action.zone_ofs_nbits == zone_of(1) and action.recirc_table == T_DELIVER
        assert nat.range_ipv4_min == nat.range_ipv4_max
        out.append((b.bucket_id, watch, nat.range_ipv4_min, mark.value))
    return out


def all_buckets(names) -> list[tuple]:
    return [(MEMBER[n].port_no, MEMBER[n].port_no, MEMBER[n].ip, MEMBER[n].port_no) for n in names]


def select_group(msgs):
    [group] = [g for g in group_mods(msgs) if g.group_id == 1]
    return group


def dead_flows(msgs, command: str = "ADD") -> list:
    return [m for m in flow_mods(msgs, command) if kind_of(m) == DEAD]


def dead_members(msgs) -> list[int]:
    """The members whose dead-member flows were added (each has two: controller, survivor)."""
    return sorted({Cookie.decode(m.cookie).member for m in dead_flows(msgs)})


def rewrite_target(actions) -> tuple:
    """(eth_dst, ipv4_dst, output port) of a readdressing action list."""
    fields = {a.key: a.value for a in actions if type(a).__name__ == "OFPActionSetField"}
    return fields.get("eth_dst"), fields.get("ipv4_dst"), outputs(actions)


def assert_dead_flows(dp, msgs, member, survivor) -> None:
    """``member``'s two dead-member flows: its clients' segments to ``survivor`` (higher
    priority, matched on the member's address), anything else of its connections to the
    controller."""
    mine = [m for m in dead_flows(msgs) if Cookie.decode(m.cookie).member == member.port_no]
    to_survivor = [m for m in mine if m.priority == PRIO_DEAD + 1]
    [to_controller] = [m for m in mine if m.priority == PRIO_DEAD]
    assert match_dict(to_controller.match) == {"eth_type": 0x0800, "ct_state": (0x22, 0x22), "ct_mark": member.port_no}
    assert outputs(apply_actions(to_controller)) == [dp.ofproto.OFPP_CONTROLLER]
    if survivor is None:
        assert to_survivor == []
        return
    [flow] = to_survivor
    assert flow.table_id == T_CONNTRACK and match_dict(flow.match) == {
        "eth_type": 0x0800, "ip_proto": 6, "ct_state": (0x22, 0x22), "ct_mark": member.port_no, "ipv4_dst": member.ip}
    assert rewrite_target(apply_actions(flow)) == (survivor.mac, survivor.ip, [survivor.port_no])


def switch_app(make_app, **kw):
    app = make_app(dataplane="switch", **kw)
    return app, ready(app, OF15)


# ---- set-up -------------------------------------------------------------------------------------------


def test_switch_dataplane_spawns_the_conntrack_reader_only_with_fast_fail(make_app, hub):
    make_app(dataplane="switch")
    assert hub.spawned_names() == ["_timer_loop", "_failover_worker", "_conntrack_loop"]
    hub.spawned.clear()
    make_app(dataplane="switch", fast_fail=False)
    assert "_conntrack_loop" not in hub.spawned_names()


def test_the_conntrack_is_read_when_a_vip_is_installed_off_the_handlers_thread(make_app, hub, conntrack):
    conntrack.entries = [ct(CLIENT.ip, 40001, 1), ct(CLIENT.ip, 40002, 2, "TIME_WAIT")]
    app, _ = switch_app(make_app)
    assert conntrack.calls == [] and events(app, NLB_RELEARN) == []  # spawned, not read in the handler
    hub.run_spawned("_relearn")
    assert conntrack.calls == [("dump", zone_of(1), None)] and app.core.ct_cache == {1: conntrack.entries}
    [relearn] = events(app, NLB_RELEARN)
    assert (relearn["dpid"], relearn["conns"]) == (1, 1)  # a closing connection is nobody's to reset


def test_port_desc_installs_guard_group_service_and_delivery(make_app):
    app = make_app(dataplane="switch")
    dp = FakeDatapath(1, OF15)
    assert not of_class(features(app, dp), "OFPFlowDescStatsRequest")  # nothing to re-learn: conntrack keeps it
    msgs = port_desc(app, dp, all_ports(dp))
    position = {id(m): i for i, m in enumerate(msgs)}
    group = select_group(msgs)
    assert (group.command, group.type, group.group_id) == (OFPGC_ADD_OR_MOD, dp.ofproto.OFPGT_SELECT, 1)
    assert buckets(group) == all_buckets(["cas1", "cas2", "cas3"])
    assert [p.fields for p in group.properties] == [HASH_FIELDS["none"]]
    for b in group.buckets:
        assert [p.weight for p in b.properties if type(p).__name__ == "OFPGroupBucketPropWeight"] == [100]
    guard = [m for m in flow_mods(msgs) if kind_of(m) == GUARD and match_dict(m.match)["eth_type"] == 0x0800]
    arp_guard = [m for m in flow_mods(msgs) if kind_of(m) == GUARD and match_dict(m.match)["eth_type"] == 0x0806]
    assert len(guard) == 5 and all(position[id(g)] < position[id(group)] for g in guard)
    assert len(arp_guard) == 2 * (len(guard) - 1), "each guarded prefix: its port's ARP passes, others' dropped"
    # every flow that points at a group comes after it
    [new_syn] = [m for m in flow_mods(msgs) if m.table_id == T_CONNTRACK and m.priority == 200]
    assert [a.group_id for a in apply_actions(new_syn)] == [1] and position[id(new_syn)] > position[id(group)]
    assert match_dict(new_syn.match)["tcp_flags"] == (0x002, 0x016)
    service = [m for m in flow_mods(msgs) if kind_of(m) == SERVICE and m.priority == 100]
    assert sorted(match_dict(m.match)["tcp_dst"] for m in service) == [135, SERVICE_PORT]
    replies = [m for m in flow_mods(msgs) if kind_of(m) == BASE and m.table_id == 0 and m.priority == 200]
    assert {(match_dict(m.match)["ipv4_src"], match_dict(m.match)["tcp_src"]) for m in replies} == {
        (m.ip, p) for m in MEMBERS for p in (135, SERVICE_PORT)}
    for member in MEMBERS:
        gid = member_group_id(1, member.port_no)
        [ff] = [g for g in group_mods(msgs) if g.group_id == gid]
        live, *rescue, fallback = ff.buckets
        assert ff.type == dp.ofproto.OFPGT_FF and [p.watch for p in live.properties] == [member.port_no]
        assert outputs(live.actions) == [member.port_no] and live.actions[0].value == member.mac
        # then every other member, starting after this one, each while its own port is up
        others = MEMBERS[MEMBERS.index(member) + 1:] + MEMBERS[:MEMBERS.index(member)]
        assert [[p.watch for p in b.properties] for b in rescue] == [[o.port_no] for o in others]
        assert [rewrite_target(b.actions) for b in rescue] == [(o.mac, o.ip, [o.port_no]) for o in others]
        assert [a.group_id for a in fallback.actions] == [CONTROLLER_GROUP]
        assert len({b.bucket_id for b in ff.buckets}) == len(ff.buckets)
        [deliver] = [m for m in flow_mods(msgs) if kind_of(m) == DELIVER and Cookie.decode(m.cookie).member
                     == member.port_no]
        assert match_dict(deliver.match) == {"eth_type": 0x0800, "ct_mark": member.port_no, "ipv4_dst": member.ip}
        assert position[id(deliver)] > position[id(ff)] and deliver.priority == 110
    [controller_group] = {g.group_id for g in group_mods(msgs) if g.type == dp.ofproto.OFPGT_INDIRECT}
    assert controller_group == CONTROLLER_GROUP
    # a stray (a client segment conntrack does not know that opens nothing) to the first live member
    [strays] = [g for g in group_mods(msgs) if g.group_id == stray_group_id(1)]
    *to_members, fallback = strays.buckets
    assert strays.type == dp.ofproto.OFPGT_FF
    assert [[p.watch for p in b.properties] for b in to_members] == [[m.port_no] for m in MEMBERS]
    assert [rewrite_target(b.actions) for b in to_members] == [(m.mac, m.ip, [m.port_no]) for m in MEMBERS]
    assert [a.group_id for a in fallback.actions] == [CONTROLLER_GROUP]
    [stray] = [m for m in flow_mods(msgs) if m.table_id == T_CONNTRACK and m.priority == PRIO_STRAY]
    assert match_dict(stray.match) == {"eth_type": 0x0800, "ip_proto": 6, "ipv4_dst": VIP_IP,
                                       "ct_state": (0x21, 0x21), "tcp_flags": (0, 0x006)}
    assert [a.group_id for a in apply_actions(stray)] == [stray_group_id(1)]
    assert position[id(stray)] > position[id(strays)] > min(position[id(g)] for g in group_mods(msgs)
                                                             if g.group_id == CONTROLLER_GROUP)
    # members in service: any dead-member flow a previous controller left is removed
    assert sorted(Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")) == [1, 2, 3]
    assert dead_flows(msgs) == []


def test_a_member_down_at_start_gets_a_dead_member_flow_and_no_bucket(make_app, conntrack):
    app = make_app(dataplane="switch")
    dp = FakeDatapath(1, OF15)
    features(app, dp)
    msgs = port_desc(app, dp, [ofport(dp, "clab1-eth2", 2, link_down=True)] + all_ports(dp)[0:1]
                     + all_ports(dp)[2:])
    groups = [g for g in group_mods(msgs) if g.group_id == 1]
    assert buckets(groups[-1]) == all_buckets(["cas1", "cas3"])
    assert {Cookie.decode(m.cookie).member for m in dead_flows(msgs)} == {2}


def test_switch_dataplane_refuses_an_openflow_13_switch(make_app):
    """Its select group's hash fields and bucket properties exist from OpenFlow 1.5 on: on
    an older switch the NLB says so and installs nothing for the VIP (plain L2 only)."""
    app = make_app(dataplane="switch")
    dp = FakeDatapath(1, OF13)
    sent = features(app, dp) + port_desc(app, dp, all_ports(dp))
    assert [(f.priority, f.match.to_jsondict()["OFPMatch"]["oxm_fields"]) for f in flow_mods(sent)] == [(0, [])]
    assert 1 not in app.core.datapaths
    refused = events(app, NLB_SWITCH_UNUSABLE)
    assert [e["dpid"] for e in refused] == [1] and "OpenFlow 1.5" in refused[0]["reason"]


# ---- membership moves the group ---------------------------------------------------------------------


def test_group_buckets_follow_accepts_new(make_app, conntrack):
    app, dp = switch_app(make_app)
    vip = app.core.vips[0]
    app.drain(vip, "cas2")
    msgs = dp.take()
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas3"]) and dead_flows(msgs) == []
    assert app.failovers.empty()
    app.rejoin(vip, "cas2")
    assert buckets(select_group(dp.take())) == all_buckets(["cas1", "cas2", "cas3"])
    app.admin_set(vip, "cas1", up=False)
    msgs = dp.take()
    assert dead_members(msgs) == [1]
    assert_dead_flows(dp, msgs, MEMBER["cas1"], MEMBER["cas2"])  # the next member after it, in service
    # strays first (the failover's forgotten connections), over the members in service only,
    # then the dead-member flows, then the barrier the failover waits for
    assert [type(m).__name__ for m in msgs][:6] == ["OFPGroupMod", "OFPGroupMod", "OFPFlowMod", "OFPFlowMod",
                                                    "OFPFlowMod", "OFPBarrierRequest"]
    assert stray_targets(msgs) == [MEMBER["cas2"].ip, MEMBER["cas3"].ip]
    assert buckets(select_group(msgs)) == all_buckets(["cas2", "cas3"])
    app.admin_set(vip, "cas1", up=True)
    msgs = dp.take()
    assert [Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")] == [1]
    assert stray_targets(msgs) == [m.ip for m in MEMBERS]
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas2", "cas3"])
    app.set_affinity(vip, "network")
    assert [p.fields for p in select_group(dp.take()).properties] == [HASH_FIELDS["network"]]


def test_a_health_flip_before_the_switch_connects_is_installed_when_it_does(make_app):
    app = make_app(dataplane="switch", health=NlbHealth(fall=1))
    app.on_probe(VIP_IP, "cas1", False)
    assert not app.core.vips[0].pool.members["cas1"].in_service and app.failovers.empty()
    dp = FakeDatapath(1, OF15)
    features(app, dp)
    msgs = port_desc(app, dp, all_ports(dp))
    assert buckets(select_group(msgs)) == all_buckets(["cas2", "cas3"])
    assert dead_members(msgs) == [1]
    assert_dead_flows(dp, msgs, MEMBER["cas1"], MEMBER["cas2"])
    assert sorted(Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")) == [2, 3]
    # a survivor's RST for a connection it does not have leaves as the VIP, a copy to the controller
    resets = [m for m in flow_mods(msgs) if kind_of(m) == RESET]
    assert sorted(match_dict(m.match)["ipv4_src"] for m in resets) == sorted(m.ip for m in MEMBERS)
    for flow in resets:
        assert (flow.table_id, flow.priority) == (T_CONNTRACK, PRIO_SURVIVOR_RST)
        assert {k: v for k, v in match_dict(flow.match).items() if k != "ipv4_src"} == {
            "eth_type": 0x0800, "ip_proto": 6, "ct_state": (0x20, 0x22), "tcp_flags": (0x004, 0x004)}
        actions = apply_actions(flow)
        assert [type(a).__name__ for a in actions] == ["OFPActionSetField", "OFPActionSetField", "OFPActionOutput",
                                                       "OFPActionMeter", "OFPActionOutput"]
        assert (actions[0].value, actions[1].value) == (VIP_MAC, VIP_IP)
        assert outputs(actions) == [dp.ofproto.OFPP_NORMAL, dp.ofproto.OFPP_CONTROLLER]


def test_rejoin_after_a_drain_deadline_removes_the_dead_member_flow(make_app, hub, conntrack):
    app, dp = switch_app(make_app)
    app.drain(app.core.vips[0], "cas3", deadline_s=5)
    dp.take()
    fire_next(app, "drain")
    msgs = dp.take()
    assert dead_members(msgs) == [3]
    assert_dead_flows(dp, msgs, MEMBER["cas3"], MEMBER["cas1"])  # after the last member: the first
    app.rejoin(app.core.vips[0], "cas3")
    msgs = dp.take()
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas2", "cas3"])
    # otherwise every new connection to cas3 (ct_mark 3, +est) would be sent to the controller and reset
    assert [Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")] == [3]


# ---- failover -------------------------------------------------------------------------------------------


def test_port_down_queues_the_failover_which_challenges_the_members_clients(make_app, conntrack):
    app, dp = switch_app(make_app, datapath_name="netdev@ovs-netdev")
    known = [ct(CLIENT.ip, 40001, 2), ct("10.1.10.7", 40002, 2)]
    app.core.ct_cache[1] = known + [ct(CLIENT.ip, 40003, 1), ct(CLIENT.ip, 40004, 2, "TIME_WAIT")]
    conntrack.entries = app.core.ct_cache[1] + [ct(OTHER_CLIENT.ip, 40005, 2), ct("192.0.2.9", 40006, 2)]
    msgs = port_status(app, dp, ofport(dp, "clab1-eth2", 2, link_down=True))
    assert dead_members(msgs) == [2]
    assert_dead_flows(dp, msgs, MEMBER["cas2"], MEMBER["cas3"])
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas3"])
    assert events(app, NLB_EVICT) == [] and events(app, LB_MEMBER)[-1]["reason"] == "port_down"
    item = app.failovers.get_nowait()
    assert (item.channel, item.vip_index, item.member_index, item.name, item.reason) == (dp, 1, 2, "cas2", "port_down")
    dp.take()
    app._failover(item)
    # the switch forgets each connection before its client is challenged: the last read's at
    # once, then the ones a fresh read adds (its answers are strays, sent to a survivor by the
    # tables as they are, never by a datapath flow cached for the dead port)
    assert conntrack.calls == [("dump", zone_of(1), "netdev@ovs-netdev")]
    flushed = [flush_tuple(m) for m in ct_flushes(dp.take())]
    assert flushed == [(CLIENT.ip, 40001), ("10.1.10.7", 40002), (OTHER_CLIENT.ip, 40005)]
    wanted = {(CLIENT.ip, 40001), ("10.1.10.7", 40002), (OTHER_CLIENT.ip, 40005)}  # live, on cas2, from a source
    assert {k[:2] for k in app.core.challenges.pending} == wanted
    [evict] = events(app, NLB_EVICT)
    assert (evict["member"], evict["conns"], evict["cached"], evict["fast_fail"]) == ("cas2", 2 + 1, 2, True)
    assert drive(app, 0) == 3  # at once, then on the schedule
    for po in packet_outs(dp.take()):
        frame = Ether(po.data)
        client = OTHER_CLIENT if frame[IP].dst == OTHER_CLIENT.ip else CLIENT
        assert outputs(po.actions) == [client.port_no] and frame.dst == client.mac
        assert (frame.src, frame[IP].src, frame[TCP].sport) == (VIP_MAC, VIP_IP, SERVICE_PORT) and checksums_ok(po.data)


def test_other_reasons_wait_for_the_switch_to_apply_the_dead_member_flow(make_app, conntrack):
    app, dp = switch_app(make_app)
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


def test_without_fast_fail_a_dead_member_is_only_cut_off(make_app, conntrack):
    app, dp = switch_app(make_app, fast_fail=False)
    msgs = port_status(app, dp, ofport(dp, "clab1-eth1", 1, link_down=True))
    assert dead_flows(msgs) and app.failovers.empty()
    assert ct_flushes(msgs) == [], "without fast_fail the dead member's connections go to the controller"
    [evict] = events(app, NLB_EVICT)
    assert (evict["conns"], evict["fast_fail"]) == (0, False)


def test_the_conntrack_reader_keeps_a_copy_per_connected_vip(make_app, hub, conntrack):
    app, _ = switch_app(make_app)
    conntrack.entries = [ct(CLIENT.ip, 40001, 1)]
    hub.run_loop("_conntrack_loop", sleeps=0)
    assert app.core.ct_cache == {1: conntrack.entries} and hub.sleeps == [0.25]
    assert conntrack.calls == [("dump", zone_of(1), None)]  # the Branch VIP's switch is not connected


# ---- packets reaching the controller -------------------------------------------------------------------


def test_a_client_segment_after_nat_gets_an_exact_rst_from_the_vip(make_app, monkeypatch):
    app, dp = switch_app(make_app)
    done = []
    real_done = app.core.challenges.done
    monkeypatch.setattr(app.core.challenges, "done", lambda key: done.append(key) or real_done(key))
    cas2 = MEMBER["cas2"]
    [po] = packet_in(app, dp, tcp_frame(40010, "A", seq=777, ack=0xCAFEF00D, dst_ip=cas2.ip))
    frame = Ether(po.data)
    assert (frame.src, frame.dst, frame[IP].src, frame[IP].dst) == (VIP_MAC, CLIENT.mac, VIP_IP, CLIENT.ip)
    seg = frame[TCP]
    assert (str(seg.flags), seg.seq, seg.sport, seg.dport) == ("R", 0xCAFEF00D, SERVICE_PORT, 40010)
    assert outputs(po.actions) == [CLIENT.port_no] and checksums_ok(po.data)
    assert done == [(CLIENT.ip, 40010, VIP_IP, SERVICE_PORT)]
    [reset] = events(app, NLB_RESET)
    assert (reset["client"], reset["member"], reset["vip"]) == (f"{CLIENT.ip}:40010", "cas2", VIP_IP)


def test_a_new_non_syn_or_a_closed_port_is_reset_and_replies_are_ignored(make_app):
    app, dp = switch_app(make_app)
    [po] = packet_in(app, dp, tcp_frame(40011, "A", ack=99))
    assert str(Ether(po.data)[TCP].flags) == "R" and events(app, NLB_RESET)[-1]["member"] is None
    [po] = packet_in(app, dp, syn(40012, seq=41, dport=8080))
    assert (str(Ether(po.data)[TCP].flags), Ether(po.data)[TCP].ack) == ("RA", 42)
    # a member's reply, after un-NAT (VIP -> client), caught by the dead-member flow: not ours to answer
    reply = tcp_frame(SERVICE_PORT, "A", dport=40013, src_ip=VIP_IP, dst_ip=CLIENT.ip)
    assert packet_in(app, dp, reply, in_port=2) == []
    # a segment to a member's address on another port is not the VIP's
    assert packet_in(app, dp, tcp_frame(40014, "A", ack=1, dport=22, dst_ip=MEMBER["cas1"].ip)) == []


def test_a_survivors_reset_copy_ends_the_challenges_and_is_logged(make_app, monkeypatch):
    """The switch passed a survivor's RST to the client as the VIP and copied it here: the
    connection is no longer challenged, and the reset is an event; the same segment from
    any other flow (a dead member's own RST, caught by its dead-member flow, never reached
    the client) is not taken for one."""
    app, dp = switch_app(make_app)
    done = []
    monkeypatch.setattr(app.core.challenges, "done", lambda key: done.append(key))
    rst = tcp_frame(SERVICE_PORT, "R", seq=5, dport=40020, src_ip=VIP_IP, dst_ip=CLIENT.ip)
    survivor_copy = packet_in_event(dp, rst, MEMBER["cas3"].port_no)
    survivor_copy.msg.cookie = Cookie(1, 3, RESET).encode()
    assert deliver(app, survivor_copy) == []  # nothing to send: the client has it
    assert done == [(CLIENT.ip, 40020, VIP_IP, SERVICE_PORT)]
    [reset] = events(app, NLB_RESET)
    assert (reset["client"], reset["member"], reset["via"]) == (f"{CLIENT.ip}:40020", None, "survivor")
    other = packet_in_event(dp, rst, MEMBER["cas2"].port_no)
    other.msg.cookie = Cookie(1, 2, DEAD).encode()
    deliver(app, other)
    assert len(done) == 1 and len(events(app, NLB_RESET)) == 1


def test_a_dead_members_survivor_dying_too_moves_its_resets_to_the_next(make_app, conntrack):
    app, dp = switch_app(make_app)
    vip = app.core.vips[0]
    app.admin_set(vip, "cas1", up=False)
    assert_dead_flows(dp, dp.take(), MEMBER["cas1"], MEMBER["cas2"])
    app.admin_set(vip, "cas2", up=False)
    msgs = dp.take()
    assert dead_members(msgs) == [1, 2]
    assert_dead_flows(dp, msgs, MEMBER["cas1"], MEMBER["cas3"])
    assert_dead_flows(dp, msgs, MEMBER["cas2"], MEMBER["cas3"])
    app.admin_set(vip, "cas3", up=False)  # nobody left: the controller answers, as before
    msgs = dp.take()
    for name in ("cas1", "cas2", "cas3"):
        assert_dead_flows(dp, msgs, MEMBER[name], None)
