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

from caslab.network.ofchannel import listening_socket, make_channel_tls
from controllers import tls_listener
from controllers.tls_listener import MAX_PENDING, SharedTlsSocket, TlsListener, socket_owner, tls_context

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
def tls_files():
    folder = Path(tempfile.mkdtemp(prefix="caslab-tls-"))
    yield make_channel_tls(folder / "tls")
    shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
def channel(monkeypatch, tls_files):
    """A listener with the run's TLS material; refusals collected as (reason, time)."""
    monkeypatch.setattr(tls_listener, "HANDSHAKE_S", 1.0)
    files = tls_files
    sock = listening_socket()
    refused: list[tuple[str, float]] = []
    listener = TlsListener(sock, tls_context(str(files.controller_cert), str(files.controller_key), str(files.ca)),
                           switch_uid=0, on_refused=lambda reason, addr: refused.append((reason, time.monotonic())))
    yield listener, files, refused
    listener.close()


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
    assert got is not None and isinstance(got[0], SharedTlsSocket), refused
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


def tls_pair(files) -> tuple[SharedTlsSocket, ssl.SSLSocket]:
    """A controller end (as the listener hands it to os-ken) and a switch end, connected."""
    server = listening_socket()
    try:
        box: list = []
        threading.Thread(target=lambda: box.append(switch_client(files, server.getsockname()[1])), daemon=True).start()
        conn, _ = server.accept()
        context = tls_context(str(files.controller_cert), str(files.controller_key), str(files.ca))
        controller = SharedTlsSocket(context.wrap_socket(conn, server_side=True))
        assert wait_for(lambda: box, 5), "the switch end never connected"
        return controller, box[0]
    finally:
        server.close()


def echo_until_eof(tls: ssl.SSLSocket) -> None:
    """The switch's end, owned by this thread alone: it closes the socket itself, so no other
    thread can close it under a call and hand its descriptor to the next connection."""
    try:
        while data := tls.recv(65536):
            tls.sendall(data)
    except OSError:
        pass
    finally:
        tls.close()


def test_a_channel_read_in_one_thread_and_written_in_another_stays_intact(tls_files):
    """os-ken's Datapath: a receive loop and a send loop on one socket. On a bare SSLSocket
    this broke about one connection in five on this machine (9 of 40: the peer saw the
    channel end); every connection here must carry every byte, in order, both ways."""
    chunk, count = 100, 2000
    sent = b"".join(bytes([k % 251]) * chunk for k in range(count))
    for connection in range(25):
        controller, switch = tls_pair(tls_files)
        echo = threading.Thread(target=echo_until_eof, args=(switch,), daemon=True)
        echo.start()
        controller.settimeout(5)
        errors: list[BaseException] = []

        def send_all():
            try:
                for k in range(count):
                    controller.sendall(sent[k * chunk:(k + 1) * chunk])
            except OSError as exc:
                errors.append(exc)

        sender = threading.Thread(target=send_all)
        sender.start()
        got = bytearray()
        try:
            while len(got) < len(sent) and (data := controller.recv(8)):
                got += data
        finally:
            sender.join(10)
            controller.close()
            echo.join(10)  # the switch's end sees the hang-up and closes itself
        assert not echo.is_alive(), f"connection {connection}: the switch's end never saw the hang-up"
        assert not errors, f"connection {connection}: sending failed: {errors[0]!r}"
        assert bytes(got) == sent, f"connection {connection}: {len(got)} of {len(sent)} bytes came back intact"


def test_a_shared_channels_recv_times_out_as_a_socket_does(tls_files):
    controller, switch = tls_pair(tls_files)
    try:
        controller.settimeout(0.2)
        with pytest.raises(socket.timeout):
            controller.recv(8)
        switch.sendall(b"hello")
        assert controller.recv(8) == b"hello"
    finally:
        controller.close()
        switch.close()


def test_after_its_sending_is_shut_a_shared_channel_still_reads_tls(tls_files):
    """os-ken ends a channel's sending with shutdown(SHUT_WR) and reads until the switch
    hangs up: those reads must still be decrypted, not raw TLS records."""
    controller, switch = tls_pair(tls_files)
    try:
        controller.settimeout(5)
        switch.sendall(b"goodbye")  # on its way when the controller ends its sending
        controller.shutdown(socket.SHUT_WR)
        assert controller.recv(16) == b"goodbye"  # decrypted: not the raw TLS record
        assert switch.recv(8) == b""  # the switch sees the end of the controller's sending
    finally:
        controller.close()
        switch.close()


def test_a_closed_shared_channel_refuses_to_read(tls_files):
    controller, switch = tls_pair(tls_files)
    controller.close()
    try:
        with pytest.raises(OSError):
            controller.recv(8)
    finally:
        switch.close()
