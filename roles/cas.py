"""Client Access Server (RPC Client Access): authenticates sessions and proxies to mailbox.

Session state (who is logged on) lives only in this CAS's memory, as it did in Exchange
2010. A client that reconnects to a CAS that does not know its session is told
``auth_required`` and must log on again: that is Outlook's credential prompt after a
failover, and the CAS logs it as a ``reauth`` event.

The CAS finds the mailbox server holding the *active* copy of the user's database by
asking the copies in turn (passive copies answer ``not_active``), remembers it, and
looks again after a switchover, so the client sees only a delay.

Config keys: name, listen_port, events, databases: {DB: [host:port of each copy]},
mailbox_timeout_ms, locate_deadline_ms, dumpster_messages and admin_port (roles/dumpster.py).
"""

from __future__ import annotations

import asyncio
import time
from collections import OrderedDict
from typing import Any

from labcommon.auth import password_for
from labcommon.catalogue import AUTH_FAILED, REAUTH
from labcommon.programs import CAS, CasConfig
from labcommon.protocol import FramedLink, error
from labcommon.runtime import open_log, run_with_config
from roles.dumpster import TransportDumpster
from roles.service import listen

PROXIED_OPS = {"read", "send", "sync"}
SUSPECT_S = 5.0  # a mailbox copy that timed out is tried last for this long


class ActiveCopyLocator:
    """Finds and remembers which copy of each database is active."""

    def __init__(self, databases: dict[str, list[str]], timeout_s: float, deadline_s: float):
        self.databases = databases
        self.timeout_s = timeout_s
        self.deadline_s = deadline_s
        self.active: dict[str, str] = {}
        self.failed: dict[str, float] = {}

    def candidates(self, db: str) -> list[str]:
        """Known active copy first, then the others; copies that just failed go last."""
        copies = list(self.databases.get(db, []))
        known = self.active.get(db)
        now = time.monotonic()
        suspect = {a for a, when in self.failed.items() if now - when < SUSPECT_S}
        return sorted(copies, key=lambda a: (a in suspect, a != known, copies.index(a)))

    def failed_at(self, db: str, address: str) -> None:
        self.failed[address] = time.monotonic()
        if self.active.get(db) == address:
            del self.active[db]


class CasServer:
    def __init__(self, config: CasConfig, log):
        self.name = config.name
        self.log = log
        self.sessions: OrderedDict[str, dict[str, str]] = OrderedDict()  # LRU, at most max_sessions
        self.max_sessions = config.max_sessions
        self.locator = ActiveCopyLocator(config.databases, config.mailbox_timeout_ms / 1000,
                                         config.locate_deadline_ms / 1000)
        self.dumpster = TransportDumpster(config.dumpster_messages)

    async def admin(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """Loopback only: Active Manager asks the hub transport to resubmit a database's mail."""
        db = request.get("db")
        if request.get("op") != "resubmit" or db not in self.locator.databases:
            return error("bad_request")
        return await self.dumpster.resubmit(db, lambda message, st: self.to_mailbox(db, message, st))

    async def proxy(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        session = self.sessions.get(state["session"])
        if session is None:  # forgotten to keep the table bounded: the client logs on again
            return error("auth_required")
        self.sessions.move_to_end(state["session"])  # used: the last to be forgotten
        db = session["db"]
        message = {**request, "user": session["user"], "db": db}
        message.pop("session", None)
        reply = await self.to_mailbox(db, message, state)
        self.dumpster.keep(db, session["user"], request, reply)
        return reply

    async def to_mailbox(self, db: str, message: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """One request to the active copy of ``db``, found among its copies."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.locator.deadline_s
        links: dict[str, FramedLink] = state.setdefault("links", {})
        while True:
            for address in self.locator.candidates(db):
                link = links.setdefault(address, FramedLink(address, self.locator.timeout_s))
                try:
                    reply = await link.call(message)
                except (OSError, asyncio.TimeoutError, ConnectionError):
                    self.locator.failed_at(db, address)
                    continue
                if reply.get("error") == "not_active":
                    continue
                if reply.get("ok"):
                    self.locator.active[db] = address
                return reply
            if loop.time() >= deadline:
                return error("mailbox_unavailable", db=db)
            await asyncio.sleep(0.05)

    async def handle(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        reply = await self.answer(request, state)
        reply["cas"] = self.name
        return reply

    async def answer(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        sid = request.get("session")
        if op is not None and not isinstance(op, str):
            return error("bad_request")
        if op == "logon":
            user, db = request.get("user"), request.get("db")
            if not (isinstance(sid, str) and isinstance(user, str) and isinstance(db, str)):
                return error("bad_request")
            if request.get("password") != password_for(user):
                self.log.emit(AUTH_FAILED, session=sid, user=user)
                return error("auth_failed", close=True)
            if db not in self.locator.databases:
                return error("unknown_db", db=db)
            self.sessions[sid] = {"user": user, "db": db}
            self.sessions.move_to_end(sid)
            while len(self.sessions) > self.max_sessions:
                self.sessions.popitem(last=False)  # the least recently used session logs on again
            state["session"] = sid
            if request.get("reauth"):
                self.log.emit(REAUTH, session=sid, user=user)
            return {"ok": True}
        if op == "resume":
            if isinstance(sid, str) and sid in self.sessions:
                self.sessions.move_to_end(sid)
                state["session"] = sid
                return {"ok": True}
            return error("auth_required")
        if op == "ping":
            return {"ok": True}
        if "session" not in state:
            return error("auth_required")
        if op in PROXIED_OPS:
            return await self.proxy(request, state)
        return error("unknown_op", op=op if isinstance(op, str) else None)


def close_links(state: dict[str, Any]) -> None:
    """Close this client connection's links to mailbox servers."""
    for link in state.get("links", {}).values():
        link.close()


async def serve(config: CasConfig) -> None:
    log = open_log(config, config.name)
    server = CasServer(config, log)

    admin = server.admin if server.dumpster.per_database else None  # only a dumpster has admin requests
    await listen(config, "cas", log, server.handle, on_close=close_links, admin=admin)


def main() -> None:
    run_with_config(CAS, serve)


if __name__ == "__main__":
    main()
