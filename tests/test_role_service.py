"""roles/service.py in real role processes: framing abuse, and the bounds that keep a
long run (or a hostile peer) from wearing a service down.

Every abuse must get an error frame (``ok`` false) or a close within a timeout, and the
process must stay alive and keep serving a fresh, well-formed session.
"""

from __future__ import annotations

import json
import resource
import socket
import struct
import time
from pathlib import Path

import pytest

from tests.roles_support import (
    CLOSED, FRAMING_ABUSE, HEADER, NOT_A_PEER, Conn, admin, assert_refused, autodiscover_config, cas_config, frame,
    free_ports, mailbox_config, start_service, tcp_sockets, wait_until,
)
from tests.roles_support import shared_stack, stack, started

__all__ = ["shared_stack", "stack", "started"]  # the fixtures imported above


# ---- framing abuse, against the CAS and the mailbox (autodiscover: its own file) ------

@pytest.mark.parametrize("target", ["cas", "mailbox"])
@pytest.mark.parametrize("abuse", list(FRAMING_ABUSE))
def test_bad_frame_is_refused_and_service_survives(stack, target, abuse):
    data, half_close = FRAMING_ABUSE[abuse]
    service = getattr(stack, target)
    with Conn(service.port) as conn:
        conn.send_raw(data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        reply = conn.recv()
        assert_refused(reply, "protocol")
        if reply is not CLOSED:
            assert conn.recv() is CLOSED, "the service kept a connection open after a framing error"
    stack.assert_healthy()


@pytest.mark.parametrize("target", ["cas", "mailbox"])
def test_abrupt_closes_do_not_hurt(stack, target):
    """Connect and reset mid-header, mid-body, and right after a request."""
    service = getattr(stack, target)
    request = {"op": "ping"} if target == "cas" else {"op": "read", "db": "DB1", "user": "alice"}
    for data in (b"\x00", HEADER.pack(50) + b"{", frame(request)):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=2)
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        sock.close()
    stack.assert_healthy()


def test_many_bad_connections_at_once(stack):
    """Twenty half-open connections with a truncated frame do not block a real session."""
    socks = []
    try:
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", (stack.cas if i % 2 else stack.mailbox).port), timeout=2)
            sock.sendall(HEADER.pack(1000) + b"{")  # and then stall
            socks.append(sock)
        stack.assert_healthy()
    finally:
        for sock in socks:
            sock.close()
    stack.assert_healthy()


# ---- bounds ------------------------------------------------------------------------------

def mailbox(tmp_path, started, **settings):
    port, admin_port, unused = free_ports(3)
    return start_service("roles.mailbox", mailbox_config("mbx1", port, admin_port, tmp_path, extra_peer=unused,
                                                         **settings), tmp_path, started)


def closed_after(conn: Conn, limit: float) -> float:
    """Seconds until the service closes ``conn`` (it must not answer anything)."""
    begun = time.monotonic()
    assert conn.recv(limit) is CLOSED, "the service answered instead of closing"
    return time.monotonic() - begun


@pytest.mark.parametrize("listener", ["service", "admin"])
def test_a_frame_cut_after_its_header_is_closed_after_partial_timeout(tmp_path, started, listener):
    # Old behaviour: read_frame waited for the body forever, so a peer that sent a header
    # and stalled held a connection (and a file) for good; and the config's
    # partial_timeout_s was ignored by listen() (fixed in roles/service.py).
    service = mailbox(tmp_path, started, partial_timeout_s=0.5, idle_timeout_s=60)
    port = service.port if listener == "service" else service.admin_port
    with Conn(port) as conn:
        conn.send_raw(HEADER.pack(100) + b'{"op": "re')  # and nothing more
        elapsed = closed_after(conn, 5)
    assert 0.4 <= elapsed < 3, elapsed
    closes = wait_until(lambda: service.events("idle_closed"), 2, "an idle_closed event")
    assert [e["reason"] for e in closes] == ["partial_frame"]
    service.assert_alive()


def test_an_idle_connection_is_closed_after_idle_timeout(tmp_path, started):
    # Old behaviour: no idle timeout; a silent connection stayed open for ever.
    service = mailbox(tmp_path, started, idle_timeout_s=1.0)
    connected_ns = time.monotonic_ns()  # event ts is CLOCK_MONOTONIC too
    with Conn(service.port) as busy, Conn(service.port) as idle:
        begun = time.monotonic()
        while time.monotonic() - begun < 1.6:  # a request every 0.3 s keeps a connection open
            assert busy.call({"op": "read", "db": "DB1", "user": "alice"})["ok"] is True
            time.sleep(0.3)
        assert idle.recv(3) is CLOSED
        assert busy.call({"op": "read", "db": "DB1", "user": "alice"})["ok"] is True
    closes = wait_until(lambda: service.events("idle_closed"), 2, "an idle_closed event")
    assert [e["reason"] for e in closes] == ["idle"]
    assert 0.9 <= (closes[0]["ts"] - connected_ns) / 1e9 < 2.5, closes


@pytest.mark.parametrize("role", ["mailbox", "cas", "autodiscover"])
def test_open_files_soft_limit_is_raised_to_the_hard_limit(tmp_path, started, role):
    # Old behaviour: the soft limit stayed what the process inherited (often 1,024).
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    soft = min(1024, hard // 2)  # start below the hard limit, so the service has to raise it
    port, admin_port = free_ports(2)
    config = {"mailbox": lambda: mailbox_config("svc", port, admin_port, tmp_path),
              "cas": lambda: cas_config("svc", port, admin_port, tmp_path, [admin_port]),
              "autodiscover": lambda: autodiscover_config("svc", port, admin_port, tmp_path)}[role]()
    service = start_service(f"roles.{role}", config, tmp_path, started, nofile_soft=soft)
    limits = Path(f"/proc/{service.proc.pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max open files"))
    got_soft, got_hard = (int(v) for v in line.split()[3:5])
    assert got_hard == hard and got_soft == got_hard, line


def test_connections_over_max_connections_are_closed(tmp_path, started):
    # Old behaviour: no cap; every connection was served.
    service = mailbox(tmp_path, started, max_connections=2)
    read = {"op": "read", "db": "DB1", "user": "alice"}
    with Conn(service.port) as first, Conn(service.port) as second:
        assert first.call(read)["ok"] is True and second.call(read)["ok"] is True  # both counted
        with Conn(service.port) as third:
            third.send(read)
            assert third.recv() is CLOSED, "a connection over max_connections was served"
        # the admin listener is not counted against the cap
        assert admin(service, {"op": "status"})["ok"] is True
    # once those two are gone, new connections are served again

    def served() -> bool:
        with Conn(service.port) as conn:
            conn.send(read)
            reply = conn.recv()
            return reply is not CLOSED and reply.get("ok") is True

    wait_until(served, 5, "a new connection served after the others closed", interval=0.05)


# ---- the admin listener: loopback only, and only for roles that have admin ops ---------

@pytest.mark.parametrize("role", ["mailbox", "autodiscover"])
def test_admin_listener_is_bound_to_loopback_only(tmp_path, started, role):
    # Old behaviour: admin ops were served on the service port, bound to 0.0.0.0: any
    # client host could activate a database copy or change an RpcClientAccessServer.
    port, admin_port = free_ports(2)
    config = (mailbox_config("svc", port, admin_port, tmp_path) if role == "mailbox"
              else autodiscover_config("svc", port, admin_port, tmp_path))
    start_service(f"roles.{role}", config, tmp_path, started)
    listening = {(s["ip"], s["port"]) for s in tcp_sockets() if s["state"] == "0A"}
    assert ("127.0.0.1", admin_port) in listening and ("0.0.0.0", admin_port) not in listening, listening
    assert ("0.0.0.0", port) in listening
    # another address of this host reaches the service port, never the admin port
    socket.create_connection((NOT_A_PEER, port), timeout=2).close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection((NOT_A_PEER, admin_port), timeout=2).close()


def test_cas_has_no_admin_listener(tmp_path, started):
    port, admin_port, mailbox_port = free_ports(3)
    start_service("roles.cas", cas_config("cas1", port, admin_port, tmp_path, [mailbox_port]), tmp_path, started)
    assert admin_port not in {s["port"] for s in tcp_sockets() if s["state"] == "0A"}
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", admin_port), timeout=2).close()


def test_a_reply_too_large_for_a_frame_is_answered_with_an_error(tmp_path):
    # Old behaviour: encode raised ProtocolError while writing the reply, outside
    # serve_frames' error handling: the connection closed without a word and nothing was
    # logged (an exception in a task nobody awaited).
    import asyncio

    from labcommon.events import EventLog
    from labcommon.protocol import MAX_FRAME, encode, read_frame
    from roles.service import serve_frames

    async def handler(request, state):
        return {"ok": True, "blob": "x" * (MAX_FRAME + 1)}

    async def scenario():
        log = EventLog(str(tmp_path / "events.jsonl"), "svc")
        server = await asyncio.start_server(lambda r, w: serve_frames(r, w, handler, log), "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(encode({"op": "big"}))
        reply = await asyncio.wait_for(read_frame(reader), 5)
        closed = await asyncio.wait_for(read_frame(reader), 5)
        writer.close()
        server.close()
        log.close()
        return reply, closed

    reply, closed = asyncio.run(scenario())
    assert reply == {"ok": False, "error": "internal", "close": True}, reply
    assert closed is None, "the connection stays open after an unusable reply"
    events = [json.loads(line) for line in (tmp_path / "events.jsonl").read_text().splitlines()]
    assert [e["ev"] for e in events] == ["internal_error"] and "ProtocolError" in events[0]["reason"], events
