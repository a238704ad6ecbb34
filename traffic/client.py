"""Outlook-like client emulator: many sessions per host, each logging every operation.

A session asks autodiscover for its profile's server (the database's
RpcClientAccessServer), resolves that name through the lab's DNS, connects, logs on (or resumes), then issues one operation
every ``interval_ms`` (read a folder, send a message, sync, RPC ping). Every operation has
an application-level timeout (Outlook's RPC ping): without it, a session to a silent peer
would wait for the kernel's tcp_retries2 (~15 min) and the lab would measure the kernel,
not the HA design. After a failure it reconnects like Outlook: an immediate retry, then
back-off. Each event is a JSON line with a CLOCK_MONOTONIC timestamp.

Run as ``python -m traffic.client CONFIG.json``; its keys: ``labcommon.programs.ClientConfig``.
"""

from __future__ import annotations

import asyncio
import dataclasses
import random
import socket
import time
from typing import Any

from labcommon.auth import password_for
from labcommon.catalogue import (
    AUTODISCOVER, CLIENT_DOWN, CLIENT_UP, CONNECT_FAIL, CONNECT_OK, DOWN, LOGON, OP, RESOLVED, EventType,
)
from labcommon.events import now_ns
from labcommon.programs import CLIENT, ClientConfig, TargetConfig
from labcommon.protocol import FramedLink, ProtocolError, read_frame, write_frame
from labcommon.runtime import load_config, open_log, run_forever
from traffic import rxstamp
from traffic.resolver import ResolveError, target_from_config

class SessionDown(Exception):
    """The session's connection is unusable; the reason is the message."""


class Session:
    """One Outlook profile's connection: connect, authenticate, operate, reconnect."""

    def __init__(self, client: "Client", index: int):
        self.client = client
        cfg = client.config
        self.index = index
        self.sid = f"{cfg.name}-s{index}"
        user = cfg.users[index % len(cfg.users)] if cfg.users else {"user": f"{cfg.name}u{index}", "db": "DB1"}
        self.user, self.db = user["user"], user["db"]
        self.source_ip = cfg.source_ips[index % len(cfg.source_ips)] if cfg.source_ips else None
        self.rng = random.Random(cfg.seed * 100003 + index)
        self.logged_on = False
        self.profile: str | None = None
        self.profile_at = 0.0
        self.resolved: list[str] = []
        self.address_index = 0
        self.sent = 0
        self.ops, self.weights = zip(*sorted(cfg.ops.items()))
        self.sock: rxstamp.StampedSocket | None = None
        self.reply_ns = 0  # when the last reply reached the host (kernel stamp, monotonic ns)

    def emit(self, ev: EventType, ts: int | None = None, **fields: Any) -> None:
        self.client.log.emit(ev, ts=ts, session=self.sid, **fields)

    async def profile_server(self) -> str | None:
        """The profile's RpcClientAccessServer from autodiscover, refreshed like Outlook does.

        Outlook asks at start and then every ``refresh_s`` (an hour by default), not after
        each failure: a changed RpcClientAccessServer reaches a running profile late.
        """
        target = self.client.config.target
        if target.kind != "autodiscover":
            return None
        now = time.monotonic()
        if self.profile is not None and now - self.profile_at < target.refresh_s:
            return self.profile
        try:
            reply = await FramedLink(target.address, target.timeout_ms / 1000).call(
                {"op": "autodiscover", "user": self.user})
        except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError):
            reply = {"ok": False}
        if reply.get("ok"):
            if reply["server"] != self.profile:
                self.emit(AUTODISCOVER, server=reply["server"], db=reply.get("db"))
            self.profile, self.profile_at = reply["server"], now
        elif self.profile is None:
            raise SessionDown("autodiscover")
        return self.profile

    async def connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, str]:
        cfg = self.client.config
        server = await self.profile_server()
        try:
            addresses = await self.client.target_for(server).resolve()
        except ResolveError as exc:
            self.emit(CONNECT_FAIL, addr=str(server), reason="resolve")
            raise SessionDown(f"resolve: {exc}") from None
        start = 0
        if cfg.target.rotate:
            # Stands in for a DNS server's round-robin rotation: a stable order (dnsmasq's
            # answer order can vary between queries), shifted by one per session.
            addresses = sorted(addresses, key=lambda a: tuple(int(o) for o in a.split(".")))
            start = self.index
        if addresses != self.resolved:
            self.resolved = list(addresses)
            first = start % len(addresses) if addresses else 0
            self.emit(RESOLVED, name=str(server or ""), addresses=addresses[first:] + addresses[:first])
        address = addresses[(start + self.address_index) % len(addresses)]
        local = (self.source_ip, 0) if self.source_ip else None
        try:
            reader, writer, self.sock = await rxstamp.open_connection(address, cfg.port, local,
                                                                      cfg.connect_timeout_ms / 1000)
        except (OSError, asyncio.TimeoutError) as exc:
            if cfg.select == "next_on_fail":
                self.address_index += 1
            self.emit(CONNECT_FAIL, addr=address, reason=type(exc).__name__)
            raise SessionDown("connect") from None
        sock = writer.get_extra_info("socket")
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        laddr, lport = sock.getsockname()[:2]
        self.emit(CONNECT_OK, addr=address, lport=lport, laddr=laddr)
        return reader, writer, address

    async def call(self, reader, writer, message: dict[str, Any]) -> dict[str, Any]:
        """One request and its reply; ``self.reply_ns`` is then when the reply reached the
        host (the kernel's stamp: the loop may run later under a burst, see traffic.rxstamp)."""
        timeout = self.client.config.op_timeout_ms / 1000
        if self.sock is not None:
            self.sock.rx_wall_ns = None
        try:
            await write_frame(writer, message)
            reply = await asyncio.wait_for(read_frame(reader), timeout)
            stamp = self.sock.arrival_ns() if self.sock is not None else None
            self.reply_ns = stamp if stamp is not None else now_ns()
        except asyncio.TimeoutError:
            raise SessionDown("timeout") from None
        except (OSError, ProtocolError) as exc:
            raise SessionDown(type(exc).__name__) from None
        if reply is None:
            raise SessionDown("eof")
        return reply

    async def authenticate(self, reader, writer) -> None:
        if self.logged_on:
            reply = await self.call(reader, writer, {"op": "resume", "session": self.sid})
            if reply.get("ok"):
                self.emit(LOGON, self.reply_ns, cas=reply.get("cas"), db=self.db, reauth=False, resumed=True,
                          prompt=False)
                return
        reauth = self.logged_on
        prompt = reauth and self.client.config.auth == "ntlm"
        if prompt and self.client.config.prompt_answer_ms:
            await asyncio.sleep(self.client.config.prompt_answer_ms / 1000)  # the user types the password
        reply = await self.call(reader, writer, {
            "op": "logon", "session": self.sid, "user": self.user, "db": self.db,
            "password": password_for(self.user), "reauth": reauth,
        })
        if not reply.get("ok"):
            raise SessionDown(f"logon: {reply.get('error')}")
        self.logged_on = True
        self.emit(LOGON, self.reply_ns, cas=reply.get("cas"), db=self.db, reauth=reauth, resumed=False,
                  prompt=prompt)

    def next_request(self) -> dict[str, Any]:
        op = self.rng.choices(self.ops, self.weights)[0]
        request: dict[str, Any] = {"op": op}
        if op == "send":
            self.sent += 1
            request["msg_id"] = f"{self.sid}-m{self.sent}"
            request["subject"] = f"message {self.sent} from {self.sid}"
        return request

    async def operate(self, reader, writer) -> None:
        interval = self.client.config.interval_ms / 1000
        loop = asyncio.get_running_loop()
        next_at = loop.time()
        while True:
            request = self.next_request()
            started = now_ns()
            reply = await self.call(reader, writer, request)
            latency_us = max(0, self.reply_ns - started) // 1000
            fields = {"op": request["op"], "ok": bool(reply.get("ok")), "lat_us": latency_us, "cas": reply.get("cas")}
            if request["op"] == "send":
                fields["msg_id"] = request["msg_id"]
                if reply.get("unreplicated"):  # acknowledged, but only the active copy holds it
                    fields["unreplicated"] = list(reply["unreplicated"])
            if not reply.get("ok"):
                fields["error"] = reply.get("error")
            self.emit(OP, self.reply_ns, **fields)
            if reply.get("error") == "auth_required":
                raise SessionDown("auth_required")
            next_at = max(next_at + interval, loop.time())
            await self.idle(reader, next_at - loop.time())

    async def idle(self, reader: asyncio.StreamReader, seconds: float) -> None:
        """Wait for the next operation with a receive pending, as Outlook's RPC runtime
        keeps one: a reset or close is noticed when it arrives, not at the next call.
        The server never speaks unasked, so any byte here is a protocol violation."""
        if seconds <= 0:
            return
        try:
            data = await asyncio.wait_for(reader.read(1), seconds)
        except asyncio.TimeoutError:
            return
        except OSError as exc:
            raise SessionDown(type(exc).__name__) from None
        raise SessionDown("eof" if not data else "unsolicited data")

    async def run(self) -> None:
        cfg = self.client.config
        await asyncio.sleep(self.rng.uniform(0, cfg.interval_ms / 1000))
        failures = 0
        while True:
            writer = None
            try:
                reader, writer, _ = await self.connect()
                await self.authenticate(reader, writer)
                failures = 0
                await self.operate(reader, writer)
            except SessionDown as exc:
                if writer is not None:
                    self.emit(DOWN, reason=str(exc))
            finally:
                if writer is not None:
                    writer.close()
            delay_ms = cfg.backoff_ms[min(failures, len(cfg.backoff_ms) - 1)]
            failures += 1
            if delay_ms:
                await asyncio.sleep(delay_ms / 1000)


class Client:
    def __init__(self, config: ClientConfig):
        self.config = config
        self.log = open_log(config, config.name)
        self.targets: dict[str | None, Any] = {}

    def target_for(self, server: str | None):
        """The resolver for a profile's server name (one DNS cache per client host)."""
        if server not in self.targets:
            spec = self.config.target
            if spec.kind == "autodiscover":
                spec = TargetConfig(kind="dns", name=server or "", server=spec.dns)
            self.targets[server] = target_from_config(spec)
        return self.targets[server]

    async def run(self) -> None:
        sessions = [Session(self, i) for i in range(self.config.sessions)]
        self.log.emit(CLIENT_UP, sessions=[s.sid for s in sessions], target=dataclasses.asdict(self.config.target))
        try:
            await asyncio.gather(*(s.run() for s in sessions))
        finally:
            self.log.emit(CLIENT_DOWN, sessions=len(sessions))


def main() -> None:
    config = load_config(CLIENT)
    run_forever(Client(config).run)


if __name__ == "__main__":
    main()
