"""Membership decisions of the NLB core, controller dataplane: a CAS port goes down or comes
back, drain with and without a deadline (and stale deadline timers), admin down/up, the
health agents' probes (fall/rise, no port detection), fast-fail challenges on their
schedule, and the admin API's snapshot. The core is driven directly on times the test
chooses (tests/nlb_lab.py); the timer thread that runs ``tick`` and ``challenges_due`` is
the app's (test_nlb_app_shell.py)."""

from __future__ import annotations

import json

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from labcommon.catalogue import LB_MEMBER, NLB_EVICT
from controllers.nlb_core import FLOW_SETTLE_S
from labcommon.programs import CHALLENGE_DELAYS_MS, NlbHealth
from tests.nlb_lab import (
    CLIENT, MEMBER, OTHER_CLIENT, S, SERVICE_PORT, T0, VIP_IP, VIP_MAC, WALL, challenges_until, channel,
    checksums_ok, chosen, conns_of, connected, core_for, emitted, flow_mods, link, outputs, packet_outs, pin,
    pin_until, port_list, sent, tcp_frame, unpin_of, unpinned,
)

MS = S // 1000
DELAYS = [d * MS for d in CHALLENGE_DELAYS_MS]  # the default schedule
SETTLE = round(FLOW_SETTLE_S * S)  # controller dataplane: the first challenge, after the flow delete


def challenged(outputs) -> list:
    """The challenges (packet-outs) the outputs write."""
    return packet_outs(sent(outputs))


def drain_timers(core) -> list[int]:
    return sorted(at for at, _, kind, _ in core.timers if kind == "drain")


# ---- a member's port goes down ------------------------------------------------------------------


def test_link_down_unpins_the_member_and_challenges_its_clients_on_the_schedule(version):
    core, _ = core_for(fast_fail=True)
    ch = connected(core, version)
    pinned = pin_until(core, ch, {"cas1", "cas2", "cas3"})
    pinned.update(pin_until(core, ch, {"cas2"}, start=44000, client=OTHER_CLIENT))
    on_cas2 = {k for k, v in pinned.items() if v == "cas2"}
    assert {k[0] for k in on_cas2} == {CLIENT.ip, OTHER_CLIENT.ip}

    now = T0 + S
    out = link(core, ch, "cas2", False, now)
    msgs = sent(out)
    assert unpinned(msgs) == unpin_of(2) and flow_mods(msgs) == [] and packet_outs(msgs) == []
    assert conns_of(core) == {k: v for k, v in pinned.items() if v != "cas2"}  # the others stay where they were
    member = core.vips[0].pool.members["cas2"]
    assert (member.port_up, member.healthy, member.in_service, member.accepts_new) == (False, True, False, False)

    # challenges follow the delete (OVS applies it asynchronously): once it settled, then on the schedule
    assert set(core.challenges.pending) == on_cas2 and core.challenges.next_at() == now + SETTLE
    first = challenged(challenges_until(core, now + SETTLE))
    assert len(first) == len(on_cas2)
    for po in first:
        reply = Ether(po.data)
        ip, seg = reply[IP], reply[TCP]
        key = (ip.dst, seg.dport, VIP_IP, SERVICE_PORT)
        client = OTHER_CLIENT if ip.dst == OTHER_CLIENT.ip else CLIENT
        assert key in on_cas2 and outputs(po.actions) == [client.port_no] and reply.dst == client.mac
        assert (reply.src, ip.src, seg.sport, str(seg.flags), bytes(seg.payload)) == (VIP_MAC, VIP_IP, SERVICE_PORT,
                                                                                     "A", b"\x00")
        assert checksums_ok(po.data)
    assert len(challenged(challenges_until(core, now + DELAYS[1]))) == 2 * len(on_cas2)  # two more rounds
    # nobody answered: the rest of the schedule, then the controller gives up on them
    assert len(challenged(challenges_until(core, now + 10 * S))) == (len(DELAYS) - 2) * len(on_cas2)
    assert core.challenges.pending == {} and core.challenges.next_at() is None
    assert core.stats["challenges"] == (1 + len(DELAYS)) * len(on_cas2)
    [evict] = emitted(out, NLB_EVICT)
    assert (evict["member"], evict["reason"], evict["conns"], evict["fast_fail"]) == ("cas2", "port_down",
                                                                                      len(on_cas2), True)
    [change] = emitted(out, LB_MEMBER)
    assert change == {"vip": VIP_IP, "member": "cas2", "reason": "port_down", "alive": False, "draining": False,
                      "accepts_new": False}


def test_a_reset_client_is_not_challenged_again():
    core, _ = core_for(fast_fail=True)
    ch = connected(core)
    on_cas3 = [k for k, v in pin_until(core, ch, {"cas3"}).items() if v == "cas3"]
    link(core, ch, "cas3", False, T0)
    assert len(challenged(challenges_until(core, T0 + SETTLE))) == len(on_cas3)
    # the first client's answer (a duplicate ACK) reaches the controller: an exact RST
    out = core.packet_in(ch, CLIENT.port_no, tcp_frame(on_cas3[0][1], "A", seq=5555, ack=0x12345678), 0,
                         T0 + SETTLE)
    [po] = sent(out)
    seg = Ether(po.data)[TCP]
    assert str(seg.flags) == "R" and seg.seq == 0x12345678 and seg.dport == on_cas3[0][1]
    assert on_cas3[0] not in core.challenges.pending
    rest = challenged(challenges_until(core, T0 + 10 * S))
    assert len(rest) == len(DELAYS) * (len(on_cas3) - 1)  # the others: the whole schedule after the first


def test_after_link_down_new_syns_never_pick_the_dead_member():
    core, _ = core_for()
    ch = connected(core)
    link(core, ch, "cas1", False)
    assert chosen(core, ch, 45000, 120) == {"cas2", "cas3"}


def test_link_down_without_fast_fail_unpins_but_sends_no_challenge():
    core, _ = core_for(fast_fail=False)
    ch = connected(core)
    pin_until(core, ch, {"cas1"})
    msgs = sent(link(core, ch, "cas1", False))
    assert unpinned(msgs) == unpin_of(1) and packet_outs(msgs) == []
    assert core.challenges.pending == {} and challenges_until(core, T0 + 10 * S) == []
    assert "cas1" not in core.vips[0].conns.count_by_backend()


@pytest.mark.parametrize("up, gone", [(False, False), (True, True)], ids=["down", "deleted"])
def test_a_port_down_or_deleted_evicts(up, gone):
    core, _ = core_for()
    ch = connected(core)
    out = core.port_status(ch, 2, MEMBER["cas2"].port_name, up, gone, T0)
    assert unpinned(sent(out)) == unpin_of(2) and core.vips[0].pool.members["cas2"].port_up is False


def test_port_back_up_rejoins_without_deleting_anything():
    core, _ = core_for()
    ch = connected(core)
    link(core, ch, "cas1", False)
    assert sent(link(core, ch, "cas1", True)) == []
    assert core.vips[0].pool.members["cas1"].accepts_new and "cas1" in chosen(core, ch, 46000)


def test_repeated_link_down_and_unrelated_ports_do_nothing_more():
    core, _ = core_for()
    ch = connected(core)
    first = link(core, ch, "cas1", False)
    assert unpinned(sent(first)) == unpin_of(1) and len(emitted(first, LB_MEMBER)) == 1
    assert link(core, ch, "cas1", False) == []
    assert core.port_status(ch, CLIENT.port_no, CLIENT.port_name, False, False, T0) == []


def test_member_port_down_in_the_initial_port_desc_keeps_it_out():
    core, _ = core_for()
    ch = channel()
    core.switch_connected(ch, False, T0)
    assert unpinned(sent(core.port_desc(ch, port_list(down=("cas1",)), T0))) == unpin_of(1)
    assert chosen(core, ch, 47000) == {"cas2", "cas3"}


# ---- drain ----------------------------------------------------------------------------------------------


def test_drain_keeps_existing_connections_and_stops_new_ones():
    core, _ = core_for()
    ch = connected(core)
    vip = core.vips[0]
    pinned = pin_until(core, ch, {"cas1"})
    drained = core.drain(vip, "cas1", None, T0, WALL)
    assert sent(drained) == [] and conns_of(core) == pinned  # no flow delete, no challenge
    assert "cas1" not in chosen(core, ch, 48000)
    key = next(k for k, v in pinned.items() if v == "cas1")
    assert pin(core, ch, key[1]) == "cas1"  # a retransmitted SYN of a pinned session stays
    rejoined = core.rejoin(vip, "cas1", T0)
    assert "cas1" in chosen(core, ch, 49000)
    reasons = [(e["reason"], e["draining"], e["accepts_new"], e["alive"])
               for e in emitted(drained, LB_MEMBER) + emitted(rejoined, LB_MEMBER)]
    assert reasons == [("drain", True, False, True), ("rejoin", False, True, True)]


def test_drain_deadline_evicts_the_remaining_sessions():
    core, _ = core_for(fast_fail=True)
    ch = connected(core)
    on_cas3 = sum(1 for v in pin_until(core, ch, {"cas3"}).values() if v == "cas3")
    assert sent(core.drain(core.vips[0], "cas3", 30, T0, WALL)) == [] and drain_timers(core) == [T0 + 30 * S]
    out = core.tick(T0 + 30 * S)
    assert unpinned(sent(out)) == unpin_of(3) and "cas3" not in core.vips[0].conns.count_by_backend()
    assert len(challenged(challenges_until(core, T0 + 30 * S + SETTLE))) == on_cas3
    assert emitted(out, NLB_EVICT)[-1]["reason"] == "drain_deadline"


def test_rejoin_before_the_drain_deadline_cancels_the_eviction():
    core, _ = core_for()
    ch = connected(core)
    pinned = pin_until(core, ch, {"cas3"})
    core.drain(core.vips[0], "cas3", 30, T0, WALL)
    core.rejoin(core.vips[0], "cas3", T0)
    assert drain_timers(core) == [T0 + 30 * S]
    assert sent(core.tick(T0 + 30 * S)) == [] and drain_timers(core) == []
    assert conns_of(core) == pinned


def test_a_stale_drain_timer_after_rejoin_and_drain_does_not_evict_early():
    core, _ = core_for()
    ch = connected(core)
    pinned = pin_until(core, ch, {"cas3"})
    core.drain(core.vips[0], "cas3", 30, T0, WALL)
    core.rejoin(core.vips[0], "cas3", T0)
    core.drain(core.vips[0], "cas3", 60, T0, WALL)
    assert drain_timers(core) == [T0 + 30 * S, T0 + 60 * S]
    assert sent(core.tick(T0 + 30 * S)) == [] and conns_of(core) == pinned  # the first drain's deadline: stale
    assert unpinned(sent(core.tick(T0 + 60 * S))) == unpin_of(3)  # the second one's


def test_challenge_schedule_is_configurable():
    core, _ = core_for(challenge_delays_ms=[5, 50])
    ch = connected(core)
    on_cas1 = sum(1 for v in pin_until(core, ch, {"cas1"}).values() if v == "cas1")
    link(core, ch, "cas1", False)
    assert core.challenges.next_at() == T0 + SETTLE
    assert len(challenged(challenges_until(core, T0 + SETTLE))) == on_cas1
    assert core.challenges.next_at() == T0 + 5 * MS
    assert len(challenged(challenges_until(core, T0 + 10 * S))) == 2 * on_cas1


# ---- admin state ------------------------------------------------------------------------------------------


def test_admin_down_evicts_and_no_probe_brings_the_member_back():
    core, _ = core_for(health=NlbHealth(fall=1, rise=1))
    ch = connected(core)
    vip = core.vips[0]
    pin_until(core, ch, {"cas2"})
    assert unpinned(sent(core.admin_set(vip, "cas2", False, T0))) == unpin_of(2)
    core.probe(VIP_IP, "cas2", False, "", T0)
    core.probe(VIP_IP, "cas2", True, "", T0)  # healthy again, but still administratively down
    assert not vip.pool.members["cas2"].in_service and "cas2" not in chosen(core, ch, 50000)
    link(core, ch, "cas2", False)
    core.admin_set(vip, "cas2", True, T0)  # an admin "up" does not revive a dead link
    assert not vip.pool.members["cas2"].in_service
    link(core, ch, "cas2", True)
    assert "cas2" in chosen(core, ch, 51000)


def test_snapshot_reports_members_and_connections():
    core, _ = core_for()
    ch = connected(core)
    pinned = pin_until(core, ch, {"cas1", "cas2"})
    link(core, ch, "cas3", False)
    core.drain(core.vips[0], "cas2", None, T0, WALL)
    snap = json.loads(json.dumps(core.snapshot()))  # the admin API serves it as JSON
    [hq] = [v for v in snap["vips"] if v["ip"] == VIP_IP]
    by_name = {m["name"]: m for m in hq["members"]}
    assert by_name["cas3"]["port_up"] is False and by_name["cas3"]["connections"] == 0
    assert by_name["cas2"]["draining"] and by_name["cas2"]["in_service"] and not by_name["cas2"]["accepts_new"]
    survivors = {k: v for k, v in pinned.items() if v != "cas3"}
    assert hq["connections"] == len(survivors)
    assert by_name["cas1"]["connections"] == sum(1 for v in survivors.values() if v == "cas1")
    assert snap["dataplane"] == "controller" and snap["stats"]["conns"] == len(pinned)


# ---- probes ---------------------------------------------------------------------------------------------


def test_without_port_detection_link_down_is_ignored_but_probes_still_count():
    """Windows NLB emulation: a dead host is only noticed by missed heartbeats (probes)."""
    core, _ = core_for(port_detection=False)
    ch = connected(core)
    pinned = pin_until(core, ch, {"cas1"})
    assert link(core, ch, "cas1", False) == []
    assert conns_of(core) == pinned and core.vips[0].pool.members["cas1"].accepts_new
    assert core.vips[0].port_numbers["clab1-eth1"] == 1  # ports are still learned
    core.probe(VIP_IP, "cas1", False, "", T0)
    assert unpinned(sent(core.probe(VIP_IP, "cas1", False, "", T0))) == unpin_of(1)


def test_probes_flip_a_member_after_fall_failures_and_back_after_rise():
    core, _ = core_for(health=NlbHealth(fall=3, rise=2))
    ch = connected(core)
    members = core.vips[0].pool.members
    pin_until(core, ch, {"cas2"})
    out = [core.probe(VIP_IP, "cas2", False, "", T0) for _ in range(2)]
    assert out == [[], []] and members["cas2"].healthy
    down = core.probe(VIP_IP, "cas2", False, "timeout", T0)
    assert unpinned(sent(down)) == unpin_of(2)
    assert not members["cas2"].healthy and "cas2" not in core.vips[0].conns.count_by_backend()
    assert core.probe(VIP_IP, "cas2", True, "", T0) == [] and not members["cas2"].in_service
    up = core.probe(VIP_IP, "cas2", True, "", T0)
    assert members["cas2"].in_service and sent(up) == []
    assert core.probe("10.9.9.9", "cas2", False, "", T0) == []  # unknown VIP / member: ignored
    assert core.probe(VIP_IP, "cas9", False, "", T0) == []
    reasons = [(e["member"], e["reason"], e["alive"]) for e in emitted(down + up, LB_MEMBER)]
    assert reasons == [("cas2", "probe_down:timeout", False), ("cas2", "probe_up", True)]
