"""Mailbox server: one SQLite store per database copy, with DAG-style replication.

A database has copies on several mailbox servers, exactly one active. The active copy
commits a message, replicates it synchronously to every reachable passive copy, and only
then acknowledges it: so every acknowledged message survives a switchover. Passive copies
answer ``not_active`` so a CAS looks for the active one elsewhere.

Config keys: name, listen_port, store_dir, events, databases: {DB: {active, peers:[host:port]}}.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from roles.protocol import error, read_frame, write_frame
from roles.service import listen, open_log, run_role

REPLICATION_TIMEOUT_S = 0.5

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    msg_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    folder TEXT NOT NULL,
    subject TEXT NOT NULL
)
"""


class DatabaseCopy:
    """One copy of one mailbox database in SQLite."""

    def __init__(self, path: Path, active: bool, peers: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.active = active
        self.peers = list(peers)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.execute(SCHEMA)

    def store(self, rows: list[dict[str, str]]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO messages (msg_id, user, folder, subject) VALUES (?, ?, ?, ?)",
            [(r["msg_id"], r["user"], r.get("folder", "Inbox"), r.get("subject", "")) for r in rows],
        )

    def count(self, user: str, folder: str | None = None) -> int:
        if folder is None:
            row = self.conn.execute("SELECT COUNT(*) FROM messages WHERE user=?", (user,)).fetchone()
        else:
            row = self.conn.execute(
                "SELECT COUNT(*) FROM messages WHERE user=? AND folder=?", (user, folder)
            ).fetchone()
        return int(row[0])

    def all_rows(self) -> list[dict[str, str]]:
        cursor = self.conn.execute("SELECT msg_id, user, folder, subject FROM messages")
        return [dict(zip(("msg_id", "user", "folder", "subject"), row)) for row in cursor]


class Peer:
    """A framed connection to a passive copy's server, opened on demand."""

    def __init__(self, address: str):
        host, port = address.rsplit(":", 1)
        self.host, self.port = host, int(port)
        self.address = address
        self.reader = self.writer = None
        self.lock = asyncio.Lock()

    async def call(self, message: dict[str, Any]) -> dict[str, Any]:
        async with self.lock:
            try:
                if self.writer is None:
                    self.reader, self.writer = await asyncio.wait_for(
                        asyncio.open_connection(self.host, self.port), REPLICATION_TIMEOUT_S
                    )
                await write_frame(self.writer, message)
                reply = await asyncio.wait_for(read_frame(self.reader), REPLICATION_TIMEOUT_S)
                if reply is None:
                    raise ConnectionError("peer closed")
                return reply
            except (OSError, asyncio.TimeoutError, ConnectionError):
                if self.writer is not None:
                    self.writer.close()
                self.reader = self.writer = None
                raise


class MailboxServer:
    def __init__(self, config: dict[str, Any], log):
        self.name = config["name"]
        self.log = log
        store_dir = Path(config["store_dir"])
        self.copies = {
            db: DatabaseCopy(store_dir / f"{db}.sqlite", bool(spec.get("active")), spec.get("peers", []))
            for db, spec in config.get("databases", {}).items()
        }
        self.peers: dict[str, Peer] = {}

    def peer(self, address: str) -> Peer:
        if address not in self.peers:
            self.peers[address] = Peer(address)
        return self.peers[address]

    async def replicate(self, db: str, copy: DatabaseCopy, rows: list[dict[str, str]]) -> None:
        for address in copy.peers:
            try:
                reply = await self.peer(address).call({"op": "replicate", "db": db, "rows": rows})
                if not reply.get("ok"):
                    raise ConnectionError(reply.get("error", "refused"))
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self.log.emit("replication_failed", db=db, peer=address, reason=type(exc).__name__)

    async def handle(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "status":
            return {"ok": True, "server": self.name,
                    "databases": {db: c.active for db, c in self.copies.items()}}
        db = request.get("db")
        copy = self.copies.get(db) if isinstance(db, str) else None
        if copy is None:
            return error("unknown_db", db=db if isinstance(db, str) else None)
        if op == "replicate":
            rows = request.get("rows")
            if not isinstance(rows, list) or not all(isinstance(r, dict) and "msg_id" in r and "user" in r for r in rows):
                return error("bad_request")
            copy.store(rows)
            return {"ok": True}
        if op in ("activate", "deactivate"):
            copy.active = op == "activate"
            self.log.emit("db_role", db=db, server=self.name, active=copy.active)
            return {"ok": True, "active": copy.active}
        if not copy.active:
            return error("not_active", db=db, server=self.name)
        user = request.get("user")
        if not isinstance(user, str):
            return error("bad_request")
        if op == "read":
            return {"ok": True, "count": copy.count(user, request.get("folder", "Inbox")), "server": self.name}
        if op == "sync":
            return {"ok": True, "count": copy.count(user), "server": self.name}
        if op == "send":
            msg_id = request.get("msg_id")
            if not isinstance(msg_id, str):
                return error("bad_request")
            row = {"msg_id": msg_id, "user": user, "folder": "Inbox", "subject": str(request.get("subject", ""))[:200]}
            copy.store([row])
            await self.replicate(db, copy, [row])
            return {"ok": True, "msg_id": msg_id, "server": self.name}
        return error("unknown_op", op=op if isinstance(op, str) else None)


async def serve(config: dict[str, Any]) -> None:
    log = open_log(config, config["name"])
    server = MailboxServer(config, log)

    await listen(config, "mailbox", log, server.handle)


def main() -> None:
    run_role(serve)


if __name__ == "__main__":
    main()
