"""Application prober: can a *new* Outlook be served right now, end to end?

A SYN probe only asks whether something completes a TCP handshake, and a full proxy
(HAProxy) completes every handshake itself, so a SYN probe sees no outage while users
are cut off. This prober asks the whole question a fresh Outlook start asks, at
``rate_hz``, each probe on its own: autodiscover (the profile's server name) -> DNS (no
cache: a new client) -> connect -> logon -> one mailbox operation (a read). It logs one
``app_probe`` event per probe, stamped with the probe's start, naming the last stage it
reached; ``app_probe_gap_ms`` in the metrics is the longest run of failed probes.

Run as ``python -m traffic.app_prober CONFIG.json`` inside a client host. Config keys:
name, rate_hz, port, target (as the client's: kind autodiscover, address, dns, rotate),
user, db, timeout_ms (per stage), events.
"""

from __future__ import annotations

import asyncio
from typing import Any

from labcommon.auth import password_for
from labcommon.catalogue import APP_PROBE
from labcommon.events import now_ns
from labcommon.programs import APP_PROBER, AppProberConfig
from labcommon.protocol import FramedLink, ProtocolError
from labcommon.runtime import load_config, open_log, run_forever
from traffic.resolver import DnsTarget, ResolveError


class ProbeFailed(Exception):
    def __init__(self, stage: str, reason: str):
        super().__init__(reason)
        self.stage = stage


class AppProber:
    def __init__(self, config: AppProberConfig, log):
        self.config = config
        self.log = log
        self.timeout_s = config.timeout_ms / 1000
        self.session = config.name

    async def server_name(self) -> str:
        target = self.config.target
        if target.kind != "autodiscover":
            return target.name
        try:
            reply = await FramedLink(target.address, self.timeout_s).call(
                {"op": "autodiscover", "user": self.config.user})
        except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError) as exc:
            raise ProbeFailed("autodiscover", type(exc).__name__) from None
        if not reply.get("ok"):
            raise ProbeFailed("autodiscover", str(reply.get("error")))
        return reply["server"]

    async def probe_once(self, seq: int) -> tuple[str, str | None]:
        """Every stage of a new client's start; returns (stage reached, CAS that served it)."""
        name = await self.server_name()
        try:
            addresses = await DnsTarget(name, self.config.target.dns, self.timeout_s, max_ttl_s=0).resolve()
        except ResolveError as exc:
            raise ProbeFailed("resolve", str(exc)) from None
        rotate = self.config.target.rotate
        if rotate:
            addresses = sorted(addresses, key=lambda a: tuple(int(o) for o in a.split(".")))
        address = addresses[seq % len(addresses)] if rotate else addresses[0]
        link = FramedLink(f"{address}:{self.config.port}", self.timeout_s)
        try:
            stage = "connect"
            reply = await link.call({"op": "logon", "session": self.session, "user": self.config.user,
                                     "db": self.config.db, "password": password_for(self.config.user),
                                     "reauth": False})
            stage = "logon"
            if not reply.get("ok"):
                raise ProbeFailed(stage, str(reply.get("error")))
            reply = await link.call({"op": "read", "session": self.session})
            stage = "op"
            if not reply.get("ok"):
                raise ProbeFailed(stage, str(reply.get("error")))
            return "done", reply.get("cas")
        except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError) as exc:
            raise ProbeFailed(stage, type(exc).__name__) from None
        finally:
            link.close()

    async def one(self, seq: int) -> None:
        started = now_ns()
        fields: dict[str, Any]
        try:
            stage, cas = await self.probe_once(seq)
            fields = {"ok": True, "stage": stage, "cas": cas}
        except ProbeFailed as exc:
            fields = {"ok": False, "stage": exc.stage, "cas": None, "error": str(exc)[:120]}
        self.log.emit(APP_PROBE, ts=started, seq=seq, lat_us=(now_ns() - started) // 1000, **fields)

    async def run(self) -> None:
        period = 1.0 / self.config.rate_hz
        loop = asyncio.get_running_loop()
        next_at, seq = loop.time(), 0
        tasks: set[asyncio.Task] = set()
        while True:
            task = asyncio.create_task(self.one(seq))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            seq += 1
            next_at = max(next_at + period, loop.time())
            await asyncio.sleep(next_at - loop.time())


def main() -> None:
    config = load_config(APP_PROBER)
    log = open_log(config, config.name)
    run_forever(AppProber(config, log).run)


if __name__ == "__main__":
    main()
