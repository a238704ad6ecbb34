"""Mailbox server: one SQLite store per database copy, in a DAG (roles/dag.py).

A database has copies on several mailbox servers, exactly one active. Clients (through a
CAS) read and send on the active copy; passive copies answer ``not_active`` so a CAS
looks for the active one elsewhere, and take the active copy's log (``replicate``) from
their peers only.

Activation is never silent about loss. The admin ``activate`` asks a copy to become
active: on a switchover the old active copy is named (``catch_up_from``) and the new one
first fetches every row it lacks from it, so a switchover loses nothing; on a failover
(the old copy is gone) the copy says how many rows it knows it lacks (``missing``), and
with ``max_missing`` (AutoDatabaseMountDial) it refuses to mount when it lacks more.
A synchronous send that a copy did not confirm is acknowledged with that copy named in
``unreplicated``: stored on the active copy only, and said so.
Admin requests come only over the host's loopback (roles/service.py).

Config keys: name, listen_port, store_dir, events, replication (sync|async),
log_messages, log_interval_ms, databases: {DB: {active, peers:[host:port]}}.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from labcommon.catalogue import DB_ROLE
from labcommon.programs import MAILBOX, MailboxConfig
from labcommon.protocol import FramedLink, ProtocolError, error
from labcommon.runtime import open_log, run_with_config
from roles.dag import REPLICATION_TIMEOUT_S, DatabaseCopy, Shipper, valid_row
from roles.service import listen

CATCH_UP_TIMEOUT_S = 3.0


class MailboxServer:
    def __init__(self, config: MailboxConfig, log):
        self.name = config.name
        self.log = log
        store_dir = Path(config.store_dir)
        self.copies = {db: DatabaseCopy(store_dir / f"{db}.sqlite", spec.active, spec.peers)
                       for db, spec in config.databases.items()}
        mode = config.replication
        self.sync = mode == "sync"
        self.peer_ips = {address.rsplit(":", 1)[0] for c in self.copies.values() for address in c.peers}
        self.shippers = {db: [Shipper(db, copy, address, log, mode, config.log_messages,
                                      config.log_interval_ms / 1000)
                              for address in copy.peers]
                         for db, copy in self.copies.items()}

    def start(self) -> None:
        for shippers in self.shippers.values():
            for shipper in shippers:
                asyncio.get_running_loop().create_task(shipper.supervise())

    async def handle(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.answer(request, state)
        except (TypeError, ValueError, sqlite3.Error):  # a field of the wrong type or size
            return error("bad_request")

    async def admin(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """Loopback only: Active Manager's requests."""
        try:
            return await self.answer_admin(request)
        except (TypeError, ValueError, sqlite3.Error):
            return error("bad_request")

    def _copy(self, request: dict[str, Any]) -> tuple[str, DatabaseCopy | None]:
        db = request.get("db")
        return (db, self.copies.get(db)) if isinstance(db, str) else ("", None)

    async def answer(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        db, copy = self._copy(request)
        if copy is None:
            return error("unknown_db", db=db or None)
        if op in ("replicate", "fetch"):
            peer = state.get("peer")
            if not isinstance(peer, tuple) or peer[0] not in self.peer_ips:
                return error("not_a_peer")
            return self.replicate(db, copy, request) if op == "replicate" else self.fetch(copy, request)
        if not copy.active:
            return error("not_active", db=db, server=self.name)
        user = request.get("user")
        if not isinstance(user, str):
            return error("bad_request")
        if op == "read":
            folder = request.get("folder", "Inbox")
            if not isinstance(folder, str):
                return error("bad_request")
            return {"ok": True, "count": copy.count(user, folder), "server": self.name}
        if op == "sync":
            return {"ok": True, "count": copy.count(user), "server": self.name}
        if op == "send":
            return await self.send(db, copy, request, user)
        return error("unknown_op", op=op if isinstance(op, str) else None)

    async def send(self, db: str, copy: DatabaseCopy, request: dict[str, Any], user: str) -> dict[str, Any]:
        row = {"msg_id": request.get("msg_id"), "user": user, "folder": "Inbox",
               "subject": str(request.get("subject", ""))[:200], "seq": copy.last_seq + 1}
        if not valid_row(row):
            return error("bad_request")
        head = copy.last_seq
        row = copy.append(row)
        if row["seq"] <= head:  # a message this copy holds (a retry, a dumpster resubmission)
            return {"ok": True, "msg_id": row["msg_id"], "server": self.name, "duplicate": True}
        for shipper in self.shippers[db]:
            shipper.notify()
        reply = {"ok": True, "msg_id": row["msg_id"], "server": self.name}
        if self.sync:
            shippers = self.shippers[db]
            confirmed = await asyncio.gather(*(s.wait_for(row["seq"], REPLICATION_TIMEOUT_S) for s in shippers))
            unreplicated = [s.address for s, ok in zip(shippers, confirmed) if not ok]
            if unreplicated:  # stored here only: the client is told, never left to assume a copy
                reply["unreplicated"] = unreplicated
        return reply

    def replicate(self, db: str, copy: DatabaseCopy, request: dict[str, Any]) -> dict[str, Any]:
        """Apply shipped rows. With ``prev_seq``/``prev_chain`` (what a Shipper sends) the
        rows continue the active copy's log there; a copy whose log differs says "diverged"."""
        rows, head = request.get("rows"), request.get("head")
        if not isinstance(rows, list) or not all(valid_row(r) for r in rows) or not isinstance(head, int):
            return error("bad_request")
        prev_seq, prev_chain = request.get("prev_seq"), request.get("prev_chain")
        if prev_seq is not None and (not isinstance(prev_seq, int) or isinstance(prev_seq, bool) or prev_seq < 0
                                     or not isinstance(prev_chain, str)):
            return error("bad_request")
        if copy.active:
            return error("active", last_seq=copy.last_seq)  # two actives: refuse, never merge silently
        outcome = copy.apply(rows, head, prev_seq, prev_chain)
        return {"ok": outcome == "ok", "last_seq": copy.last_seq, **({} if outcome == "ok" else {"error": outcome})}

    def fetch(self, copy: DatabaseCopy, request: dict[str, Any]) -> dict[str, Any]:
        """Rows after ``after``, as many as fit one frame; with ``after_chain``, only if this
        copy's log is the asker's up to there ("diverged" otherwise)."""
        after, after_chain = request.get("after"), request.get("after_chain")
        if not isinstance(after, int) or (after_chain is not None and not isinstance(after_chain, str)):
            return error("bad_request")
        if after_chain is not None and copy.chain_at(after) != after_chain:
            return error("diverged", head=copy.last_seq)
        return {"ok": True, "rows": copy.rows_after(after), "head": copy.last_seq}

    async def answer_admin(self, request: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "server": self.name,
                    "databases": {db: {"active": c.active, "last_seq": c.last_seq, "behind": c.behind,
                                       "heard_head": c.heard_head}
                                  for db, c in self.copies.items()}}
        db, copy = self._copy(request)
        if copy is None:
            return error("unknown_db", db=db or None)
        if op == "deactivate":
            copy.active = False
            self.log.emit(DB_ROLE, db=db, server=self.name, active=False)
            return {"ok": True, "active": False, "head": copy.last_seq}
        if op == "activate":
            return await self.activate(db, copy, request)
        return error("unknown_op", op=op if isinstance(op, str) else None)

    async def activate(self, db: str, copy: DatabaseCopy, request: dict[str, Any]) -> dict[str, Any]:
        source, head, max_missing = request.get("catch_up_from"), request.get("head"), request.get("max_missing")
        if isinstance(head, int):
            copy.heard_head = max(copy.heard_head, head)
        if isinstance(source, str):  # a switchover: take every row the old active copy has
            await self.catch_up(db, copy, source)
        missing = copy.behind
        if isinstance(max_missing, int) and missing > max_missing:
            return error("too_far_behind", missing=missing, last_seq=copy.last_seq)
        copy.active = True
        copy.heard_head = copy.last_seq  # the log continues from what this copy has
        self.log.emit(DB_ROLE, db=db, server=self.name, active=True, missing=missing)
        return {"ok": True, "active": True, "missing": missing, "last_seq": copy.last_seq}

    async def catch_up(self, db: str, copy: DatabaseCopy, source: str) -> None:
        link = FramedLink(source, CATCH_UP_TIMEOUT_S)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATCH_UP_TIMEOUT_S
        try:
            while loop.time() < deadline:
                reply = await link.call({"op": "fetch", "db": db, "after": copy.last_seq, "after_chain": copy.tip})
                rows, head = reply.get("rows"), reply.get("head")
                if not reply.get("ok") or not isinstance(rows, list) or not all(valid_row(r) for r in rows) \
                        or not isinstance(head, int):
                    return
                if copy.apply(rows, head) != "ok" or not rows or copy.last_seq >= head:
                    return  # done, or no progress (the frame is bounded by bytes, not rows)
        except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError):
            return
        finally:
            link.close()


async def serve(config: MailboxConfig) -> None:
    log = open_log(config, config.name)
    server = MailboxServer(config, log)
    server.start()
    await listen(config, "mailbox", log, server.handle, admin=server.admin)


def main() -> None:
    run_with_config(MAILBOX, serve)


if __name__ == "__main__":
    main()
