"""The controller's OpenFlow listener (controllers/tls_listener.py), on loopback with the
run's real TLS material: only the switch's account may start a handshake, a handshake
trickled byte by byte ends at one deadline, and at most MAX_PENDING run at once, so
another account can neither hold threads and descriptors nor keep the switch out."""

from __future__ import annotations

import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest

from caslab.ofchannel import listening_socket, make_channel_tls
from controllers import tls_listener
from controllers.tls_listener import MAX_PENDING, TlsListener, socket_owner, tls_context

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]
NOBODY_UID = 65534
# a client that connects, says it is connected, then waits for the server's first byte or EOF
WAIT_FOR_EOF = ("import socket,sys; s=socket.create_connection(('127.0.0.1', int(sys.argv[1]))); "
                "print('connected', flush=True); s.settimeout(10); print(repr(s.recv(1)), flush=True)")


def test_socket_owner_reads_the_client_sockets_row():
    table = tempfile.NamedTemporaryFile("w", suffix=".tcp", delete=False)
    table.write("  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n"
                "   0: 0100007F:A001 0100007F:B002 01 00000000:00000000 00:00000000 00000000  1000        0 1 1\n"
                "   1: 0100007F:B002 0100007F:A001 01 00000000:00000000 00:00000000 00000000     0        0 2 1\n")
    table.close()
    try:
        assert socket_owner(("127.0.0.1", 0xA001), ("127.0.0.1", 0xB002), table.name) == 1000
        assert socket_owner(("127.0.0.1", 0xB002), ("127.0.0.1", 0xA001), table.name) == 0
        assert socket_owner(("127.0.0.1", 0xA002), ("127.0.0.1", 0xB002), table.name) is None
    finally:
        Path(table.name).unlink()


needs_root = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (acts as nobody)")


@pytest.fixture
def channel(monkeypatch):
    """A listener with the run's TLS material; refusals collected as (reason, time)."""
    monkeypatch.setattr(tls_listener, "HANDSHAKE_S", 1.0)
    folder = Path(tempfile.mkdtemp(prefix="caslab-of-"))
    files = make_channel_tls(folder / "tls")
    sock = listening_socket()
    refused: list[tuple[str, float]] = []
    listener = TlsListener(sock, tls_context(str(files.controller_cert), str(files.controller_key), str(files.ca)),
                           switch_uid=0, on_refused=lambda reason, addr: refused.append((reason, time.monotonic())))
    yield listener, files, refused
    listener.close()
    shutil.rmtree(folder, ignore_errors=True)


def switch_client(files, port: int) -> ssl.SSLSocket:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.load_cert_chain(str(files.switch_cert), str(files.switch_key))
    context.load_verify_locations(str(files.ca))
    return context.wrap_socket(socket.create_connection(("127.0.0.1", port), timeout=5))


def accepted(listener: TlsListener, seconds: float = 5):
    box: list = []
    threading.Thread(target=lambda: box.append(listener.accept()), daemon=True).start()
    deadline = time.monotonic() + seconds
    while not box and time.monotonic() < deadline:
        time.sleep(0.02)
    return box[0] if box else None


def wait_for(predicate, seconds: float) -> bool:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.02)
    return predicate()


@needs_root
def test_the_switch_gets_through_with_its_certificate(channel):
    listener, files, refused = channel
    client = switch_client(files, listener.sock.getsockname()[1])
    got = accepted(listener)
    assert got is not None and isinstance(got[0], ssl.SSLSocket), refused
    got[0].sendall(b"x")
    assert client.recv(1) == b"x"
    client.close()
    got[0].close()


@needs_root
def test_another_accounts_connection_is_closed_before_any_tls(channel):
    listener, _files, refused = channel
    port = listener.sock.getsockname()[1]
    res = subprocess.run([*NOBODY, sys.executable, "-I", "-c", WAIT_FOR_EOF, str(port)], capture_output=True,
                         text=True, timeout=20)
    assert res.stdout.split() == ["connected", "b''"], (res.stdout, res.stderr)  # EOF, not a ServerHello
    assert wait_for(lambda: refused, 2)
    assert f"uid {NOBODY_UID}" in refused[0][0], refused


@needs_root
def test_a_trickled_handshake_ends_at_one_deadline(channel):
    listener, _files, refused = channel
    client = socket.create_connection(listener.sock.getsockname(), timeout=5)
    started, closed = time.monotonic(), None
    try:
        client.sendall(b"\x16")  # a TLS record's first byte, then one more every 0.3 s
        while time.monotonic() - started < 4:
            time.sleep(0.3)
            client.sendall(b"\x03")
    except OSError:
        closed = time.monotonic()
    finally:
        client.close()
    assert wait_for(lambda: refused, 2), "the trickled handshake was never ended"
    assert refused[0][1] - started < 2.0, f"ended after {refused[0][1] - started:.1f} s, not at the 1 s deadline"
    assert closed is not None, "the server kept reading past its deadline"


@needs_root
def test_at_most_max_pending_handshakes_run_at_once(channel):
    listener, files, refused = channel
    address = listener.sock.getsockname()
    silent = [socket.create_connection(address, timeout=5) for _ in range(MAX_PENDING + 1)]
    try:
        assert wait_for(lambda: any("already under way" in r for r, _ in refused), 2), refused
        assert sum("already under way" in r for r, _ in refused) == 1
        # once the silent ones hit their deadline, the switch gets in again
        assert wait_for(lambda: len(refused) == MAX_PENDING + 1, 3), refused
        client = switch_client(files, address[1])
        assert accepted(listener) is not None
        client.close()
    finally:
        for s in silent:
            s.close()
