"""controllers/nlb_core.py on its own: inputs with ``now`` in, outputs checked. No app, no
hub, no fake datapath: a channel is a plain object with the switch's protocol modules
(what the core reads of os-ken's Datapath), and time is whatever the test says."""

from __future__ import annotations

import ast
import inspect
import struct

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from controllers import nlb_core
from controllers.nlb_core import BARRIER_XID_BASE, Close, Emit, Failover, ReadConntrack, SaveAdmin, Send, Wake
from controllers.nlb_flows import FORWARD, REVERSE, Cookie, zone_of
from controllers.nlb_state import CtEntry
from labcommon.catalogue import (
    LB_MEMBER, NLB_CONN, NLB_CONVERGING, NLB_EVICT, NLB_GUARD, NLB_RELEARN, NLB_SWITCH, NLB_SWITCH_GONE,
    NLB_SWITCH_REFUSED, NLB_UP,
)
from labcommon.programs import NlbHealth
from tests.nlb_lab import (
    CLIENT, MEMBER, OTHER_CLIENT, S, SERVICE_PORT, T0, VIP_IP, WALL, channel, connected, core_for, emitted, of,
    pin, port_list, sent, syn, tcp_frame, unpin_of, unpinned,
)


def pin_on(core, ch, name: str, count: int = 2, start: int = 41000) -> list[tuple]:
    keys = []
    for sport in range(start, start + 400):
        if pin(core, ch, sport) == name:
            keys.append((CLIENT.ip, sport, VIP_IP, SERVICE_PORT))
            if len(keys) == count:
                return keys
    raise AssertionError(f"nothing pinned to {name}")


# ---- the core does no I/O ------------------------------------------------------------------------


def test_the_core_imports_nothing_that_reaches_outside():
    tree = ast.parse(inspect.getsource(nlb_core))
    imported = {a.name for node in ast.walk(tree) if isinstance(node, ast.Import) for a in node.names}
    imported |= {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    assert not imported & {"time", "os", "socket", "subprocess", "threading", "controllers.compat",
                           "controllers.nlb_io", "labcommon.events"}, imported


# ---- start, switches and channels --------------------------------------------------------------


def test_start_says_up_and_sets_the_guard_report_a_second_later():
    core, out = core_for()
    [up] = emitted(out, NLB_UP)
    assert up == {"vips": [VIP_IP, "10.2.0.100"], "fast_fail": True, "dataplane": "controller"}
    assert of(out, Wake) == [Wake(T0 + S)] and core.next_wake() == T0 + S


def test_a_switch_is_programmed_once_per_datapath_id_and_an_impostor_is_hung_up_on():
    core, _ = core_for()
    first, second = channel(1), channel(1)
    out = core.switch_connected(first, False, T0)
    kinds = [type(m).__name__ for m in sent(out)]
    assert kinds[0] == "OFPFlowMod" and "OFPPortDescStatsRequest" in kinds and "OFPFlowStatsRequest" in kinds
    assert emitted(out, NLB_SWITCH) == [{"dpid": 1}] and core.datapaths == {1: first}
    # a second claim while the first can still send: refused, nothing changes
    out = core.switch_connected(second, True, T0)
    assert emitted(out, NLB_SWITCH_REFUSED) == [{"dpid": 1}] and [c.channel for c in of(out, Close)] == [second]
    assert of(out, Send) == [] and core.channels == {1: first}
    assert core.channel_dead(second) == [] and core.channels == {1: first}  # the refused one dying changes nothing
    # the first can send no more (os-ken ended its sending): the second replaces it
    out = core.switch_connected(second, False, T0)
    assert emitted(out, NLB_SWITCH_GONE) == [{"dpid": 1}] and [c.channel for c in of(out, Close)] == [first]
    assert core.channels == {1: second} and core.datapaths == {1: second}
    assert core.packet_in(first, CLIENT.port_no, syn(40000), 0, T0) == []  # the old channel is not heard
    assert emitted(core.channel_dead(second), NLB_SWITCH_GONE) == [{"dpid": 1}] and core.datapaths == {}


# ---- membership, controller dataplane ----------------------------------------------------------


def test_link_down_unpins_then_challenges_on_the_schedule_in_one_buffer_per_switch():
    core, _ = core_for()
    ch = connected(core)
    keys = pin_on(core, ch, "cas2", count=3)
    now = T0 + 10 * S
    out = core.port_status(ch, 2, MEMBER["cas2"].port_name, False, False, now)
    assert [type(o).__name__ for o in out] == ["Send", "Wake", "Emit", "Emit"]  # flows, timer, evict, member
    assert [(m.cookie, m.command) for m in sent(out)] == [
        (Cookie(1, 2, kind).encode(), ch.ofproto.OFPFC_DELETE) for kind in (FORWARD, REVERSE)]
    assert of(out, Wake) == [Wake(now + S // 1000)]  # after the flow delete, not before: the first delay
    [evict] = emitted(out, NLB_EVICT)
    assert evict == {"vip": VIP_IP, "member": "cas2", "reason": "port_down", "conns": 3, "fast_fail": True}
    [change] = of(out, Emit)[-1:]
    assert change.event is LB_MEMBER and change.ts == now and change.fields["alive"] is False
    assert core.challenges_due(now) == []
    [write] = core.challenges_due(now + S // 1000)
    [buffer] = write.messages
    assert write.channel is ch and isinstance(buffer, bytes)
    clients = []
    while buffer:  # three packet-outs, one buffer
        length = struct.unpack_from("!H", buffer, 2)[0]
        frame = Ether(buffer[40:length])  # an OpenFlow 1.3 packet-out's data starts 40 bytes in
        clients.append((frame[IP].dst, frame[TCP].dport))
        buffer = buffer[length:]
    assert sorted(clients) == sorted(k[:2] for k in keys) and core.stats["challenges"] == 3


def test_a_reset_ends_a_clients_challenges():
    core, _ = core_for()
    ch = connected(core)
    [key] = pin_on(core, ch, "cas3", count=1)
    core.port_status(ch, 3, MEMBER["cas3"].port_name, False, False, T0)
    assert key in core.challenges.pending
    out = core.packet_in(ch, CLIENT.port_no, tcp_frame(key[1], "A", ack=77), 0, T0 + S // 1000)
    assert len(sent(out)) == 1 and core.stats["resets"] == 1 and key not in core.challenges.pending


def test_drain_deadline_is_a_timer_saved_as_wall_time_and_a_rejoin_makes_it_stale():
    core, _ = core_for()
    ch = connected(core)
    vip = core.vips[0]
    pin_on(core, ch, "cas1")
    out = core.drain(vip, "cas1", 30, T0, WALL)
    assert [(s.vip, s.member, s.values) for s in of(out, SaveAdmin)] == [
        (VIP_IP, "cas1", {"draining": True, "drain_deadline_wall": WALL + 30})]
    assert of(out, Send) == [] and of(out, Wake) == [Wake(T0 + 30 * S)]
    assert emitted(core.tick(T0 + 30 * S - 1), NLB_EVICT) == []  # not yet
    assert vip.conns.count_by_backend().get("cas1") == 2
    out = core.tick(T0 + 30 * S)
    assert emitted(out, NLB_EVICT)[0]["reason"] == "drain_deadline" and "cas1" not in vip.conns.count_by_backend()
    # a drain, a rejoin, a drain again: the first deadline is stale
    core.drain(vip, "cas2", 30, T0 + 31 * S, WALL + 31)
    assert [s.values for s in of(core.rejoin(vip, "cas2", T0 + 32 * S), SaveAdmin)] == [
        {"draining": False, "drain_deadline_wall": None}]
    core.drain(vip, "cas2", 60, T0 + 33 * S, WALL + 33)
    assert emitted(core.tick(T0 + 61 * S), NLB_EVICT) == []
    assert emitted(core.tick(T0 + 93 * S), NLB_EVICT)[0]["member"] == "cas2"


@pytest.mark.parametrize("left_s, due", [(12.5, T0 + 12_500_000_000), (-99, T0)])  # a past deadline: at once
def test_start_restores_admin_state_and_what_is_left_of_a_drain_deadline(left_s, due):
    saved = {VIP_IP: {"cas1": {"admin_up": False}, "cas2": {"draining": True, "drain_deadline_wall": WALL + left_s}}}
    core, out = core_for(saved)
    members = core.vips[0].pool.members
    assert (members["cas1"].in_service, members["cas2"].accepts_new, members["cas2"].in_service) == (False, False, True)
    assert of(out, Wake)[0] == Wake(due)
    ch = connected(core)
    assert {pin(core, ch, 42000 + i) for i in range(30)} == {"cas3"}
    assert emitted(core.tick(due - 1), NLB_EVICT) == []
    assert [e["reason"] for e in emitted(core.tick(due), NLB_EVICT)] == ["drain_deadline"]


def test_a_probe_verdict_waits_for_the_convergence_delay():
    core, _ = core_for(convergence_ms=800, health=NlbHealth(fall=2, rise=2))
    ch = connected(core)
    pin_on(core, ch, "cas2")
    assert core.probe(VIP_IP, "cas2", False, "", T0) == []
    out = core.probe(VIP_IP, "cas2", False, "timeout", T0)
    assert emitted(out, NLB_CONVERGING) == [{"vip": VIP_IP, "member": "cas2", "alive": False}]
    # the verdict is in, but the pool keeps sending new clients to cas2 until convergence
    assert of(out, Wake) == [Wake(T0 + 800_000_000)] and of(out, Send) == []
    assert core.vips[0].pool.members["cas2"].healthy and core.vips[0].pool.members["cas2"].accepts_new
    out = core.tick(T0 + 800_000_000)
    assert [e["reason"] for e in emitted(out, LB_MEMBER)] == ["probe_down:timeout"]
    assert not core.vips[0].pool.members["cas2"].healthy and unpinned(sent(out)) == unpin_of(2)
    assert core.probe("10.9.9.9", "cas2", False, "", T0) == [] and core.probe(VIP_IP, "cas9", False, "", T0) == []


def test_the_rate_limit_counts_on_the_time_given_and_the_guard_reports_each_second():
    core, _ = core_for(packet_in_rate=10, packet_in_burst=5)
    ch = connected(core)
    answered = sum(1 for i in range(20) if core.packet_in(ch, CLIENT.port_no, syn(43000 + i), 0, T0))
    assert answered == 5
    assert sum(1 for i in range(20) if core.packet_in(ch, CLIENT.port_no, syn(43100 + i), 0, T0 + S // 10)) == 1
    out = core.tick(T0 + S)
    assert emitted(out, NLB_GUARD) == [{"reason": "rate_limited", "count": 34}] and core.stats["dropped"] == 34
    assert of(out, Wake) == [Wake(T0 + 2 * S)] and emitted(core.tick(T0 + 2 * S), NLB_GUARD) == []


def test_a_pinned_connection_is_recorded_with_the_time_given():
    core, _ = core_for()
    ch = connected(core)
    out = core.packet_in(ch, CLIENT.port_no, syn(44000), 0, T0 + 7)
    [conn] = emitted(out, NLB_CONN)
    assert conn["client"] == f"{CLIENT.ip}:44000"
    assert core.vips[0].conns.get((CLIENT.ip, 44000, VIP_IP, SERVICE_PORT)).created_ns == T0 + 7


# ---- switch dataplane: the failover -------------------------------------------------------------


def ct(client_ip: str, port: int, mark: int, state: str = "ESTABLISHED") -> CtEntry:
    return CtEntry(client_ip, port, VIP_IP, SERVICE_PORT, zone_of(1), mark, state)


def test_a_dead_member_in_the_switch_dataplane_is_a_failover_after_a_barrier():
    core, _ = core_for(dataplane="switch")
    ch = connected(core, 0x06)
    now = T0 + S
    out = core.admin_set(core.vips[0], "cas2", False, now)
    assert [type(o).__name__ for o in out] == ["SaveAdmin", "Send", "Failover", "Send", "Emit"]
    *_, barrier = of(out, Send)[0].messages
    assert type(barrier).__name__ == "OFPBarrierRequest" and barrier.xid == BARRIER_XID_BASE
    [fo] = of(out, Failover)
    assert (fo.channel, fo.vip_index, fo.member_index, fo.name, fo.reason, fo.since, fo.barrier_xid) == (
        ch, 1, 2, "cas2", "admin_down", now, barrier.xid)
    assert emitted(out, NLB_EVICT) == []  # told when the failover is done

    core.conntrack_read(1, [ct(CLIENT.ip, 40001, 2), ct(CLIENT.ip, 40002, 1), ct(CLIENT.ip, 40003, 2, "TIME_WAIT")],
                        now)
    first = core.failover_cached(fo, now + 2_000_000)
    [write] = first
    [flush] = sent(first)
    assert len(write.messages) == 1 and type(flush).__name__ == "OFPExperimenter"  # one message, no more
    assert core.challenges.pending == {}  # not before the switch has forgotten them
    assert core.failover_challenge(fo, now + 2_000_000) == [Wake(now + 2_000_000)]  # challenged at once
    assert set(core.challenges.pending) == {(CLIENT.ip, 40001, VIP_IP, SERVICE_PORT)}
    fresh = [ct(CLIENT.ip, 40001, 2), ct(OTHER_CLIENT.ip, 40004, 2), ct("192.0.2.1", 40005, 2)]  # the last: no source
    rest = core.failover_fresh(fo, fresh, now + 3_000_000, now + 15_500_000, now + 16_000_000)
    assert len(sent(rest)) == 1 and emitted(rest) == [] and len(core.challenges.pending) == 1
    last = core.failover_challenge(fo, now + 16_000_000)
    assert of(last, Wake) == [Wake(now + 2_000_000)]  # the earliest due: the first wave, not sent in this test
    assert len(core.challenges.pending) == 2 and (now + 16_000_000) in [e[0] for e in core.challenges.heap]
    [evict] = emitted(last, NLB_EVICT)
    assert evict == {"vip": VIP_IP, "member": "cas2", "reason": "admin_down", "conns": 2, "fast_fail": True,
                     "lookup_ms": 12.5, "since_ms": 3.0, "cached": 1}


def test_a_failover_with_nothing_to_reset_still_tells_the_eviction():
    core, _ = core_for(dataplane="switch")
    ch = connected(core, 0x06)
    [fo] = of(core.port_status(ch, 3, MEMBER["cas3"].port_name, False, False, T0), Failover)
    assert core.failover_cached(fo, T0) == [] and core.failover_challenge(fo, T0) == []
    assert core.failover_fresh(fo, [], T0, T0 + 1_000_000, T0) == []
    [evict] = emitted(core.failover_challenge(fo, T0 + 1_000_000))
    assert (evict["conns"], evict["cached"], evict["lookup_ms"], evict["reason"]) == (0, 0, 1.0, "port_down")


def test_without_fast_fail_the_switch_dataplane_evicts_at_once():
    core, _ = core_for(dataplane="switch", fast_fail=False)
    ch = connected(core, 0x06)
    out = core.port_status(ch, 1, MEMBER["cas1"].port_name, False, False, T0)
    assert of(out, Failover) == []
    assert emitted(out, NLB_EVICT) == [{"vip": VIP_IP, "member": "cas1", "reason": "port_down", "conns": 0,
                                        "fast_fail": False}]


def test_the_switch_dataplane_reads_the_conntrack_when_a_vip_is_installed():
    core, _ = core_for(dataplane="switch")
    ch = channel(1, 0x06)
    core.switch_connected(ch, False, T0)
    out = core.port_desc(ch, port_list(), T0)
    assert of(out, ReadConntrack) == [ReadConntrack(1)] and core.vips_to_read() == [1]
    out = core.conntrack_read(1, [ct(CLIENT.ip, 1, 1), ct(CLIENT.ip, 2, 3, "CLOSED")], T0, relearn=True)
    assert emitted(out, NLB_RELEARN) == [{"dpid": 1, "conns": 1}] and len(core.ct_cache[1]) == 2
    assert core.conntrack_read(1, [], T0) == [] and core.ct_cache[1] == []


@pytest.mark.parametrize("read_s, wait_s", [(0.001, 0.25), (0.1, 1.9)])
def test_conntrack_reads_take_at_most_a_twentieth_of_the_switchs_main_thread(read_s, wait_s):
    assert nlb_core.read_interval(read_s, 0.25) == pytest.approx(wait_s)
