"""What an Exchange admin and Active Manager do to the running lab.

The runner lives in the root namespace and cannot reach the lab's addresses, so admin
calls run ``python -m roles.admin`` inside a host, with an argument list (never a shell):
no value from a spec or the network is ever interpreted by a shell.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any

from labcommon.catalogue import DB_ACTIVE
from labcommon.ports import MAILBOX_PORT
from topologies.plan import LAB_DOMAIN

if TYPE_CHECKING:
    from caslab.context import RunContext
    from caslab.netlab import LabProcess


def role_processes(ctx: "RunContext", host: str) -> list["LabProcess"]:
    """The host's role service (the process named after the host)."""
    return [p for p in ctx.lab.processes_on(host) if p.name == host]


def admin_call(ctx: "RunContext", target_host: str, message: dict[str, Any], port: int = MAILBOX_PORT,
               via: str | None = None) -> dict[str, Any]:
    """One framed admin request to a role service, sent from inside host ``via`` (default:
    the target itself)."""
    address = f"{ctx.plan.host(target_host).ip}:{port}"
    code, out = ctx.lab.run_in(via or target_host, [sys.executable, "-m", "roles.admin", address,
                                                    json.dumps(message)], timeout_s=10)
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": f"exit {code}: {out.strip()[:200]}"}


def move_database(ctx: "RunContext", db: str, to: str, dead: set[str]) -> None:
    """Active Manager: make ``to`` the active copy of ``db`` (deactivating the old one if alive)."""
    layout = ctx.databases[db]
    old = layout.active
    if old not in dead:
        admin_call(ctx, old, {"op": "deactivate", "db": db})
    reply = admin_call(ctx, to, {"op": "activate", "db": db})
    layout.active = to
    extra = {"missing": reply["missing"]} if isinstance(reply.get("missing"), int) else {}
    ctx.log.emit(DB_ACTIVE, db=db, server=to, previous=old, ok=bool(reply.get("ok")), **extra)


def fail_over_databases(ctx: "RunContext", dead: set[str]) -> None:
    """Each database active on a dead server moves to its next surviving copy."""
    for db, layout in sorted(ctx.databases.items()):
        if layout.active in dead:
            survivors = [c for c in layout.copies if c not in dead]
            if survivors:
                move_database(ctx, db, survivors[0], dead)


def host_fqdn(ctx: "RunContext", name: str) -> str:
    """'cas2' -> 'cas2.lab.test', 'array:Branch' -> that site's array FQDN, an FQDN as is."""
    if name.startswith("array:"):
        return ctx.arrays()[name.split(":", 1)[1]]["fqdn"]
    return name if "." in name else f"{name}.{LAB_DOMAIN}"
