"""The SDN NLB's state, apart from OpenFlow: VIPs and their members, what an admin set
(kept in a file so a restarted controller keeps it), the switch's conntrack entries as
the NLB reads them, and a token bucket for what reaches the controller. Pure code, unit
tested without a switch."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from controllers.nlb_logic import ConnectionTable, HealthTracker, Member, Pool


class Vip:
    """One VIP: its address, the switch it lives on, its pool and its connections."""

    def __init__(self, index: int, spec: dict, fall: int = 2, rise: int = 2):
        self.index = index
        self.name = spec["name"]
        self.ip = spec["ip"]
        self.mac = spec["mac"]
        self.dpid = int(spec["dpid"])
        self.ports = set(int(p) for p in spec["ports"])
        members = [Member(m["name"], m["ip"], m["mac"], m["port_name"]) for m in spec["members"]]
        self.member_index = {m.name: i + 1 for i, m in enumerate(members)}
        self.pool = Pool({m.name: m for m in members}, affinity=spec.get("affinity", "none"))
        self.conns = ConnectionTable()  # controller dataplane: the connections it pinned
        self.port_numbers: dict[str, int] = {}
        self.health = {m.name: HealthTracker(fall, rise) for m in members}
        # who may send to the VIP: per switch port, its source prefixes and the MAC behind it
        self.sources: list[dict[str, Any]] = list(spec.get("sources", []))
        self.drain_generation: dict[str, int] = {m.name: 0 for m in members}

    def member_by_ip(self, ip: str) -> Member | None:
        return next((m for m in self.pool.members.values() if m.ip == ip), None)

    def member_by_index(self, index: int) -> Member | None:
        name = next((n for n, i in self.member_index.items() if i == index), None)
        return self.pool.members.get(name) if name else None

    def survivors_of(self, name: str) -> list[tuple[Member, int]]:
        """The other members with a known port, as (member, port), starting after ``name`` in
        pool order: where a dead member's clients are sent to be reset (spread over the pool,
        so no one survivor takes every dead member's resets)."""
        names = list(self.pool.members)
        start = names.index(name)
        others = names[start + 1:] + names[:start]
        return [(self.pool.members[n], self.port_numbers[self.pool.members[n].port_name]) for n in others
                if self.pool.members[n].port_name in self.port_numbers]

    def survivor_for(self, name: str) -> tuple[Member, int] | None:
        """The first survivor of ``name`` that is in service (its kernel is there to answer)."""
        return next(((m, port) for m, port in self.survivors_of(name) if m.in_service), None)

    def allowed_sources(self) -> list[tuple[int, str]]:
        """(switch port number, source prefix) pairs that may send to the VIP, for ports known."""
        return [(self.port_numbers[s["port_name"]], prefix) for s in self.sources if s["port_name"] in self.port_numbers
                for prefix in s["prefixes"]]

    def client_port(self, client_ip: str) -> tuple[int | None, str]:
        """The switch port (and next-hop MAC) a client address is reached by."""
        address = ipaddress.IPv4Address(client_ip)
        for s in self.sources:
            if s["port_name"] in self.port_numbers and any(address in ipaddress.IPv4Network(p, strict=False)
                                                           for p in s["prefixes"]):
                return self.port_numbers[s["port_name"]], s["mac"]
        return None, ""


# ---------------------------------------------------------------- admin state across restarts

@dataclass
class AdminState:
    """What an admin set on members, saved atomically after each change."""

    path: Path | None
    members: dict[str, dict[str, dict[str, Any]]] = field(default_factory=dict)  # vip -> member -> state

    @classmethod
    def load(cls, path: str | None) -> "AdminState":
        state = cls(Path(path) if path else None)
        if state.path and state.path.exists():
            try:
                data = json.loads(state.path.read_text())
                if isinstance(data, dict):
                    state.members = {str(v): {str(m): s for m, s in ms.items() if isinstance(s, dict)}
                                     for v, ms in data.items() if isinstance(ms, dict)}
            except (OSError, ValueError):
                pass
        return state

    def get(self, vip: str, member: str) -> dict[str, Any]:
        return self.members.get(vip, {}).get(member, {})

    def set(self, vip: str, member: str, **values: Any) -> None:
        self.members.setdefault(vip, {}).setdefault(member, {}).update(values)
        self.save()

    def save(self) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=self.path.parent, prefix=".nlb-state-")
        try:
            with os.fdopen(fd, "w") as handle:
                json.dump(self.members, handle, sort_keys=True)
            os.replace(tmp, self.path)
        except BaseException:
            os.unlink(tmp)
            raise


# ---------------------------------------------------------------- the switch's conntrack

CT_LINE = re.compile(r"^tcp,orig=\(src=(?P<src>[\d.]+),dst=(?P<dst>[\d.]+),sport=(?P<sport>\d+),dport=(?P<dport>\d+)\)"
                     r".*?zone=(?P<zone>\d+)(?:,mark=(?P<mark>\d+))?.*?(?:state=(?P<state>[A-Z_0-9]+))?\)?$")
OVS_RUNDIR = Path(os.environ.get("OVS_RUNDIR", "/var/run/openvswitch"))


@dataclass(frozen=True)
class CtEntry:
    client_ip: str
    client_port: int
    vip_ip: str
    service_port: int
    zone: int
    mark: int
    state: str = ""


def parse_conntrack(text: str) -> list[CtEntry]:
    """Entries of ``dpctl/dump-conntrack`` (TCP only; other lines ignored)."""
    out = []
    for line in text.splitlines():
        m = CT_LINE.match(line.strip())
        if m:
            out.append(CtEntry(m["src"], int(m["sport"]), m["dst"], int(m["dport"]), int(m["zone"]),
                               int(m["mark"] or 0), m["state"] or ""))
    return out


def unixctl(command: str, *args: str, timeout_s: float = 5) -> str:
    """One command to ovs-vswitchd over its own control socket (what ovs-appctl does,
    without starting a process: a conntrack dump at failover is then ~1 ms, not ~20)."""
    pid = (OVS_RUNDIR / "ovs-vswitchd.pid").read_text().strip()
    request = json.dumps({"method": command, "params": list(args), "id": 0}).encode()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout_s)
        sock.connect(str(OVS_RUNDIR / f"ovs-vswitchd.{pid}.ctl"))
        sock.sendall(request)
        decoder, buffer = json.JSONDecoder(), ""
        while True:
            chunk = sock.recv(65536)
            if not chunk:
                raise OSError("ovs-vswitchd closed the control socket")
            buffer += chunk.decode()
            try:
                reply, _ = decoder.raw_decode(buffer)
                break
            except ValueError:
                continue
    if reply.get("error"):
        raise OSError(str(reply["error"]))
    return reply.get("result") or ""


def _dpctl(command: str, datapath: str | None, zone: int) -> list[str]:
    return [f"dpctl/{command}"] + ([datapath] if datapath else []) + [f"zone={zone}"]


def dump_conntrack(zone: int, datapath: str | None = None, timeout_s: float = 5) -> list[CtEntry]:
    """The datapath's connections in one zone (the controller runs in the root namespace)."""
    argv = _dpctl("dump-conntrack", datapath, zone)
    try:
        return parse_conntrack(unixctl(*argv, timeout_s=timeout_s))
    except (OSError, ValueError):
        pass
    try:
        res = subprocess.run(["ovs-appctl"] + argv, capture_output=True, text=True, timeout=timeout_s, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    return parse_conntrack(res.stdout)


def flush_conntrack(zone: int, datapath: str | None = None) -> None:
    subprocess.run(["ovs-appctl"] + _dpctl("flush-conntrack", datapath, zone), capture_output=True, timeout=5,
                   check=False)


# ---------------------------------------------------------------- what reaches the controller

class TokenBucket:
    """At most ``rate`` events per second, bursts of ``burst``; counts what it refused."""

    def __init__(self, rate: float, burst: float, clock=time.monotonic):
        self.rate, self.burst, self.clock = rate, burst, clock
        self.tokens, self.stamp = burst, clock()
        self.refused = 0

    def allow(self) -> bool:
        now = self.clock()
        self.tokens = min(self.burst, self.tokens + (now - self.stamp) * self.rate)
        self.stamp = now
        if self.tokens >= 1:
            self.tokens -= 1
            return True
        self.refused += 1
        return False

    def take_refused(self) -> int:
        count, self.refused = self.refused, 0
        return count
