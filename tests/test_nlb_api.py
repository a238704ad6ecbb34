"""controllers/nlb_api.py: the NLB's admin API, served by its real ThreadingHTTPServer on
127.0.0.1 in front of a small fake app. Only loopback callers with the token get in (no
DNS rebinding through Host, nothing a web page sends with an Origin), bodies are bounded
and checked, and every bad request gets its 4xx promptly, never a hung thread or a
dropped connection."""

from __future__ import annotations

import http.client
import json
import os
import socket
import threading
import time

import pytest

from controllers import nlb_api
from controllers.nlb_state import Vip
from labcommon.programs import CONTROLLER, ConfigError, NlbApi, read_config
from tests.nlb_lab import config

TOKEN = "s3cret-token"


class FakeApp:
    """What the API calls on the app, recorded."""

    def __init__(self):
        self.vips = [Vip(i + 1, spec) for i, spec in enumerate(config().vips)]
        self.calls: list[tuple] = []

    def snapshot(self) -> dict:
        return {"vips": [v.name for v in self.vips], "calls": len(self.calls)}

    def find_vip(self, name_or_ip: str):
        return next((v for v in self.vips if name_or_ip in (v.name, v.ip)), None)

    def drain(self, vip, name, deadline_s=None):
        self.calls.append(("drain", vip.name, name, deadline_s))

    def rejoin(self, vip, name):
        self.calls.append(("rejoin", vip.name, name))

    def admin_set(self, vip, name, up):
        self.calls.append(("admin_set", vip.name, name, up))

    def set_affinity(self, vip, affinity):
        self.calls.append(("set_affinity", vip.name, affinity))


@pytest.fixture(scope="module")
def server():
    """A real server of the API on an ephemeral loopback port, for the module."""
    app = FakeApp()
    httpd = nlb_api.ApiServer(app, TOKEN, max_connections=64)
    port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    yield port, app
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


@pytest.fixture
def api(server):
    """(port, app), the app's record of calls empty."""
    server[1].calls.clear()
    return server


def call(port: int, method: str, path: str, body=None, headers: dict | None = None) -> tuple[int, dict]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    base = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    data = body if isinstance(body, bytes) or body is None else json.dumps(body).encode()
    conn.request(method, path, body=data, headers={**base, **(headers or {})})
    response = conn.getresponse()
    payload = json.loads(response.read() or b"{}")
    conn.close()
    return response.status, payload


def raw(port: int, request: bytes, half_close: bool = False) -> tuple[int, dict, float]:
    """Send bytes as they are; (status, body, seconds until the server closed)."""
    start = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=4) as sock:
        sock.sendall(request)
        if half_close:
            sock.shutdown(socket.SHUT_WR)
        chunks = []
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    elapsed = time.monotonic() - start
    head, _, body = b"".join(chunks).partition(b"\r\n\r\n")
    assert head, "the server closed the connection without an answer"
    return int(head.split()[1]), json.loads(body), elapsed


def post_head(port: int, length: str | bytes, path: str = "/nlb/HQ/members/cas1/drain") -> bytes:
    value = length if isinstance(length, bytes) else length.encode()
    return (f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nAuthorization: Bearer {TOKEN}\r\n"
            f"Content-Type: application/json\r\n").encode() + b"Content-Length: " + value + b"\r\n\r\n"


# ---- who may call ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", f"bearer {TOKEN}", f"Bearer {TOKEN}x",
                                           f"Basic {TOKEN}", "Bearer s3cret-tokén"])
def test_missing_or_wrong_token_is_401(api, authorization):
    port, app = api
    headers = {} if authorization is None else {"Authorization": authorization}
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    conn.putrequest("POST", "/nlb/HQ/members/cas1/down")
    for name, value in headers.items():
        conn.putheader(name, value.encode("utf-8"))
    conn.putheader("Content-Length", "0")
    conn.endheaders()
    response = conn.getresponse()
    assert response.status == 401 and "token" in json.loads(response.read())["error"]
    assert app.calls == []


@pytest.mark.parametrize("host", ["evil.example", "evil.example:{port}", "127.0.0.1:1", "localhost", "127.0.0.1",
                                  "[::1]:{port}", "127.0.0.1:{port}.evil.example"])
def test_a_host_that_is_not_this_loopback_port_is_403(api, host):
    port, app = api
    status, body = call(port, "POST", "/nlb/HQ/members/cas1/down", {}, {"Host": host.format(port=port)})
    assert status == 403 and "Host" in body["error"] and app.calls == []


def test_no_host_header_is_403(api):
    port, _ = api
    request = f"GET /nlb HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n\r\n".encode()
    assert raw(port, request)[0] == 403


@pytest.mark.parametrize("origin", ["null", "http://127.0.0.1:{port}", "https://evil.example", ""])
@pytest.mark.parametrize("method", ["GET", "POST"])
def test_any_origin_header_is_403(api, origin, method):
    port, app = api
    status, body = call(port, method, "/nlb" if method == "GET" else "/nlb/HQ/members/cas1/down",
                        {} if method == "POST" else None, {"Origin": origin.format(port=port)})
    assert status == 403 and "web pages" in body["error"] and app.calls == []


def test_localhost_by_name_is_a_loopback_host(api):
    port, _ = api
    assert call(port, "GET", "/nlb", headers={"Host": f"localhost:{port}"})[0] == 200


# ---- bounded, checked bodies ---------------------------------------------------------------------------


@pytest.mark.parametrize("length, status", [
    ("-1", 400), ("x", 400), ("1.5", 400), ("0x10", 400), ("+5", 400), ("1e3", 400), ("5 5", 400),
    ("\u00b2".encode("latin-1"), 400),  # a digit to str.isdigit(), not to int()
    ("9" * 5000, 413),  # more digits than int() converts: far over the limit anyway
])
def test_a_bad_content_length_is_answered_promptly(api, length, status):
    port, app = api
    answer, body, elapsed = raw(port, post_head(port, length))
    assert answer == status and body["error"] and elapsed < 2
    assert app.calls == []


def test_a_body_over_64_kib_is_413_and_64_kib_is_fine(api):
    port, app = api
    status, body, elapsed = raw(port, post_head(port, str(64 * 1024 + 1)))
    assert status == 413 and "65536" in body["error"] and elapsed < 2 and app.calls == []
    filler = 64 * 1024 - len(json.dumps({"pad": ""}))
    exact = json.dumps({"pad": "a" * filler}).encode()
    assert len(exact) == 64 * 1024
    assert call(port, "POST", "/nlb/HQ/members/cas1/drain", exact)[0] == 200


def test_a_body_shorter_than_its_length_is_400(api):
    port, app = api
    status, body, elapsed = raw(port, post_head(port, "10") + b"{}", half_close=True)
    assert status == 400 and "shorter" in body["error"] and elapsed < 2 and app.calls == []


@pytest.mark.parametrize("body", [b"\xff\xfe{}", b"{", b"[1, 2]", b"null", b'"text"', b"42",
                                  b'{"a": ' + b"[" * 40 + b"]" * 40 + b"}", b"[" * 30000 + b"]" * 30000,
                                  b'{"deadline_s": 1} trailing'])
def test_a_body_that_is_not_a_json_object_is_400(api, body):
    port, app = api
    status, answer = call(port, "POST", "/nlb/HQ/members/cas1/drain", body)
    assert status == 400 and answer["error"] and app.calls == []


@pytest.mark.parametrize("deadline", ['"x"', "Infinity", "-Infinity", "NaN", "-1", "true", "false", "1e400",
                                      "86401", "[30]", "{}"])
def test_a_bad_deadline_is_400(api, deadline):
    port, app = api
    status, answer = call(port, "POST", "/nlb/HQ/members/cas1/drain", f'{{"deadline_s": {deadline}}}'.encode())
    assert status == 400 and answer["error"] and app.calls == []


# ---- what reaches the app ------------------------------------------------------------------------------


def test_valid_calls_reach_the_app(api):
    port, app = api
    status, snapshot = call(port, "GET", "/nlb")
    assert status == 200 and snapshot == {"vips": ["HQ", "Branch"], "calls": 0}
    assert call(port, "GET", "/nlb/")[0] == 200
    assert call(port, "POST", "/nlb/HQ/members/cas1/drain", {"deadline_s": 30})[0] == 200
    assert call(port, "POST", "/nlb/10.1.0.100/members/cas2/drain", {"deadline_s": 0.5})[0] == 200
    assert call(port, "POST", "/nlb/HQ/members/cas3/drain", {"deadline_s": 86400})[0] == 200
    assert call(port, "POST", "/nlb/HQ/members/cas1/drain", b"")[0] == 200
    assert call(port, "POST", "/nlb/HQ/members/cas1/rejoin")[0] == 200
    assert call(port, "POST", "/nlb/HQ/members/cas2/down", {})[0] == 200
    assert call(port, "POST", "/nlb/Branch/members/cas4/up", {})[0] == 200
    status, snapshot = call(port, "POST", "/nlb/HQ/affinity", {"affinity": "network"})
    assert status == 200 and snapshot["calls"] == 8
    assert app.calls == [("drain", "HQ", "cas1", 30.0), ("drain", "HQ", "cas2", 0.5), ("drain", "HQ", "cas3", 86400.0),
                         ("drain", "HQ", "cas1", None), ("rejoin", "HQ", "cas1"), ("admin_set", "HQ", "cas2", False),
                         ("admin_set", "Branch", "cas4", True), ("set_affinity", "HQ", "network")]


@pytest.mark.parametrize("method, path, body, status", [
    ("GET", "/nlb/HQ", None, 404),
    ("GET", "/other", None, 404),
    ("POST", "/nlb", {}, 404),
    ("POST", "/nlb/NOPE/members/cas1/down", {}, 404),
    ("POST", "/nlb/HQ/members/cas4/down", {}, 404),  # a member of another VIP
    ("POST", "/nlb/HQ/members/cas1/reboot", {}, 404),
    ("POST", "/nlb/HQ/members/cas1/down/now", {}, 404),
    ("POST", "/nlb/HQ/affinity", {"affinity": "sticky"}, 400),
    ("POST", "/nlb/HQ/affinity", {}, 400),
])
def test_unknown_resources_and_values_are_4xx(api, method, path, body, status):
    port, app = api
    assert call(port, method, path, body)[0] == status and app.calls == []


# ---- no token, no service; bounded connections and a whole-request deadline (issue 18 items 4, 7) ---------


def start_server(app, token, **kwargs):
    """An ApiServer on its own ephemeral loopback port, serving in a thread: (server, port)."""
    httpd = nlb_api.ApiServer(app, token, **kwargs)
    threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    return httpd, httpd.server_address[1]


@pytest.mark.parametrize("token", [None, ""])
def test_without_a_configured_token_every_request_is_refused(token):
    app = FakeApp()
    httpd, port = start_server(app, token)
    try:
        for authorization in ("", "Bearer ", "Bearer None"):
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            conn.request("POST", "/nlb/HQ/members/cas1/down", body=b"{}",
                         headers={"Authorization": authorization, "Content-Type": "application/json"})
            response = conn.getresponse()
            assert response.status == 503 and "no token" in json.loads(response.read())["error"]
            conn.close()
        assert app.calls == []
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_trickling_callers_hold_a_bounded_number_of_threads_for_a_bounded_time():
    """100 sockets sending a byte every 0.2 s: at most max_connections are served at once,
    the rest are turned away at once, and none is held past the whole-request deadline."""
    app = FakeApp()
    httpd, port = start_server(app, TOKEN, max_connections=4, deadline_s=1.0)
    threads_before = threading.active_count()
    socks = []
    try:
        for _ in range(100):
            sock = socket.create_connection(("127.0.0.1", port), timeout=3)
            sock.sendall(b"G")
            socks.append(sock)
        start = time.monotonic()
        peak = 0
        open_socks = list(socks)
        while open_socks and time.monotonic() - start < 3.0:
            peak = max(peak, threading.active_count() - threads_before)
            still = []
            for sock in open_socks:
                try:
                    sock.sendall(b"E")  # one byte at a time, never a whole request line
                    still.append(sock)
                except OSError:
                    pass
            open_socks = still
            time.sleep(0.2)
        held = time.monotonic() - start
        assert peak <= 2 * 4 + 1, f"{peak} threads for 4 allowed connections"  # a handler and its deadline timer each
        assert not open_socks, f"{len(open_socks)} trickling connections still open after {held:.1f} s"
        # a proper caller is served again at once
        assert call(port, "GET", "/nlb")[0] == 200
    finally:
        for sock in socks:
            sock.close()
        httpd.shutdown()
        httpd.server_close()


def test_a_caller_over_the_connection_cap_gets_503_at_once():
    app = FakeApp()
    httpd, port = start_server(app, TOKEN, max_connections=1, deadline_s=2.0)
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=3) as hog:
            hog.sendall(b"GET /n")
            time.sleep(0.2)  # the hog holds the one slot
            status, body, elapsed = raw(port, f"GET /nlb HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n\r\n".encode())
            assert status == 503 and "busy" in body["error"] and elapsed < 1
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_api_serves_on_the_socket_it_is_handed_with_the_token_from_a_private_file(tmp_path):
    from caslab.network.ofchannel import listening_socket, write_private

    sock = listening_socket()
    port = sock.getsockname()[1]
    token_file = tmp_path / "nlb-token"
    write_private(token_file, f"{TOKEN}\n".encode())
    app = FakeApp()
    # The server owns the descriptor it is handed, as in the controller: give it its own copy,
    # and stop it at the end (a server left running on a closed descriptor number would serve
    # whatever socket a later test opens under that number).
    httpd = nlb_api.api_server(app, NlbApi(fd=os.dup(sock.fileno()), port=port, token_file=str(token_file)))
    sock.close()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        assert httpd.server_address[1] == port
        assert call(port, "POST", "/nlb/HQ/members/cas1/down", {})[0] == 200 and app.calls
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_a_token_file_others_may_read_is_not_used(tmp_path, monkeypatch):
    token_file = tmp_path / "nlb-token"
    token_file.write_text(TOKEN)
    token_file.chmod(0o644)
    assert nlb_api.read_token(NlbApi(token_file=str(token_file))) is None
    token_file.chmod(0o600)
    assert nlb_api.read_token(NlbApi(token_file=str(token_file))) == TOKEN
    monkeypatch.delenv("CASLAB_NLB_TOKEN", raising=False)
    assert nlb_api.read_token(NlbApi()) is None


def test_the_token_is_never_in_the_configuration_itself(tmp_path):
    """The controller's config file is 0644: a token there is refused before the app starts."""
    path = tmp_path / "nlb.json"
    path.write_text(json.dumps({"vips": [], "api": {"port": 1, "token": TOKEN}}))
    with pytest.raises(ConfigError, match=r"unknown key\(s\) \['api.token'\]"):
        read_config(CONTROLLER, path)
