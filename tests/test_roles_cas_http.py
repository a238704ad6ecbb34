"""roles/cas_http.py on loopback, for real: a mailbox and a CAS with its HTTPS side, TLS
with the lab's own CA (caslab/network/tls.py), clients over raw TLS sockets and http.client.

Issue 18 (low): the HTTPS side had no read deadline (an idle connection lived an hour) and
no connection cap, the Outlook Anywhere IN channel waited for frames forever, and the
ActiveSync device table was unbounded and shared across users.
"""

from __future__ import annotations

import base64
import http.client
import socket
import ssl
import time
from pathlib import Path


from caslab.network.tls import make_lab_tls
from labcommon.auth import password_for
from tests.roles_support import (
    Conn, Service, free_ports, frame, mailbox_config, send_direct, start_service, wait_until,
)
from tests.roles_support import started

__all__ = ["started"]  # the fixture imported above

IDLE_S = 2.0


def start_cas_http(tmp_path: Path, started: list[Service], **http: object) -> tuple[Service, Service, ssl.SSLContext]:
    mb_port, mb_admin, cas_port, cas_admin, https_port = free_ports(5)
    mailbox = start_service("roles.mailbox", mailbox_config("mbx1", mb_port, mb_admin, tmp_path), tmp_path, started)
    tls = make_lab_tls(tmp_path / "tls", ["mail.lab.test"], ["127.0.0.1"], key_folder=tmp_path / "keys")
    config = {"name": "cas1", "listen_port": cas_port, "admin_port": cas_admin,
              "events": str(tmp_path / "events" / "cas1.jsonl"), "databases": {"DB1": [f"127.0.0.1:{mb_port}"]},
              "http": {"port": https_port, "cert": str(tls.cert), "key": str(tls.key),
                       "users": {"alice": "DB1", "bob": "DB1"}, "external_url": "https://mail.lab.test",
                       "time_scale": 1.0, **http}}
    cas = start_service("roles.cas_http", config, tmp_path, started)
    context = ssl.create_default_context(cafile=str(tls.ca))
    return mailbox, cas, context


def tls_socket(port: int, context: ssl.SSLContext) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", port), timeout=5)
    return context.wrap_socket(raw, server_hostname="mail.lab.test")


def closed_within(sock: ssl.SSLSocket, seconds: float) -> bool:
    """True when the server closed the connection within ``seconds`` (nothing was sent)."""
    sock.settimeout(seconds)
    try:
        return sock.recv(1) == b""
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        return False


def test_an_idle_https_connection_is_closed_after_the_idle_timeout(tmp_path, started):
    # Old behaviour: a connection that never sent a request stayed open (an hour).
    _, cas, context = start_cas_http(tmp_path, started, idle_timeout_s=IDLE_S)
    https = cas.config["http"]["port"]
    with tls_socket(https, context) as idle:
        begun = time.monotonic()
        assert closed_within(idle, IDLE_S + 5), "an idle HTTPS connection was kept open"
        assert time.monotonic() - begun >= IDLE_S - 0.5
    with tls_socket(https, context) as slow:  # half a request head: the same deadline
        slow.sendall(b"GET /owa/auth/logon.aspx HTTP/1.1\r\nHost: mail")
        assert closed_within(slow, IDLE_S + 5), "a request head that never ends was waited for"
    cas.assert_alive()


def test_https_connections_over_the_cap_are_closed_at_once(tmp_path, started):
    # Old behaviour: no cap: every connection was accepted and kept.
    _, cas, context = start_cas_http(tmp_path, started, idle_timeout_s=30, max_connections=3)
    https = cas.config["http"]["port"]
    held = [tls_socket(https, context) for _ in range(3)]
    try:
        with tls_socket(https, context) as extra:
            assert closed_within(extra, 3), "a connection over max_connections was kept"
        for sock in held:
            assert not closed_within(sock, 0.2), "a connection within the cap was closed"
    finally:
        for sock in held:
            sock.close()
    wait_until(lambda: served(https, context) == 200, 10, "a new connection served once the others closed")


def served(port: int, context: ssl.SSLContext) -> int:
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=5)
    connection.sock = tls_socket(port, context)
    try:
        connection.request("GET", "/owa/auth/logon.aspx", headers={"Host": "mail.lab.test"})
        return connection.getresponse().status
    except (ConnectionError, http.client.HTTPException, ssl.SSLError):
        return 0
    finally:
        connection.close()


def test_an_rpc_in_channel_that_sends_nothing_is_closed(tmp_path, started):
    # Old behaviour: the IN channel read its next frame without any deadline.
    _, cas, context = start_cas_http(tmp_path, started, idle_timeout_s=30, channel_idle_s=IDLE_S)
    https = cas.config["http"]["port"]
    conn_a1 = frame({"rts": "CONN/A1", "cookie": "c1"})
    with tls_socket(https, context) as out, tls_socket(https, context) as inn:
        out.sendall(b"RPC_OUT_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: mail.lab.test\r\n"
                    b"Content-Length: %d\r\n\r\n" % len(conn_a1) + conn_a1)
        wait_until(lambda: [e for e in cas.events("rpc_channel") if e["channel"] == "out"], 5, "OUT channel open")
        inn.sendall(b"RPC_IN_DATA /rpc/rpcproxy.dll HTTP/1.1\r\nHost: mail.lab.test\r\n"
                    b"Content-Length: 1073741824\r\n\r\n" + frame({"rts": "CONN/B1", "cookie": "c1"}))
        wait_until(lambda: [e for e in cas.events("rpc_channel") if e["state"] == "paired"], 5, "IN channel paired")
        [closed] = wait_until(lambda: [e for e in cas.events("rpc_channel") if e["channel"] == "in"
                                       and e["state"] == "closed"], IDLE_S + 5, "the silent IN channel closed")
        assert closed["reason"] == "idle", closed
    cas.assert_alive()


def eas_sync(port: int, context: ssl.SSLContext, user: str, device: str) -> dict:
    import json
    connection = http.client.HTTPSConnection("127.0.0.1", port, context=context, timeout=10)
    connection.sock = tls_socket(port, context)
    auth = base64.b64encode(f"{user}:{password_for(user)}".encode()).decode()
    try:
        connection.request("POST", f"/Microsoft-Server-ActiveSync?Cmd=Sync&DeviceId={device}&User={user}",
                           body=b"{}", headers={"Authorization": f"Basic {auth}", "Host": "mail.lab.test"})
        response = connection.getresponse()
        return json.loads(response.read())
    finally:
        connection.close()


def test_activesync_devices_are_per_user(tmp_path, started):
    # Old behaviour: the device table was keyed by DeviceId alone: bob's Sync with the
    # DeviceId alice's phone used was served on alice's session, from alice's mailbox.
    mailbox, cas, context = start_cas_http(tmp_path, started)
    with Conn(mailbox.port) as conn:
        for i in range(3):
            send_direct(conn, f"for-alice-{i}", user="alice")
    https = cas.config["http"]["port"]
    assert eas_sync(https, context, "alice", "phone-1")["count"] == 3
    assert eas_sync(https, context, "bob", "phone-1")["count"] == 0, "bob was served alice's mailbox"
    assert eas_sync(https, context, "alice", "phone-1")["count"] == 3



def links_to(port: int) -> int:
    """Established TCP connections to ``port`` on this host (from /proc/net/tcp)."""
    count = 0
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[3] == "01" and int(fields[2].split(":")[1], 16) == port:
            count += 1
    return count


def test_the_activesync_device_table_is_bounded(tmp_path, started):
    # Old behaviour: every DeviceId ever seen kept its entry and its link to the mailbox
    # server: five devices held five mailbox connections, for good.
    mailbox, cas, context = start_cas_http(tmp_path, started, max_devices=2)
    https = cas.config["http"]["port"]
    for i in range(5):
        assert eas_sync(https, context, "alice", f"device-{i}")["ok"] is True
    wait_until(lambda: links_to(mailbox.port) <= 2, 5, "links of forgotten devices closed")
    assert eas_sync(https, context, "alice", "device-0")["ok"] is True, "a forgotten device logs on again"
