"""The lab's own cost: how much CPU each process used over the measurement window.

The runner reads ``/proc/<pid>/stat`` (user + system time) of every process the lab
started, of ovs-vswitchd (which forwards every packet of the userspace datapath) and of
itself, when the window opens and when it closes, and logs one ``process_cpu`` event per
process. The metrics divide by the successful operations of the window: CPU ms per
operation, per kind of process, is where a lighter lab has to save.
"""

from __future__ import annotations

import os
from pathlib import Path

from labcommon.catalogue import PROCESS_CPU

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def cpu_ms(pid: int) -> float | None:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS  # utime + stime


def kind_of(name: str, host_roles: dict[str, str]) -> str:
    if name in host_roles:
        return {"client": "client", "cas": "cas", "mailbox": "mailbox", "autodiscover": "autodiscover"}.get(
            host_roles[name], "other")
    if name.endswith("-http"):  # a host's HTTP clients (traffic.http_client)
        return "client"
    for prefix, kind in (("mailbox-", "mailbox"), ("controller", "controller"), ("health-", "health"), ("probe-", "prober"),
                         ("appprobe-", "prober"), ("tcpdump-", "capture"), ("haproxy-", "haproxy"),
                         ("dnsmasq", "dns"), ("ovs-vswitchd", "ovs"), ("runner", "runner")):
        if name.startswith(prefix):
            return kind
    return "other"


def ovs_pid() -> int | None:
    try:
        return int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


class CostMeter:
    """CPU of the lab's processes between ``start`` and ``stop``."""

    def __init__(self, lab, plan):
        self.lab = lab
        self.roles = {h.name: h.role for h in plan.hosts}
        self.before: dict[tuple[str, int], float] = {}
        self.started_ns = 0

    def _pids(self) -> list[tuple[str, int]]:
        pids = [(p.name, p.pid) for p in self.lab.processes if p.alive()]
        ovs = ovs_pid()
        return pids + ([("ovs-vswitchd", ovs)] if ovs else []) + [("runner", os.getpid())]

    def start(self, now_ns: int) -> None:
        self.started_ns = now_ns
        self.before = {key: value for key in self._pids() if (value := cpu_ms(key[1])) is not None}

    def stop(self, log, now_ns: int) -> None:
        window = (now_ns - self.started_ns) / 1e6
        for key, before in sorted(self.before.items()):
            after = cpu_ms(key[1])
            if after is not None:
                log.emit(PROCESS_CPU, name=key[0], kind=kind_of(key[0], self.roles), cpu_ms=round(after - before, 1),
                         window_ms=round(window, 1))
