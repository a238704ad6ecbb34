"""Autodiscover (one per AD site): tells an Outlook profile where its mailbox is served.

For each user it answers the mailbox database and that database's RpcClientAccessServer
(``Set-MailboxDatabase -RpcClientAccessServer``): an array FQDN, or a single CAS's name
for a database created before its site's array existed. Admins change the value at run
time with ``set_rcas``; clients only see the change when they next ask, which is how a
profile keeps pointing at an old server.

With ``urls`` it also names the site's HTTPS URLs (``internal_url``, ``external_url``):
what an OWA browser or an ActiveSync device inside the site uses.

Config keys: name, listen_port, events, users {user: db}, rcas {db: fqdn}, urls
{internal, external} (optional).
"""

from __future__ import annotations

from typing import Any

from labcommon.catalogue import RCAS_CHANGED
from labcommon.programs import AUTODISCOVER, AutodiscoverConfig
from labcommon.protocol import error
from labcommon.runtime import open_log, run_with_config
from roles.service import listen


class Autodiscover:
    def __init__(self, config: AutodiscoverConfig, log):
        self.name = config.name
        self.users: dict[str, str] = dict(config.users)
        self.rcas: dict[str, str] = dict(config.rcas)
        self.urls: dict[str, str] = dict(config.urls or {})
        self.log = log

    async def handle(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        op = request.get("op")
        if op == "autodiscover":
            user = request.get("user")
            db = self.users.get(user) if isinstance(user, str) else None
            if db is None:
                return error("unknown_user")
            reply = {"ok": True, "user": user, "db": db, "server": self.rcas[db]}
            reply.update({f"{kind}_url": url for kind, url in self.urls.items()})
            return reply
        return error("unknown_op", op=op if isinstance(op, str) else None)

    async def admin(self, request: dict[str, Any], state: dict[str, Any]) -> dict[str, Any]:
        """Loopback only: Set-MailboxDatabase -RpcClientAccessServer."""
        if request.get("op") != "set_rcas":
            return error("unknown_op")
        db, server = request.get("db"), request.get("server")
        if not isinstance(db, str) or db not in self.rcas or not isinstance(server, str) or not server \
                or len(server) > 255:
            return error("bad_request")
        old, self.rcas[db] = self.rcas[db], server
        self.log.emit(RCAS_CHANGED, db=db, server=server, previous=old)
        return {"ok": True, "db": db, "server": server}


async def serve(config: AutodiscoverConfig) -> None:
    log = open_log(config, config.name)
    service = Autodiscover(config, log)
    await listen(config, "autodiscover", log, service.handle, admin=service.admin)


def main() -> None:
    run_with_config(AUTODISCOVER, serve)


if __name__ == "__main__":
    main()
