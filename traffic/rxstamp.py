"""Kernel receive times for the client's replies: when a reply reached the host, not when
the emulator's event loop got round to it.

The catalogue says an ``op`` event's ts is when its reply arrived. A client process runs
every session of its host on one asyncio loop, so when a fault makes a hundred sessions
reconnect at once the loop is ms behind the wire: at 125 sessions per host a reply
reached the host 5-6 ms before the coroutine that logs it ran (measured against the
client-link capture, ``experiments/wire-truth.toml``). That lag is the emulator's, not the
HA design's. The kernel stamps each received packet (``SO_TIMESTAMPNS``, CLOCK_REALTIME,
the same stamp tcpdump records) and hands the stamp of the last packet read to
``recvmsg``: ``StampedSocket`` keeps it, and ``arrival_ns`` puts it on the monotonic clock.

asyncio's socket transport reads with ``sock.recv`` (``recv_into`` for buffered
protocols); ``StampedSocket`` makes both calls with ``recvmsg``. Where the kernel gives no stamp, callers fall back to now.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time

SO_TIMESTAMPNS = getattr(socket, "SO_TIMESTAMPNS", 35)  # Linux; the constant is absent on some builds
_TIMESPEC = struct.Struct("@qq")
_ANCILLARY = socket.CMSG_SPACE(_TIMESPEC.size)


class StampedSocket(socket.socket):
    """A TCP socket that keeps the kernel's receive time of the data its last recv returned."""

    rx_wall_ns: int | None = None

    def enable(self) -> None:
        self.setsockopt(socket.SOL_SOCKET, SO_TIMESTAMPNS, 1)

    def recv(self, bufsize: int, flags: int = 0) -> bytes:
        data, ancillary, _, _ = self.recvmsg(bufsize, _ANCILLARY, flags)
        self._keep(ancillary)
        return data

    def recv_into(self, buffer, nbytes: int = 0, flags: int = 0) -> int:
        """As recv, for transports that read into a buffer (asyncio's BufferedProtocol path)."""
        view = memoryview(buffer)
        size, ancillary, _, _ = self.recvmsg_into([view[:nbytes] if nbytes else view], _ANCILLARY, flags)
        self._keep(ancillary)
        return size

    def _keep(self, ancillary) -> None:
        for level, kind, payload in ancillary:
            if level == socket.SOL_SOCKET and kind == SO_TIMESTAMPNS and len(payload) >= _TIMESPEC.size:
                sec, nsec = _TIMESPEC.unpack_from(payload)
                self.rx_wall_ns = sec * 1_000_000_000 + nsec

    def arrival_ns(self) -> int | None:
        """The last stamp on CLOCK_MONOTONIC (ns), None if the kernel gave none."""
        if self.rx_wall_ns is None:
            return None
        return self.rx_wall_ns - (time.time_ns() - time.monotonic_ns())


async def open_connection(address: str, port: int, local: tuple[str, int] | None, timeout_s: float,
                          ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, StampedSocket]:
    """asyncio.open_connection on a StampedSocket (IPv4), within timeout_s."""
    loop = asyncio.get_running_loop()
    sock = StampedSocket(socket.AF_INET, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.enable()
        if local:
            sock.bind(local)
        await asyncio.wait_for(loop.sock_connect(sock, (address, port)), timeout_s)
        reader, writer = await asyncio.open_connection(sock=sock)
    except BaseException:
        sock.close()
        raise
    return reader, writer, sock
