"""Fault injection. Each fault is logged *before* it acts, with the CLOCK_MONOTONIC
instant that metrics use as ``t_fault``, and names the elements it fails.

    crash       service process killed: the kernel answers RST
    poweroff    host links down and every lab process on it killed: silence
    freeze      service process stopped (SIGSTOP): handshakes still complete, no answers
    link-cut    a CAS loses its path to the mailbox servers (blackhole routes)
    drain       graceful removal from the load balancer; ``rejoin`` brings it back
    controller-crash   the SDN controller is killed, and restarted after restart_after_s
"""

from __future__ import annotations

import signal
import threading
from typing import Any, Callable

from caslab import modes
from caslab.services import Context


def _role_processes(ctx: Context, host: str):
    return [p for p in ctx.lab.processes_on(host) if p.name == host]


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


def crash(ctx: Context, fault: dict[str, Any]) -> None:
    for host in fault["target"]:
        for proc in _role_processes(ctx, host):
            proc.signal(signal.SIGKILL)


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
    "drain": drain, "rejoin": rejoin, "controller-crash": controller_crash,
}


def failed_elements(fault: dict[str, Any]) -> list[str]:
    """Which elements a session must have been on to count as affected."""
    if fault["kind"] in ("rejoin",):
        return []
    if fault["kind"] == "controller-crash":
        return ["controller"]
    return list(fault["target"])


def inject(ctx: Context, fault: dict[str, Any]) -> None:
    injector = INJECTORS.get(fault["kind"])
    if injector is None:
        raise ValueError(f"fault {fault['kind']!r} is not implemented yet")
    ctx.log.emit("fault", kind=fault["kind"], targets=fault["target"], elements=failed_elements(fault))
    injector(ctx, fault)
    ctx.log.emit("fault_done", kind=fault["kind"], targets=fault["target"])
