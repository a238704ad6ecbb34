"""What an Exchange admin and Active Manager do to the running lab.

The runner lives in the root namespace and cannot reach the lab's addresses, so admin
calls run ``python -m roles.admin`` inside a host, with an argument list (never a shell):
no value from a spec or the network is ever interpreted by a shell.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from labcommon.catalogue import DB_ACTIVE, DB_DISMOUNTED, DUMPSTER_RESUBMIT
from labcommon.ports import ADMIN_PORT, CAS_ADMIN_PORT, MAILBOX_PORT
from topologies.plan import LAB_DOMAIN

if TYPE_CHECKING:
    from caslab.network.context import RunContext
    from caslab.network.netlab import LabProcess


def role_processes(ctx: "RunContext", host: str) -> list["LabProcess"]:
    """The host's role services: the process named after the host, and on a multi-role
    server its mailbox service too (caslab.network.services.mailbox_process_name)."""
    return [p for p in ctx.lab.processes_on(host) if p.name in (host, f"mailbox-{host}")]


MOUNT_DIAL_LOGS = {"lossless": 0, "good": 6, "best": 12}  # AutoDatabaseMountDial: log generations a copy may lack


def admin_call(ctx: "RunContext", target_host: str, message: dict[str, Any], port: int = ADMIN_PORT,
               timeout_s: float = 2.0) -> dict[str, Any]:
    """One framed admin request to a role service, sent from inside its own host to its
    loopback admin listener (no other host can reach it)."""
    code, out = ctx.lab.run_in(target_host, [sys.executable, "-m", "roles.admin", f"127.0.0.1:{port}",
                                             json.dumps(message), str(timeout_s)], timeout_s=timeout_s + 8)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": f"exit {code}: {out.strip()[:200]}"}


def max_missing(ctx: "RunContext") -> int:
    """Rows a copy may lack and still mount automatically (AutoDatabaseMountDial)."""
    exchange = ctx.spec["exchange"]
    return MOUNT_DIAL_LOGS[exchange["mount_dial"]] * exchange["log_messages"]


def move_database(ctx: "RunContext", db: str, to: str, dead: set[str]) -> bool:
    """Active Manager, a switchover: the old copy (alive) stops, ``to`` takes every row it
    has and becomes active; nothing acknowledged is lost. True if ``to`` mounted."""
    layout = ctx.databases[db]
    old = layout.active
    request: dict[str, Any] = {"op": "activate", "db": db}
    if old not in dead:
        stopped = admin_call(ctx, old, {"op": "deactivate", "db": db})
        request.update(catch_up_from=f"{ctx.plan.server_ip(ctx.plan.host(old))}:{MAILBOX_PORT}", head=stopped.get("head"))
    reply = admin_call(ctx, to, request)
    return _record(ctx, db, to, old, reply)


def _record(ctx: "RunContext", db: str, to: str, old: str, reply: dict[str, Any]) -> bool:
    ok = bool(reply.get("ok"))
    missing = reply.get("missing") if isinstance(reply.get("missing"), int) else None
    if ok:
        ctx.databases[db].active = to
    ctx.log.emit(DB_ACTIVE, db=db, server=to, previous=old, ok=ok, **({"missing": missing} if missing is not None
                                                                       else {}))
    return ok


def fail_over_databases(ctx: "RunContext", dead: set[str]) -> None:
    """Active Manager, a failover: each database active on a dead server mounts on its most
    up-to-date surviving copy, if that copy lacks no more than the mount dial allows; else
    it stays dismounted, and says so.

    What a copy lacks is measured against the newest log position any survivor heard of
    (Exchange keeps the last log generation in the cluster database, which every surviving
    member holds): a copy that was cut off learns here that it is behind. Rows acknowledged
    after the last position anyone heard are unknowable to the survivors; metrics still
    count them lost (acknowledged by a client, absent from the active copy at the end)."""
    for db, layout in sorted(ctx.databases.items()):
        if layout.active not in dead:
            continue
        survivors, head = [], 0
        for copy in (c for c in layout.copies if c not in dead):
            status = admin_call(ctx, copy, {"op": "status"}).get("databases", {}).get(db, {})
            if isinstance(status, dict) and isinstance(status.get("last_seq"), int):
                survivors.append((-status["last_seq"], layout.copies.index(copy), copy))
                head = max(head, status["last_seq"], status.get("heard_head") or 0)
        old, best_missing = layout.active, None
        for _, _, copy in sorted(survivors):
            reply = admin_call(ctx, copy, {"op": "activate", "db": db, "head": head, "max_missing": max_missing(ctx)})
            if reply.get("ok"):
                _record(ctx, db, copy, old, reply)
                resubmit_from_dumpsters(ctx, db, dead)
                break
            best_missing = reply.get("missing") if best_missing is None else best_missing
        else:
            reason = "no surviving copy answered" if not survivors else "every surviving copy lacked more than the " \
                f"mount dial ({ctx.spec['exchange']['mount_dial']}) allows"
            ctx.log.emit(DB_DISMOUNTED, db=db, previous=old, missing=best_missing, reason=reason)


def resubmit_from_dumpsters(ctx: "RunContext", db: str, dead: set[str]) -> None:
    """A copy mounted after a failover may lack recent mail: every surviving hub transport
    (the lab's CAS) resubmits what its dumpster kept for the database."""
    if not ctx.spec["exchange"]["dumpster_messages"]:
        return
    for cas in ctx.plan.by_role("cas"):
        if cas.name in dead:
            continue
        reply = admin_call(ctx, cas.name, {"op": "resubmit", "db": db}, port=CAS_ADMIN_PORT, timeout_s=10)
        if reply.get("ok"):
            ctx.log.emit(DUMPSTER_RESUBMIT, db=db, cas=cas.name, resubmitted=int(reply.get("resubmitted", 0)),
                         recovered=int(reply.get("recovered", 0)))


def host_fqdn(ctx: "RunContext", name: str) -> str:
    """'cas2' -> 'cas2.lab.test', 'array:Branch' -> that site's array FQDN, an FQDN as is."""
    if name.startswith("array:"):
        return ctx.arrays()[name.split(":", 1)[1]]["fqdn"]
    return name if "." in name else f"{name}.{LAB_DOMAIN}"
