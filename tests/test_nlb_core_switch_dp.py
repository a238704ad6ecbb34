"""The NLB core's switch dataplane (``dataplane = "switch"``): Open vSwitch balances with a
select group and conntrack NAT; the core programs it and decides how a dead member's
clients are reset. Driven directly (tests/nlb_lab.py), for an OpenFlow 1.5 switch (group
bucket properties exist only from 1.5 on). The failover's own steps are in
test_nlb_core.py, the app's failover worker in test_nlb_app_shell.py."""

from __future__ import annotations

from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controllers.nlb_core import Failover
from controllers.nlb_flows import (
    BASE, CONTROLLER_GROUP, DEAD, DELIVER, GUARD, HASH_FIELDS, OFPGC_ADD_OR_MOD, PRIO_DEAD, PRIO_STRAY,
    PRIO_REPLY_ANY, PRIO_SURVIVOR_RST, RESET, SERVICE, T_CONNTRACK, T_DELIVER, Cookie, member_group_id, stray_group_id, zone_of,
)
from labcommon.catalogue import LB_MEMBER, NLB_EVICT, NLB_RESET, NLB_SWITCH_UNUSABLE
from labcommon.programs import NlbHealth
from tests.nlb_lab import (
    CLIENT, MEMBER, MEMBERS, OTHER_CLIENT, OF13, OF15, S, SERVICE_PORT, T0, VIP_IP, VIP_MAC, WALL, apply_actions, channel,
    checksums_ok, connected, core_for, ct_flushes, emitted, flow_mods, group_mods, kind_of, link, match_dict, of,
    of_class, outputs, port_list, sent, syn, tcp_frame,
)


def switch_core(**kw):
    """A switch-dataplane core and its OpenFlow 1.5 switch, connected with all ports up."""
    core, _ = core_for(dataplane="switch", **kw)
    return core, connected(core, OF15)


def stray_targets(msgs) -> list[str]:
    """The addresses the stray group sends to, in bucket order (its last bucket: the controller)."""
    [group] = [g for g in group_mods(msgs) if g.group_id == stray_group_id(1)]
    return [rewrite_target(b.actions)[1] for b in group.buckets[:-1]]


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


def assert_dead_flows(ch, msgs, member, survivor) -> None:
    """``member``'s two dead-member flows: its clients' segments to ``survivor`` (higher
    priority, matched on the member's address), anything else of its connections to the
    controller."""
    mine = [m for m in dead_flows(msgs) if Cookie.decode(m.cookie).member == member.port_no]
    to_survivor = [m for m in mine if m.priority == PRIO_DEAD + 1]
    [to_controller] = [m for m in mine if m.priority == PRIO_DEAD]
    assert match_dict(to_controller.match) == {"eth_type": 0x0800, "ct_state": (0x22, 0x22), "ct_mark": member.port_no}
    assert outputs(apply_actions(to_controller)) == [ch.ofproto.OFPP_CONTROLLER]
    if survivor is None:
        assert to_survivor == []
        return
    [flow] = to_survivor
    assert flow.table_id == T_CONNTRACK and match_dict(flow.match) == {
        "eth_type": 0x0800, "ip_proto": 6, "ct_state": (0x22, 0x22), "ct_mark": member.port_no, "ipv4_dst": member.ip}
    assert rewrite_target(apply_actions(flow)) == (survivor.mac, survivor.ip, [survivor.port_no])


# ---- set-up -------------------------------------------------------------------------------------------


def test_port_desc_installs_guard_group_service_and_delivery():
    core, _ = core_for(dataplane="switch")
    ch = channel(1, OF15)
    connect = sent(core.switch_connected(ch, False, T0))
    assert not of_class(connect, "OFPFlowDescStatsRequest")  # nothing to re-learn: conntrack keeps it
    msgs = sent(core.port_desc(ch, port_list(), T0))
    position = {id(m): i for i, m in enumerate(msgs)}
    group = select_group(msgs)
    assert (group.command, group.type, group.group_id) == (OFPGC_ADD_OR_MOD, ch.ofproto.OFPGT_SELECT, 1)
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
        assert ff.type == ch.ofproto.OFPGT_FF and [p.watch for p in live.properties] == [member.port_no]
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
    [controller_group] = {g.group_id for g in group_mods(msgs) if g.type == ch.ofproto.OFPGT_INDIRECT}
    assert controller_group == CONTROLLER_GROUP
    # a stray (a client segment conntrack does not know that opens nothing) to the first live member
    [strays] = [g for g in group_mods(msgs) if g.group_id == stray_group_id(1)]
    *to_members, fallback = strays.buckets
    assert strays.type == ch.ofproto.OFPGT_FF
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


def test_a_member_down_at_start_gets_a_dead_member_flow_and_no_bucket():
    core, _ = core_for(dataplane="switch")
    ch = channel(1, OF15)
    core.switch_connected(ch, False, T0)
    msgs = sent(core.port_desc(ch, port_list(down=("cas2",)), T0))
    groups = [g for g in group_mods(msgs) if g.group_id == 1]
    assert buckets(groups[-1]) == all_buckets(["cas1", "cas3"])
    assert {Cookie.decode(m.cookie).member for m in dead_flows(msgs)} == {2}


def test_switch_dataplane_refuses_an_openflow_13_switch():
    """Its select group's hash fields and bucket properties exist from OpenFlow 1.5 on: on
    an older switch the NLB says so and installs nothing for the VIP (plain L2 only)."""
    core, _ = core_for(dataplane="switch")
    ch = channel(1, OF13)
    connect = core.switch_connected(ch, False, T0)
    msgs = sent(connect + core.port_desc(ch, port_list(), T0))
    assert [(f.priority, f.match.to_jsondict()["OFPMatch"]["oxm_fields"]) for f in flow_mods(msgs)] == [(0, [])]
    assert 1 not in core.datapaths
    [refused] = emitted(connect, NLB_SWITCH_UNUSABLE)
    assert refused["dpid"] == 1 and "OpenFlow 1.5" in refused["reason"]


# ---- membership moves the group ---------------------------------------------------------------------


def test_group_buckets_follow_accepts_new():
    core, ch = switch_core()
    vip = core.vips[0]
    out = core.drain(vip, "cas2", None, T0, WALL)
    msgs = sent(out)
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas3"]) and dead_flows(msgs) == []
    assert of(out, Failover) == []
    assert buckets(select_group(sent(core.rejoin(vip, "cas2", T0)))) == all_buckets(["cas1", "cas2", "cas3"])
    msgs = sent(core.admin_set(vip, "cas1", False, T0))
    assert dead_members(msgs) == [1]
    assert_dead_flows(ch, msgs, MEMBER["cas1"], MEMBER["cas2"])  # the next member after it, in service
    # strays first (the failover's forgotten connections), over the members in service only,
    # then the dead-member flows, then the barrier the failover waits for
    assert [type(m).__name__ for m in msgs][:6] == ["OFPGroupMod", "OFPGroupMod", "OFPFlowMod", "OFPFlowMod",
                                                    "OFPFlowMod", "OFPBarrierRequest"]
    assert stray_targets(msgs) == [MEMBER["cas2"].ip, MEMBER["cas3"].ip]
    assert buckets(select_group(msgs)) == all_buckets(["cas2", "cas3"])
    msgs = sent(core.admin_set(vip, "cas1", True, T0))
    assert [Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")] == [1]
    assert stray_targets(msgs) == [m.ip for m in MEMBERS]
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas2", "cas3"])
    assert [p.fields for p in select_group(sent(core.set_affinity(vip, "network", T0))).properties] == [
        HASH_FIELDS["network"]]


def test_a_health_flip_before_the_switch_connects_is_installed_when_it_does():
    core, _ = core_for(dataplane="switch", health=NlbHealth(fall=1))
    out = core.probe(VIP_IP, "cas1", False, "", T0)
    assert not core.vips[0].pool.members["cas1"].in_service and of(out, Failover) == [] and sent(out) == []
    ch = channel(1, OF15)
    core.switch_connected(ch, False, T0)
    msgs = sent(core.port_desc(ch, port_list(), T0))
    assert buckets(select_group(msgs)) == all_buckets(["cas2", "cas3"])
    assert dead_members(msgs) == [1]
    assert_dead_flows(ch, msgs, MEMBER["cas1"], MEMBER["cas2"])
    assert sorted(Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")) == [2, 3]
    # a survivor's RST for a connection it does not have leaves as the VIP, a copy to the controller
    resets = [m for m in flow_mods(msgs) if kind_of(m) == RESET]
    assert sorted(match_dict(m.match)["ipv4_src"] for m in resets) == sorted(m.ip for m in MEMBERS)
    for flow in resets:
        assert (flow.table_id, flow.priority) == (T_CONNTRACK, PRIO_SURVIVOR_RST)
        assert {k: v for k, v in match_dict(flow.match).items() if k != "ipv4_src"} == {
            "eth_type": 0x0800, "ip_proto": 6, "ct_state": (0x20, 0x22), "tcp_flags": (0x004, 0x004)}
        actions = apply_actions(flow)
        assert [type(a).__name__ for a in actions] == ["OFPActionSetField", "OFPActionSetField",
                                                       "NXActionResubmitTable", "OFPActionMeter", "OFPActionOutput"]
        assert (actions[0].value, actions[1].value) == (VIP_MAC, VIP_IP)
        assert actions[2].table_id == T_DELIVER, "delivered by the replies' flows, out of the client's port"
        assert outputs(actions) == [ch.ofproto.OFPP_CONTROLLER]
    # replies (and those resets) leave by their client's port, never NORMAL: the VIP's MAC stays unlearned
    replies = {match_dict(m.match).get("ipv4_dst"): (m.priority, outputs(apply_actions(m)))
               for m in flow_mods(msgs) if m.table_id == T_DELIVER and kind_of(m) == DELIVER
               and match_dict(m.match).get("ipv4_src") == VIP_IP and m.priority > PRIO_REPLY_ANY}
    assert replies and replies == {prefix: (PRIO_REPLY_ANY + 1 + length // 4, [port])
                                   for port, prefix, length in [(CLIENT.port_no, CLIENT.ip, 32), (CLIENT.port_no, ("10.1.10.0", "255.255.255.0"), 24),
                                 (OTHER_CLIENT.port_no, OTHER_CLIENT.ip, 32),
                                 (OTHER_CLIENT.port_no, ("10.1.11.0", "255.255.255.0"), 24)]}


def test_rejoin_after_a_drain_deadline_removes_the_dead_member_flow():
    core, ch = switch_core()
    core.drain(core.vips[0], "cas3", 5, T0, WALL)
    msgs = sent(core.tick(T0 + 5 * S))
    assert dead_members(msgs) == [3]
    assert_dead_flows(ch, msgs, MEMBER["cas3"], MEMBER["cas1"])  # after the last member: the first
    msgs = sent(core.rejoin(core.vips[0], "cas3", T0))
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas2", "cas3"])
    # otherwise every new connection to cas3 (ct_mark 3, +est) would be sent to the controller and reset
    assert [Cookie.decode(m.cookie).member for m in dead_flows(msgs, "DELETE")] == [3]


def test_a_dead_members_survivor_dying_too_moves_its_resets_to_the_next():
    core, ch = switch_core()
    vip = core.vips[0]
    assert_dead_flows(ch, sent(core.admin_set(vip, "cas1", False, T0)), MEMBER["cas1"], MEMBER["cas2"])
    msgs = sent(core.admin_set(vip, "cas2", False, T0))
    assert dead_members(msgs) == [1, 2]
    assert_dead_flows(ch, msgs, MEMBER["cas1"], MEMBER["cas3"])
    assert_dead_flows(ch, msgs, MEMBER["cas2"], MEMBER["cas3"])
    msgs = sent(core.admin_set(vip, "cas3", False, T0))  # nobody left: the controller answers, as before
    for name in ("cas1", "cas2", "cas3"):
        assert_dead_flows(ch, msgs, MEMBER[name], None)


# ---- a member dies --------------------------------------------------------------------------------------


def test_port_down_cuts_the_member_off_and_asks_for_its_failover():
    core, ch = switch_core()
    out = link(core, ch, "cas2", False)
    msgs = sent(out)
    assert dead_members(msgs) == [2]
    assert_dead_flows(ch, msgs, MEMBER["cas2"], MEMBER["cas3"])
    assert buckets(select_group(msgs)) == all_buckets(["cas1", "cas3"])
    assert emitted(out, NLB_EVICT) == [] and emitted(out, LB_MEMBER)[-1]["reason"] == "port_down"
    [fo] = of(out, Failover)
    assert (fo.channel, fo.vip_index, fo.member_index, fo.name, fo.reason) == (ch, 1, 2, "cas2", "port_down")


def test_without_fast_fail_a_dead_member_is_only_cut_off():
    core, ch = switch_core(fast_fail=False)
    out = link(core, ch, "cas1", False)
    assert dead_flows(sent(out)) and of(out, Failover) == []
    assert ct_flushes(sent(out)) == [], "without fast_fail the dead member's connections go to the controller"
    assert emitted(out, NLB_EVICT) == [{"vip": VIP_IP, "member": "cas1", "reason": "port_down", "conns": 0,
                                        "fast_fail": False}]


# ---- packets reaching the controller -------------------------------------------------------------------


def test_a_client_segment_after_nat_gets_an_exact_rst_from_the_vip(monkeypatch):
    core, ch = switch_core()
    done = []
    real_done = core.challenges.done
    monkeypatch.setattr(core.challenges, "done", lambda key: done.append(key) or real_done(key))
    cas2 = MEMBER["cas2"]
    out = core.packet_in(ch, CLIENT.port_no, tcp_frame(40010, "A", seq=777, ack=0xCAFEF00D, dst_ip=cas2.ip), 0, T0)
    [po] = sent(out)
    frame = Ether(po.data)
    assert (frame.src, frame.dst, frame[IP].src, frame[IP].dst) == (VIP_MAC, CLIENT.mac, VIP_IP, CLIENT.ip)
    seg = frame[TCP]
    assert (str(seg.flags), seg.seq, seg.sport, seg.dport) == ("R", 0xCAFEF00D, SERVICE_PORT, 40010)
    assert outputs(po.actions) == [CLIENT.port_no] and checksums_ok(po.data)
    assert done == [(CLIENT.ip, 40010, VIP_IP, SERVICE_PORT)]
    assert emitted(out, NLB_RESET) == [{"vip": VIP_IP, "client": f"{CLIENT.ip}:40010", "member": "cas2",
                                        "via": "controller"}]


def test_a_new_non_syn_or_a_closed_port_is_reset_and_replies_are_ignored():
    core, ch = switch_core()
    out = core.packet_in(ch, CLIENT.port_no, tcp_frame(40011, "A", ack=99), 0, T0)
    [po] = sent(out)
    assert str(Ether(po.data)[TCP].flags) == "R" and emitted(out, NLB_RESET)[-1]["member"] is None
    [po] = sent(core.packet_in(ch, CLIENT.port_no, syn(40012, seq=41, dport=8080), 0, T0))
    assert (str(Ether(po.data)[TCP].flags), Ether(po.data)[TCP].ack) == ("RA", 42)
    # a member's reply, after un-NAT (VIP -> client), caught by the dead-member flow: not ours to answer
    reply = tcp_frame(SERVICE_PORT, "A", dport=40013, src_ip=VIP_IP, dst_ip=CLIENT.ip)
    assert core.packet_in(ch, 2, reply, 0, T0) == []
    # a segment to a member's address on another port is not the VIP's
    assert core.packet_in(ch, CLIENT.port_no, tcp_frame(40014, "A", ack=1, dport=22, dst_ip=MEMBER["cas1"].ip), 0,
                          T0) == []


def test_a_survivors_reset_copy_ends_the_challenges_and_is_logged(monkeypatch):
    """The switch passed a survivor's RST to the client as the VIP and copied it here: the
    connection is no longer challenged, and the reset is an event; the same segment from
    any other flow (a dead member's own RST, caught by its dead-member flow, never reached
    the client) is not taken for one."""
    core, ch = switch_core()
    done = []
    monkeypatch.setattr(core.challenges, "done", lambda key: done.append(key))
    rst = tcp_frame(SERVICE_PORT, "R", seq=5, dport=40020, src_ip=VIP_IP, dst_ip=CLIENT.ip)
    out = core.packet_in(ch, MEMBER["cas3"].port_no, rst, Cookie(1, 3, RESET).encode(), T0)
    assert sent(out) == []  # nothing to send: the client has it
    assert done == [(CLIENT.ip, 40020, VIP_IP, SERVICE_PORT)]
    assert emitted(out, NLB_RESET) == [{"vip": VIP_IP, "client": f"{CLIENT.ip}:40020", "member": None,
                                        "via": "survivor"}]
    other = core.packet_in(ch, MEMBER["cas2"].port_no, rst, Cookie(1, 2, DEAD).encode(), T0)
    assert len(done) == 1 and emitted(other, NLB_RESET) == []
