"""Admin API of the SDN NLB: HTTP + JSON on loopback, served from the controller process.

    GET  /nlb                               arrays (VIPs), members, state, counters
    POST /nlb/<vip>/members/<name>/drain    {"deadline_s": 30}   no new sessions
    POST /nlb/<vip>/members/<name>/rejoin                        take new sessions again
    POST /nlb/<vip>/members/<name>/down | /up                    administrative state
    POST /nlb/<vip>/affinity                {"affinity": "single"}

Only this machine's own tools may drive it: it listens on loopback (on a socket the
runner bound and handed over: no other user can take the port first and collect the
token), every request must carry the run's token (``Authorization: Bearer <token>``), read
from a 0600 file (``token_file``) or ``CASLAB_NLB_TOKEN``, never from the config; without
one every request is refused. The Host header must name loopback (no DNS rebinding) and
any request a browser marks with an Origin is refused, so a web page open in the user's
browser cannot drive the lab's load balancer. Bodies are bounded, must be UTF-8 JSON
objects, and every value is checked: a bad request gets a clear 4xx answer, never a hung
thread or a dropped connection.

Anyone on the machine can connect, token or not: at most MAX_CONNECTIONS are served at
once (one more is answered 503 and closed at once), and each has REQUEST_DEADLINE_S for
its whole request, however slowly it trickles bytes, before its socket is shut.

os-ken ships no WSGI stack, so this is the standard library's threaded HTTP server (a
native thread under os-ken, a green thread under Ryu's eventlet).
"""

from __future__ import annotations

import hmac
import json
import math
import os
import socket
import stat
import threading
import urllib.parse
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from labcommon.programs import NlbApi
from labcommon.protocol import MAX_DEPTH, nesting_depth

MAX_BODY = 64 * 1024
MAX_CONNECTIONS = 8
REQUEST_DEADLINE_S = 5.0
BUSY = (b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\nConnection: close\r\n"
        b"Content-Length: 59\r\n\r\n{\"error\": \"the NLB API is busy: too many open connections\"}")
MAX_DEADLINE_S = 86400
AFFINITIES = ("none", "single", "network")


class ApiError(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


def make_handler(app, port: int, token: str | None, deadline_s: float = REQUEST_DEADLINE_S):
    allowed_hosts = {f"127.0.0.1:{port}", f"localhost:{port}"}

    class Handler(BaseHTTPRequestHandler):
        timeout = deadline_s  # per read; the whole request's deadline is the timer below

        def setup(self):
            super().setup()
            self.deadline = threading.Timer(deadline_s, self._expire)
            self.deadline.daemon = True
            self.deadline.start()

        def _expire(self) -> None:
            """The whole request took too long (a caller trickling bytes): hang up."""
            try:
                self.connection.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

        def finish(self):
            self.deadline.cancel()
            try:
                super().finish()
            except OSError:
                pass

        def log_message(self, *args):  # keep the controller's stderr quiet
            pass

        def reply(self, code: int, body: dict) -> None:
            data = json.dumps(body, sort_keys=True).encode()
            self.send_response(code)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.send_header("Connection", "close")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True

        def check_caller(self) -> None:
            if not token:
                raise ApiError(503, "no token is configured for this API: it refuses every request")
            if self.headers.get("Host") not in allowed_hosts:
                raise ApiError(403, f"the Host header must name this loopback address ({sorted(allowed_hosts)[0]}), "
                                    f"not {str(self.headers.get('Host'))[:80]!r}")
            if self.headers.get("Origin") is not None:
                raise ApiError(403, "requests from web pages are refused")
            given = self.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
                raise ApiError(401, "missing or wrong token (Authorization: Bearer <token>)")

        def body(self) -> dict[str, Any]:
            raw_length = self.headers.get("Content-Length", "0")
            if not (raw_length.isascii() and raw_length.isdigit()):  # str.isdigit() alone takes '²'
                raise ApiError(400, "Content-Length must be a non-negative integer")
            length = int(raw_length) if len(raw_length) < 20 else MAX_BODY + 1  # int() refuses 4300+ digits
            if length > MAX_BODY:
                raise ApiError(413, f"body over {MAX_BODY} bytes")
            try:
                data = self.rfile.read(length) if length else b"{}"
            except TimeoutError:
                raise ApiError(408, f"body shorter than Content-Length ({length} bytes) after {self.timeout} s") from None
            if len(data) != length and length:
                raise ApiError(400, "body shorter than Content-Length")
            try:
                text = data.decode("utf-8")
                if nesting_depth(text) > MAX_DEPTH:
                    raise ApiError(400, "body nests too deep")
                body = json.loads(text, parse_constant=_refuse_constant)
            except (UnicodeDecodeError, ValueError, RecursionError):
                raise ApiError(400, "body is not UTF-8 JSON") from None
            if not isinstance(body, dict):
                raise ApiError(400, "body must be a JSON object")
            return body

        def handle_request(self, method: str) -> None:
            try:
                self.check_caller()
                if method == "GET":
                    if self.path.rstrip("/") not in ("/nlb", ""):
                        raise ApiError(404, f"no such resource {self.path}")
                    self.reply(200, app.snapshot())
                    return
                self.reply(200, self.post(self.body()))
            except ApiError as exc:
                self.reply(exc.code, {"error": str(exc)})
            except OSError:
                self.close_connection = True  # the caller went away, or its deadline passed
            except Exception as exc:  # noqa: BLE001 - a bug answers 500, it never drops the caller
                self.reply(500, {"error": f"internal error: {type(exc).__name__}"})

        def post(self, body: dict[str, Any]) -> dict:
            parts = [urllib.parse.unquote(p) for p in self.path.split("/") if p]
            if len(parts) < 3 or parts[0] != "nlb":
                raise ApiError(404, f"no such resource {self.path}")
            vip = app.find_vip(parts[1])
            if vip is None:
                raise ApiError(404, f"no VIP {parts[1]}")
            if parts[2:] == ["affinity"]:
                affinity = body.get("affinity")
                if affinity not in AFFINITIES:
                    raise ApiError(400, f"affinity must be one of {list(AFFINITIES)}")
                app.set_affinity(vip, affinity)
                return app.snapshot()
            if len(parts) != 5 or parts[2] != "members" or parts[3] not in vip.pool.members:
                raise ApiError(404, f"no such member or action in {self.path}")
            name, action = parts[3], parts[4]
            if action == "drain":
                app.drain(vip, name, deadline(body))
            elif action == "rejoin":
                app.rejoin(vip, name)
            elif action in ("down", "up"):
                app.admin_set(vip, name, up=action == "up")
            else:
                raise ApiError(404, f"unknown action {action}")
            return app.snapshot()

        def do_GET(self):
            self.handle_request("GET")

        def do_POST(self):
            self.handle_request("POST")

    return Handler


def _refuse_constant(name: str):
    raise ValueError(f"{name} is not a number")


def deadline(body: dict[str, Any]) -> float | None:
    value = body.get("deadline_s")
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) \
            or not 0 <= value <= MAX_DEADLINE_S:
        raise ApiError(400, f"deadline_s must be a number of seconds from 0 to {MAX_DEADLINE_S}")
    return float(value)


class ApiServer(ThreadingHTTPServer):
    """The API's HTTP server: a thread per connection, at most ``max_connections`` at once,
    each with ``deadline_s`` for its whole request. Serves on ``sock`` (a listening socket
    it is handed) or binds ``address``."""

    daemon_threads = True
    request_queue_size = 64  # a flood of connections waits in the backlog, to be turned away at once

    def __init__(self, app, token: str | None, sock: socket.socket | None = None,
                 address: tuple[str, int] = ("127.0.0.1", 0), max_connections: int = MAX_CONNECTIONS,
                 deadline_s: float = REQUEST_DEADLINE_S):
        super().__init__(address, BaseHTTPRequestHandler, bind_and_activate=sock is None)
        if sock is not None:
            self.socket.close()
            self.socket, self.server_address = sock, sock.getsockname()
        self.RequestHandlerClass = make_handler(app, self.server_address[1], token, deadline_s)
        self.slots = threading.BoundedSemaphore(max_connections)

    def process_request(self, request, client_address):
        if not self.slots.acquire(blocking=False):
            try:
                request.setblocking(False)
                request.send(BUSY)
            except OSError:
                pass
            self.shutdown_request(request)
            return
        try:
            super().process_request(request, client_address)
        except BaseException:
            self.slots.release()
            raise

    def process_request_thread(self, request, client_address):
        try:
            super().process_request_thread(request, client_address)
        finally:
            self.slots.release()

    def handle_error(self, request, client_address):
        pass  # a caller that hung up mid-answer: nothing to report


def read_token(api: NlbApi) -> str | None:
    """The API's token: from ``token_file`` (which must be private: no access for group or
    others) or the ``CASLAB_NLB_TOKEN`` environment variable; never from the config."""
    if api.token_file:
        try:
            with open(api.token_file, encoding="utf-8") as handle:
                if stat.S_IMODE(os.fstat(handle.fileno()).st_mode) & 0o077:
                    return None
                return handle.read().strip() or None
        except OSError:
            return None
    return os.environ.get("CASLAB_NLB_TOKEN") or None


def api_server(app, api: NlbApi) -> ApiServer:
    """The API server the config's ``api`` asks for: on the inherited socket ``fd`` (the
    lab's way; the server owns that descriptor from now on), else bound to ``host``:``port``."""
    sock = socket.socket(fileno=api.fd) if api.fd is not None else None
    return ApiServer(app, read_token(api), sock=sock, address=(api.host, api.port))


def serve_api(app, api: NlbApi) -> None:
    """Serve the API for good (the controller's thread)."""
    api_server(app, api).serve_forever()
