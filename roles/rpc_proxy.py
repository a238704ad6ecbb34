"""The CAS's RPC proxy (``/rpc/rpcproxy.dll``): Outlook Anywhere, RPC over HTTP.

Outlook Anywhere carries RPC over two long-lived HTTP requests: ``RPC_OUT_DATA``, whose
response streams server-to-client data for as long as the connection lives, and
``RPC_IN_DATA``, whose request body streams client-to-server data (both announce a 1 GB
length and never finish). The two are paired by a virtual-connection cookie that the
client sends in its first RTS packet on each (``CONN/A1`` on the OUT channel's short
body, ``CONN/B1`` first on the IN channel): they must reach the *same* CAS, which is why
Exchange 2010 wants client affinity for Outlook Anywhere.

In the lab the RTS packets and the RPCs are the lab's JSON frames (labcommon.protocol):
each RPC on the IN channel is handed to this CAS's RPC Client Access (``CasServer``) and
its answer written on the OUT channel, so Outlook Anywhere carries exactly the operations
of the internal Outlook client. ``rts_ping`` frames are the RPC proxy's keep-alives and
never reach RPC Client Access. An IN channel whose cookie has no OUT channel here gets
503 at once: the client opens a new pair.

Simplified: Exchange's RPC proxy forwards the RPC to the RpcClientAccessServer named in
the URL (any CAS of the array); here the CAS that terminates the channels serves it.
"""

from __future__ import annotations

import asyncio
from typing import Any

from aiohttp import web

from labcommon.catalogue import HTTP_SESSION_UNKNOWN, RPC_CHANNEL
from labcommon.protocol import HEADER, ProtocolError, decode_body, encode
from roles.service import PARTIAL_TIMEOUT_S, read_bounded

CHANNEL_LENGTH = 1 << 30  # what Outlook and the RPC proxy announce: 1 GB, never reached
MAX_CHANNELS = 4096


class OutChannel:
    """One RPC_OUT_DATA response being streamed, and the IN channel paired with it."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[bytes | None] = asyncio.Queue(maxsize=64)
        self.paired = False
        self.in_transport: Any = None


class RpcProxy:
    def __init__(self, cas, log, close_links, channel_idle_s: float = 300.0):
        self.cas = cas
        self.log = log
        self.close_links = close_links
        self.channel_idle_s = channel_idle_s  # an IN channel with no frame (not even rts_ping) this long is closed
        self.channels: dict[str, OutChannel] = {}

    async def out_data(self, request: web.Request) -> web.StreamResponse:
        """RPC_OUT_DATA: CONN/A1 in the short body, then stream answers until closed."""
        try:
            first = decode_body((await request.read())[HEADER.size:]) if request.can_read_body else {}
        except ProtocolError:
            first = {}
        cookie = first.get("cookie") if first.get("rts") == "CONN/A1" else None
        if not isinstance(cookie, str) or not cookie or len(self.channels) >= MAX_CHANNELS:
            return web.Response(status=400, text="CONN/A1 expected")
        channel = self.channels[cookie] = OutChannel()
        self.log.emit(RPC_CHANNEL, channel="out", state="open")
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/rpc"})
        response.content_length = CHANNEL_LENGTH
        reason = "client"
        try:
            await response.prepare(request)
            while True:
                data = await channel.queue.get()
                if data is None:
                    reason = "in channel closed"
                    break
                await response.write(data)
        except (ConnectionError, OSError):
            reason = "reset"
        finally:
            if self.channels.get(cookie) is channel:
                del self.channels[cookie]
            if channel.in_transport is not None:
                channel.in_transport.close()
            self.log.emit(RPC_CHANNEL, channel="out", state="closed", reason=reason)
        return response

    async def in_data(self, request: web.Request) -> web.StreamResponse:
        """RPC_IN_DATA: CONN/B1 names the OUT channel; every later frame is an RPC."""
        try:
            first = await read_bounded(request.content, PARTIAL_TIMEOUT_S, PARTIAL_TIMEOUT_S)
        except (ProtocolError, asyncio.TimeoutError):
            first = None
        cookie = first.get("cookie") if first and first.get("rts") == "CONN/B1" else None
        channel = self.channels.get(cookie) if isinstance(cookie, str) else None
        if channel is None or channel.paired:
            self.log.emit(RPC_CHANNEL, channel="in", state="unpaired")
            self.log.emit(HTTP_SESSION_UNKNOWN, protocol="oa", detail="no RPC_OUT_DATA channel with this cookie")
            return web.Response(status=503, text="no OUT channel with this cookie at this server")
        channel.paired = True
        channel.in_transport = request.transport
        self.log.emit(RPC_CHANNEL, channel="in", state="paired")
        state: dict[str, Any] = {"peer": request.remote}
        reason = "client"
        try:
            while True:
                frame = await read_bounded(request.content, self.channel_idle_s, PARTIAL_TIMEOUT_S)
                if frame is None:
                    break
                if frame.get("op") == "rts_ping":
                    reply = {"ok": True, "rts": "pong", "cas": self.cas.name}
                else:
                    reply = await self.cas.handle(frame, state)
                await channel.queue.put(encode(reply))
        except ProtocolError as exc:
            reason = f"protocol: {exc}"
        except asyncio.TimeoutError as exc:  # silent for channel_idle_s, or a frame cut short
            reason = str(exc) or "idle"
            request.transport.close()
        except (ConnectionError, OSError, asyncio.IncompleteReadError):
            reason = "reset"
        finally:
            self.close_links(state)
            if channel.queue.full():  # the OUT side stopped reading: make room for the end mark
                channel.queue.get_nowait()
            channel.queue.put_nowait(None)
            self.log.emit(RPC_CHANNEL, channel="in", state="closed", reason=reason)
        return web.Response(status=200)
