"""What every HTTP client emulator shares: TLS that trusts only the lab CA, names resolved
through the lab's DNS, one timed event per request, and autodiscover.

Names are resolved with ``traffic.resolver`` (dnspython against the lab's DNS server,
cached by TTL like Windows) through an aiohttp resolver: a Mininet host shares the
machine's /etc/resolv.conf, and the lab must never ask the machine's own DNS.
Certificates are verified against the lab CA and the name asked for.

Autodiscover, as Outlook and devices find their server:

* ``site`` (a client inside an AD site): the site's autodiscover service (the lab's
  stand-in for the SCP lookup in the directory) names the internal URL;
* ``dns`` (a client on the Internet, no directory): ``https://<domain>/autodiscover/
  autodiscover.xml``, then ``https://autodiscover.<domain>/...``, each name resolved in
  DNS; the XML answer names the external URLs. Without a published
  ``autodiscover.<domain>`` the client never learns where its mailbox is.
"""

from __future__ import annotations

import asyncio
import json
import random
import socket
import ssl
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from typing import Any

import aiohttp
from aiohttp.abc import AbstractResolver

from labcommon.auth import password_for
from labcommon.catalogue import HTTP_AUTODISCOVER, HTTP_DOWN, HTTP_LOGON, HTTP_REQUEST
from labcommon.events import now_ns
from labcommon.programs import HttpClientConfig, HttpTiming
from labcommon.protocol import FramedLink, ProtocolError
from traffic.resolver import DnsTarget, ResolveError

AUTODISCOVER_PATH = "/autodiscover/autodiscover.xml"
REQUEST_SCHEMA = "http://schemas.microsoft.com/exchange/autodiscover/outlook/requestschema/2006"
DNS_ERROR = getattr(aiohttp, "ClientConnectorDNSError", ())  # aiohttp >= 3.10 tells a failed lookup apart
RESPONSE_NS = "{http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a}"


class Failure(Exception):
    """A request or an exchange failed; the message says why (it is logged as such)."""


class LabResolver(AbstractResolver):
    """aiohttp's name resolution through the lab's DNS server only (one cache per host)."""

    def __init__(self, server: str):
        self.server = server
        self.targets: dict[str, DnsTarget] = {}

    async def resolve(self, host: str, port: int = 0, family: int = socket.AF_INET) -> list[dict[str, Any]]:
        target = self.targets.setdefault(host, DnsTarget(host, self.server))
        try:
            addresses = await target.resolve()
        except ResolveError as exc:
            raise OSError(f"resolve {exc}") from None
        return [{"hostname": host, "host": a, "port": port, "family": socket.AF_INET, "proto": 0,
                 "flags": socket.AI_NUMERICHOST} for a in addresses]

    async def close(self) -> None:
        pass


def tls_context(ca_file: str) -> ssl.SSLContext:
    """Trust the lab CA only; check the server's name (the default context does)."""
    return ssl.create_default_context(cafile=ca_file)


def failure_reason(exc: BaseException) -> str:
    if isinstance(exc, asyncio.TimeoutError):
        return "timeout"
    if isinstance(exc, aiohttp.ClientConnectorCertificateError):
        return "tls"
    if isinstance(exc, DNS_ERROR):
        return "resolve"
    if isinstance(exc, aiohttp.ClientConnectorError):
        return "connect"
    if isinstance(exc, aiohttp.ServerDisconnectedError):
        return "eof"
    if isinstance(exc, aiohttp.ClientPayloadError):
        return "payload"
    if isinstance(exc, (aiohttp.ClientOSError, ConnectionError)):
        return "reset"
    return type(exc).__name__


@dataclass
class Reply:
    status: int
    body: bytes
    cas: str | None


def unreplicated_in(body: bytes) -> list[str] | None:
    """The copies a send's JSON answer says did not confirm it (the mailbox's ``unreplicated``)."""
    try:
        answer = json.loads(body)
    except (ValueError, RecursionError):
        return None
    copies = answer.get("unreplicated") if isinstance(answer, dict) else None
    return [str(c) for c in copies] if isinstance(copies, list) and copies else None


@dataclass
class HostContext:
    """What the sessions of one client host share."""

    config: HttpClientConfig
    log: Any
    tls: ssl.SSLContext
    resolver: LabResolver

    @property
    def timing(self) -> HttpTiming:
        return self.config.timing


class HttpSession:
    """One user's (or device's) HTTP client: its own connection pool and cookie jar."""

    protocol = ""
    ok_statuses = frozenset({200})

    def __init__(self, host: HostContext, spec: dict[str, Any], index: int):
        self.host = host
        self.log = host.log
        self.sid, self.user, self.db = spec["sid"], spec["user"], spec["db"]
        self.source_ip = spec.get("source_ip")
        self.rng = random.Random(host.config.seed * 100003 + index)
        self.base: str | None = None
        self.http: aiohttp.ClientSession | None = None
        self.failures = 0

    # ---- events --------------------------------------------------------------------------

    def logged_on(self, cas: str | None, reauth: bool, prompt: bool) -> None:
        self.log.emit(HTTP_LOGON, session=self.sid, protocol=self.protocol, cas=cas, reauth=reauth, prompt=prompt)

    def went_down(self, reason: str) -> None:
        self.log.emit(HTTP_DOWN, session=self.sid, protocol=self.protocol, reason=reason)

    def finished(self, cmd: str, started: int, ok: bool, status: int | None, cas: str | None,
                 error: str | None = None, msg_id: str | None = None, unreplicated: list[str] | None = None) -> None:
        fields: dict[str, Any] = {"error": error} if error else {}
        if msg_id:  # a send: the message id lets the metrics find it in the mailbox
            fields["msg_id"] = msg_id
        if msg_id and ok and unreplicated:  # acknowledged, but only the active copy holds it
            fields["unreplicated"] = unreplicated
        self.log.emit(HTTP_REQUEST, session=self.sid, protocol=self.protocol, cmd=cmd, ok=ok, status=status,
                      lat_us=(now_ns() - started) // 1000, cas=cas, **fields)

    # ---- HTTP ----------------------------------------------------------------------------

    def client(self) -> aiohttp.ClientSession:
        connector = aiohttp.TCPConnector(ssl=self.host.tls, resolver=self.host.resolver, use_dns_cache=False,
                                         local_addr=(self.source_ip, 0) if self.source_ip else None)
        return aiohttp.ClientSession(connector=connector, cookie_jar=aiohttp.CookieJar(),
                                     auth=aiohttp.BasicAuth(self.user, password_for(self.user)))

    def timeout(self, total_ms: float) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=total_ms / 1000, connect=self.host.timing.connect_timeout_ms / 1000)

    async def request(self, cmd: str, method: str, url: str, total_ms: float | None = None,
                      **kwargs: Any) -> Reply:
        """One request, logged with its latency; raises Failure unless the status is good."""
        started = now_ns()
        total_ms = total_ms or self.host.timing.request_timeout_ms
        data = kwargs.get("data")
        msg_id = data.get("msg_id") if isinstance(data, dict) else None
        try:
            async with self.http.request(method, url, timeout=self.timeout(total_ms), allow_redirects=False,
                                         **kwargs) as response:
                body = await response.read()
                reply = Reply(response.status, body, response.headers.get("X-FEServer"))
        except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
            reason = failure_reason(exc)
            self.finished(cmd, started, False, None, None, reason, msg_id)
            raise Failure(reason) from None
        ok = reply.status in self.ok_statuses
        self.finished(cmd, started, ok, reply.status, reply.cas, None if ok else f"http {reply.status}", msg_id,
                      unreplicated_in(reply.body) if msg_id and ok else None)
        return reply

    async def start_jitter(self, interval_s: float) -> None:
        """Sessions of a host start spread over their interval (at most a second)."""
        await asyncio.sleep(self.rng.uniform(0, min(interval_s, 1.0)))

    async def back_off(self) -> None:
        delays = self.host.timing.backoff_ms
        delay = delays[min(self.failures, len(delays) - 1)]
        self.failures += 1
        if delay:
            await asyncio.sleep(delay / 1000)

    # ---- autodiscover --------------------------------------------------------------------

    async def discover(self) -> str:
        """Ask autodiscover until it answers; returns the base URL (https://name)."""
        retry_s = self.host.timing.autodiscover_retry_ms / 1000
        while True:
            started = now_ns()
            via = "dns" if self.host.config.external else "site"
            try:
                url, cas = await (self.discover_dns() if via == "dns" else self.discover_site())
            except Failure as exc:
                self.log.emit(HTTP_AUTODISCOVER, session=self.sid, protocol=self.protocol, ok=False, via=via, url=None,
                              lat_us=(now_ns() - started) // 1000, cas=None, reason=str(exc))
                await asyncio.sleep(retry_s)
                continue
            self.log.emit(HTTP_AUTODISCOVER, session=self.sid, protocol=self.protocol, ok=True, via=via, url=url,
                          lat_us=(now_ns() - started) // 1000, cas=cas)
            return url

    async def discover_site(self) -> tuple[str, str | None]:
        address = self.host.config.autodiscover
        try:
            reply = await FramedLink(address, self.host.timing.request_timeout_ms / 1000).call(
                {"op": "autodiscover", "user": self.user})
        except (OSError, asyncio.TimeoutError, ConnectionError, ProtocolError) as exc:
            raise Failure(f"site autodiscover: {type(exc).__name__}") from None
        if not reply.get("ok") or not isinstance(reply.get("internal_url"), str):
            raise Failure(f"site autodiscover: {reply.get('error', 'no internal URL')}")
        return reply["internal_url"], None

    async def discover_dns(self) -> tuple[str, str | None]:
        domain = self.host.config.domain
        body = (f'<?xml version="1.0" encoding="utf-8"?><Autodiscover xmlns="{REQUEST_SCHEMA}"><Request>'
                f"<EMailAddress>{self.user}@{domain}</EMailAddress><AcceptableResponseSchema>"
                "http://schemas.microsoft.com/exchange/autodiscover/outlook/responseschema/2006a"
                "</AcceptableResponseSchema></Request></Autodiscover>")
        reasons = []
        async with self.client() as http:
            for name in (domain, f"autodiscover.{domain}"):
                try:
                    async with http.post(f"https://{name}{AUTODISCOVER_PATH}", data=body,
                                         headers={"Content-Type": "text/xml"},
                                         timeout=self.timeout(self.host.timing.request_timeout_ms)) as response:
                        text = await response.text()
                        if response.status != 200:
                            reasons.append(f"{name}: http {response.status}")
                            continue
                        return self.url_from_xml(text), response.headers.get("X-FEServer")
                except (aiohttp.ClientError, asyncio.TimeoutError, OSError) as exc:
                    reasons.append(f"{name}: {failure_reason(exc)}")
        raise Failure("; ".join(reasons))

    def url_from_xml(self, text: str) -> str:
        """The base URL of this protocol from an autodiscover answer."""
        try:
            root = ET.fromstring(text)
        except ET.ParseError:
            raise Failure("autodiscover answer is not XML") from None
        for protocol in root.iter(f"{RESPONSE_NS}Protocol"):
            kind = protocol.findtext(f"{RESPONSE_NS}Type")
            if self.protocol == "oa" and kind == "EXPR" and protocol.findtext(f"{RESPONSE_NS}Server"):
                return "https://" + protocol.findtext(f"{RESPONSE_NS}Server")
            for kind_wanted, tag in (("owa", "OWAUrl"), ("eas", "Url")):
                url = protocol.findtext(f"{RESPONSE_NS}{tag}")
                if self.protocol == kind_wanted and url and url.startswith("https://"):
                    return "https://" + url[len("https://"):].split("/", 1)[0]
        raise Failure(f"autodiscover answer names no URL for {self.protocol}")
