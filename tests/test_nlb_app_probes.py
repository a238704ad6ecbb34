"""What the SDN NLB app hears besides packets (the core's ``probe``, the app's health
socket and error handler): the health agents' probe reports, counted fall/rise, delayed by
a convergence time (the Windows NLB emulation), and read from a Unix datagram socket that
no datagram can stop; its own guard counters (packet-ins over the rate); and the errors the
switch sends back. Controller dataplane, OpenFlow 1.3 and 1.5."""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import tempfile
import threading
import time

import pytest

from controllers.nlb_state import TokenBucket
from labcommon.catalogue import LB_MEMBER, NLB_CONVERGING, NLB_GUARD, NLB_HEALTH_SOCKET_ERROR, NLB_SWITCH_ERROR
from labcommon.programs import NlbHealth
from tests.fakes import (
    VIP_IP, conns_of, error_msg, events, fire_next, member_port,
    packet_in, pin_until, ready, syn, timer_delays, unpin_of, unpinned,
)


def test_without_port_detection_link_down_is_ignored_but_probes_still_count(make_app, version, hub):
    """Windows NLB emulation: a dead host is only noticed by missed heartbeats (probes)."""
    app = make_app(port_detection=False)
    dp = ready(app, version)
    pinned = pin_until(app, dp, {"cas1"})
    assert member_port(app, dp, "cas1", link_down=True) == []
    assert conns_of(app) == pinned and app.core.vips[0].pool.members["cas1"].accepts_new
    assert app.core.vips[0].port_numbers["clab1-eth1"] == 1  # ports are still learned
    app.on_probe(VIP_IP, "cas1", False)
    app.on_probe(VIP_IP, "cas1", False)
    assert unpinned(dp.take()) == unpin_of(1)


def test_probes_flip_a_member_after_fall_failures_and_back_after_rise(make_app, version):
    app = make_app(health=NlbHealth(fall=3, rise=2))
    dp = ready(app, version)
    pin_until(app, dp, {"cas2"})
    dp.take()
    app.on_probe(VIP_IP, "cas2", False)
    app.on_probe(VIP_IP, "cas2", False)
    assert dp.take() == [] and app.core.vips[0].pool.members["cas2"].healthy
    app.on_probe(VIP_IP, "cas2", False, "timeout")
    assert unpinned(dp.take()) == unpin_of(2)
    assert not app.core.vips[0].pool.members["cas2"].healthy and "cas2" not in app.core.vips[0].conns.count_by_backend()
    app.on_probe(VIP_IP, "cas2", True)
    assert not app.core.vips[0].pool.members["cas2"].in_service
    app.on_probe(VIP_IP, "cas2", True)
    assert app.core.vips[0].pool.members["cas2"].in_service and dp.take() == []
    app.on_probe("10.9.9.9", "cas2", False)  # unknown VIP / member: ignored
    app.on_probe(VIP_IP, "cas9", False)
    reasons = [(e["member"], e["reason"], e["alive"]) for e in events(app, LB_MEMBER)]
    assert reasons == [("cas2", "probe_down:timeout", False), ("cas2", "probe_up", True)]


def test_convergence_delays_a_probe_verdict(make_app, version, hub):
    app = make_app(convergence_ms=800, health=NlbHealth(fall=2, rise=2))
    dp = ready(app, version)
    pin_until(app, dp, {"cas2"})
    dp.take()
    app.on_probe(VIP_IP, "cas2", False)
    app.on_probe(VIP_IP, "cas2", False)
    # the verdict is in, but the pool keeps sending new clients to cas2 until convergence
    assert dp.take() == [] and app.core.vips[0].pool.members["cas2"].accepts_new
    assert timer_delays(app, "converge") == [pytest.approx(0.8)] and events(app, NLB_CONVERGING)[0]["alive"] is False
    fire_next(app, "converge")
    assert unpinned(dp.take()) == unpin_of(2) and not app.core.vips[0].pool.members["cas2"].healthy


def test_packet_ins_over_the_rate_are_refused_and_reported(make_app, version, hub):
    app = make_app()
    app.core.limiter = TokenBucket(10, 5, now=app.clock.now / 1e9)  # the clock stands still: no refill
    dp = ready(app, version)
    answered = sum(1 for i in range(20) if packet_in(app, dp, syn(53000 + i)))
    assert answered == 5
    assert timer_delays(app, "guard") == [1.0]  # once a second
    fire_next(app, "guard")
    assert app.core.stats["dropped"] == 15 and timer_delays(app, "guard") == [1.0]
    [guard] = events(app, NLB_GUARD)
    assert (guard["reason"], guard["count"]) == ("rate_limited", 15)


def test_switch_errors_are_logged_including_experimenter_ones(make_app, version):
    app = make_app()
    dp = ready(app, version)
    error_msg(app, dp, dp.ofproto.OFPET_BAD_ACTION, 4, b"\x06\x0e\x00\x50" + b"\x00" * 80)
    error_msg(app, dp, 0, 0, b"\x06\x0f\x00\x10", exp_type=11)  # an Open vSwitch NX error
    first, second = events(app, NLB_SWITCH_ERROR)
    assert (first["type"], first["code"], first["data"]) == (2, 4, ("060e0050" + "00" * 80)[:128])
    assert (second["type"], second["code"], second["data"]) == (0xFFFF, 11, "060f0010")


# ---- the health socket ---------------------------------------------------------------------------------


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
    [loop] = [c for c in hub.spawned if c.name == "_health_loop"]
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
    [loop] = [c for c in hub.spawned if c.name == "_health_loop"]
    assert loop() is None  # returns instead of dying silently
    [error] = events(app, NLB_HEALTH_SOCKET_ERROR)
    assert error["path"] == path and error["reason"]
