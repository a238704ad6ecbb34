"""roles/dag.py and roles/mailbox.py as a DAG: two mailbox processes holding copies of DB1
(and a CAS over both), switched over, failed over, frozen and resynced on loopback.

The contract: an acknowledged message is never lost silently. A switchover loses nothing;
a failover says how many rows the new active copy knows it lacks and honours the mount
dial; a failed copy is caught up by its Shipper, never on a client's send path.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roles.dag import BATCH, REPLICA_RETRY_S, SCHEMA
from tests.roles_support import (
    PROXY_TIMEOUT_S, Conn, Service, admin, assert_refused, cas_config, db_status, frame, free_ports, logon,
    mailbox_config, send_direct, start_service, stored_ids, tcp_sockets, wait_until,
)
from tests.roles_support import started

__all__ = ["started"]  # the fixtures imported above


# ---- a DAG: two copies of DB1 and a CAS over both ---------------------------------------

@dataclass
class Dag:
    a: Service      # DB1 active at start
    b: Service      # DB1 passive at start
    cas: Service | None


def start_dag(tmp_path: Path, started: list[Service], with_cas: bool = True, **settings: Any) -> Dag:
    """B (passive) starts first, so A's first shipment finds it: a copy that does not answer
    is marked failed and left alone for REPLICA_RETRY_S."""
    port_a, admin_a, port_b, admin_b, port_cas, admin_cas = free_ports(6)
    b = start_service("roles.mailbox", mailbox_config("mbxB", port_b, admin_b, tmp_path, False, [port_a], **settings),
                      tmp_path, started)
    a = start_service("roles.mailbox", mailbox_config("mbxA", port_a, admin_a, tmp_path, True, [port_b], **settings),
                      tmp_path, started)
    cas = None
    if with_cas:
        cas = start_service("roles.cas", cas_config("cas1", port_cas, admin_cas, tmp_path, [port_a, port_b]),
                            tmp_path, started)
    return Dag(a, b, cas)


class SendStream(threading.Thread):
    """Sends through a CAS one after the other until stopped, keeping every acknowledged
    msg_id; any other reply is an error."""

    def __init__(self, cas_port: int, tag: str):
        super().__init__(daemon=True)
        self.cas_port, self.tag = cas_port, tag
        self.acked: list[str] = []
        self.errors: list[Any] = []
        self.servers: list[str] = []
        self.halt = threading.Event()

    def run(self) -> None:
        try:
            with Conn(self.cas_port, PROXY_TIMEOUT_S) as conn:
                logon(conn)
                i = 0
                while not self.halt.is_set():
                    msg_id = f"{self.tag}-{i}"
                    i += 1
                    reply = conn.call({"op": "send", "msg_id": msg_id})
                    if reply and reply.get("ok") is True and reply.get("msg_id") == msg_id:
                        self.acked.append(msg_id)
                        self.servers.append(reply.get("server"))
                    else:
                        self.errors.append((msg_id, reply))
        except BaseException as exc:  # noqa: BLE001 - reported by stop()
            self.errors.append(repr(exc))

    def wait_acked(self, count: int, timeout: float = 10.0) -> None:
        wait_until(lambda: len(self.acked) >= count or self.errors, timeout, f"{count} acknowledged sends")
        assert not self.errors, self.errors

    def stop(self) -> None:
        self.halt.set()
        self.join(timeout=PROXY_TIMEOUT_S + 5)
        assert not self.is_alive(), "the send stream did not stop"
        assert not self.errors, f"sends that were not acknowledged: {self.errors[:5]}"


def caught_up(passive, head: int, timeout: float = 5.0) -> None:
    wait_until(lambda: db_status(passive)["last_seq"] == head, timeout, f"{passive.name} has every row to {head}")


# ---- switchovers -------------------------------------------------------------------------

def test_dag_switchover_cas_follows_and_no_acked_message_is_lost(tmp_path, started):
    dag = start_dag(tmp_path, started)
    acked: list[str] = []
    with Conn(dag.cas.port, PROXY_TIMEOUT_S) as conn:
        logon(conn)
        for i in range(5):
            reply = conn.call({"op": "send", "msg_id": f"before-{i}", "subject": f"m{i}"})
            assert reply["ok"] is True and reply["server"] == "mbxA", reply
            acked.append(f"before-{i}")
        assert set(acked) <= set(stored_ids(dag.a.store_dir))
        assert set(acked) <= set(stored_ids(dag.b.store_dir)), "synchronous replication did not reach the passive copy"

        # switchover, as Active Manager does it: A steps down, B takes A's log and mounts
        stopped = admin(dag.a, {"op": "deactivate", "db": "DB1"})
        assert stopped == {"ok": True, "active": False, "head": 5}
        assert admin(dag.b, {"op": "activate", "db": "DB1", "catch_up_from": dag.a.address, "head": 5}) == \
            {"ok": True, "active": True, "missing": 0, "last_seq": 5}

        # the SAME CAS session carries on and lands on B
        for i in range(5):
            reply = conn.call({"op": "send", "msg_id": f"after-{i}", "subject": f"n{i}"})
            assert reply["ok"] is True and reply["server"] == "mbxB", reply
            acked.append(f"after-{i}")
        read = conn.call({"op": "read"})
        assert read["ok"] is True and read["server"] == "mbxB" and read["count"] == len(acked), read

    missing = set(acked) - set(stored_ids(dag.b.store_dir))
    assert not missing, f"acknowledged messages missing from the new active copy B: {sorted(missing)}"
    assert set(acked) <= set(stored_ids(dag.a.store_dir)), "B did not replicate back to A (now passive)"
    assert db_status(dag.a) == {"active": False, "last_seq": 10, "behind": 0}
    with Conn(dag.a.port) as conn:
        assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": "stale"}), "not_active")
    for service in (dag.a, dag.b, dag.cas):
        service.assert_alive()
    roles = dag.a.events("db_role") + dag.b.events("db_role")
    assert {(e["server"], e["active"]) for e in roles} == {("mbxA", False), ("mbxB", True)}
    assert not dag.a.events("replication_failed") + dag.b.events("replication_failed")


def test_switchover_under_a_stream_of_sends_loses_no_acknowledged_mail(tmp_path, started):
    # Old behaviour: "activate" only flipped a flag. A passive copy that had been marked
    # failed (here: frozen while sends went on) was mounted without the rows it lacked, and
    # the acknowledged messages it lacked were gone without a word.
    dag = start_dag(tmp_path, started)
    stream = SendStream(dag.cas.port, "stream")
    stream.start()
    try:
        stream.wait_acked(20)
        dag.b.freeze()  # B stops taking the log: A marks it failed and acknowledges without it
        stream.wait_acked(len(stream.acked) + 30)
        head = admin(dag.a, {"op": "deactivate", "db": "DB1"})["head"]
        dag.b.thaw()
        behind = head - db_status(dag.b)["last_seq"]
        assert behind >= 25, f"precondition: B must lack acknowledged rows at the switchover ({behind})"
        reply = admin(dag.b, {"op": "activate", "db": "DB1", "catch_up_from": dag.a.address, "head": head})
        assert reply == {"ok": True, "active": True, "missing": 0, "last_seq": head}
        stream.wait_acked(len(stream.acked) + 20)  # the stream carries on, on B
    finally:
        stream.stop()
    assert stream.servers[0] == "mbxA" and stream.servers[-1] == "mbxB"
    lost = set(stream.acked) - set(stored_ids(dag.b.store_dir))
    assert not lost, f"acknowledged messages missing from the new active copy: {sorted(lost)[:10]}"
    assert len(stream.acked) == db_status(dag.b)["last_seq"], "one log position per acknowledged message"
    caught_up(dag.a, len(stream.acked))  # A, now passive, takes B's log
    assert [e["missing"] for e in dag.b.events("db_role")] == [0]


# ---- failovers ---------------------------------------------------------------------------

def test_failover_reports_missing_rows_and_honours_the_mount_dial(tmp_path, started):
    # Old behaviour: a copy that lacked acknowledged messages was activated without a word
    # (no log positions, so it could not know), whatever it lacked.
    dag = start_dag(tmp_path, started, with_cas=False)
    acked: list[str] = []
    with Conn(dag.a.port) as conn:
        for i in range(5):
            acked.append(send_direct(conn, f"pre-{i}")["msg_id"])
        caught_up(dag.b, 5)
        dag.b.freeze()
        begun = time.monotonic()
        for i in range(BATCH + 60):
            acked.append(send_direct(conn, f"frozen-{i}")["msg_id"])
        assert time.monotonic() - begun < REPLICA_RETRY_S - 0.5, "precondition: every send before A's first retry"
    # A's retry (REPLICA_RETRY_S after B failed) ships one frame of BATCH rows with its head
    # into frozen B's socket; B reads it when it thaws, after A is dead.
    wait_until(lambda: any(s["port"] == dag.b.port and s["state"] != "0A" and s["rx_queue"] > 5000
                           for s in tcp_sockets()), REPLICA_RETRY_S + 3, "A's retry frame queued at frozen B")
    dag.a.proc.kill()
    dag.a.proc.wait(timeout=5)
    dag.b.thaw()
    wait_until(lambda: db_status(dag.b)["behind"] > 0, 5, "B heard A's head")
    status = db_status(dag.b)
    missing = status["behind"]
    lacking = set(acked) - set(stored_ids(dag.b.store_dir))
    assert missing == len(acked) - status["last_seq"] == len(lacking) > 0, (status, len(acked), len(lacking))

    refused = admin(dag.b, {"op": "activate", "db": "DB1", "max_missing": missing - 1}, expect_ok=False)
    assert refused == {"ok": False, "error": "too_far_behind", "missing": missing, "last_seq": status["last_seq"]}
    assert db_status(dag.b)["active"] is False
    with Conn(dag.b.port) as conn:
        assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": "m"}), "not_active")

    assert admin(dag.b, {"op": "activate", "db": "DB1", "max_missing": missing}) == \
        {"ok": True, "active": True, "missing": missing, "last_seq": status["last_seq"]}
    with Conn(dag.b.port) as conn:
        assert send_direct(conn, "after-failover")["server"] == "mbxB"
    assert db_status(dag.b) == {"active": True, "last_seq": status["last_seq"] + 1, "behind": 0}
    assert [(e["active"], e["missing"]) for e in dag.b.events("db_role")] == [(True, missing)]


# ---- failed copies: retry and resync off the send path ------------------------------------

def test_two_sends_right_after_a_failed_copys_retry_time_both_succeed(tmp_path, started):
    # Old behaviour: after REPLICA_RETRY_S the next sends each resynced the failed copy
    # inline; two concurrent ones both did, and the second to finish deleted the retry entry
    # again: a KeyError, answered "internal" and the connection closed.
    dag = start_dag(tmp_path, started, with_cas=False)
    with Conn(dag.a.port) as conn:
        send_direct(conn, "warm")
        caught_up(dag.b, 1)
        frozen_ns = time.monotonic_ns()  # event ts is CLOCK_MONOTONIC too
        dag.b.freeze()
        for i in range(50):
            send_direct(conn, f"frozen-{i}")
    [failed] = wait_until(lambda: [e for e in dag.a.events("replication_failed") if e["ts"] > frozen_ns], 5,
                          "A marked B failed")
    dag.b.thaw()
    retry_at = failed["ts"] / 1e9 + REPLICA_RETRY_S
    time.sleep(max(0.0, retry_at - time.monotonic()) + 0.005)
    with Conn(dag.a.port) as one, Conn(dag.a.port) as two:
        one.send({"op": "send", "db": "DB1", "user": "alice", "msg_id": "race-1"})
        two.send({"op": "send", "db": "DB1", "user": "alice", "msg_id": "race-2"})
        replies = [one.recv(), two.recv()]
    assert [(r or {}).get("ok") for r in replies] == [True, True], replies
    assert [r["msg_id"] for r in replies] == ["race-1", "race-2"]
    caught_up(dag.b, 53)
    assert {"race-1", "race-2", "frozen-49"} <= set(stored_ids(dag.b.store_dir))
    wait_until(lambda: dag.a.events("replication_resumed"), 5, "replication_resumed logged")
    assert not dag.a.events("internal_error")
    dag.a.assert_alive()


def prepopulate(store_dir, rows: int) -> None:
    """A copy's SQLite file holding ``rows`` messages (log positions 1..rows)."""
    store_dir.mkdir(parents=True)
    conn = sqlite3.connect(store_dir / "DB1.sqlite")
    try:
        conn.executescript(SCHEMA)
        with conn:
            conn.executemany("INSERT INTO messages (msg_id, seq, user, folder, subject) VALUES (?, ?, ?, ?, ?)",
                             ((f"old-{i}", i, "alice", "Inbox", "") for i in range(1, rows + 1)))
    finally:
        conn.close()


def test_a_send_during_a_long_resync_answers_at_once(tmp_path, started):
    # Old behaviour: the first send after a failed copy's retry time resynced it inline,
    # every row in frames of 200: with tens of thousands of rows that send took seconds,
    # far past the CAS's 300 ms mailbox timeout. Now the copy's Shipper resyncs it.
    rows = 40_000
    port_a, admin_a, port_b, admin_b = free_ports(4)
    prepopulate(tmp_path / "store-mbxA", rows)
    a = start_service("roles.mailbox", mailbox_config("mbxA", port_a, admin_a, tmp_path, True, [port_b]),
                      tmp_path, started)
    # B starts after A: A's shipper finds it initializing, retries at once and logs no failure
    b = start_service("roles.mailbox", mailbox_config("mbxB", port_b, admin_b, tmp_path, False, [port_a]),
                      tmp_path, started)
    wait_until(lambda: db_status(b)["last_seq"] > 0, REPLICA_RETRY_S + 5, "B's resync under way")
    latencies = []
    with Conn(port_a) as conn:
        while len(latencies) < 5 and db_status(b)["last_seq"] < rows:  # each send while the resync runs
            begun = time.monotonic()
            send_direct(conn, f"during-resync-{len(latencies)}")
            latencies.append(time.monotonic() - begun)
    assert latencies, "precondition: the resync ended before a send could be made"
    assert max(latencies) < 0.15, f"sends during the resync took {latencies} s (the CAS gives up at 0.3 s)"
    caught_up(b, rows + len(latencies), timeout=30)
    assert not a.events("replication_failed") and not a.events("replication_resumed"), \
        "a copy that was only initializing never failed"


def test_frozen_passive_copy_does_not_block_sends(tmp_path, started):
    dag = start_dag(tmp_path, started)
    with Conn(dag.cas.port, PROXY_TIMEOUT_S) as conn:
        logon(conn, sid="s-frozen")
        assert conn.call({"op": "send", "msg_id": "warm"})["ok"] is True
        dag.b.freeze()
        for i in range(5):
            begun = time.monotonic()
            reply = conn.call({"op": "send", "msg_id": f"while-b-frozen-{i}"})
            assert reply["ok"] is True and reply["msg_id"] == f"while-b-frozen-{i}", reply
            assert time.monotonic() - begun < 0.3, "a frozen passive copy held a send until the CAS gave up"
            read = conn.call({"op": "read"})
            assert read["ok"] is True and read["count"] == i + 2, read
        dag.b.thaw()
    caught_up(dag.b, 6, timeout=REPLICA_RETRY_S + 5)  # caught up after the retry time, by the Shipper
    assert set(stored_ids(dag.a.store_dir)) == set(stored_ids(dag.b.store_dir))


def test_a_resent_msg_id_does_not_stall_replication(tmp_path, started):
    # Before the fix in roles/dag.py: a resent msg_id (the CAS retries a send after a
    # mailbox timeout) used up a log position without a row; every later shipment hit that
    # gap and the passive copy never took another row.
    dag = start_dag(tmp_path, started, with_cas=False)
    with Conn(dag.a.port) as conn:
        for msg_id in ("once", "twice", "twice", "after"):
            send_direct(conn, msg_id)
    caught_up(dag.b, 3)
    assert sorted(stored_ids(dag.b.store_dir)) == ["after", "once", "twice"]


# ---- asynchronous replication --------------------------------------------------------------

def test_async_replication_ships_log_generations(tmp_path, started):
    # Old behaviour: replication was always synchronous (every send waited for every copy);
    # there was no "async" mode and no log generations.
    interval = 1.0
    dag = start_dag(tmp_path, started, with_cas=False, replication="async", log_messages=5,
                    log_interval_ms=int(interval * 1000))
    with Conn(dag.a.port) as conn:
        send_direct(conn, "gen-1")
        caught_up(dag.b, 1, timeout=interval + 2)  # the shipment timer fired just now
        shipped = time.monotonic()
        for i in range(2, 5):  # 3 more rows: less than a generation
            send_direct(conn, f"gen-{i}")
        assert db_status(dag.b)["last_seq"] == 1, "a partial generation was shipped before its interval"
        assert time.monotonic() - shipped < interval / 2, "precondition: checked well before the next timer"
        caught_up(dag.b, 4, timeout=interval + 2)
        waited = time.monotonic() - shipped
        assert interval - 0.2 <= waited <= interval + 0.5, f"the partial generation came after {waited:.2f} s"
        # a full generation (log_messages rows) is announced at once (the copy queue: the
        # copy knows it lacks it) and shipped on the copier's next cycle
        shipped = time.monotonic()
        for i in range(5, 10):
            send_direct(conn, f"gen-{i}")
        wait_until(lambda: db_status(dag.b)["behind"] == 5, interval / 2, "the full generation to be announced")
        assert db_status(dag.b)["last_seq"] == 4, "a full generation was shipped before the copier's cycle"
        caught_up(dag.b, 9, timeout=interval + 2)
        waited = time.monotonic() - shipped
        assert interval - 0.2 <= waited <= interval + 0.5, f"the full generation came after {waited:.2f} s"
    assert db_status(dag.b) == {"active": False, "last_seq": 9, "behind": 0}


# ---- frame sizes, shipper failures, diverged logs (issue 18, items 2 and 9) ---------------

LONG = "\U0001d11e" * 200  # 200 astral characters: 2,400 bytes of JSON escapes per field


def send_long_rows_while_b_is_frozen(dag, conn, msg_id) -> None:
    """One short row both copies take, then 60 rows of long non-ASCII subjects while copy b
    is frozen (far more than one 64 KiB frame holds)."""
    send_direct(conn, "warm")
    caught_up(dag.b, 1)
    dag.b.freeze()
    for i in range(60):
        reply = conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": msg_id(i), "subject": LONG})
        assert reply and reply.get("ok") is True, reply


def test_rows_too_long_for_one_frame_together_still_reach_a_lagging_copy(tmp_path, started):
    # Old behaviour: a resync batch was 200 rows whatever their size; 60 rows of long
    # non-ASCII subjects made a frame over 64 KiB, encode raised ProtocolError, the shipper
    # task died unseen and the copy never took another row.
    dag = start_dag(tmp_path, started, with_cas=False)
    with Conn(dag.a.port) as conn:
        send_long_rows_while_b_is_frozen(dag, conn, lambda i: f"{LONG[:150]}-{i}")
        dag.b.thaw()
    caught_up(dag.b, 61, timeout=REPLICA_RETRY_S + 10)
    assert set(stored_ids(dag.a.store_dir)) == set(stored_ids(dag.b.store_dir))
    wait_until(lambda: dag.a.events("replication_resumed"), 5, "replication_resumed logged")
    assert not dag.a.events("internal_error") + dag.b.events("internal_error")


def test_a_switchover_catch_up_takes_long_rows_in_frames_that_fit(tmp_path, started):
    # Old behaviour: a fetch reply was 200 rows whatever their size: over 64 KiB it could
    # not be encoded, the catch-up stopped and the switchover mounted with rows missing.
    dag = start_dag(tmp_path, started, with_cas=False)
    with Conn(dag.a.port) as conn:
        send_long_rows_while_b_is_frozen(dag, conn, lambda i: f"long-{i}")
    head = admin(dag.a, {"op": "deactivate", "db": "DB1"})["head"]
    dag.b.thaw()
    reply = admin(dag.b, {"op": "activate", "db": "DB1", "catch_up_from": dag.a.address, "head": head,
                          "max_missing": 0}, expect_ok=False)
    assert reply == {"ok": True, "active": True, "missing": 0, "last_seq": 61}, reply
    assert set(stored_ids(dag.b.store_dir)) == set(stored_ids(dag.a.store_dir))


class FakeCopy(threading.Thread):
    """A passive copy on loopback that answers ``replicate`` like a real one (it keeps the
    rows it was sent) until ``garble`` is set: then it answers with bytes that are no frame."""

    def __init__(self):
        super().__init__(daemon=True)
        self.server = socket.create_server(("127.0.0.1", 0))
        self.server.settimeout(0.2)
        self.port = self.server.getsockname()[1]
        self.garble = threading.Event()
        self.halt = threading.Event()
        self.ids: list[str] = []
        self.last_seq = 0

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                sock, _ = self.server.accept()
            except OSError:
                continue
            with sock:
                sock.settimeout(0.5)
                self.serve(sock)
        self.server.close()

    def serve(self, sock) -> None:
        while not self.halt.is_set():
            try:
                header = sock.recv(4, socket.MSG_WAITALL)
                if len(header) < 4:
                    return
                body = sock.recv(int.from_bytes(header, "big"), socket.MSG_WAITALL)
            except OSError:
                continue
            if self.garble.is_set():
                sock.sendall(b"\x00\x00\x00\x05{{{{{")
                return
            request = json.loads(body)
            for row in request.get("rows", []):
                if row["seq"] == self.last_seq + 1:
                    self.ids.append(row["msg_id"])
                    self.last_seq = row["seq"]
            sock.sendall(frame({"ok": True, "last_seq": self.last_seq}))


def test_a_shipper_failure_is_logged_reported_to_the_sender_and_retried(tmp_path, started):
    # Old behaviour: an unreadable reply raised ProtocolError, which the shipper did not
    # catch: the task died unseen (no replication_failed), the copy was never retried, and
    # every later sync send was acknowledged after 100 ms as if replicated.
    fake = FakeCopy()
    fake.start()
    try:
        port_a, admin_a = free_ports(2)
        a = start_service("roles.mailbox", mailbox_config("mbxA", port_a, admin_a, tmp_path, True, [fake.port]),
                          tmp_path, started)
        peer = f"127.0.0.1:{fake.port}"
        with Conn(port_a) as conn:
            first = send_direct(conn, "confirmed")
            assert "unreplicated" not in first, f"a send the copy confirmed was reported unreplicated: {first}"
            wait_until(lambda: fake.ids == ["confirmed"], 5, "the fake copy holds the first row")
            fake.garble.set()
            reply = send_direct(conn, "not-confirmed")
            assert reply.get("unreplicated") == [peer], \
                f"a sync send no copy confirmed was acknowledged as replicated: {reply}"
            [failed] = wait_until(lambda: a.events("replication_failed"), 5, "replication_failed logged")
            assert failed["peer"] == peer and failed["reason"], failed
            fake.garble.clear()
            wait_until(lambda: fake.ids == ["confirmed", "not-confirmed"], REPLICA_RETRY_S + 5,
                       "the shipper retried and shipped the row")
            wait_until(lambda: a.events("replication_resumed"), 5, "replication_resumed logged")
            assert "unreplicated" not in send_direct(conn, "confirmed-again")
        a.assert_alive()
    finally:
        fake.halt.set()
        fake.join(timeout=5)


def test_after_an_unfinished_catch_up_the_old_copy_takes_the_new_log_and_a_failover_counts_honestly(
        tmp_path, started):
    # Old behaviour: B mounted without the rows A had after B's position (its catch-up did
    # not finish), then wrote its own rows at those positions. A (passive now) still held
    # its own rows there, so it "confirmed" B's rows by position: sync sends were
    # acknowledged as replicated though A never had them, and a failover back to A under
    # the lossless dial mounted with missing = 0 and B's acknowledged mail gone.
    dag = start_dag(tmp_path, started, with_cas=False)
    with Conn(dag.a.port) as conn:
        for i in range(5):
            send_direct(conn, f"shared-{i}")
        caught_up(dag.b, 5)
        dag.b.freeze()
        for i in range(5):
            send_direct(conn, f"only-on-a-{i}")
    head = admin(dag.a, {"op": "deactivate", "db": "DB1"})["head"]
    assert head == 10
    dag.b.thaw()
    dead = free_ports(1)[0]  # the catch-up cannot reach the old active copy: it does not finish
    mounted = admin(dag.b, {"op": "activate", "db": "DB1", "catch_up_from": f"127.0.0.1:{dead}", "head": head})
    base = mounted["last_seq"]  # B may have read one frame queued while it was frozen
    assert mounted["missing"] == head - base > 0, mounted
    acked = []
    with Conn(dag.b.port) as conn:
        for i in range(3):
            reply = send_direct(conn, f"on-b-{i}")
            if "unreplicated" not in reply:
                acked.append(reply["msg_id"])
    # every send acknowledged as replicated is on A; A's log is B's now
    on_a = set(stored_ids(dag.a.store_dir))
    assert set(acked) <= on_a, f"acknowledged as replicated, not on A: {sorted(set(acked) - on_a)}"
    wait_until(lambda: db_status(dag.a)["last_seq"] == base + 3 and {f"on-b-{i}" for i in range(3)} <=
               set(stored_ids(dag.a.store_dir)), 10, "A took B's log")
    assert not {f"only-on-a-{i}" for i in range(base - 5, 5)} & set(stored_ids(dag.a.store_dir)), \
        "A kept rows at positions B's log gave to other messages"
    with Conn(dag.b.port) as conn:
        send_direct(conn, "last-on-b")
    dag.b.proc.kill()
    dag.b.proc.wait(timeout=5)
    # a failover to A under the lossless dial: it mounts only if it lacks nothing B acknowledged
    reply = admin(dag.a, {"op": "activate", "db": "DB1", "max_missing": 0}, expect_ok=False)
    lacking = {"last-on-b", *acked} - set(stored_ids(dag.a.store_dir))
    if reply.get("ok"):
        assert not lacking, f"mounted with missing=0 under the lossless dial, lacking {sorted(lacking)}"
    else:
        assert reply["error"] == "too_far_behind" and reply["missing"] == len(lacking) > 0, (reply, lacking)


def test_a_batch_of_the_longest_rows_fits_one_frame():
    # Old behaviour: 200 rows per frame whatever their size (encode raised over 64 KiB).
    from labcommon.protocol import MAX_FRAME, encode
    from roles.dag import fit, valid_row
    rows = [{"msg_id": f"{i}{LONG}"[:200], "seq": i + 1, "user": LONG, "folder": LONG, "subject": LONG}
            for i in range(BATCH)]
    assert all(valid_row(r) for r in rows)
    batch = fit(rows)
    assert 1 <= len(batch) < BATCH and batch == rows[:len(batch)]
    frame_ = encode({"op": "replicate", "db": "D" * 200, "rows": batch, "head": 2**61, "prev_seq": 2**61,
                     "prev_chain": "0" * 16})
    assert MAX_FRAME - 20_000 < len(frame_) <= MAX_FRAME + 4, len(frame_)


def test_a_copy_whose_log_diverged_drops_the_foreign_rows_and_takes_the_active_log(tmp_path):
    # Old behaviour: positions alone: a copy holding other rows at the active copy's
    # positions "had" them, and said so.
    from roles.dag import DatabaseCopy

    def row(seq, msg_id):
        return {"msg_id": msg_id, "seq": seq, "user": "alice", "folder": "Inbox", "subject": ""}

    old = DatabaseCopy(tmp_path / "old.sqlite", active=True, peers=[])
    new = DatabaseCopy(tmp_path / "new.sqlite", active=True, peers=[])
    for i in range(1, 4):
        old.append(row(0, f"shared-{i}"))
        new.append(row(0, f"shared-{i}"))
    for i in range(2):
        old.append(row(0, f"only-old-{i}"))      # positions 4, 5 on the old log
    for i in range(3):
        new.append(row(0, f"only-new-{i}"))      # positions 4, 5, 6 on the new log
    old.active = False
    # the new active copy continues from position 5: the old copy's chain there differs
    assert old.apply([row(6, "only-new-2")], 6, 5, new.chain_at(5)) == "diverged"
    assert old.last_seq == 4 and old.behind == 2
    assert old.apply(new.rows_after(4), 6, 4, new.chain_at(4)) == "diverged"
    assert old.last_seq == 3 and old.behind == 3, "it knows it lacks everything after the common rows"
    assert old.apply(new.rows_after(3), 6, 3, new.chain_at(3)) == "ok"
    assert (old.last_seq, old.behind, old.tip) == (6, 0, new.tip)
    assert [r["msg_id"] for r in old.rows_after(0)] == [r["msg_id"] for r in new.rows_after(0)]
    # a shipment re-sent from an earlier position replaces, never duplicates
    assert old.apply(new.rows_after(2), 6, 2, new.chain_at(2)) == "ok" and old.last_seq == 6
