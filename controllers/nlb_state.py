"""The SDN NLB's state, apart from OpenFlow: VIPs and their members, the switch's
conntrack entries as the NLB reads them, and a token bucket for what reaches the
controller. Pure code (no file, socket, process or clock of its own), unit tested
without a switch; what an admin set is kept on disk by controllers/nlb_io.py, and the
conntrack is read there too."""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass

from controllers.nlb_logic import ConnectionTable, HealthTracker, Member, Pool
from labcommon.programs import NlbSource, NlbVip


class Vip:
    """One VIP: its address, the switch it lives on, its pool and its connections."""

    def __init__(self, index: int, spec: NlbVip, fall: int = 2, rise: int = 2):
        self.index = index
        self.name = spec.name
        self.ip = spec.ip
        self.mac = spec.mac
        self.dpid = spec.dpid
        self.ports = set(spec.ports)
        members = [Member(m.name, m.ip, m.mac, m.port_name) for m in spec.members]
        self.member_index = {m.name: i + 1 for i, m in enumerate(members)}
        self.pool = Pool({m.name: m for m in members}, affinity=spec.affinity)
        self.conns = ConnectionTable()  # controller dataplane: the connections it pinned
        self.port_numbers: dict[str, int] = {}
        self.health = {m.name: HealthTracker(fall, rise) for m in members}
        # who may send to the VIP: per switch port, its source prefixes and the MAC behind it
        self.sources: list[NlbSource] = list(spec.sources)
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
        return [(self.port_numbers[s.port_name], prefix) for s in self.sources if s.port_name in self.port_numbers
                for prefix in s.prefixes]

    def client_port(self, client_ip: str) -> tuple[int | None, str]:
        """The switch port (and next-hop MAC) a client address is reached by."""
        address = ipaddress.IPv4Address(client_ip)
        for s in self.sources:
            if s.port_name in self.port_numbers and any(address in ipaddress.IPv4Network(p, strict=False)
                                                        for p in s.prefixes):
                return self.port_numbers[s.port_name], s.mac
        return None, ""


# ---------------------------------------------------------------- the switch's conntrack

CT_LINE = re.compile(r"^tcp,orig=\(src=(?P<src>[\d.]+),dst=(?P<dst>[\d.]+),sport=(?P<sport>\d+),dport=(?P<dport>\d+)\)"
                     r".*?zone=(?P<zone>\d+)(?:,mark=(?P<mark>\d+))?.*?(?:state=(?P<state>[A-Z_0-9]+))?\)?$")


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


# ---------------------------------------------------------------- what reaches the controller

class TokenBucket:
    """At most ``rate`` events per second, bursts of ``burst``; counts what it refused."""

    def __init__(self, rate: float, burst: float, now: float = 0.0):
        self.rate, self.burst = rate, burst
        self.tokens, self.stamp = burst, now
        self.refused = 0

    def allow(self, now: float) -> bool:
        """One event at ``now`` (monotonic seconds): allowed, or counted as refused."""
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

