"""traffic.rxstamp on loopback: the client's reply time is when the kernel received the
reply, however late the event loop reads it (the cause of 5 ms event-vs-wire gaps at 125
sessions per client host)."""

from __future__ import annotations

import asyncio
import json
import socket
import threading
import time

import pytest

from labcommon.protocol import read_frame, write_frame
from traffic import rxstamp


@pytest.fixture(autouse=True)
def kernel_stamps_on():
    """The kernel switches receive timestamping on for the whole machine a moment after
    the first socket asks for it (a deferred static key): packets received in between
    carry no stamp, and the client falls back to the loop's clock. In a lab tcpdump has
    long asked; here a socket asks and the test waits until a loopback packet is stamped."""
    holder = rxstamp.StampedSocket(socket.AF_INET, socket.SOCK_DGRAM)
    holder.enable()
    holder.bind(("127.0.0.1", 0))
    holder.settimeout(1.0)
    deadline = time.monotonic() + 5
    try:
        while True:
            holder.sendto(b"x", holder.getsockname())
            holder.recv(16)
            if holder.rx_wall_ns is not None or time.monotonic() > deadline:
                break
            time.sleep(0.01)
        assert holder.rx_wall_ns is not None, "the kernel never stamped a received packet"
        yield
    finally:
        holder.close()


def _echo_server() -> tuple[socket.socket, threading.Thread]:
    """A server in its own thread: it answers while the client's loop is busy."""
    listener = socket.create_server(("127.0.0.1", 0))

    def serve():
        conn, _ = listener.accept()
        with conn:
            size = int.from_bytes(conn.recv(4), "big")
            body = json.loads(conn.recv(size))
            reply = json.dumps({"ok": True, "echo": body["op"]}).encode()
            conn.sendall(len(reply).to_bytes(4, "big") + reply)
            conn.recv(1)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread


async def _exchange(busy_s: float) -> tuple[int, int, int]:
    listener, thread = _echo_server()
    reader, writer, sock = await rxstamp.open_connection("127.0.0.1", listener.getsockname()[1], None, 2.0)
    try:
        sent = time.monotonic_ns()
        await write_frame(writer, {"op": "ping"})
        time.sleep(busy_s)  # the loop is busy elsewhere while the reply arrives
        reply = await read_frame(reader)
        read_at = time.monotonic_ns()
        assert reply == {"ok": True, "echo": "ping"}
        return sent, sock.arrival_ns(), read_at
    finally:
        writer.close()
        thread.join(5)
        listener.close()


def test_arrival_is_the_kernels_receive_time_not_the_loops():
    sent, arrived, read_at = asyncio.run(_exchange(0.08))
    assert arrived is not None
    assert sent < arrived  # after the request went out (the clocks agree)
    assert read_at - arrived > 70_000_000  # the loop read it ~80 ms after it arrived
    assert arrived - sent < 40_000_000  # loopback: the reply arrived within ms of the request


def test_no_data_read_means_no_stamp():
    sock = rxstamp.StampedSocket()
    try:
        assert sock.arrival_ns() is None
    finally:
        sock.close()


def test_recv_into_keeps_the_stamp_too():
    listener, thread = _echo_server()
    sock = rxstamp.StampedSocket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.enable()
        sock.connect(listener.getsockname())
        body = json.dumps({"op": "ping"}).encode()
        sock.sendall(len(body).to_bytes(4, "big") + body)
        time.sleep(0.05)
        buffer = bytearray(256)
        size = sock.recv_into(buffer)
        read_at = time.monotonic_ns()
        assert json.loads(bytes(buffer[4:size])) == {"ok": True, "echo": "ping"}
        assert 40_000_000 < read_at - sock.arrival_ns() < 2_000_000_000
    finally:
        sock.close()
        thread.join(5)
        listener.close()
