"""The transport dumpster: recent mail kept by Hub Transport, resubmitted after a lossy mount.

In Exchange 2010 every message delivered to a mailbox database also stays for a while in
the transport dumpster of the Hub Transport server that delivered it
(``MaxDumpsterSizePerDatabase``, ``MaxDumpsterTime``). When Active Manager mounts a copy
that may lack recent logs (a failover of asynchronous replication), it asks transport to
resubmit what it kept for that database; messages the copy already holds are dropped as
duplicates, the others are recovered.

The lab's hub transport is the CAS that proxied the send (multi-role servers ran CAS and
Hub Transport together), keeping the last ``dumpster_messages`` messages per database;
0 turns the dumpster off. A dumpster dies with its server.
"""

from __future__ import annotations

from collections import deque
from typing import Any, Awaitable, Callable

Send = Callable[[dict[str, Any], dict[str, Any]], Awaitable[dict[str, Any]]]


class TransportDumpster:
    def __init__(self, per_database: int):
        self.per_database = max(0, int(per_database))
        self.kept: dict[str, deque] = {}

    def keep(self, db: str, user: str, request: dict[str, Any], reply: dict[str, Any]) -> None:
        """An acknowledged send: remember it (the oldest goes when the database's quota is full)."""
        if not self.per_database or not reply.get("ok") or request.get("op") != "send":
            return
        self.kept.setdefault(db, deque(maxlen=self.per_database)).append(
            {"msg_id": request.get("msg_id"), "subject": request.get("subject", ""), "user": user})

    async def resubmit(self, db: str, send: Send) -> dict[str, Any]:
        """Resubmit every kept message of ``db`` through ``send`` (the CAS's proxy to the
        active copy); count what the copy lacked (not a duplicate)."""
        resubmitted = recovered = 0
        state: dict[str, Any] = {"links": {}}
        try:
            for message in list(self.kept.get(db, ())):
                reply = await send({"op": "send", **message, "db": db}, state)
                resubmitted += 1
                recovered += bool(reply.get("ok") and not reply.get("duplicate"))
        finally:
            for link in state["links"].values():
                link.close()
        return {"ok": True, "db": db, "resubmitted": resubmitted, "recovered": recovered}
