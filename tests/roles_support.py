"""Shared helpers of the role tests: real role processes on loopback, and a framed client.

Every service runs as ``python -m roles.<role> CONFIG.json`` on 127.0.0.1 with free ports;
each gets its own ``admin_port`` (several services share this loopback, as they never do
in the lab, where each host has its own). 127.0.0.0/8 is all loopback on Linux, so a
client bound to 127.0.0.2 is "another host" as far as a mailbox's peer check goes.

No root, no Mininet.
"""

from __future__ import annotations

import json
import os
import resource
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parent.parent
HEADER = struct.Struct("!I")
REPLY_TIMEOUT_S = 5.0       # a framing error or a local check must be answered within this
PROXY_TIMEOUT_S = 10.0      # a proxied operation may wait for the CAS's locate deadline (5 s)
START_TIMEOUT_S = 20.0
CLOSED = None               # what Conn.recv returns when the service closed the connection
NOT_A_PEER = "127.0.0.2"    # a loopback source address that is no mailbox's peer


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


def wait_until(predicate: Callable[[], Any], timeout: float, what: str, interval: float = 0.01) -> Any:
    """Poll until ``predicate()`` is truthy and return it; fail naming ``what`` otherwise."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"not reached within {timeout} s: {what}")
        time.sleep(interval)


@dataclass
class Service:
    name: str
    port: int
    proc: subprocess.Popen
    workdir: Path
    config: dict[str, Any]

    @property
    def admin_port(self) -> int:
        return self.config["admin_port"]

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def store_dir(self) -> Path:
        return Path(self.config["store_dir"])

    def output(self) -> str:
        text = ""
        for stream in ("stdout", "stderr"):
            path = self.workdir / f"{self.name}.{stream}"
            if path.exists():
                text += f"--- {self.name} {stream} ---\n" + path.read_text(errors="replace")[-4000:]
        return text

    def assert_alive(self) -> None:
        assert self.proc.poll() is None, f"{self.name} exited with {self.proc.returncode}\n{self.output()}"

    def events(self, ev: str | None = None) -> list[dict]:
        path = Path(self.config["events"])
        if not path.exists():
            return []
        out = []
        for line in path.read_text().splitlines():
            try:
                record = json.loads(line)
            except ValueError:
                continue  # a line being written
            if ev is None or record.get("ev") == ev:
                out.append(record)
        return out

    def freeze(self) -> None:
        os.kill(self.proc.pid, signal.SIGSTOP)

    def thaw(self) -> None:
        os.kill(self.proc.pid, signal.SIGCONT)


def start_service(module: str, config: dict[str, Any], workdir: Path, started: list[Service],
                  nofile_soft: int | None = None) -> Service:
    """Start a role and wait for its ``service_up`` (logged once every listener is bound).
    ``nofile_soft`` starts the process with that soft open-file limit."""
    name = config["name"]
    path = workdir / f"{name}.json"
    path.write_text(json.dumps(config))

    def lower_nofile() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (nofile_soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))

    with open(workdir / f"{name}.stdout", "wb") as out, open(workdir / f"{name}.stderr", "wb") as err:
        proc = subprocess.Popen([sys.executable, "-m", module, str(path)], cwd=ROOT, stdout=out, stderr=err,
                                stdin=subprocess.DEVNULL, preexec_fn=lower_nofile if nofile_soft else None)
    service = Service(name, config["listen_port"], proc, workdir, config)
    started.append(service)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline:
        service.assert_alive()
        if service.events("service_up"):
            return service
        time.sleep(0.02)
    raise AssertionError(f"{name} did not start within {START_TIMEOUT_S} s\n{service.output()}")


def stop_services(services: list[Service]) -> None:
    """Stop what a test started, by pid (a frozen process is thawed first)."""
    for service in services:
        if service.proc.poll() is None:
            service.thaw()
            service.proc.terminate()
    for service in services:
        try:
            service.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            service.proc.kill()
            service.proc.wait(timeout=5)


@pytest.fixture
def started():
    """The services a test starts; all stopped at its end, whatever happened."""
    services: list[Service] = []
    try:
        yield services
    finally:
        stop_services(services)


def mailbox_config(name: str, port: int, admin_port: int, workdir: Path, active: bool = True,
                   peers: list[int] = (), extra_peer: int | None = None, **settings: Any) -> dict:
    """One database DB1 (copies on loopback ``peers`` ports). ``extra_peer`` adds a passive
    DB2 whose only peer is 127.0.0.1:<extra_peer>: 127.0.0.1 becomes a peer address without
    giving DB1 a copy to ship to."""
    databases = {"DB1": {"active": active, "peers": [f"127.0.0.1:{p}" for p in peers]}}
    if extra_peer is not None:
        databases["DB2"] = {"active": False, "peers": [f"127.0.0.1:{extra_peer}"]}
    return {"name": name, "listen_port": port, "admin_port": admin_port,
            "store_dir": str(workdir / f"store-{name}"), "events": str(workdir / "events" / f"{name}.jsonl"),
            "databases": databases, **settings}


def cas_config(name: str, port: int, admin_port: int, workdir: Path, mailbox_ports: list[int],
               **settings: Any) -> dict:
    return {"name": name, "listen_port": port, "admin_port": admin_port,
            "events": str(workdir / "events" / f"{name}.jsonl"),
            "databases": {"DB1": [f"127.0.0.1:{p}" for p in mailbox_ports]}, **settings}


def autodiscover_config(name: str, port: int, admin_port: int, workdir: Path, **settings: Any) -> dict:
    return {"name": name, "listen_port": port, "admin_port": admin_port,
            "events": str(workdir / "events" / f"{name}.jsonl"),
            "users": {"alice": "DB1"}, "rcas": {"DB1": "outlook.hq.lab.test"}, **settings}


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
    """A blocking framed connection; every read has a deadline so a test never hangs.
    ``source`` binds the client side (127.0.0.2: a host that is no mailbox's peer)."""

    def __init__(self, port: int, timeout: float = REPLY_TIMEOUT_S, source: str | None = None,
                 host: str = "127.0.0.1"):
        self.sock = socket.create_connection((host, port), timeout=2,
                                             source_address=(source, 0) if source else None)
        self.timeout = timeout

    def __enter__(self) -> Conn:
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
                raise TimeoutError()
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
        except TimeoutError:
            pytest.fail(f"service hung: no reply and no close within {timeout or self.timeout} s")
        if body is None:
            return CLOSED
        reply = json.loads(body)
        assert isinstance(reply, dict), f"reply is not an object: {reply!r}"
        return reply

    def call(self, message: Any, timeout: float | None = None) -> dict | None:
        self.send(message)
        return self.recv(timeout)


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


def assert_refused(reply: dict | None, *errors: str) -> None:
    """The service either closed the connection or answered ok=false (with one of errors)."""
    if reply is CLOSED:
        return
    assert reply.get("ok") is False, f"bad input was accepted: {reply}"
    if errors:
        assert reply.get("error") in errors, f"expected error in {errors}, got {reply}"


def admin(service: Service, message: dict, expect_ok: bool = True) -> dict:
    """One request on the service's loopback admin listener."""
    with Conn(service.admin_port) as conn:
        reply = conn.call(message)
    assert reply is not CLOSED, f"{service.name} closed the admin connection on {message}"
    if expect_ok:
        assert reply.get("ok") is True, f"{message} -> {reply}"
    return reply


def db_status(mailbox: Service, db: str = "DB1") -> dict:
    """A copy's admin status: {active, last_seq, behind}, after checking that the head it
    heard (what a failover passes on) agrees with how far behind it says it is."""
    status = dict(admin(mailbox, {"op": "status"})["databases"][db])
    heard = status.pop("heard_head")
    assert status["behind"] == max(0, heard - status["last_seq"]), (heard, status)
    return status


def send_direct(conn: Conn, msg_id: str, user: str = "alice", db: str = "DB1") -> dict:
    """A send straight to a mailbox (what a CAS sends), asserted acknowledged."""
    reply = conn.call({"op": "send", "db": db, "user": user, "msg_id": msg_id})
    assert reply and reply.get("ok") is True and reply.get("msg_id") == msg_id, (msg_id, reply)
    return reply


def logon(conn: Conn, user: str = "alice", sid: str | None = None) -> str:
    sid = sid or f"s-{uuid.uuid4().hex}"
    reply = conn.call({"op": "logon", "session": sid, "user": user, "db": "DB1", "password": f"pw-{user}"})
    assert reply and reply.get("ok") is True, f"logon failed: {reply}"
    return sid


def tcp_sockets() -> list[dict]:
    """IPv4 TCP sockets of this network namespace (/proc/net/tcp): local ip and port,
    state (hex: 0A listen, 01 established, 08 close-wait) and bytes waiting to be read."""
    out = []
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        ip_hex, port_hex = fields[1].split(":")
        ip = socket.inet_ntoa(struct.pack("<I", int(ip_hex, 16)))
        out.append({"ip": ip, "port": int(port_hex, 16), "state": fields[3],
                    "rx_queue": int(fields[4].split(":")[1], 16)})
    return out


# ---- the stack: one mailbox, one CAS ---------------------------------------------------

@dataclass
class Stack:
    mailbox: Service
    cas: Service

    @property
    def store_dir(self) -> Path:
        return self.mailbox.store_dir

    def services(self) -> list[Service]:
        return [self.mailbox, self.cas]

    def logon(self, conn: Conn, user: str = "alice", sid: str | None = None) -> str:
        return logon(conn, user, sid)

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


@pytest.fixture(scope="module")
def shared_stack(tmp_path_factory):
    """mbx1 (DB1 active, 127.0.0.1 a peer address through a passive DB2) behind cas1, shared
    by a module's abuse tests: each test proves the stack healthy after its abuse."""
    workdir = tmp_path_factory.mktemp("stack")
    services: list[Service] = []
    try:
        mb_port, mb_admin, cas_port, cas_admin, unused = free_ports(5)
        mailbox = start_service("roles.mailbox", mailbox_config("mbx1", mb_port, mb_admin, workdir,
                                                                extra_peer=unused), workdir, services)
        cas = start_service("roles.cas", cas_config("cas1", cas_port, cas_admin, workdir, [mb_port]), workdir,
                            services)
        stack = Stack(mailbox, cas)
        stack.assert_healthy()
        yield stack
    finally:
        stop_services(services)


@pytest.fixture
def stack(shared_stack):
    """The module's stack, alive at the start of the test (or the test fails here, not later)."""
    for service in shared_stack.services():
        service.assert_alive()
    return shared_stack
