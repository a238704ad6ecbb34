"""Outlook Anywhere (RPC over HTTP): Outlook's two long-lived HTTP channels.

A profile opens ``RPC_OUT_DATA`` first (its short body is the RTS ``CONN/A1`` packet with
a fresh virtual-connection cookie; the response then streams for as long as the channel
lives), then ``RPC_IN_DATA`` (announced as 1 GB; ``CONN/B1`` with the same cookie, then
one frame per RPC). Cookies the load balancer set on the OUT channel's answer go with
the IN channel, which is how a layer-7 balancer keeps the pair on one CAS. Then it logs
on (or resumes) and issues the internal Outlook client's operations every
``oa_interval_ms``; when nothing went out for ``oa_keepalive_s`` x ``time_scale`` it
sends a keep-alive (``rts_ping``) that the RPC proxy answers on the OUT channel. A load
balancer that drops idle connections sooner than that cuts the channels.

While idle, a receive stays pending on the OUT channel, so a reset, a close or a cut is
noticed when it happens. Any failure (an RPC unanswered within ``request_timeout_ms``,
an end of either channel, an IN channel the CAS could not pair: 503) ends the pair
(``http_down``); the profile opens a new one, after back-off.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import aiohttp

from labcommon.auth import password_for
from labcommon.events import now_ns
from labcommon.programs import DEFAULT_OPS
from labcommon.protocol import HEADER, MAX_FRAME, ProtocolError, decode_body, encode
from traffic.https import Failure, HttpSession, failure_reason

CHANNEL_LENGTH = 1 << 30
PATH = "/rpc/rpcproxy.dll"


class Channels:
    """One RPC_OUT_DATA / RPC_IN_DATA pair."""

    def __init__(self, session: "OutlookAnywhereSession"):
        self.session = session
        self.cookie = uuid.uuid4().hex
        self.out: aiohttp.ClientResponse | None = None
        self.replies: asyncio.Queue[dict[str, Any] | Failure] = asyncio.Queue()
        self.outgoing: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.tasks: list[asyncio.Task] = []
        self.closing = False
        self.cas: str | None = None

    def channel_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=None, sock_read=None,
                                     connect=self.session.host.timing.connect_timeout_ms / 1000)

    async def open(self) -> None:
        s = self.session
        url = f"{s.base}{PATH}?{s.server}:6001"
        started = now_ns()
        try:
            self.out = await asyncio.wait_for(s.http.request(
                "RPC_OUT_DATA", url, data=encode({"rts": "CONN/A1", "cookie": self.cookie}),
                timeout=self.channel_timeout(), headers={"Content-Type": "application/rpc"}),
                s.host.timing.request_timeout_ms / 1000)
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            s.finished("rpc_out", started, False, None, None, failure_reason(exc))
            raise Failure(f"rpc_out: {failure_reason(exc)}") from None
        self.cas = self.out.headers.get("X-FEServer")
        if self.out.status != 200:
            s.finished("rpc_out", started, False, self.out.status, self.cas, f"http {self.out.status}")
            raise Failure(f"rpc_out: http {self.out.status}")
        s.finished("rpc_out", started, True, 200, self.cas)
        self.tasks = [asyncio.create_task(self.read_out()), asyncio.create_task(self.run_in(url))]

    async def read_out(self) -> None:
        """Every frame on the OUT channel becomes a reply; its end, a Failure."""
        content = self.out.content
        try:
            while True:
                (length,) = HEADER.unpack(await content.readexactly(HEADER.size))
                if length > MAX_FRAME:
                    raise ProtocolError(f"frame length {length}")
                await self.replies.put(decode_body(await content.readexactly(length)))
        except asyncio.IncompleteReadError:
            await self.replies.put(Failure("out channel: eof"))
        except ProtocolError as exc:
            await self.replies.put(Failure(f"out channel: {exc}"))
        except (aiohttp.ClientError, OSError) as exc:
            await self.replies.put(Failure(f"out channel: {failure_reason(exc)}"))

    async def body(self):
        yield encode({"rts": "CONN/B1", "cookie": self.cookie})
        while (data := await self.outgoing.get()) is not None:
            yield data

    async def run_in(self, url: str) -> None:
        """The IN channel's request; it only ends when the pair is over."""
        s = self.session
        started = now_ns()
        headers = {"Content-Type": "application/rpc", "Content-Length": str(CHANNEL_LENGTH)}
        try:
            async with s.http.request("RPC_IN_DATA", url, data=self.body(), headers=headers,
                                      timeout=self.channel_timeout()) as response:
                status, cas = response.status, response.headers.get("X-FEServer")
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            if not self.closing:
                s.finished("rpc_in", started, False, None, None, failure_reason(exc))
                await self.replies.put(Failure(f"in channel: {failure_reason(exc)}"))
            return
        if not self.closing:
            s.finished("rpc_in", started, False, status, cas, f"http {status}")
            await self.replies.put(Failure(f"in channel: http {status}"))

    async def call(self, frame: dict[str, Any], cmd: str) -> dict[str, Any]:
        s = self.session
        started = now_ns()
        await self.outgoing.put(encode(frame))
        try:
            reply = await asyncio.wait_for(self.replies.get(), s.host.timing.request_timeout_ms / 1000)
        except asyncio.TimeoutError:
            reply = Failure("timeout")
        msg_id = frame.get("msg_id")
        if isinstance(reply, Failure):
            s.finished(cmd, started, False, None, None, str(reply), msg_id)
            raise reply
        copies = reply.get("unreplicated")
        s.finished(cmd, started, bool(reply.get("ok")), 200, reply.get("cas"),
                   None if reply.get("ok") else str(reply.get("error")), msg_id,
                   [str(c) for c in copies] if isinstance(copies, list) and copies else None)
        return reply

    async def idle(self, seconds: float) -> None:
        """Wait with a receive pending: anything arriving unasked ends the pair."""
        if seconds <= 0:
            return
        try:
            reply = await asyncio.wait_for(self.replies.get(), seconds)
        except asyncio.TimeoutError:
            return
        raise reply if isinstance(reply, Failure) else Failure("unsolicited data")

    async def close(self) -> None:
        self.closing = True
        self.outgoing.put_nowait(None)
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        if self.out is not None:
            self.out.close()


class OutlookAnywhereSession(HttpSession):
    protocol = "oa"

    def __init__(self, host, spec, index):
        super().__init__(host, spec, index)
        self.server = spec.get("server", "outlook")
        self.ever_logged_on = False
        self.sent = 0
        ops = host.config.ops or dict(DEFAULT_OPS)
        self.ops, self.weights = zip(*sorted((k, w) for k, w in ops.items() if w))

    async def logon(self, channels: Channels) -> None:
        if self.ever_logged_on:
            reply = await channels.call({"op": "resume", "session": self.sid}, "resume")
            if reply.get("ok"):
                return
        reauth = self.ever_logged_on
        reply = await channels.call({"op": "logon", "session": self.sid, "user": self.user, "db": self.db,
                                     "password": password_for(self.user), "reauth": reauth}, "logon")
        if not reply.get("ok"):
            raise Failure(f"logon: {reply.get('error')}")
        self.ever_logged_on = True
        self.logged_on(reply.get("cas"), reauth=reauth, prompt=reauth)

    def next_request(self) -> dict[str, Any]:
        op = self.rng.choices(self.ops, self.weights)[0]
        if op != "send":
            return {"op": op}
        self.sent += 1
        return {"op": op, "msg_id": f"{self.sid}-m{self.sent}", "subject": f"message {self.sent} from {self.sid}"}

    async def operate(self, channels: Channels) -> None:
        loop = asyncio.get_running_loop()
        interval = self.host.timing.oa_interval_ms / 1000
        keepalive = self.host.timing.oa_keepalive_s * self.host.timing.time_scale
        next_op = last_sent = loop.time()
        while True:
            now = loop.time()
            if now >= next_op:
                request = self.next_request()
                reply = await channels.call(request, request["op"])
                if reply.get("error") == "auth_required":
                    raise Failure("auth_required")
                next_op = max(next_op + interval, loop.time())
                last_sent = loop.time()
            elif now >= last_sent + keepalive:
                await channels.call({"op": "rts_ping"}, "keepalive")
                last_sent = loop.time()
            else:
                await channels.idle(min(next_op, last_sent + keepalive) - now)

    async def run(self) -> None:
        await self.start_jitter(self.host.timing.oa_interval_ms / 1000)
        self.base = await self.discover()
        self.http = self.client()
        while True:
            channels = Channels(self)
            opened = False
            try:
                await channels.open()
                opened = True
                await self.logon(channels)
                self.failures = 0
                await self.operate(channels)
            except Failure as exc:
                if opened:
                    self.went_down(str(exc))
            finally:
                await channels.close()
            await self.back_off()
