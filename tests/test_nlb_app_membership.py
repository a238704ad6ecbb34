"""Membership changes in the SDN NLB app's controller dataplane: a CAS port goes down or
comes back, drain with and without a deadline (and stale deadline timers), admin down/up
(kept across a restart), fast-fail challenges on the Challenger's schedule (driven by a
fake clock, the app's timer thread run by the test), and what the app logs and reports. OpenFlow 1.3 and 1.5. Health probes are
in test_nlb_app_probes.py."""

from __future__ import annotations

import contextlib
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether

from labcommon.catalogue import LB_MEMBER, NLB_EVICT, NLB_UP
from labcommon.programs import NlbHealth
from tests.fakes import (
    CLIENT, OTHER_CLIENT, SERVICE_PORT, VIP_IP, VIP_MAC, FakeDatapath, StopLoop,
    all_ports, challenge_wait, checksums_ok, chosen, conns_of, drive, events, features, flow_mods, member_port,
    ofport, outputs, packet_in, packet_outs, fire_next, pin_member, pin_until, port_desc, port_status, ready, tcp_frame, timer_delays,
    unpin_of, unpinned,
)

DELAYS_S = [d / 1000 for d in (1, 2, 3, 5, 7, 10, 14, 20, 30, 45, 70, 120, 250)]  # the app's default schedule


# ---- a member's port goes down ------------------------------------------------------------------


def test_link_down_unpins_the_member_and_challenges_its_clients_on_the_schedule(make_app, version):
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas1", "cas2", "cas3"})
    pinned.update(pin_until(app, dp, {"cas2"}, start=44000, client=OTHER_CLIENT))
    on_cas2 = {k for k, v in pinned.items() if v == "cas2"}
    assert {k[0] for k in on_cas2} == {CLIENT.ip, OTHER_CLIENT.ip}

    msgs = member_port(app, dp, "cas2", link_down=True)
    assert unpinned(msgs) == unpin_of(2) and flow_mods(msgs) == [] and packet_outs(msgs) == []
    assert conns_of(app) == {k: v for k, v in pinned.items() if v != "cas2"}  # the others stay where they were
    member = app.core.vips[0].pool.members["cas2"]
    assert (member.port_up, member.healthy, member.in_service, member.accepts_new) == (False, True, False, False)

    # challenges follow the delete (OVS applies it asynchronously): dense first, then sparse
    assert set(app.core.challenges.pending) == on_cas2
    assert challenge_wait(app) == pytest.approx(DELAYS_S[0])
    assert drive(app, DELAYS_S[0]) == len(on_cas2)
    for po in packet_outs(dp.take()):
        reply = Ether(po.data)
        ip, seg = reply[IP], reply[TCP]
        key = (ip.dst, seg.dport, VIP_IP, SERVICE_PORT)
        client = OTHER_CLIENT if ip.dst == OTHER_CLIENT.ip else CLIENT
        assert key in on_cas2 and outputs(po.actions) == [client.port_no] and reply.dst == client.mac
        assert (reply.src, ip.src, seg.sport, str(seg.flags), bytes(seg.payload)) == (VIP_MAC, VIP_IP, SERVICE_PORT,
                                                                                     "A", b"\x00")
        assert checksums_ok(po.data)
    sent = drive(app, DELAYS_S[6] - DELAYS_S[0])  # 14 ms: six more rounds
    assert sent == 6 * len(on_cas2)
    # nobody answered: the rest of the schedule, then the controller gives up on them
    assert drive(app, 10.0) == 6 * len(on_cas2)
    assert app.core.challenges.pending == {} and challenge_wait(app) is None
    assert app.core.stats["challenges"] == len(DELAYS_S) * len(on_cas2)
    [evict] = events(app, NLB_EVICT)
    assert (evict["member"], evict["reason"], evict["conns"], evict["fast_fail"]) == ("cas2", "port_down",
                                                                                      len(on_cas2), True)


def test_the_timer_thread_sends_due_challenges_by_itself(make_app, version):
    """The app's own timer thread, on the real clock: woken by the eviction, it sends the
    challenges when they are due, without a test driving it."""
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    on_cas2 = sum(1 for v in pin_until(app, dp, {"cas2"}).values() if v == "cas2")
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


def test_a_reset_client_is_not_challenged_again(make_app, version):
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas3"})
    on_cas3 = [k for k, v in pinned.items() if v == "cas3"]
    member_port(app, dp, "cas3", link_down=True)
    assert drive(app, DELAYS_S[0]) == len(on_cas3)
    dp.take()
    # the first client's answer (a duplicate ACK) reaches the controller: an exact RST
    [po] = packet_in(app, dp, tcp_frame(on_cas3[0][1], "A", seq=5555, ack=0x12345678))
    seg = Ether(po.data)[TCP]
    assert str(seg.flags) == "R" and seg.seq == 0x12345678 and seg.dport == on_cas3[0][1]
    assert on_cas3[0] not in app.core.challenges.pending
    assert drive(app, 10.0) == (len(DELAYS_S) - 1) * (len(on_cas3) - 1)


def test_after_link_down_new_syns_never_pick_the_dead_member(make_app, version):
    app = make_app()
    dp = ready(app, version)
    member_port(app, dp, "cas1", link_down=True)
    assert chosen(app, dp, 45000, 120) == {"cas2", "cas3"}


def test_link_down_without_fast_fail_unpins_but_sends_no_challenge(make_app, version):
    app = make_app(fast_fail=False)
    dp = ready(app, version)
    pin_until(app, dp, {"cas1"})
    msgs = member_port(app, dp, "cas1", link_down=True)
    assert unpinned(msgs) == unpin_of(1) and packet_outs(msgs) == []
    assert app.core.challenges.pending == {} and drive(app, 10.0) == 0
    assert "cas1" not in app.core.vips[0].conns.count_by_backend()


@pytest.mark.parametrize("how", ["admin_down", "deleted"])
def test_port_admin_down_or_deleted_also_evicts(make_app, version, how):
    app = make_app()
    dp = ready(app, version)
    if how == "admin_down":
        msgs = member_port(app, dp, "cas2", admin_down=True)
    else:
        msgs = port_status(app, dp, ofport(dp, "clab1-eth2", 2), reason=dp.ofproto.OFPPR_DELETE)
    assert unpinned(msgs) == unpin_of(2) and app.core.vips[0].pool.members["cas2"].port_up is False


def test_port_back_up_rejoins_without_deleting_anything(make_app, version):
    app = make_app()
    dp = ready(app, version)
    member_port(app, dp, "cas1", link_down=True)
    assert member_port(app, dp, "cas1") == []
    assert app.core.vips[0].pool.members["cas1"].accepts_new and "cas1" in chosen(app, dp, 46000)


def test_repeated_link_down_and_unrelated_ports_do_nothing_more(make_app, version):
    app = make_app()
    dp = ready(app, version)
    assert unpinned(member_port(app, dp, "cas1", link_down=True)) == unpin_of(1)
    assert member_port(app, dp, "cas1", link_down=True) == []
    assert port_status(app, dp, ofport(dp, CLIENT.port_name, CLIENT.port_no, link_down=True)) == []
    assert len(events(app, LB_MEMBER)) == 1


def test_member_port_down_in_the_initial_port_desc_keeps_it_out(make_app, version):
    app = make_app()
    dp = FakeDatapath(1, version)
    features(app, dp)
    msgs = port_desc(app, dp, [ofport(dp, "clab1-eth1", 1, link_down=True)] + all_ports(dp)[1:])
    assert unpinned(msgs) == unpin_of(1)
    assert chosen(app, dp, 47000) == {"cas2", "cas3"}


# ---- drain ----------------------------------------------------------------------------------------------


def test_drain_keeps_existing_connections_and_stops_new_ones(make_app, version):
    app = make_app()
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas1"})
    dp.take()
    app.drain(app.core.vips[0], "cas1")
    assert dp.take() == [] and conns_of(app) == pinned  # no flow delete, no challenge
    assert "cas1" not in chosen(app, dp, 48000)
    key = next(k for k, v in pinned.items() if v == "cas1")
    assert pin_member(app, dp, key[1]) == "cas1"  # a retransmitted SYN of a pinned session stays
    app.rejoin(app.core.vips[0], "cas1")
    assert "cas1" in chosen(app, dp, 49000)
    reasons = [(e["reason"], e["draining"], e["accepts_new"], e["alive"]) for e in events(app, LB_MEMBER)]
    assert reasons == [("drain", True, False, True), ("rejoin", False, True, True)]


def test_drain_deadline_evicts_the_remaining_sessions(make_app, version, hub):
    app = make_app(fast_fail=True)
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas3"})
    on_cas3 = sum(1 for v in pinned.values() if v == "cas3")
    dp.take()
    app.wakeup.clear()
    app.drain(app.core.vips[0], "cas3", deadline_s=30)
    assert dp.take() == [] and timer_delays(app, "drain") == [30]
    assert app.wakeup.is_set()  # the timer thread recomputes its wait
    fire_next(app, "drain")
    assert unpinned(dp.take()) == unpin_of(3) and "cas3" not in app.core.vips[0].conns.count_by_backend()
    assert drive(app, DELAYS_S[0]) == on_cas3
    assert events(app, NLB_EVICT)[-1]["reason"] == "drain_deadline"


def test_rejoin_before_the_drain_deadline_cancels_the_eviction(make_app, version, hub):
    app = make_app()
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas3"})
    app.drain(app.core.vips[0], "cas3", deadline_s=30)
    app.rejoin(app.core.vips[0], "cas3")
    dp.take()
    assert timer_delays(app, "drain") == [30]
    fire_next(app, "drain")
    assert timer_delays(app, "drain") == []
    assert dp.take() == [] and conns_of(app) == pinned


def test_a_stale_drain_timer_after_rejoin_and_drain_does_not_evict_early(make_app, version, hub):
    app = make_app()
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas3"})
    app.drain(app.core.vips[0], "cas3", deadline_s=30)
    app.rejoin(app.core.vips[0], "cas3")
    app.drain(app.core.vips[0], "cas3", deadline_s=60)
    dp.take()
    assert timer_delays(app, "drain") == [30, 60]
    fire_next(app, "drain")  # the first drain's deadline: stale
    assert dp.take() == [] and conns_of(app) == pinned
    fire_next(app, "drain")  # the second one's
    assert unpinned(dp.take()) == unpin_of(3)


def test_challenge_schedule_is_configurable(make_app, version):
    app = make_app(challenge_delays_ms=[5, 50])
    dp = ready(app, version)
    on_cas1 = sum(1 for v in pin_until(app, dp, {"cas1"}).values() if v == "cas1")
    member_port(app, dp, "cas1", link_down=True)
    assert challenge_wait(app) == pytest.approx(0.005)
    assert drive(app, 10.0) == 2 * on_cas1


# ---- admin state ------------------------------------------------------------------------------------------


def test_admin_down_evicts_and_no_probe_brings_the_member_back(make_app, version):
    app = make_app(health=NlbHealth(fall=1, rise=1))
    dp = ready(app, version)
    pin_until(app, dp, {"cas2"})
    dp.take()
    app.admin_set(app.core.vips[0], "cas2", up=False)
    assert unpinned(dp.take()) == unpin_of(2)
    app.on_probe(VIP_IP, "cas2", False)
    app.on_probe(VIP_IP, "cas2", True)  # healthy again, but still administratively down
    assert not app.core.vips[0].pool.members["cas2"].in_service and "cas2" not in chosen(app, dp, 50000)
    member_port(app, dp, "cas2", link_down=True)
    app.admin_set(app.core.vips[0], "cas2", up=True)  # an admin "up" does not revive a dead link
    assert not app.core.vips[0].pool.members["cas2"].in_service
    member_port(app, dp, "cas2")
    assert "cas2" in chosen(app, dp, 51000)


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
    assert chosen(again, dp, 52000) == {"cas3"}


# ---- what the app says -------------------------------------------------------------------------------------


def test_events_are_logged_with_their_catalogue_fields(make_app, version):
    app = make_app()
    dp = ready(app, version)
    pin_until(app, dp, {"cas1"})
    member_port(app, dp, "cas1", link_down=True)
    kinds = [e["ev"] for e in events(app)]
    for kind in ("nlb_up", "nlb_switch", "nlb_conn", "lb_member", "nlb_evict"):
        assert kind in kinds
    [up] = events(app, NLB_UP)
    assert (up["vips"], up["fast_fail"], up["dataplane"]) == ([VIP_IP, "10.2.0.100"], True, "controller")
    [change] = events(app, LB_MEMBER)
    assert {k: change[k] for k in ("vip", "member", "reason", "alive", "draining", "accepts_new")} == {
        "vip": VIP_IP, "member": "cas1", "reason": "port_down", "alive": False, "draining": False,
        "accepts_new": False}
    [evict] = events(app, NLB_EVICT)
    assert evict["ts"] >= change["ts"] and evict["member"] == "cas1"


def test_snapshot_reports_members_and_connections(make_app, version):
    import json

    app = make_app()
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas1", "cas2"})
    member_port(app, dp, "cas3", link_down=True)
    app.drain(app.core.vips[0], "cas2")
    snap = json.loads(json.dumps(app.snapshot()))  # the admin API serves it as JSON
    [hq] = [v for v in snap["vips"] if v["ip"] == VIP_IP]
    by_name = {m["name"]: m for m in hq["members"]}
    assert by_name["cas3"]["port_up"] is False and by_name["cas3"]["connections"] == 0
    assert by_name["cas2"]["draining"] and by_name["cas2"]["in_service"] and not by_name["cas2"]["accepts_new"]
    survivors = {k: v for k, v in pinned.items() if v != "cas3"}
    assert hq["connections"] == len(survivors)
    assert by_name["cas1"]["connections"] == sum(1 for v in survivors.values() if v == "cas1")
    assert snap["dataplane"] == "controller" and snap["stats"]["conns"] == len(pinned)

