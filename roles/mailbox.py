"""Mailbox server: one SQLite store per database copy, with DAG-style replication.

A database has copies on several mailbox servers, exactly one active. The active copy
commits a message, replicates it synchronously to every healthy passive copy, and only
then acknowledges it: so every acknowledged message survives a switchover to a healthy
copy. A copy that does not answer within ``REPLICATION_TIMEOUT_S`` is marked failed (as a
DAG copy would be) and skipped for ``REPLICA_RETRY_S``, so a dead or frozen passive copy
never stalls mail; when it answers again it is resynced with every row. Passive copies
answer ``not_active`` so a CAS looks for the active one elsewhere.

Config keys: name, listen_port, store_dir, events, databases: {DB: {active, peers:[host:port]}}.
"""

from __future__ import annotations

import asyncio
import sqlite3
from pathlib import Path
from typing import Any

from labcommon.catalogue import DB_ROLE, REPLICATION_FAILED, REPLICATION_RESUMED
from labcommon.protocol import FramedLink, error
from roles.service import listen, open_log, run_role

REPLICATION_TIMEOUT_S = 0.1   # well inside the CAS's per-call mailbox timeout
REPLICA_RETRY_S = 2.0         # a copy that failed is skipped this long, then resynced
RESYNC_BATCH = 200            # rows per replicate frame (frames are at most 64 KiB)

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    msg_id TEXT PRIMARY KEY,
    user TEXT NOT NULL,
    folder TEXT NOT NULL,
    subject TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS by_user_folder ON messages (user, folder);
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
        self.conn.executescript(SCHEMA)

    def store(self, rows: list[dict[str, str]]) -> None:
        """Store valid rows (see ``valid_row``) in one transaction; replays are no-ops."""
        with self.conn:
            self.conn.execute("BEGIN")
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


def valid_row(row: object) -> bool:
    """A message row: msg_id and user non-empty strings, folder and subject strings if given."""
    if not isinstance(row, dict):
        return False
    if not all(isinstance(row.get(k), str) and row[k] and len(row[k]) <= 200 for k in ("msg_id", "user")):
        return False
    return all(isinstance(row.get(k, ""), str) and len(row.get(k, "")) <= 200 for k in ("folder", "subject"))


class MailboxServer:
    def __init__(self, config: dict[str, Any], log):
        self.name = config["name"]
        self.log = log
        store_dir = Path(config["store_dir"])
        self.copies = {
            db: DatabaseCopy(store_dir / f"{db}.sqlite", bool(spec.get("active")), spec.get("peers", []))
            for db, spec in config.get("databases", {}).items()
        }
        self.peers: dict[str, FramedLink] = {}
        self.failed_until: dict[tuple[str, str], float] = {}  # (db, peer) -> retry time

    def peer(self, address: str) -> FramedLink:
        if address not in self.peers:
            self.peers[address] = FramedLink(address, REPLICATION_TIMEOUT_S)
        return self.peers[address]

    async def replicate(self, db: str, copy: DatabaseCopy, rows: list[dict[str, str]]) -> None:
        now = asyncio.get_running_loop().time()
        for address in copy.peers:
            key = (db, address)
            if self.failed_until.get(key, 0) > now:
                continue
            resync = key in self.failed_until
            payload = copy.all_rows() if resync else rows
            try:
                for i in range(0, max(len(payload), 1), RESYNC_BATCH):
                    reply = await self.peer(address).call(
                        {"op": "replicate", "db": db, "rows": payload[i:i + RESYNC_BATCH]})
                    if not reply.get("ok"):
                        raise ConnectionError(reply.get("error", "refused"))
            except (OSError, asyncio.TimeoutError, ConnectionError) as exc:
                self.failed_until[key] = now + REPLICA_RETRY_S
                self.log.emit(REPLICATION_FAILED, db=db, peer=address, reason=type(exc).__name__)
                continue
            if resync:
                del self.failed_until[key]
                self.log.emit(REPLICATION_RESUMED, db=db, peer=address, rows=len(payload))

    async def handle(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        try:
            return await self.answer(request)
        except (TypeError, ValueError, sqlite3.Error):  # a field of the wrong type or size
            return error("bad_request")

    async def answer(self, request: dict[str, Any]) -> dict[str, Any]:
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
            if not isinstance(rows, list) or not all(valid_row(r) for r in rows):
                return error("bad_request")
            copy.store(rows)
            return {"ok": True}
        if op in ("activate", "deactivate"):
            copy.active = op == "activate"
            self.log.emit(DB_ROLE, db=db, server=self.name, active=copy.active)
            return {"ok": True, "active": copy.active}
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
            row = {"msg_id": request.get("msg_id"), "user": user, "folder": "Inbox",
                   "subject": str(request.get("subject", ""))[:200]}
            if not valid_row(row):
                return error("bad_request")
            copy.store([row])
            await self.replicate(db, copy, [row])
            return {"ok": True, "msg_id": row["msg_id"], "server": self.name}
        return error("unknown_op", op=op if isinstance(op, str) else None)


async def serve(config: dict[str, Any]) -> None:
    log = open_log(config, config["name"])
    server = MailboxServer(config, log)

    await listen(config, "mailbox", log, server.handle)


def main() -> None:
    run_role(serve)


if __name__ == "__main__":
    main()
