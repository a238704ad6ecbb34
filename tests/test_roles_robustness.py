"""The role services as real processes on loopback: abuse them, they must not hang or die.

Each test starts ``python -m roles.mailbox`` and ``python -m roles.cas`` from JSON configs,
sends one kind of bad input (broken frames, wrong types, out-of-order operations) and
checks that the service answers with an error frame (``ok`` false) or closes the
connection within a timeout, and that afterwards the process is alive and a fresh,
well-formed session still logs on, sends and reads through the CAS to the mailbox.

The DAG test runs two mailbox servers holding copies of one database and switches the
active copy over under a live CAS session: the CAS must follow it and no acknowledged
message may be missing from the new active copy.

No root, no Mininet: everything listens on 127.0.0.1 only.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import threading
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = struct.Struct("!I")
REPLY_TIMEOUT_S = 5.0       # a framing error or a local check must be answered within this
PROXY_TIMEOUT_S = 10.0      # a proxied operation may wait for the CAS's locate deadline (5 s)
START_TIMEOUT_S = 20.0
CLOSED = None               # what Conn.recv returns when the service closed the connection


# ---- processes -------------------------------------------------------------------------

def free_ports(count: int) -> list[int]:
    """Distinct free loopback ports (all bound at once, so no two are the same)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    workdir: Path
    extra: dict[str, Any] = field(default_factory=dict)

    def output(self) -> str:
        text = ""
        for stream in ("stdout", "stderr"):
            path = self.workdir / f"{self.name}.{stream}"
            if path.exists():
                text += f"--- {self.name} {stream} ---\n" + path.read_text(errors="replace")[-4000:]
        return text

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}\n{self.output()}"


def start_service(module: str, config: dict[str, Any], workdir: Path, started: list[Service]) -> Service:
    name = config["name"]
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))
    with open(workdir / f"{name}.stdout", "wb") as out, open(workdir / f"{name}.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, str(path)], cwd=ROOT, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL)
    service = Service(name, config["listen_port"], proc, workdir)
    started.append(service)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        service.assert_alive()
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=0.2).close()
            return service
        except OSError:
            time.sleep(0.02)
    raise AssertionError(f"{name} did not listen on {service.port} within {START_TIMEOUT_S} s\n{service.output()}")


def stop_services(services: list[Service]) -> None:
    for service in services:
        if service.proc.poll() is None:
            service.proc.terminate()
    for service in services:
        try:
            service.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=5)


def mailbox_config(name: str, port: int, workdir: Path, active: bool = True, peers: list[int] = ()) -> dict:
    return {"name": name, "listen_port": port, "store_dir": str(workdir / f"store-{name}"),
            "events": str(workdir / "events" / f"{name}.jsonl"),
            "databases": {"DB1": {"active": active, "peers": [f"127.0.0.1:{p}" for p in peers]}}}


def cas_config(name: str, port: int, workdir: Path, mailbox_ports: list[int]) -> dict:
    return {"name": name, "listen_port": port, "events": str(workdir / "events" / f"{name}.jsonl"),
            "databases": {"DB1": [f"127.0.0.1:{p}" for p in mailbox_ports]}}


def stored_ids(store_dir: Path, db: str = "DB1") -> list:
    """msg_ids in a copy's SQLite file, read by this test process (WAL allows it)."""
    conn = sqlite3.connect(store_dir / f"{db}.sqlite", timeout=5)
    try:
        return [row[0] for row in conn.execute("SELECT msg_id FROM messages")]
    finally:
        conn.close()


# ---- the wire --------------------------------------------------------------------------

def frame(message: Any) -> bytes:
    body = json.dumps(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


class Conn:
    """A blocking framed connection; every read has a deadline so a test never hangs."""

    def __init__(self, port: int, timeout: float = REPLY_TIMEOUT_S):
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=2)
        self.timeout = timeout

    def __enter__(self) -> "Conn":
        return self

    def __exit__(self, *exc) -> None:
        self.sock.close()

    def send_raw(self, data: bytes) -> None:
        self.sock.sendall(data)

    def send(self, message: Any) -> None:
        self.send_raw(frame(message))

    def _read_exactly(self, count: int, deadline: float) -> bytes | None:
        data = b""
        while len(data) < count:
            left = deadline - time.monotonic()
            if left <= 0:
                raise socket.timeout()
            self.sock.settimeout(left)
            try:
                chunk = self.sock.recv(count - len(data))
            except (ConnectionResetError, BrokenPipeError):
                return None
            if not chunk:
                return None
            data += chunk
        return data

    def recv(self, timeout: float | None = None) -> dict | None:
        """The next reply frame, or CLOSED if the service closed the connection."""
        deadline = time.monotonic() + (timeout or self.timeout)
        try:
            header = self._read_exactly(HEADER.size, deadline)
            if header is None:
                return CLOSED
            (length,) = HEADER.unpack(header)
            assert length <= 64 * 1024, f"service sent a frame of {length} bytes"
            body = self._read_exactly(length, deadline)
        except socket.timeout:
            pytest.fail(f"service hung: no reply and no close within {timeout or self.timeout} s")
        if body is None:
            return CLOSED
        reply = json.loads(body)
        assert isinstance(reply, dict), f"reply is not an object: {reply!r}"
        return reply

    def call(self, message: Any, timeout: float | None = None) -> dict | None:
        self.send(message)
        return self.recv(timeout)


def assert_refused(reply: dict | None, *errors: str) -> None:
    """The service either closed the connection or answered ok=false (with one of errors)."""
    if reply is CLOSED:
        return
    assert reply.get("ok") is False, f"bad input was accepted: {reply}"
    if errors:
        assert reply.get("error") in errors, f"expected error in {errors}, got {reply}"


# ---- the stack: one mailbox, one CAS ---------------------------------------------------

@dataclass
class Stack:
    mailbox: Service
    cas: Service
    store_dir: Path

    def services(self) -> list[Service]:
        return [self.mailbox, self.cas]

    def logon(self, conn: Conn, user: str = "alice", sid: str | None = None) -> str:
        sid = sid or f"s-{uuid.uuid4().hex}"
        reply = conn.call({"op": "logon", "session": sid, "user": user, "db": "DB1", "password": f"pw-{user}"})
        assert reply and reply.get("ok") is True, f"logon failed: {reply}"
        return sid

    def assert_healthy(self) -> None:
        """Both processes alive; a fresh session logs on, sends, and the count grows by one."""
        for service in self.services():
            service.assert_alive()
        with Conn(self.cas.port, PROXY_TIMEOUT_S) as conn:
            self.logon(conn)
            before = conn.call({"op": "read"})
            assert before and before.get("ok") is True, f"read failed: {before}"
            msg_id = f"health-{uuid.uuid4().hex}"
            sent = conn.call({"op": "send", "msg_id": msg_id, "subject": "health check"})
            assert sent and sent.get("ok") is True and sent.get("msg_id") == msg_id, f"send failed: {sent}"
            after = conn.call({"op": "read"})
            assert after and after.get("ok") is True, f"read failed: {after}"
            assert after["count"] == before["count"] + 1, (before, after)
        assert msg_id in stored_ids(self.store_dir)
        for service in self.services():
            service.assert_alive()


@pytest.fixture
def stack(tmp_path):
    started: list[Service] = []
    try:
        mb_port, cas_port = free_ports(2)
        mailbox = start_service("roles.mailbox", mailbox_config("mbx1", mb_port, tmp_path), tmp_path, started)
        cas = start_service("roles.cas", cas_config("cas1", cas_port, tmp_path, [mb_port]), tmp_path, started)
        stack = Stack(mailbox, cas, tmp_path / "store-mbx1")
        stack.assert_healthy()
        yield stack
    finally:
        stop_services(started)


# ---- framing abuse, against both services ----------------------------------------------

def body_frame(body: bytes) -> bytes:
    return HEADER.pack(len(body)) + body


FRAMING_ABUSE: dict[str, tuple[bytes, bool]] = {
    # name: (bytes sent, whether to half-close our side afterwards)
    "header_claims_10MB": (HEADER.pack(10 * 1024 * 1024), False),
    "header_claims_4GB": (b"\xff\xff\xff\xff", False),
    "one_byte_over_max": (HEADER.pack(64 * 1024 + 1), False),
    "garbage_not_json": (body_frame(b"\x00garbage{{not json"), False),
    "invalid_utf8": (body_frame(b'{"op": "\xff\xfe\xfd"}'), False),
    "json_array": (body_frame(b'[{"op": "logon"}, 1, 2]'), False),
    "json_string": (body_frame(b'"logon"'), False),
    "json_null": (body_frame(b"null"), False),
    "empty_body": (body_frame(b""), False),
    "deeply_nested": (body_frame(b'{"op":' + b"[" * 20000 + b"]" * 20000 + b"}"), False),
    "truncated_header_then_close": (b"\x00\x00", True),
    "truncated_body_then_close": (HEADER.pack(100) + b'{"op": "log', True),
}


@pytest.mark.parametrize("target", ["cas", "mailbox"])
@pytest.mark.parametrize("abuse", list(FRAMING_ABUSE))
def test_bad_frame_is_refused_and_service_survives(stack, target, abuse):
    data, half_close = FRAMING_ABUSE[abuse]
    service = getattr(stack, target)
    with Conn(service.port) as conn:
        conn.send_raw(data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        reply = conn.recv()
        assert_refused(reply, "protocol")
        if reply is not CLOSED:
            assert conn.recv() is CLOSED, "the service kept a connection open after a framing error"
    stack.assert_healthy()


@pytest.mark.parametrize("target", ["cas", "mailbox"])
def test_abrupt_closes_do_not_hurt(stack, target):
    """Connect and reset mid-header, mid-body, and right after a request."""
    service = getattr(stack, target)
    for data in (b"\x00", HEADER.pack(50) + b"{", frame({"op": "ping"}) if target == "cas" else frame({"op": "status"})):
        sock = socket.create_connection(("127.0.0.1", service.port), timeout=2)
        sock.sendall(data)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))  # RST on close
        sock.close()
    stack.assert_healthy()


def test_many_bad_connections_at_once(stack):
    """Twenty half-open connections with a truncated frame do not block a real session."""
    socks = []
    try:
        for i in range(20):
            sock = socket.create_connection(("127.0.0.1", (stack.cas if i % 2 else stack.mailbox).port), timeout=2)
            sock.sendall(HEADER.pack(1000) + b"{")  # and then stall
            socks.append(sock)
        stack.assert_healthy()
    finally:
        for sock in socks:
            sock.close()
    stack.assert_healthy()


# ---- protocol abuse at the CAS -------------------------------------------------------

def cas_op_before_logon(stack: Stack, conn: Conn) -> None:
    msg_id = f"evil-{uuid.uuid4().hex}"
    assert_refused(conn.call({"op": "send", "msg_id": msg_id, "subject": "x", "user": "alice", "db": "DB1"}),
                   "auth_required")
    assert_refused(conn.call({"op": "read"}), "auth_required")
    assert_refused(conn.call({"op": "sync", "session": "nobody"}), "auth_required")
    assert msg_id not in stored_ids(stack.store_dir), "a send before logon reached the mailbox"


def cas_unknown_op_before_logon(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "frobnicate"}), "auth_required")


def cas_unknown_op_after_logon(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    assert_refused(conn.call({"op": "frobnicate"}), "unknown_op")
    assert_refused(conn.call({"op": "activate", "db": "DB1"}), "unknown_op")  # admin ops are not proxied
    assert_refused(conn.call({"no_op": True}), "unknown_op")


def cas_op_of_wrong_type_after_logon(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    assert_refused(conn.call({"op": ["send"]}), "unknown_op", "bad_request")


def cas_logon_wrong_types(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "logon", "session": 123, "user": "alice", "db": "DB1", "password": "pw-alice"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": ["alice"], "db": "DB1", "password": "x"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": None, "password": "pw-alice"}),
                   "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": {"DB1": 1},
                              "password": "pw-alice"}), "bad_request")
    assert_refused(conn.call({"op": "logon", "session": "s", "user": "alice", "db": "DB9", "password": "pw-alice"}),
                   "unknown_db")
    # a refused logon leaves the connection unauthenticated
    assert_refused(conn.call({"op": "read"}), "auth_required")
    # a wrong password (here of the wrong type) ends the connection
    reply = conn.call({"op": "logon", "session": "s", "user": "alice", "db": "DB1", "password": 12345})
    assert_refused(reply, "auth_failed")
    if reply is not CLOSED:
        assert conn.recv() is CLOSED, "the CAS kept the connection open after auth_failed"


def cas_resume_unknown_session(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "resume", "session": f"never-{uuid.uuid4().hex}"}), "auth_required")
    assert_refused(conn.call({"op": "resume", "session": ["a", "list"]}), "auth_required")
    assert_refused(conn.call({"op": "resume"}), "auth_required")
    assert_refused(conn.call({"op": "send", "msg_id": "after-failed-resume"}), "auth_required")


def cas_send_without_msg_id(stack: Stack, conn: Conn) -> None:
    stack.logon(conn)
    started = time.monotonic()
    assert_refused(conn.call({"op": "send", "subject": "no id"}, PROXY_TIMEOUT_S), "bad_request")
    assert_refused(conn.call({"op": "send", "msg_id": 42, "subject": "int id"}, PROXY_TIMEOUT_S), "bad_request")
    assert_refused(conn.call({"op": "send", "msg_id": None}, PROXY_TIMEOUT_S), "bad_request")
    assert time.monotonic() - started < 3, "bad_request from the mailbox took the CAS's whole locate deadline"
    # the session is still good after the refused sends
    assert conn.call({"op": "send", "msg_id": f"ok-{uuid.uuid4().hex}"}, PROXY_TIMEOUT_S)["ok"] is True


def cas_client_cannot_pick_user_or_db(stack: Stack, conn: Conn) -> None:
    """Fields the CAS owns (user, db) are overwritten from the session, not taken from the client."""
    stack.logon(conn, user="mallory")
    msg_id = f"spoof-{uuid.uuid4().hex}"
    reply = conn.call({"op": "send", "msg_id": msg_id, "user": "alice", "db": "DB9"}, PROXY_TIMEOUT_S)
    assert reply and reply.get("ok") is True, reply
    conn_db = sqlite3.connect(stack.store_dir / "DB1.sqlite", timeout=5)
    try:
        owner = conn_db.execute("SELECT user FROM messages WHERE msg_id=?", (msg_id,)).fetchone()
    finally:
        conn_db.close()
    assert owner == ("mallory",)


CAS_ABUSE: dict[str, Callable[[Stack, Conn], None]] = {
    "op_before_logon": cas_op_before_logon,
    "unknown_op_before_logon": cas_unknown_op_before_logon,
    "unknown_op_after_logon": cas_unknown_op_after_logon,
    "op_of_wrong_type_after_logon": cas_op_of_wrong_type_after_logon,
    "logon_wrong_types": cas_logon_wrong_types,
    "resume_unknown_session": cas_resume_unknown_session,
    "send_without_msg_id": cas_send_without_msg_id,
    "client_cannot_pick_user_or_db": cas_client_cannot_pick_user_or_db,
}


@pytest.mark.parametrize("abuse", list(CAS_ABUSE))
def test_cas_protocol_abuse(stack, abuse):
    with Conn(stack.cas.port, PROXY_TIMEOUT_S) as conn:
        CAS_ABUSE[abuse](stack, conn)
    stack.assert_healthy()


def test_cas_bad_field_in_proxied_request_is_a_prompt_bad_request(stack):
    with Conn(stack.cas.port, PROXY_TIMEOUT_S) as conn:
        stack.logon(conn)
        started = time.monotonic()
        reply = conn.call({"op": "read", "folder": {"not": "a string"}}, PROXY_TIMEOUT_S)
        elapsed = time.monotonic() - started
        assert_refused(reply)  # the loose contract holds either way
        assert reply is not CLOSED and reply.get("error") == "bad_request" and elapsed < 2, (reply, elapsed)
    stack.assert_healthy()


def test_cas_bad_field_in_proxied_request_is_refused_without_hanging(stack):
    """The loose contract (error or close within a timeout) for the same request."""
    with Conn(stack.cas.port, PROXY_TIMEOUT_S) as conn:
        stack.logon(conn)
        assert_refused(conn.call({"op": "read", "folder": {"not": "a string"}}, PROXY_TIMEOUT_S))
        # the session survives it
        assert conn.call({"op": "read"}, PROXY_TIMEOUT_S)["ok"] is True
    stack.assert_healthy()


# ---- protocol abuse at the mailbox ---------------------------------------------------

def mbx_no_db(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m"}), "unknown_db")
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m", "db": ["DB1"]}), "unknown_db")
    assert_refused(conn.call({"op": "send", "user": "alice", "msg_id": "m", "db": "DB9"}), "unknown_db")


def mbx_unknown_op(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "frobnicate", "db": "DB1", "user": "alice"}), "unknown_op")
    assert_refused(conn.call({"op": "frobnicate"}), "unknown_db")
    assert_refused(conn.call({"db": "DB1", "user": "alice"}), "unknown_op")


def mbx_send_without_msg_id(stack: Stack, conn: Conn) -> None:
    assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice"}), "bad_request")
    assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": 7}), "bad_request")
    assert_refused(conn.call({"op": "send", "db": "DB1", "msg_id": "m"}), "bad_request")  # no user
    assert_refused(conn.call({"op": "read", "db": "DB1", "user": None}), "bad_request")


def mbx_replicate_junk_shapes(stack: Stack, conn: Conn) -> None:
    before = stored_ids(stack.store_dir)
    for rows in ("rows", None, 42, {"msg_id": "a", "user": "b"}, [1, 2, 3], [None], [["a", "b"]],
                 [{"msg_id": "only-id"}], [{"user": "only-user"}], [{"msg_id": "ok-1", "user": "u"}, "junk"]):
        assert_refused(conn.call({"op": "replicate", "db": "DB1", "rows": rows}), "bad_request")
    assert_refused(conn.call({"op": "replicate", "db": "DB9", "rows": []}), "unknown_db")
    assert_refused(conn.call({"op": "replicate", "rows": [{"msg_id": "x", "user": "y"}]}), "unknown_db")
    assert stored_ids(stack.store_dir) == before, "a refused replicate stored rows"


def mbx_replicate_junk_values(stack: Stack, conn: Conn) -> None:
    """Rows of the right shape whose values SQLite cannot bind: refused or closed."""
    before = stored_ids(stack.store_dir)
    for row in ({"msg_id": "j-folder-dict", "user": "alice", "folder": {"x": 1}},
                {"msg_id": ["j", "list"], "user": "alice"},
                {"msg_id": "j-subject-list", "user": "alice", "subject": [1, 2]}):
        with Conn(stack.mailbox.port) as fresh:  # the mailbox may close each one
            assert_refused(fresh.call({"op": "replicate", "db": "DB1", "rows": [row]}))
    # the original connection was untouched by the others
    assert conn.call({"op": "status"})["ok"] is True
    assert stored_ids(stack.store_dir) == before, "a refused replicate stored rows"


MAILBOX_ABUSE: dict[str, Callable[[Stack, Conn], None]] = {
    "no_or_unknown_db": mbx_no_db,
    "unknown_op": mbx_unknown_op,
    "send_without_msg_id_or_user": mbx_send_without_msg_id,
    "replicate_junk_shapes": mbx_replicate_junk_shapes,
    "replicate_junk_values": mbx_replicate_junk_values,
}


@pytest.mark.parametrize("abuse", list(MAILBOX_ABUSE))
def test_mailbox_protocol_abuse(stack, abuse):
    with Conn(stack.mailbox.port) as conn:
        MAILBOX_ABUSE[abuse](stack, conn)
    stack.assert_healthy()


@pytest.mark.parametrize("row", [{"msg_id": None, "user": "alice"}, {"msg_id": "null-user", "user": None}],
                         ids=["null_msg_id", "null_user"])
def test_mailbox_replicate_refuses_null_fields(stack, row):
    with Conn(stack.mailbox.port) as conn:
        reply = conn.call({"op": "replicate", "db": "DB1", "rows": [row]})
    stack.assert_healthy()
    assert_refused(reply, "bad_request")
    assert None not in stored_ids(stack.store_dir), "a row with a NULL msg_id was stored"


def test_passive_copy_refuses_client_ops(tmp_path):
    started: list[Service] = []
    try:
        (port,) = free_ports(1)
        passive = start_service("roles.mailbox", mailbox_config("mbxp", port, tmp_path, active=False),
                                tmp_path, started)
        with Conn(port) as conn:
            for op in ("send", "read", "sync"):
                assert_refused(conn.call({"op": op, "db": "DB1", "user": "alice", "msg_id": "m"}), "not_active")
            assert conn.call({"op": "status"}) == {"ok": True, "server": "mbxp", "databases": {"DB1": False}}
        assert stored_ids(tmp_path / "store-mbxp") == []
        passive.assert_alive()
    finally:
        stop_services(started)


# ---- DAG switchover under a live CAS session -----------------------------------------

def admin(port: int, message: dict) -> dict:
    with Conn(port) as conn:
        reply = conn.call(message)
    assert reply and reply.get("ok") is True, f"{message} -> {reply}"
    return reply


def test_dag_switchover_cas_follows_and_no_acked_message_is_lost(tmp_path):
    started: list[Service] = []
    try:
        port_a, port_b, port_cas = free_ports(3)
        mbx_a = start_service("roles.mailbox", mailbox_config("mbxA", port_a, tmp_path, True, [port_b]),
                              tmp_path, started)
        mbx_b = start_service("roles.mailbox", mailbox_config("mbxB", port_b, tmp_path, False, [port_a]),
                              tmp_path, started)
        cas = start_service("roles.cas", cas_config("cas1", port_cas, tmp_path, [port_a, port_b]),
                            tmp_path, started)
        store_a, store_b = tmp_path / "store-mbxA", tmp_path / "store-mbxB"
        acked: list[str] = []

        with Conn(cas.port, PROXY_TIMEOUT_S) as conn:
            sid = f"s-{uuid.uuid4().hex}"
            assert conn.call({"op": "logon", "session": sid, "user": "alice", "db": "DB1",
                              "password": "pw-alice"})["ok"] is True
            for i in range(5):
                msg_id = f"before-{i}"
                reply = conn.call({"op": "send", "msg_id": msg_id, "subject": f"m{i}"})
                assert reply["ok"] is True and reply["server"] == "mbxA", reply
                acked.append(msg_id)
            assert set(acked) <= set(stored_ids(store_a))
            assert set(acked) <= set(stored_ids(store_b)), "synchronous replication did not reach the passive copy"

            # switchover: A steps down, B takes over (framed admin ops, straight to the mailboxes)
            assert admin(port_a, {"op": "deactivate", "db": "DB1"})["active"] is False
            assert admin(port_b, {"op": "activate", "db": "DB1"})["active"] is True

            # the SAME CAS session carries on and lands on B
            for i in range(5):
                msg_id = f"after-{i}"
                reply = conn.call({"op": "send", "msg_id": msg_id, "subject": f"n{i}"})
                assert reply["ok"] is True and reply["server"] == "mbxB", reply
                acked.append(msg_id)
            read = conn.call({"op": "read"})
            assert read["ok"] is True and read["server"] == "mbxB" and read["count"] == len(acked), read

        missing = set(acked) - set(stored_ids(store_b))
        assert not missing, f"acknowledged messages missing from the new active copy B: {sorted(missing)}"
        assert set(acked) <= set(stored_ids(store_a)), "B did not replicate back to A (now passive)"
        with Conn(port_a) as conn:
            assert_refused(conn.call({"op": "send", "db": "DB1", "user": "alice", "msg_id": "stale"}), "not_active")
        for service in (mbx_a, mbx_b, cas):
            service.assert_alive()
        roles = [json.loads(line) for name in ("mbxA", "mbxB")
                 for line in (tmp_path / "events" / f"{name}.jsonl").read_text().splitlines()]
        assert {(e["server"], e["active"]) for e in roles if e["ev"] == "db_role"} == {("mbxA", False), ("mbxB", True)}
        assert not [e for e in roles if e["ev"] == "replication_failed"]
    finally:
        stop_services(started)


# ---- stalls: replies must still match requests ---------------------------------------

DESYNC_BUG = (
    "BUG: roles/mailbox.py Peer.call closes its connection on OSError/TimeoutError/ConnectionError "
    "but not on asyncio.CancelledError; the CAS wraps each call in asyncio.wait_for(..., "
    "mailbox_timeout_ms=300 ms), which cancels it mid-read when the mailbox is slower, so the link "
    "stays open with the old reply still on its way and the next call on that link reads the "
    "previous request's reply: the client gets a send ack for another msg_id, a read answered "
    "with a send reply, and so on for the rest of the session (traffic/client.py does not check "
    "the reply's msg_id, so it counts the wrong ack)")


def assert_replies_match(conn: Conn, acked: list[str], tag: str, rounds: int = 3) -> None:
    """Each send gets the ack for its own msg_id; each read counts exactly the acked ones."""
    for i in range(rounds):
        msg_id = f"{tag}-{i}"
        started = time.monotonic()
        reply = conn.call({"op": "send", "msg_id": msg_id})
        elapsed = time.monotonic() - started
        assert reply and reply.get("ok") is True, (msg_id, reply, elapsed)
        assert reply.get("msg_id") == msg_id, f"the ack for {msg_id} is someone else's reply: {reply}"
        assert elapsed < 2, f"send of {msg_id} took {elapsed:.1f} s"
        acked.append(msg_id)
        read = conn.call({"op": "read"})
        assert read and read.get("ok") is True and "count" in read, f"read got a reply that is not a read's: {read}"
        assert read["count"] == len(acked), (read, len(acked))


def test_cas_replies_match_requests_after_a_mailbox_stall(tmp_path):
    """The only mailbox stops for 0.5 s (a short freeze) while a send is in flight."""
    started: list[Service] = []
    try:
        mb_port, cas_port = free_ports(2)
        mailbox = start_service("roles.mailbox", mailbox_config("mbx1", mb_port, tmp_path), tmp_path, started)
        cas = start_service("roles.cas", cas_config("cas1", cas_port, tmp_path, [mb_port]), tmp_path, started)
        acked: list[str] = []
        with Conn(cas.port, PROXY_TIMEOUT_S) as conn:
            assert conn.call({"op": "logon", "session": "s-stall", "user": "alice", "db": "DB1",
                              "password": "pw-alice"})["ok"] is True
            assert_replies_match(conn, acked, "before", rounds=1)
            os.kill(mailbox.proc.pid, signal.SIGSTOP)
            thaw = threading.Timer(0.5, os.kill, (mailbox.proc.pid, signal.SIGCONT))
            thaw.start()
            try:
                reply = conn.call({"op": "send", "msg_id": "during-stall"})
            finally:
                thaw.join()
            assert reply and reply.get("ok") is True and reply.get("msg_id") == "during-stall", reply
            acked.append("during-stall")
            assert_replies_match(conn, acked, "after")
        mailbox.assert_alive()
    finally:
        for service in started:
            if service.proc.poll() is None:
                os.kill(service.proc.pid, signal.SIGCONT)
        stop_services(started)


def test_frozen_passive_copy_does_not_block_sends(tmp_path):
    started: list[Service] = []
    try:
        port_a, port_b, port_cas = free_ports(3)
        start_service("roles.mailbox", mailbox_config("mbxA", port_a, tmp_path, True, [port_b]), tmp_path, started)
        mbx_b = start_service("roles.mailbox", mailbox_config("mbxB", port_b, tmp_path, False, [port_a]),
                              tmp_path, started)
        cas = start_service("roles.cas", cas_config("cas1", port_cas, tmp_path, [port_a, port_b]), tmp_path, started)
        acked: list[str] = []
        with Conn(cas.port, PROXY_TIMEOUT_S) as conn:
            assert conn.call({"op": "logon", "session": "s-frozen", "user": "alice", "db": "DB1",
                              "password": "pw-alice"})["ok"] is True
            assert_replies_match(conn, acked, "warm", rounds=1)
            os.kill(mbx_b.proc.pid, signal.SIGSTOP)
            assert_replies_match(conn, acked, "while-b-frozen")
        assert set(acked) <= set(stored_ids(tmp_path / "store-mbxA"))
    finally:
        for service in started:
            if service.proc.poll() is None:
                os.kill(service.proc.pid, signal.SIGCONT)
        stop_services(started)


# ---- autodiscover ------------------------------------------------------------------------


@pytest.fixture
def autodiscover(tmp_path):
    started: list[Service] = []
    [port] = free_ports(1)
    config = {"name": "ad1", "listen_port": port, "events": str(tmp_path / "events" / "ad1.jsonl"),
              "users": {"alice": "DB1"}, "rcas": {"DB1": "outlook.hq.lab.test"}}
    service = start_service("roles.autodiscover", config, tmp_path, started)
    try:
        yield service
    finally:
        stop_services(started)


def ask(port: int, user: str) -> dict | None:
    with Conn(port) as conn:
        return conn.call({"op": "autodiscover", "user": user})


@pytest.mark.parametrize("abuse", sorted(FRAMING_ABUSE))
def test_autodiscover_survives_bad_frames(autodiscover, abuse):
    data, half_close = FRAMING_ABUSE[abuse]
    with Conn(autodiscover.port) as conn:
        conn.send_raw(data)
        if half_close:
            conn.sock.shutdown(socket.SHUT_WR)
        assert_refused(conn.recv(), "protocol")
    assert autodiscover.proc.poll() is None
    assert ask(autodiscover.port, "alice")["server"] == "outlook.hq.lab.test"


@pytest.mark.parametrize("message,error", [
    ({"op": "autodiscover", "user": "mallory"}, "unknown_user"),
    ({"op": "autodiscover", "user": ["alice"]}, "unknown_user"),
    ({"op": "autodiscover"}, "unknown_user"),
    ({"op": "set_rcas", "db": "DB9", "server": "x"}, "bad_request"),
    ({"op": "set_rcas", "db": "DB1", "server": ""}, "bad_request"),
    ({"op": "set_rcas", "db": "DB1", "server": 7}, "bad_request"),
    ({"op": "frobnicate"}, "unknown_op"),
    ({"op": {"a": 1}}, "unknown_op"),
])
def test_autodiscover_refuses_bad_requests(autodiscover, message, error):
    with Conn(autodiscover.port) as conn:
        assert_refused(conn.call(message), error)
    assert ask(autodiscover.port, "alice") == {"ok": True, "user": "alice", "db": "DB1",
                                               "server": "outlook.hq.lab.test"}


def test_autodiscover_rebind_changes_the_answer(autodiscover):
    with Conn(autodiscover.port) as conn:
        assert conn.call({"op": "set_rcas", "db": "DB1", "server": "cas2.lab.test"})["ok"] is True
    assert ask(autodiscover.port, "alice")["server"] == "cas2.lab.test"
