"""controllers/nlb_flows.py: the pure builders of the NLB's OpenFlow messages. Cookie
layout, the pipeline's tables and priorities, the source guard, the per-connection flows,
meters, conntrack actions and the groups, down to the bytes of the Netronome
selection-method property Open vSwitch reads. Every message built must serialize in the
OpenFlow version of the switch it is for (the fake datapath serializes as os-ken does)."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from controllers import nlb_flows as F
from controllers.nlb_flows import Cookie, FlowBuilder, NtrSelectionMethod
from controllers.nlb_state import Vip
from tests.fakes import FakeDatapath
from tests.nlb_lab import (
    CLIENT, MEMBERS, OF13, OF15, VERSION_IDS, VIP_IP, VIP_MAC, apply_actions, config, match_dict, outputs, set_fields,
)

SPEC = config().vips[0]


@pytest.fixture(params=[OF13, OF15], ids=VERSION_IDS.get)
def dp(request) -> FakeDatapath:
    return FakeDatapath(1, request.param)


@pytest.fixture
def vip() -> Vip:
    v = Vip(1, SPEC)
    v.port_numbers = {m.port_name: m.port_no for m in MEMBERS} | {CLIENT.port_name: CLIENT.port_no}
    return v


def sent(dp, msgs) -> list:
    for msg in msgs:
        dp.send_msg(msg)
    return dp.take()


def members(vip) -> list:
    return [(vip.member_index[m.name], m) for m in vip.pool.members.values()]


# ---- cookies -------------------------------------------------------------------------------------------


@given(vip=st.integers(0, 0xFFFF), member=st.integers(0, 0xFFFF), kind=st.integers(0, 0xFFFF))
def test_cookie_round_trip_and_layout(vip, member, kind):
    value = Cookie(vip, member, kind).encode()
    assert value >> 48 == 0xCA5 and (value >> 32) & 0xFFFF == vip and (value >> 16) & 0xFFFF == member
    assert value & 0xFFFF == kind and value < 2**64
    assert Cookie.decode(value) == Cookie(vip, member, kind)


def test_cookie_masks_select_what_they_say():
    tag, tag_mask = Cookie.tag_mask()
    assert (tag, tag_mask) == (0xCA5 << 48, 0xFFFF << 48)
    cookie, mask = Cookie(3, 5, 0).member_mask()
    for kind in (F.FORWARD, F.REVERSE, F.DEAD, F.DELIVER):
        assert Cookie(3, 5, kind).encode() & mask == cookie and Cookie(3, 5, kind).encode() & tag_mask == tag
    assert Cookie(3, 6, F.FORWARD).encode() & mask != cookie and Cookie(4, 5, F.FORWARD).encode() & mask != cookie
    assert Cookie.decode(0) is None and Cookie.decode(0x1234 << 48) is None  # not the NLB's


def test_zones_and_group_ids_do_not_collide():
    assert F.zone_of(1) == 0xCA51 and F.member_group_id(1, 3) == 259
    ids = {F.member_group_id(v, m) for v in range(1, 4) for m in range(1, 65)}
    assert len(ids) == 3 * 64 and not ids & ({F.CONTROLLER_GROUP} | set(range(1, 4)))


# ---- the Netronome selection method property -------------------------------------------------------------


@pytest.mark.parametrize("affinity, oxms", [
    ("none", [(11, 4, b"\xff" * 4), (12, 4, b"\xff" * 4), (13, 2, b"\xff" * 2), (14, 2, b"\xff" * 2)]),
    ("single", [(11, 4, b"\xff" * 4)]),
    ("network", [(11, 4, b"\xff\xff\xff\x00")]),
])
def test_selection_method_property_layout(affinity, oxms):
    data = NtrSelectionMethod(F.HASH_FIELDS[affinity]).serialize()
    prop_type, length, vendor, exp_type = struct.unpack_from("!HHII", data)
    assert (prop_type, vendor, exp_type) == (0xFFFF, 0x0000154D, 1)
    assert data[12:16] == b"\0" * 4 and data[16:32] == b"hash" + b"\0" * 12
    assert struct.unpack_from("!Q", data, 32) == (0,)  # selection_method_param
    body = b"".join(struct.pack("!I", 0x8000 << 16 | field << 9 | size) + mask for field, size, mask in oxms)
    assert length == 40 + len(body)  # the length leaves out the padding
    assert data[40:length] == body  # OXM headers without the has-mask bit, each followed by its mask
    assert len(data) % 8 == 0 and len(data) - length == -length % 8 and set(data[length:]) <= {0}


def test_group_mod_carries_the_property_after_its_buckets(vip):
    dp = FakeDatapath(1, OF15)
    build = FlowBuilder(dp)
    buckets = [(i, m, vip.port_numbers[m.port_name]) for i, m in members(vip)]
    for affinity in ("none", "single", "network"):
        [group] = sent(dp, [build.group(vip, buckets, affinity)])
        buf = bytes(group.buf)
        command, type_, group_id, bucket_len, command_bucket = struct.unpack_from("!HBxIH2xI", buf, 8)
        assert (command, type_, group_id) == (F.OFPGC_ADD_OR_MOD, dp.ofproto.OFPGT_SELECT, 1)
        assert command_bucket == dp.ofproto.OFPG_BUCKET_ALL
        prop = NtrSelectionMethod(F.HASH_FIELDS[affinity]).serialize()
        assert buf[24 + bucket_len:] == prop and struct.unpack_from("!H", buf, 2)[0] == len(buf)
        assert [b.bucket_id for b in group.buckets] == [1, 2, 3]


def test_group_buckets_commit_nat_and_mark(vip):
    dp = FakeDatapath(1, OF15)
    cas2 = vip.pool.members["cas2"]
    [group] = sent(dp, [FlowBuilder(dp).group(vip, [(2, cas2, 2)], "single")])
    [bucket] = group.buckets
    [ct] = bucket.actions
    nat, mark = ct.actions
    assert (ct.flags, ct.zone_src, ct.zone_ofs_nbits, ct.recirc_table) == (1, None, 0xCA51, F.T_DELIVER)
    assert (nat.flags, nat.range_ipv4_min, nat.range_ipv4_max) == (2, cas2.ip, cas2.ip)
    assert (mark.key, mark.value) == ("ct_mark", 2)
    props = {type(p).__name__: p for p in bucket.properties}
    assert props["OFPGroupBucketPropWatch"].watch == 2 and props["OFPGroupBucketPropWeight"].weight == 100
    [empty] = sent(dp, [FlowBuilder(dp).group(vip, [], "none")])  # nobody left: a group without buckets
    assert empty.buckets == []


# ---- the pipeline, both versions ------------------------------------------------------------------------


def test_table_miss_and_vip_base(dp, vip):
    build = FlowBuilder(dp)
    [miss] = sent(dp, build.table_miss())
    assert (miss.table_id, miss.priority, match_dict(miss.match), miss.cookie) == (0, F.PRIO_MISS, {}, 0)
    assert outputs(apply_actions(miss)) == [dp.ofproto.OFPP_NORMAL]
    arp, icmp = sent(dp, build.vip_base(vip))
    assert match_dict(arp.match) == {"eth_type": 0x0806, "arp_tpa": VIP_IP}
    assert match_dict(icmp.match) == {"eth_type": 0x0800, "ip_proto": 1, "ipv4_dst": VIP_IP}
    for flow in (arp, icmp):
        assert (flow.table_id, flow.priority, Cookie.decode(flow.cookie)) == (0, F.PRIO_VIP_CTRL, Cookie(1, 0, F.BASE))
        assert outputs(apply_actions(flow)) == [dp.ofproto.OFPP_CONTROLLER]
        names = [type(i).__name__ for i in flow.instructions] + [type(a).__name__ for a in apply_actions(flow)]
        assert ("OFPInstructionMeter" if dp.ofproto.OFP_VERSION == OF13 else "OFPActionMeter") in names


def test_priorities_keep_the_documented_order():
    assert F.PRIO_CONN > F.PRIO_VIP_CTRL > F.PRIO_GUARD_ALLOW > F.PRIO_GUARD_DROP > F.PRIO_REPLY > F.PRIO_MISS
    assert F.PRIO_DEAD > F.PRIO_NEW_SYN > F.PRIO_NEW_OTHER > F.PRIO_EST
    assert (F.T_CLASSIFY, F.T_SERVICE, F.T_CONNTRACK, F.T_DELIVER) == (0, 1, 2, 3)


def test_guard_with_prefixes(dp, vip):
    flows = sent(dp, FlowBuilder(dp).guard(vip, [(10, "10.1.3.1/32"), (10, "10.1.10.0/24"), (12, "0.0.0.0/0")]))
    ip_flows = [f for f in flows if match_dict(f.match)["eth_type"] == 0x0800]
    arp = [f for f in flows if match_dict(f.match)["eth_type"] == 0x0806]
    *allow, drop = ip_flows
    # ARP claiming a client's address: only from its port (NORMAL), else dropped; "anyone" guards nothing
    assert [(match_dict(f.match).get("in_port"), match_dict(f.match)["arp_spa"], f.priority, bool(f.instructions))
            for f in arp] == [(10, "10.1.3.1", F.PRIO_GUARD_ALLOW, True),
                              (10, ("10.1.10.0", "255.255.255.0"), F.PRIO_GUARD_ALLOW, True),
                              (None, "10.1.3.1", F.PRIO_GUARD_DROP, False),
                              (None, ("10.1.10.0", "255.255.255.0"), F.PRIO_GUARD_DROP, False)]
    assert [match_dict(f.match)["ipv4_src"] for f in allow] == ["10.1.3.1", ("10.1.10.0", "255.255.255.0"),
                                                               ("0.0.0.0", "0.0.0.0")]
    assert [match_dict(f.match)["in_port"] for f in allow] == [10, 10, 12]
    for flow in allow:
        assert flow.priority == F.PRIO_GUARD_ALLOW and match_dict(flow.match)["ipv4_dst"] == VIP_IP
        [goto] = flow.instructions
        assert goto.table_id == F.T_SERVICE
    assert (drop.priority, drop.instructions, match_dict(drop.match)) == (F.PRIO_GUARD_DROP, [],
                                                                          {"eth_type": 0x0800, "ipv4_dst": VIP_IP})
    assert {Cookie.decode(f.cookie) for f in flows} == {Cookie(1, 0, F.GUARD)}


def test_guard_without_sources_lets_everyone_through(dp, vip):
    [flow] = sent(dp, FlowBuilder(dp).guard(vip, []))
    assert match_dict(flow.match) == {"eth_type": 0x0800, "ipv4_dst": VIP_IP} and flow.priority == F.PRIO_GUARD_ALLOW


def test_pin_and_unpin(dp, vip):
    build = FlowBuilder(dp)
    cas3 = vip.pool.members["cas3"]
    flows, forward = build.pin(vip, 3, cas3, 3, (CLIENT.ip, 40000, VIP_IP, 6001), CLIENT.mac, 10, 90)
    fwd, rev = sent(dp, flows)
    assert set_fields(forward) == {"eth_dst": cas3.mac, "ipv4_dst": cas3.ip} and outputs(forward) == [3]
    assert (Cookie.decode(fwd.cookie), Cookie.decode(rev.cookie)) == (Cookie(1, 3, F.FORWARD), Cookie(1, 3, F.REVERSE))
    assert fwd.flags == dp.ofproto.OFPFF_SEND_FLOW_REM and rev.flags == 0
    assert fwd.idle_timeout == rev.idle_timeout == 90 and fwd.priority == rev.priority == F.PRIO_CONN
    assert set_fields(apply_actions(rev)) == {"eth_src": VIP_MAC, "ipv4_src": VIP_IP, "eth_dst": CLIENT.mac}
    deletes = sent(dp, build.unpin_member(vip, 3))
    assert [(d.command, d.table_id, d.cookie, d.cookie_mask) for d in deletes] == [
        (dp.ofproto.OFPFC_DELETE, 0, Cookie(1, 3, kind).encode(), 2**64 - 1) for kind in (F.FORWARD, F.REVERSE)]
    assert all((d.out_port, d.out_group) == (dp.ofproto.OFPP_ANY, dp.ofproto.OFPG_ANY) for d in deletes)


def test_packet_out_in_each_version(dp):
    [po] = sent(dp, [FlowBuilder(dp).packet_out(7, b"\x01" * 60)])
    assert outputs(po.actions) == [7] and po.data == b"\x01" * 60 and po.buffer_id == dp.ofproto.OFP_NO_BUFFER
    if dp.ofproto.OFP_VERSION == OF13:
        assert po.in_port == dp.ofproto.OFPP_CONTROLLER
    else:
        assert po.match["in_port"] == dp.ofproto.OFPP_CONTROLLER


def test_requests_and_meter(dp):
    build = FlowBuilder(dp)
    ports, flows, delete, add = sent(dp, [build.port_desc_request(), build.our_flows_request(), *build.meter(100, 7)])
    assert type(ports).__name__ == "OFPPortDescStatsRequest"
    # OpenFlow 1.5's flow *stats* have no cookie nor instructions: the app re-learns from flow descs
    assert type(flows).__name__ == ("OFPFlowStatsRequest" if dp.ofproto.OFP_VERSION == OF13
                                    else "OFPFlowDescStatsRequest")
    assert (flows.cookie, flows.cookie_mask, flows.table_id) == (*Cookie.tag_mask(), dp.ofproto.OFPTT_ALL)
    assert (delete.command, delete.meter_id, add.command, add.meter_id) == (dp.ofproto.OFPMC_DELETE, 1,
                                                                            dp.ofproto.OFPMC_ADD, 1)
    [band] = add.bands
    assert (band.rate, band.burst_size, add.flags) == (100, 7, dp.ofproto.OFPMF_PKTPS | dp.ofproto.OFPMF_BURST)


def test_service_to_controller(dp, vip):
    tcp, rest = sent(dp, FlowBuilder(dp).service_to_controller(vip))
    assert (tcp.table_id, tcp.priority, rest.table_id, rest.priority) == (F.T_SERVICE, 100, F.T_SERVICE, 0)
    assert outputs(apply_actions(tcp)) == [dp.ofproto.OFPP_CONTROLLER] and rest.instructions == []


# ---- the switch dataplane's tables (OpenFlow 1.5) ----------------------------------------------------------


def test_switch_service_tables(vip):
    dp = FakeDatapath(1, OF15)
    flows = sent(dp, FlowBuilder(dp).switch_service(vip, members(vip)))
    by_place = {}
    for f in flows:
        by_place.setdefault((f.table_id, f.priority), []).append(f)
    assert sorted(by_place) == [(0, 200), (1, 0), (1, 90), (1, 100), (2, 10), (2, 20), (2, 180), (2, 190), (2, 200),
                                (3, 0), (3, 100)]
    assert len(by_place[(0, 200)]) == 2 * 3 and len(by_place[(1, 100)]) == 2  # replies per member and port
    for service in by_place[(1, 100)]:
        [ct] = apply_actions(service)
        assert (ct.flags, ct.recirc_table, ct.zone_ofs_nbits) == (0, F.T_CONNTRACK, 0xCA51)
        [nat] = ct.actions
        assert nat.flags == 0  # apply the connection's NAT, no new one
    [syn] = by_place[(2, 200)]
    assert match_dict(syn.match)["ct_state"] == (F.CT_TRK | F.CT_NEW,) * 2
    assert [a.group_id for a in apply_actions(syn)] == [1]
    [est] = by_place[(2, 180)]
    assert match_dict(est.match)["ct_state"] == (F.CT_TRK | F.CT_EST,) * 2 and est.instructions[0].table_id == 3
    [reply] = by_place[(3, 100)]
    assert set_fields(apply_actions(reply)) == {"eth_src": VIP_MAC}
    assert outputs(apply_actions(reply)) == [dp.ofproto.OFPP_NORMAL]


def test_deliver_dead_member_and_forget(vip):
    dp = FakeDatapath(1, OF15)
    build = FlowBuilder(dp)
    cas1 = vip.pool.members["cas1"]
    controller, ff, flow = sent(dp, build.deliver_to(vip, 1, cas1, 1))
    assert (controller.group_id, controller.type) == (F.CONTROLLER_GROUP, dp.ofproto.OFPGT_INDIRECT)
    assert [type(a).__name__ for a in controller.buckets[0].actions] == ["OFPActionMeter", "OFPActionOutput"]
    assert (ff.group_id, ff.type, [b.bucket_id for b in ff.buckets]) == (257, dp.ofproto.OFPGT_FF, [1, 2])
    assert [(p.type, p.watch) for b in ff.buckets for p in b.properties] == [
        (dp.ofproto.OFPGBPT_WATCH_PORT, 1), (dp.ofproto.OFPGBPT_WATCH_GROUP, F.CONTROLLER_GROUP)]
    assert match_dict(flow.match) == {"eth_type": 0x0800, "ct_mark": 1, "ipv4_dst": cas1.ip}
    [dead] = sent(dp, build.dead_member(vip, 2))
    assert (dead.table_id, dead.priority, Cookie.decode(dead.cookie)) == (2, F.PRIO_DEAD, Cookie(1, 2, F.DEAD))
    assert match_dict(dead.match) == {"eth_type": 0x0800, "ct_state": (0x22, 0x22), "ct_mark": 2}
    [forget] = sent(dp, build.forget_dead_member(vip, 2))
    assert (forget.command, forget.table_id, forget.cookie, forget.cookie_mask) == (
        dp.ofproto.OFPFC_DELETE, 2, Cookie(1, 2, F.DEAD).encode(), 2**64 - 1)
    [gone] = sent(dp, [build.delete_group(vip)])
    assert (gone.command, gone.group_id) == (dp.ofproto.OFPGC_DELETE, 1)


@pytest.mark.parametrize("version", [OF13, OF15])
def test_a_hand_built_packet_out_is_byte_for_byte_os_kens(version):
    """packet_out_bytes (a failover sends one per connection) against os-ken's serialiser."""
    from controllers.nlb_flows import packet_out_bytes

    dp = FakeDatapath(1, version)
    for port, data in ((7, b"\xaa" * 60), (0xFFFFFF00, bytes(range(54))), (1, b"")):
        msg = FlowBuilder(dp).packet_out(port, data)
        msg.xid = 0x1234
        msg.serialize()
        assert packet_out_bytes(version, port, data, 0x1234) == bytes(msg.buf)


def test_the_conntrack_flush_is_the_one_ovs_ofctl_sends():
    """ct_flush_bytes decoded by Open vSwitch's own printer: the zone and the connection's
    whole original tuple (TCP, client -> VIP), nothing else."""
    import shutil
    import subprocess

    from controllers.nlb_flows import ct_flush_bytes

    if shutil.which("ovs-ofctl") is None:
        pytest.skip("ovs-ofctl is not installed (lab.sh installs it)")
    for version, name in ((0x04, "OF1.3"), (0x06, "OF1.5")):
        message = ct_flush_bytes(version, 0xCA51, ("10.1.10.7", 40001), ("10.1.0.100", 6001), xid=7)
        printed = subprocess.run(["ovs-ofctl", "ofp-print", message.hex()], capture_output=True, text=True,
                                 timeout=10, check=True).stdout.strip()
        assert printed == (f"NXT_CT_FLUSH ({name}) (xid=0x7): zone=51793 'ct_nw_src=10.1.10.7,ct_nw_dst=10.1.0.100,"
                           f"ct_tp_src=40001,ct_tp_dst=6001,ct_nw_proto=6' "
                           f"'ct_nw_src=::,ct_nw_dst=::,ct_tp_src=0,ct_tp_dst=0'"), printed


def test_replies_leave_by_their_clients_port_longest_prefix_first(vip):
    """NORMAL would learn the VIP's MAC on each replying CAS's port (a move per reply, each a
    revalidation of every datapath flow): a reply to a listed source leaves by its port."""
    dp = FakeDatapath(1, OF15)
    allowed = [(7, "10.1.3.1/32"), (7, "10.1.10.0/24"), (9, "0.0.0.0/0")]
    flows = sent(dp, FlowBuilder(dp).switch_service(vip, members(vip), allowed))
    replies = [f for f in flows if f.table_id == F.T_DELIVER and f.priority > F.PRIO_REPLY_ANY]
    assert [(f.priority, match_dict(f.match).get("ipv4_dst"), outputs(apply_actions(f))) for f in replies] == [
        (109, "10.1.3.1", [7]), (107, ("10.1.10.0", "255.255.255.0"), [7]), (101, None, [9])]
    for f in replies:
        assert match_dict(f.match)["ipv4_src"] == vip.ip and set_fields(apply_actions(f)) == {"eth_src": VIP_MAC}
        assert Cookie.decode(f.cookie) == Cookie(vip.index, 0, F.DELIVER)
    assert max(f.priority for f in replies) < 110, "below the members' deliver flows (ct_mark, to a CAS)"
