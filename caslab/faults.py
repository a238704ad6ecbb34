"""Fault injection. Each fault is logged *before* it acts, with the CLOCK_MONOTONIC
instant that metrics use as ``t_fault``, and names the elements it fails.

    crash       service process killed: the kernel answers RST
    poweroff    host links down and every lab process on it killed: silence
    freeze      service process stopped (SIGSTOP): handshakes still complete, no answers
    link-cut    a CAS loses its path to the mailbox servers (blackhole routes)
    drain       graceful removal from the load balancer; ``rejoin`` brings it back
    controller-crash   the SDN controller is killed, and restarted after restart_after_s
    dag-switchover     the active copy of a database moves to another server (lossless)
    rebind      Set-MailboxDatabase -RpcClientAccessServer: a database gets a new server name

The runner plays Exchange's Active Manager: when a mailbox server is powered off or
crashes, each database active on it is activated on the next surviving copy.
"""

from __future__ import annotations

import json
import signal
import sys
import threading
from typing import Any, Callable

from caslab import modes
from caslab.services import AUTODISCOVER_PORT, MAILBOX_PORT, Context, host_fqdn


def _role_processes(ctx: Context, host: str):
    return [p for p in ctx.lab.processes_on(host) if p.name == host]


def admin_call(ctx: Context, target_host: str, message: dict[str, Any], via: str,
               port: int = MAILBOX_PORT) -> dict[str, Any]:
    """Send one framed admin request to a role service, from inside host ``via``."""
    address = f"{ctx.plan.host(target_host).ip}:{port}"
    out = ctx.lab.node(via).cmd(f"{sys.executable} -m roles.admin {address} '{json.dumps(message)}'")
    try:
        return json.loads(out.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"ok": False, "error": out.strip()[:200]}


def move_database(ctx: Context, db: str, to: str, dead: set[str]) -> None:
    """Active Manager: make ``to`` the active copy of ``db`` (deactivating the old one if alive)."""
    layout = ctx.extra["databases"][db]
    old = layout["active"]
    via = to
    if old not in dead:
        admin_call(ctx, old, {"op": "deactivate", "db": db}, via)
    reply = admin_call(ctx, to, {"op": "activate", "db": db}, via)
    layout["active"] = to
    ctx.log.emit("db_active", db=db, server=to, previous=old, ok=bool(reply.get("ok")))


def fail_over_databases(ctx: Context, dead: set[str]) -> None:
    for db, layout in sorted(ctx.extra.get("databases", {}).items()):
        if layout["active"] in dead:
            survivors = [c for c in layout["copies"] if c not in dead]
            if survivors:
                move_database(ctx, db, survivors[0], dead)


def dag_switchover(ctx: Context, fault: dict[str, Any]) -> None:
    db = fault["database"]
    layout = ctx.extra["databases"].get(db)
    if layout is None:
        raise ValueError(f"no database {db} in this topology")
    to = fault["to"] or next(c for c in layout["copies"] if c != layout["active"])
    move_database(ctx, db, to, set())


def rebind(ctx: Context, fault: dict[str, Any]) -> None:
    """Set-MailboxDatabase -RpcClientAccessServer: every site's autodiscover learns it now,
    profiles only when they next ask (exchange.autodiscover_refresh_s)."""
    server = host_fqdn(ctx, fault["to"])
    for ad in ctx.plan.by_role("autodiscover"):
        reply = admin_call(ctx, ad.name, {"op": "set_rcas", "db": fault["database"], "server": server}, ad.name,
                           AUTODISCOVER_PORT)
        ctx.log.emit("rcas_set", db=fault["database"], server=server, autodiscover=ad.name, ok=bool(reply.get("ok")))


def poweroff(ctx: Context, fault: dict[str, Any]) -> None:
    net = ctx.lab.net
    for host in fault["target"]:
        node = ctx.lab.node(host)
        for intf in node.intfList():
            if intf.link:
                other = intf.link.intf2 if intf.link.intf1 is intf else intf.link.intf1
                net.configLinkStatus(host, other.node.name, "down")
                break
        for proc in ctx.lab.processes_on(host):
            proc.signal(signal.SIGKILL)
    fail_over_databases(ctx, set(fault["target"]))


def crash(ctx: Context, fault: dict[str, Any]) -> None:
    for host in fault["target"]:
        for proc in _role_processes(ctx, host):
            proc.signal(signal.SIGKILL)
    fail_over_databases(ctx, set(fault["target"]))


def freeze(ctx: Context, fault: dict[str, Any]) -> None:
    for host in fault["target"]:
        for proc in _role_processes(ctx, host):
            proc.signal(signal.SIGSTOP)


def link_cut(ctx: Context, fault: dict[str, Any]) -> None:
    mailboxes = [h.ip for h in ctx.plan.by_role("mailbox")]
    for host in fault["target"]:
        node = ctx.lab.node(host)
        for ip in mailboxes:
            node.cmd(f"ip route add blackhole {ip}/32")


def drain(ctx: Context, fault: dict[str, Any]) -> None:
    mode = modes.get(ctx.spec["mode"])
    for host in fault["target"]:
        mode.drain(ctx, host, fault["deadline_s"])


def rejoin(ctx: Context, fault: dict[str, Any]) -> None:
    mode = modes.get(ctx.spec["mode"])
    for host in fault["target"]:
        mode.rejoin(ctx, host)


def controller_crash(ctx: Context, fault: dict[str, Any]) -> None:
    if ctx.controller is None:
        raise ValueError("controller-crash needs a controller")
    ctx.controller.signal(signal.SIGKILL)
    restart: Callable[[], None] = ctx.extra["restart_controller"]
    timer = threading.Timer(fault["restart_after_s"], restart)
    timer.daemon = True
    timer.start()
    ctx.extra.setdefault("timers", []).append(timer)


INJECTORS: dict[str, Callable[[Context, dict[str, Any]], None]] = {
    "poweroff": poweroff, "crash": crash, "freeze": freeze, "link-cut": link_cut,
    "drain": drain, "rejoin": rejoin, "controller-crash": controller_crash, "dag-switchover": dag_switchover,
    "rebind": rebind,
}


def failed_elements(ctx: Context, fault: dict[str, Any]) -> list[str]:
    """Which elements a session must have been on to count as affected.

    Hosts by name; a database as ``db:<name>`` (its sessions are affected when its active
    copy moves or its server dies); ``controller`` for a controller fault (every session).
    """
    kind = fault["kind"]
    if kind in ("rejoin", "rebind"):
        return []
    if kind == "controller-crash":
        return ["controller"]
    if kind == "dag-switchover":
        return [f"db:{fault['database']}"]
    elements = list(fault["target"])
    for db, layout in sorted(ctx.extra.get("databases", {}).items()):
        if layout["active"] in fault["target"] and kind in ("poweroff", "crash", "freeze"):
            elements.append(f"db:{db}")
    return elements


def fault_label(fault: dict[str, Any]) -> str:
    """'poweroff cas1', 'dag-switchover DB1 to mbx2', 'rebind DB1 to array:HQ', ..."""
    if fault["kind"] in ("dag-switchover", "rebind"):
        return f"{fault['kind']} {fault['database']} to {fault['to'] or 'next copy'}"
    return " ".join([fault["kind"], ",".join(fault["target"])]).strip()


def inject(ctx: Context, fault: dict[str, Any]) -> None:
    injector = INJECTORS.get(fault["kind"])
    if injector is None:
        raise ValueError(f"fault {fault['kind']!r} is not implemented yet")
    ctx.log.emit("fault", kind=fault["kind"], targets=fault["target"], elements=failed_elements(ctx, fault),
                 label=fault_label(fault))
    injector(ctx, fault)
    ctx.log.emit("fault_done", kind=fault["kind"], targets=fault["target"])
