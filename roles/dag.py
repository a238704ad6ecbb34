"""A DAG database copy and the shipping of its log to the other copies.

Every message the active copy stores gets the next sequence number of its database (its
"log position"). Passive copies apply rows strictly in order and say how far they are
(``last_seq``); every shipment also carries the active copy's head, so a passive copy
always knows how far behind it is (``heard_head - last_seq``), even before the rows come.

One ``Shipper`` per passive copy owns everything about that copy: what it has, when it
failed, when to retry, and the resync after a failure (rows after its ``last_seq``, in
batches, never on a client's send path). Replication modes (``exchange.replication``):

* ``sync``: a send waits until every copy that is not failed confirmed the row (a copy
  that does not answer within 100 ms is marked failed and caught up later); a copy that
  did not confirm it is named in the reply (``unreplicated``), never passed over in silence;
* ``async``: a send is acknowledged once the active copy committed it: Exchange 2010's
  continuous replication. A log generation closes every ``log_messages`` rows, and is
  announced to the copies at once (the active copy's head: Exchange's LastLogGenerated);
  the copier ships the rows every ``log_interval_ms`` (closing the open generation
  then). Generations announced but not yet shipped are the copy queue: a copy knows it
  lacks them (AutoDatabaseMountDial counts them). Rows of the open generation are not
  announced: a crash of the active copy loses them without any copy knowing.

A log position alone does not say *which* log: after a switchover whose catch-up did not
finish, the new active copy writes its own rows at positions where the old one holds
others. So every row carries ``chain``, a hash of its msg_id and the previous row's chain:
equal chains at a position mean equal logs up to it. A shipment names the position it
continues (``prev_seq``, ``prev_chain``); a copy whose chain there differs has diverged:
it drops its rows from there (they are in no active log) and the shipper walks back until
the logs agree. A copy confirms rows only by applying a shipment whose ``prev`` matched.

Frames are at most 64 KiB: batches are bounded by their encoded size (``fit``), not by a
row count. Any failure of a shipment (no answer, a refusal, a frame that cannot be read or
written, a bug) marks the copy failed, is logged (``replication_failed``) and retried.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import sqlite3
from pathlib import Path
from typing import Any

from labcommon.catalogue import REPLICATION_FAILED, REPLICATION_RESUMED
from labcommon.protocol import MAX_FRAME, FramedLink

REPLICATION_TIMEOUT_S = 0.1   # well inside the CAS's per-call mailbox timeout
REPLICA_RETRY_S = 2.0         # a copy that failed is left alone this long, then caught up
BATCH = 200                   # rows per replicate frame at most, and at most ROW_BYTES of them
ROW_BYTES = MAX_FRAME - 1024  # a frame's rows, encoded; the rest of the frame is a few keys
HEARTBEAT_S = 0.2             # an idle shipper tells its copy the head this often
INITIALIZING_S = 10.0         # a copy never reached yet is "initializing" this long, not failed
INITIALIZING_RETRY_S = 0.05

SCHEMA = """
CREATE TABLE IF NOT EXISTS messages (
    msg_id TEXT PRIMARY KEY,
    seq INTEGER NOT NULL,
    user TEXT NOT NULL,
    folder TEXT NOT NULL,
    subject TEXT NOT NULL,
    chain TEXT NOT NULL DEFAULT ''
);
CREATE INDEX IF NOT EXISTS by_user_folder ON messages (user, folder);
CREATE INDEX IF NOT EXISTS by_seq ON messages (seq);
"""
FIELDS = ("msg_id", "seq", "user", "folder", "subject")


def link(previous: str, msg_id: str) -> str:
    """The chain of a row: its msg_id hashed with the previous row's chain ("" before seq 1)."""
    data = f"{previous}\0{msg_id}".encode("utf-8", "surrogatepass")
    return hashlib.blake2b(data, digest_size=8).hexdigest()


def fit(rows: list[dict[str, Any]], budget: int = ROW_BYTES) -> list[dict[str, Any]]:
    """The first rows whose JSON (as ``encode`` writes it) fits ``budget`` bytes; at least
    one row (a valid row is at most a few KiB, whatever its characters)."""
    out, size = [], 0
    for row in rows:
        size += len(json.dumps(row, separators=(",", ":"))) + 1  # ASCII: escapes for the rest
        if out and size > budget:
            break
        out.append(row)
    return out


def valid_row(row: object) -> bool:
    """A message row: msg_id and user non-empty strings, folder and subject strings if
    given, seq a positive integer."""
    if not isinstance(row, dict):
        return False
    if not all(isinstance(row.get(k), str) and row[k] and len(row[k]) <= 200 for k in ("msg_id", "user")):
        return False
    seq = row.get("seq")
    if not isinstance(seq, int) or isinstance(seq, bool) or not 0 < seq < 2**62:
        return False
    return all(isinstance(row.get(k, ""), str) and len(row.get(k, "")) <= 200 for k in ("folder", "subject"))


class DatabaseCopy:
    """One copy of one mailbox database in SQLite, and its log position."""

    def __init__(self, path: Path, active: bool, peers: list[str]):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.active = active
        self.peers = list(peers)
        self.conn = sqlite3.connect(path, isolation_level=None)
        self.conn.execute("PRAGMA journal_mode=WAL")
        self.conn.execute("PRAGMA synchronous=NORMAL")
        self.conn.executescript(SCHEMA)
        self.last_seq = int(self.conn.execute("SELECT COALESCE(MAX(seq), 0) FROM messages").fetchone()[0])
        self.heard_head = self.last_seq
        if self.conn.execute("SELECT 1 FROM messages WHERE chain='' LIMIT 1").fetchone():
            self._rechain()  # a store written without chains (a test's prepared file)
        self.tip = self.chain_at(self.last_seq) or ""

    def _rechain(self) -> None:
        chain, updates = "", []
        for seq, msg_id in self.conn.execute("SELECT seq, msg_id FROM messages ORDER BY seq").fetchall():
            chain = link(chain, msg_id)
            updates.append((chain, seq))
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany("UPDATE messages SET chain=? WHERE seq=?", updates)

    def chain_at(self, seq: int) -> str | None:
        """The chain of the row at ``seq`` ("" at 0), None if this copy has no such row."""
        if seq == 0:
            return ""
        row = self.conn.execute("SELECT chain FROM messages WHERE seq=?", (seq,)).fetchone()
        return None if row is None else row[0]

    @property
    def behind(self) -> int:
        """Rows this copy knows it lacks (the active copy's head it heard, minus its own)."""
        return max(0, self.heard_head - self.last_seq)

    def append(self, row: dict[str, str]) -> dict[str, Any]:
        """Active copy: store a new message at the next log position. A msg_id already
        stored (a send the CAS retried after a timeout) keeps its position: a position
        without a row would be a gap no passive copy could ever apply past."""
        known = self.conn.execute("SELECT seq FROM messages WHERE msg_id=?", (row["msg_id"],)).fetchone()
        if known is not None:
            return {**row, "seq": int(known[0])}
        row = {**row, "seq": self.last_seq + 1}
        self._insert([row])
        self.last_seq = self.heard_head = row["seq"]
        return row

    def apply(self, rows: list[dict[str, Any]], head: int, prev_seq: int | None = None,
              prev_chain: str | None = None) -> str:
        """Passive copy: apply shipped rows in order. "ok", "gap" (nothing applied: rows
        missing before them) or "diverged" (this copy's log differs at ``prev_seq``: its rows
        from there are dropped). With ``prev_seq`` the shipment continues the active copy's
        log at that position: rows this copy holds after it are replaced by the shipment."""
        if prev_seq is None:
            self.heard_head = max(self.heard_head, head)
            base = self.last_seq
        elif prev_seq > self.last_seq:
            self.heard_head = max(self.heard_head, head)
            return "gap"
        elif self.chain_at(prev_seq) != prev_chain:
            self._truncate(prev_seq - 1, head)
            return "diverged"
        else:
            base = prev_seq
            if self.last_seq > prev_seq:
                self._truncate(prev_seq, head)
            self.heard_head = max(self.heard_head, head)
        fresh = sorted((r for r in rows if r["seq"] > base), key=lambda r: r["seq"])
        if fresh and fresh[0]["seq"] != base + 1:
            return "gap"
        if any(b["seq"] != a["seq"] + 1 for a, b in zip(fresh, fresh[1:])):
            return "gap"
        if fresh:
            self._insert(fresh)
            self.last_seq = fresh[-1]["seq"]
        return "ok"

    def _truncate(self, keep: int, head: int) -> None:
        """Drop the rows after ``keep``: they are in no active copy's log. The active copy's
        head is what this copy lacks now (not a head it heard from an older log)."""
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.execute("DELETE FROM messages WHERE seq > ?", (keep,))
        self.last_seq = keep
        self.tip = self.chain_at(keep) or ""
        self.heard_head = max(head, keep)

    def _insert(self, rows: list[dict[str, Any]]) -> None:
        chained = []
        for r in rows:
            self.tip = link(self.tip, r["msg_id"])
            chained.append((r["msg_id"], r["seq"], r["user"], r.get("folder", "Inbox"), r.get("subject", ""),
                            self.tip))
        with self.conn:
            self.conn.execute("BEGIN")
            self.conn.executemany(
                "INSERT OR IGNORE INTO messages (msg_id, seq, user, folder, subject, chain) VALUES (?, ?, ?, ?, ?, ?)",
                chained)

    def rows_after(self, seq: int, limit: int = BATCH) -> list[dict[str, Any]]:
        """The rows after ``seq``, as many as fit one frame (``fit``), at most ``limit``."""
        cursor = self.conn.execute(f"SELECT {', '.join(FIELDS)} FROM messages WHERE seq > ? ORDER BY seq LIMIT ?",
                                   (seq, limit))
        return fit([dict(zip(FIELDS, row)) for row in cursor])

    def count(self, user: str, folder: str | None = None) -> int:
        if folder is None:
            row = self.conn.execute("SELECT COUNT(*) FROM messages WHERE user=?", (user,)).fetchone()
        else:
            row = self.conn.execute("SELECT COUNT(*) FROM messages WHERE user=? AND folder=?",
                                    (user, folder)).fetchone()
        return int(row[0])


class Shipper:
    """Ships one database's log from the active copy to one passive copy (a task)."""

    def __init__(self, db: str, copy: DatabaseCopy, address: str, log, mode: str = "sync",
                 log_messages: int = 10, log_interval_s: float = 0.5):
        self.db, self.copy, self.address, self.log = db, copy, address, log
        self.mode, self.log_messages, self.log_interval_s = mode, log_messages, log_interval_s
        self.link = FramedLink(address, REPLICATION_TIMEOUT_S)
        self.peer_seq: int | None = None  # where the next shipment continues (the copy's word)
        self.confirmed = 0               # rows of this log the copy holds: it applied them after a matched prev
        self.walk = 0                    # diverged shipments in a row: step back 2**walk rows
        self.failed_until = 0.0
        self.failed = False
        self.wake = asyncio.Event()
        self.progress = asyncio.Event()  # set whenever confirmed moved or the copy failed
        self.closed = copy.last_seq      # async: head of the last closed log generation
        self.copied_at = 0.0             # async: when the copier last ran
        self.copy_to = copy.last_seq     # async: what the copier ships this cycle (in batches)
        self.reached = False             # the copy answered once (before that it is initializing)
        self.failure_logged = False      # REPLICATION_FAILED said, REPLICATION_RESUMED not yet

    def forget(self) -> None:
        """This copy is not active: what the peer confirmed was about another log."""
        self.peer_seq, self.confirmed, self.walk = None, 0, 0
        self.closed = self.copy_to = self.copy.last_seq

    async def ship_once(self) -> int:
        """Send what the copy lacks (or a heartbeat with the head); learn where it is.
        Async: rows only when the copier is due (or the copy is resyncing), else just the
        head of the last closed generation."""
        loop = asyncio.get_running_loop()
        head = ship_to = self.copy.last_seq
        if self.mode != "sync":
            if self.failed or loop.time() - self.copied_at >= self.log_interval_s:
                self.closed = self.copy_to = head  # the open generation closes; the copier takes all
                self.copied_at = loop.time()
            head, ship_to = self.closed, self.copy_to
        start = min(self.peer_seq if self.peer_seq is not None else head, self.copy.last_seq)
        rows = [r for r in self.copy.rows_after(start) if r["seq"] <= ship_to] if start < ship_to else []
        reply = await self.link.call({"op": "replicate", "db": self.db, "rows": rows, "head": head,
                                      "prev_seq": start, "prev_chain": self.copy.chain_at(start)})
        last = reply.get("last_seq")
        if not isinstance(last, int) or isinstance(last, bool):
            raise ConnectionError(f"reply without last_seq: {str(reply.get('error', 'refused'))[:60]}")
        if reply.get("ok") is True:
            self.peer_seq, self.walk = last, 0
            self.confirmed = last if last <= self.copy.last_seq else 0
        elif reply.get("error") == "gap":
            self.peer_seq = min(last, start)
        elif reply.get("error") == "diverged":  # its log differs at start: step back until they agree
            self.peer_seq = max(0, min(last, start - 1) - (2 ** self.walk - 1))
            self.walk = min(self.walk + 1, 40)
            self.confirmed = min(self.confirmed, self.peer_seq)
        else:
            raise ConnectionError(str(reply.get("error", "refused"))[:60])
        return len(rows)

    async def supervise(self) -> None:
        """Run the shipper for good: a failure that escapes ``run`` (a bug) marks the copy
        failed, is logged, and the shipper starts again after the retry time."""
        while True:
            try:
                await self.run()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a shipper must never stop unseen
                self.fail(exc)
                await asyncio.sleep(REPLICA_RETRY_S)

    def fail(self, exc: BaseException) -> None:
        """The copy did not take the log: sends stop waiting for it, and it is said once."""
        self.failed = True
        self.failed_until = asyncio.get_running_loop().time() + REPLICA_RETRY_S
        self.link.close()
        if not self.failure_logged:
            self.log.emit(REPLICATION_FAILED, db=self.db, peer=self.address,
                          reason=f"{type(exc).__name__}: {exc}"[:200])
            self.failure_logged = True
        self.progress.set()

    async def run(self) -> None:
        loop = asyncio.get_running_loop()
        started = loop.time()
        while True:
            if not self.copy.active:
                self.forget()
                await self._sleep(HEARTBEAT_S)
                continue
            if loop.time() < self.failed_until:
                await asyncio.sleep(self.failed_until - loop.time())
                continue  # the copy may have stopped being active meanwhile
            try:
                shipped = await self.ship_once()
                self.reached = True
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - no answer, a refusal, an unusable frame
                if not self.reached and loop.time() - started < INITIALIZING_S:
                    # the peers start together: a copy whose server does not listen yet is
                    # initializing (Exchange's copy status): retried at once, logged as nothing
                    self.failed = True  # sends stop waiting for this copy at once
                    self.failed_until = loop.time() + INITIALIZING_RETRY_S
                    self.progress.set()
                else:
                    self.fail(exc)
                continue
            if self.failed and self.confirmed >= self.copy.last_seq:
                self.failed = False
                if self.failure_logged:
                    self.failure_logged = False
                    self.log.emit(REPLICATION_RESUMED, db=self.db, peer=self.address, rows=self.copy.last_seq)
            self.progress.set()
            behind = self.confirmed < self.copy.last_seq and self.peer_seq is not None
            if behind and (self.mode == "sync" or shipped or self.walk):
                continue  # more to send (a resync, a batch that filled up, a diverged copy)
            await self._sleep(HEARTBEAT_S if self.mode == "sync" else
                              max(0.0, self.copied_at + self.log_interval_s - loop.time()))

    async def _sleep(self, seconds: float) -> None:
        """Wait for new rows (sync: at once; async: a full log generation) or the timer."""
        try:
            await asyncio.wait_for(self.wake.wait(), seconds)
        except asyncio.TimeoutError:
            pass
        self.wake.clear()

    def notify(self) -> None:
        """A row was appended: ship now (sync), or announce a generation that is full (async)."""
        if self.mode == "sync":
            self.wake.set()
        elif self.copy.last_seq - self.closed >= self.log_messages:
            self.closed = self.copy.last_seq
            self.wake.set()

    async def wait_for(self, seq: int, timeout_s: float) -> bool:
        """Sync mode: until the copy confirmed ``seq`` (True), failed, or the timeout passed."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while not self.failed and self.confirmed < seq:
            remaining = deadline - loop.time()
            if remaining <= 0:
                return False
            self.progress.clear()
            try:
                await asyncio.wait_for(self.progress.wait(), remaining)
            except asyncio.TimeoutError:
                return False
        return not self.failed and self.confirmed >= seq
