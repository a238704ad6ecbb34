"""The HTTP client emulators of one client host: OWA users, ActiveSync devices and
Outlook Anywhere profiles (``traffic.http_oa``), in one process per host.

* **OWA** (a browser): a form login sets the session cookie; then a click every
  ``owa_interval_ms`` (read a folder, or send a message). A **440 Login Timeout** means
  the CAS that got the click does not hold the session: the user sees the login form
  again (a forced re-login, logged as ``http_logon`` with ``reauth``), logs in, and the
  click is repeated.
* **ActiveSync** (a phone): a ``Ping`` long-poll that the CAS holds for the heartbeat
  (``eas_heartbeat_s`` x ``time_scale``), re-issued as soon as it is answered; a Ping
  that ends without its answer (reset, timeout, an error status from a load balancer)
  is a lost long-poll (``http_down``), and the next one re-establishes it. Beside it a
  ``Sync`` every ``eas_sync_interval_ms``.

Every request is an ``http_request`` event with its latency and the CAS that answered.
Each session has its own connection pool, cookie jar and (optionally) source address.

Run as ``python -m traffic.http_client CONFIG.json``.
"""

from __future__ import annotations

import asyncio

from labcommon.auth import password_for
from labcommon.catalogue import HTTP_CLIENT_UP
from labcommon.programs import HTTP_CLIENT, HttpClientConfig
from labcommon.runtime import load_config, open_log, run_forever
from traffic.http_oa import OutlookAnywhereSession
from traffic.https import Failure, HostContext, HttpSession, LabResolver, tls_context

OWA_COOKIE = "cadata"
LOGIN_TIMEOUT = 440


class OwaSession(HttpSession):
    protocol = "owa"
    ok_statuses = frozenset({200, 302})  # 302: the login's redirect to the mailbox

    def __init__(self, host, spec, index):
        super().__init__(host, spec, index)
        self.sent = 0
        self.ever_logged_on = False

    def has_session_cookie(self) -> bool:
        return any(cookie.key == OWA_COOKIE for cookie in self.http.cookie_jar)

    async def login(self) -> None:
        reauth = self.ever_logged_on
        reply = await self.request("login", "POST", f"{self.base}/owa/auth.owa", data={
            "username": self.user, "password": password_for(self.user), "session": self.sid,
            "reauth": "1" if reauth else "0"})
        if reply.status != 302:
            raise Failure(f"login: http {reply.status}")
        self.ever_logged_on = True
        self.logged_on(reply.cas, reauth=reauth, prompt=reauth)

    async def click(self, retried: bool = False) -> None:
        if self.rng.random() < 0.7:
            cmd, method, data = "read", "GET", None
        else:
            self.sent += 1
            cmd, method = "send", "POST"
            data = {"msg_id": f"{self.sid}-m{self.sent}", "subject": f"message {self.sent} from {self.sid}"}
        reply = await self.request(cmd, method, f"{self.base}/owa/", data=data)
        if reply.status == LOGIN_TIMEOUT and not retried:
            self.http.cookie_jar.clear(lambda cookie: cookie.key == OWA_COOKIE)
            await self.login()
            await self.click(retried=True)
        elif reply.status != 200:
            raise Failure(f"{cmd}: http {reply.status}")

    async def run(self) -> None:
        interval = self.host.timing.owa_interval_ms / 1000
        await self.start_jitter(interval)
        self.base = await self.discover()
        self.http = self.client()
        while True:
            try:
                if not self.has_session_cookie():
                    await self.login()
                await self.click()
                self.failures = 0
                await asyncio.sleep(interval)
            except Failure:
                await self.back_off()


class EasSession(HttpSession):
    protocol = "eas"

    def url(self, command: str) -> str:
        return (f"{self.base}/Microsoft-Server-ActiveSync?Cmd={command}&User={self.user}"
                f"&DeviceId={self.sid}&DeviceType=caslab")

    async def ping_loop(self) -> None:
        heartbeat = self.host.timing.eas_heartbeat_s
        hold_ms = heartbeat * self.host.timing.time_scale * 1000
        while True:
            try:
                reply = await self.request("ping", "POST", self.url("Ping"), total_ms=hold_ms + self.host.timing.request_timeout_ms,
                                            json={"HeartbeatInterval": heartbeat})
                if reply.status != 200:  # a load balancer's 502 / 504, a CAS's error
                    raise Failure(f"http {reply.status}")
                self.failures = 0
            except Failure as exc:
                self.went_down(str(exc))
                await self.back_off()

    async def sync_loop(self) -> None:
        interval = self.host.timing.eas_sync_interval_ms / 1000
        while True:
            try:
                await self.request("sync", "POST", self.url("Sync"))
            except Failure:
                pass
            await asyncio.sleep(interval)

    async def run(self) -> None:
        await self.start_jitter(self.host.timing.eas_sync_interval_ms / 1000)
        self.base = await self.discover()
        self.http = self.client()
        await asyncio.gather(self.ping_loop(), self.sync_loop())


PROTOCOLS: dict[str, type[HttpSession]] = {"owa": OwaSession, "eas": EasSession, "oa": OutlookAnywhereSession}


async def run_host(config: HttpClientConfig) -> None:
    log = open_log(config, config.name)
    host = HostContext(config, log, tls_context(config.ca), LabResolver(config.dns))
    sessions = [PROTOCOLS[spec["protocol"]](host, spec, i) for i, spec in enumerate(config.sessions)]
    log.emit(HTTP_CLIENT_UP, sessions={s.sid: s.protocol for s in sessions}, external=config.external)
    try:
        await asyncio.gather(*(s.run() for s in sessions))
    finally:
        for session in sessions:
            if session.http is not None:
                await session.http.close()


def main() -> None:
    config = load_config(HTTP_CLIENT)
    run_forever(lambda: run_host(config))


if __name__ == "__main__":
    main()
