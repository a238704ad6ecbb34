"""A CAS with its HTTPS services: RPC Client Access as ``roles.cas``, plus IIS's share of
an Exchange 2010 CAS on port 443 in the same process (a crash or a freeze takes both).

The HTTP server is aiohttp with TLS (the run's lab certificate). aiohttp's C parser
(llhttp) refuses request methods outside its list, and Outlook Anywhere's are
``RPC_IN_DATA`` / ``RPC_OUT_DATA``: this process therefore runs aiohttp's pure-Python
parser (``AIOHTTP_NO_EXTENSIONS``), which accepts any method token as HTTP allows.

Virtual directories (bodies are small JSON documents where Exchange speaks HTML or
WBXML; the autodiscover answer is XML as in Exchange):

* ``/owa``: forms-based login (``POST /owa/auth.owa``) sets a session cookie; the
  session lives in this CAS's memory only, so a request whose cookie this CAS does not
  hold gets **440 Login Timeout**, as OWA answers, and the user must log in again.
* ``/Microsoft-Server-ActiveSync``: Basic authentication on every request (stateless);
  ``Cmd=Ping`` hangs for the device's HeartbeatInterval (bounded by 60..3540 s as
  Exchange 2010's defaults, and scaled by ``time_scale``) then answers Status 1;
  ``Cmd=Sync`` reads the mailbox.
* ``/rpc/rpcproxy.dll``: Outlook Anywhere (``roles.rpc_proxy``).
* ``/autodiscover/autodiscover.xml``: the user's external URLs, for clients outside.
* ``/owa/auth/logon.aspx``: the login page, what load balancers check.

Every answer names the CAS in an ``X-FEServer`` header.

Bounds (``ConnectionGuard``), as IIS has them: a connection that has no request under way
for ``idle_timeout_s`` (120 s, IIS's connectionTimeout: a TLS handshake, a request head,
the pause between two requests) is closed; at most ``max_connections`` are open at once
(more are closed at once); an Outlook Anywhere IN channel with no frame for ``channel_idle_s`` is closed
(``roles.rpc_proxy``); ActiveSync devices are kept per user, at most ``max_devices``.

Config keys: those of ``roles.cas`` plus ``http``: {port, cert, key, users {user: db},
external_url, time_scale, idle_timeout_s, max_connections, channel_idle_s, max_devices}.
"""

from __future__ import annotations

import os

os.environ.setdefault("AIOHTTP_NO_EXTENSIONS", "1")  # before aiohttp is imported: see the docstring

import asyncio  # noqa: E402
import base64  # noqa: E402
import binascii  # noqa: E402
import json  # noqa: E402
import secrets  # noqa: E402
import ssl  # noqa: E402
import xml.etree.ElementTree as ET  # noqa: E402
from collections import OrderedDict  # noqa: E402
from typing import Any  # noqa: E402

from aiohttp import web  # noqa: E402

from labcommon.auth import password_for  # noqa: E402
from labcommon.catalogue import HTTP_SESSION_UNKNOWN, SERVICE_UP  # noqa: E402
from labcommon.programs import CAS_HTTP, CasConfig  # noqa: E402
from labcommon.protocol import MAX_DEPTH, nesting_depth  # noqa: E402
from labcommon.runtime import open_log, run_with_config  # noqa: E402
from roles.cas import CasServer, close_links  # noqa: E402
from roles.rpc_proxy import RpcProxy  # noqa: E402
from roles.service import listen  # noqa: E402

OWA_COOKIE = "cadata"
LOGIN_TIMEOUT = 440  # OWA's "Login Timeout": the session is unknown here, log in again
HEARTBEAT_BOUNDS_S = (60, 3540)  # Exchange 2010's MinHeartbeatInterval / MaxHeartbeatInterval
MAX_OWA_SESSIONS = 50_000
AUTODISCOVER_NS = "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
ERRORS = {"mailbox_unavailable": 503, "auth_required": 401, "auth_failed": 401, "unknown_db": 404,
          "bad_request": 400}


def basic_credentials(request: web.Request) -> tuple[str, str] | None:
    header = request.headers.get("Authorization", "")
    if not header.startswith("Basic "):
        return None
    try:
        user, _, password = base64.b64decode(header[6:], validate=True).decode().partition(":")
    except (binascii.Error, UnicodeDecodeError):
        return None
    return user, password


async def heartbeat_of(request: web.Request) -> int:
    """The Ping's HeartbeatInterval (s), within Exchange's bounds; 480 s if it names none."""
    try:
        text = await request.text() if request.can_read_body else "{}"
        body = json.loads(text) if nesting_depth(text) <= MAX_DEPTH else {}  # the lab's own nesting limit
    except (ValueError, RecursionError):
        body = {}
    asked = body.get("HeartbeatInterval") if isinstance(body, dict) else None
    if not isinstance(asked, int) or isinstance(asked, bool):
        asked = 480
    return min(max(asked, HEARTBEAT_BOUNDS_S[0]), HEARTBEAT_BOUNDS_S[1])


def status_of(reply: dict[str, Any]) -> int:
    return 200 if reply.get("ok") else ERRORS.get(str(reply.get("error")), 500)


class CasHttp:
    """The HTTPS virtual directories of one CAS, over its RPC Client Access."""

    def __init__(self, cas: CasServer, config: CasConfig, log):
        self.cas = cas
        self.log = log
        http = config.http
        self.users: dict[str, str] = dict(http.users)
        self.external_url: str = http.external_url
        self.time_scale = http.time_scale
        self.owa: OrderedDict[str, dict[str, Any]] = OrderedDict()  # cookie -> request state (LRU)
        self.devices: OrderedDict[tuple[str, str], dict[str, Any]] = OrderedDict()  # (user, DeviceId) -> state
        self.max_devices = http.max_devices
        self.rpc = RpcProxy(cas, log, close_links, http.channel_idle_s)

    # ---- OWA ---------------------------------------------------------------------------

    async def logon_page(self, request: web.Request) -> web.Response:
        return web.json_response({"page": "logon", "server": self.cas.name})

    async def owa_login(self, request: web.Request) -> web.Response:
        form = await request.post()
        user, sid = str(form.get("username", "")), str(form.get("session", ""))
        state: dict[str, Any] = {}
        reply = await self.cas.handle({"op": "logon", "session": f"owa:{sid}", "user": user,
                                       "db": self.users.get(user, ""), "password": str(form.get("password", "")),
                                       "reauth": form.get("reauth") == "1"}, state)
        if not reply.get("ok"):
            return web.json_response(reply, status=status_of(reply))
        token = secrets.token_urlsafe(18)
        self.owa[token] = state
        while len(self.owa) > MAX_OWA_SESSIONS:
            close_links(self.owa.popitem(last=False)[1])
        response = web.HTTPFound("/owa/")
        response.set_cookie(OWA_COOKIE, token, path="/", secure=True, httponly=True)
        return response

    async def owa_action(self, request: web.Request) -> web.Response:
        state = self.owa.get(request.cookies.get(OWA_COOKIE, ""))
        if state is None:
            self.log.emit(HTTP_SESSION_UNKNOWN, protocol="owa", detail="session cookie")
            return web.json_response({"ok": False, "error": "login_timeout"}, status=LOGIN_TIMEOUT)
        self.owa.move_to_end(request.cookies[OWA_COOKIE])
        if request.method == "GET":
            message: dict[str, Any] = {"op": "read"}
        else:
            form = await request.post()
            message = {"op": "send", "msg_id": str(form.get("msg_id", "")), "subject": str(form.get("subject", ""))}
        reply = await self.cas.handle(message, state)
        return web.json_response(reply, status=status_of(reply))

    # ---- ActiveSync --------------------------------------------------------------------

    async def activesync(self, request: web.Request) -> web.Response:
        credentials = basic_credentials(request)
        device = request.query.get("DeviceId", "")
        if credentials is None or credentials[1] != password_for(credentials[0]) or not device \
                or credentials[0] not in self.users:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="caslab"'})
        user = credentials[0]
        command = request.query.get("Cmd")
        if command == "Ping":
            heartbeat = await heartbeat_of(request)
            await asyncio.sleep(heartbeat * self.time_scale)
            return web.json_response({"Status": 1, "HeartbeatInterval": heartbeat})
        if command != "Sync":
            return web.json_response({"Status": 2, "error": "unknown command"}, status=400)
        key = (user, device)  # a DeviceId is the device's word: another user's is another device
        state = self.devices.setdefault(key, {})
        self.devices.move_to_end(key)
        while len(self.devices) > self.max_devices:
            close_links(self.devices.popitem(last=False)[1])  # the least recently seen logs on again
        if "session" not in state:
            reply = await self.cas.handle({"op": "logon", "session": f"eas:{user}:{device}", "user": user,
                                           "db": self.users[user], "password": credentials[1]}, state)
            if not reply.get("ok"):
                return web.json_response(reply, status=status_of(reply))
        reply = await self.cas.handle({"op": "sync"}, state)
        if reply.get("error") == "auth_required":  # RPC Client Access forgot the device: log on again
            del state["session"]
        return web.json_response({"Status": 1 if reply.get("ok") else 5, **reply}, status=status_of(reply))

    # ---- autodiscover ------------------------------------------------------------------

    async def autodiscover(self, request: web.Request) -> web.Response:
        credentials = basic_credentials(request)
        if credentials is None or credentials[1] != password_for(credentials[0]) or credentials[0] not in self.users:
            return web.Response(status=401, headers={"WWW-Authenticate": 'Basic realm="caslab"'})
        host = self.external_url.split("://", 1)[-1].rstrip("/")
        root = ET.Element("Autodiscover", xmlns="http://schemas.microsoft.com/exchange/autodiscover/responseschema/2006")
        response = ET.SubElement(root, "Response", xmlns=AUTODISCOVER_NS)
        ET.SubElement(ET.SubElement(response, "User"), "DisplayName").text = credentials[0]
        account = ET.SubElement(response, "Account")
        for kind, children in (("EXPR", {"Server": host, "SSL": "On", "AuthPackage": "Basic"}),
                               ("WEB", {"OWAUrl": f"{self.external_url}/owa/"}),
                               ("MobileSync", {"Url": f"{self.external_url}/Microsoft-Server-ActiveSync"})):
            protocol = ET.SubElement(account, "Protocol")
            ET.SubElement(protocol, "Type").text = kind
            for tag, text in children.items():
                ET.SubElement(protocol, tag).text = text
        body = ET.tostring(root, encoding="unicode", xml_declaration=True)
        return web.Response(text=body, content_type="text/xml")

    # ---- the application ---------------------------------------------------------------

    def app(self) -> web.Application:
        app = web.Application(client_max_size=256 * 1024)
        app.router.add_get("/owa/auth/logon.aspx", self.logon_page)
        app.router.add_post("/owa/auth.owa", self.owa_login)
        app.router.add_route("GET", "/owa/", self.owa_action)
        app.router.add_route("POST", "/owa/", self.owa_action)
        app.router.add_post("/Microsoft-Server-ActiveSync", self.activesync)
        app.router.add_post("/autodiscover/autodiscover.xml", self.autodiscover)
        app.router.add_route("RPC_OUT_DATA", "/rpc/rpcproxy.dll", self.rpc.out_data)
        app.router.add_route("RPC_IN_DATA", "/rpc/rpcproxy.dll", self.rpc.in_data)

        async def name_the_server(_request, response):
            response.headers["X-FEServer"] = self.cas.name
        app.on_response_prepare.append(name_the_server)
        return app


class Guarded(asyncio.Protocol):
    """One connection: aiohttp's protocol (slotted, so wrapped, not patched), counted."""

    def __init__(self, guard: "ConnectionGuard", inner: asyncio.Protocol):
        self.guard, self.inner, self.counted = guard, inner, False

    def connection_made(self, transport) -> None:
        self.inner.connection_made(transport)
        if self.guard.open >= self.guard.limit:
            transport.abort()  # over the cap: closed at once, never served
            return
        self.guard.open += 1
        self.counted = True
        self.guard.arm(self.inner)

    def connection_lost(self, exc) -> None:
        if self.counted:
            self.counted = False
            self.guard.open -= 1
        self.guard.disarm(self.inner)
        self.inner.connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        self.inner.data_received(data)

    def eof_received(self):
        return self.inner.eof_received()

    def pause_writing(self) -> None:
        self.inner.pause_writing()

    def resume_writing(self) -> None:
        self.inner.resume_writing()


class ConnectionGuard:
    """The HTTPS listener's protocol factory around aiohttp's: caps open connections and
    closes one that has no request under way for ``idle_s`` (aiohttp has no deadline for a
    request head, and keeps a connection that never sends one)."""

    def __init__(self, factory, idle_s: float, limit: int):
        self.factory, self.idle_s, self.limit = factory, idle_s, limit
        self.open = 0
        self.timers: dict[Any, asyncio.TimerHandle] = {}

    def __call__(self) -> asyncio.Protocol:
        return Guarded(self, self.factory())

    def arm(self, protocol) -> None:
        """No request under way: close the connection unless one starts within idle_s."""
        self.disarm(protocol)
        transport = protocol.transport
        if transport is not None and not transport.is_closing():
            self.timers[protocol] = asyncio.get_running_loop().call_later(self.idle_s, transport.close)

    def disarm(self, protocol) -> None:
        timer = self.timers.pop(protocol, None)
        if timer is not None:
            timer.cancel()

    @web.middleware
    async def middleware(self, request: web.Request, handler):
        """A request under way (a long poll, a streaming channel) is the handler's to bound."""
        self.disarm(request.protocol)
        try:
            return await handler(request)
        finally:
            self.arm(request.protocol)


async def start_https(service: CasHttp, config: CasConfig) -> tuple[web.AppRunner, asyncio.AbstractServer]:
    http = config.http
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(http.cert, http.key)
    idle = http.idle_timeout_s
    app = service.app()
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True)
    guard = ConnectionGuard(None, idle, http.max_connections)
    app.middlewares.append(guard.middleware)
    await runner.setup()
    guard.factory = runner.server
    server = await asyncio.get_running_loop().create_server(
        guard, "0.0.0.0", http.port, ssl=context, backlog=1024, reuse_address=True, ssl_handshake_timeout=idle)
    return runner, server


async def serve(config: CasConfig) -> None:
    if config.http is None:
        raise SystemExit("roles.cas_http: its configuration has no http part")
    log = open_log(config, config.name)
    cas = CasServer(config, log)
    runner, server = await start_https(CasHttp(cas, config, log), config)
    log.emit(SERVICE_UP, role="cas-http", port=config.http.port)
    try:
        admin = cas.admin if cas.dumpster.per_database else None  # only a dumpster has admin requests
        await listen(config, "cas", log, cas.handle, on_close=close_links, admin=admin)
    finally:
        server.close()
        await runner.cleanup()


def main() -> None:
    run_with_config(CAS_HTTP, serve)


if __name__ == "__main__":
    main()
