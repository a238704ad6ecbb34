"""Pure load-balancing logic for the SDN NLB: no OpenFlow here, so it is unit-testable.

* ``MaglevTable``: a Maglev-style consistent-hashing lookup table; removing one of N
  backends moves only the keys that were on it, adding one moves about 1/(N+1) of them.
* ``affinity_key``: Windows NLB's affinity modes: none (per connection), single (client
  IP), network (client /24, "class C").
* ``Pool``: the members of one VIP with their state, and the table built over the members
  that may take new connections. A member's state has four parts that never mix: link
  (``port_up``, from port status), health (``healthy``, from probes), admin
  (``admin_up``, from the admin API) and ``draining``; a probe can never undo an admin
  "down", nor an admin "up" put a dead CAS back in rotation.
* ``ConnectionTable``: established connections pinned to their backend, so a membership
  change never moves a live session on a surviving backend.
"""

from __future__ import annotations

import hashlib
import ipaddress
from dataclasses import dataclass, field
from typing import Iterable

DEFAULT_TABLE_SIZE = 4099  # prime, as in Maglev
AFFINITIES = ("none", "single", "network")


def _hash64(data: str, salt: str) -> int:
    return int.from_bytes(hashlib.blake2b(data.encode(), digest_size=8, person=salt.encode()[:16]).digest(), "big")


class MaglevTable:
    """A Maglev-style lookup table: keys hash to one of ``size`` slots, each slot names a backend.

    Deviation from Maglev, on purpose: Maglev fills slots by per-backend permutations,
    which balances perfectly but moves a few slots of *surviving* backends on every
    membership change. Here each slot goes to the backend with the highest rendezvous
    score for that slot, so removing a backend moves exactly its own slots and adding one
    moves only the slots it wins (about 1/(N+1)). Balance is statistical (within a few
    percent at this table size). Updates are incremental, so a failover recomputes only
    the dead backend's slots.
    """

    def __init__(self, backends: Iterable[str] = (), size: int = DEFAULT_TABLE_SIZE):
        self.size = size
        self.table: list[str | None] = [None] * size
        self._scores: list[int] = [-1] * size
        self._seeds: dict[str, int] = {}
        for name in sorted(set(backends)):
            self.add(name)

    @property
    def backends(self) -> list[str]:
        return sorted(self._seeds)

    @staticmethod
    def _score(seed: int, slot: int) -> int:
        """splitmix64 of (seed + slot): a fast, well-mixed per-slot score."""
        z = (seed + slot * 0x9E3779B97F4A7C15) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & 0xFFFFFFFFFFFFFFFF
        z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & 0xFFFFFFFFFFFFFFFF
        return z ^ (z >> 31)

    def add(self, name: str) -> None:
        if name in self._seeds:
            return
        seed = self._seeds[name] = _hash64(name, "maglev-backend")
        for slot in range(self.size):
            score = self._score(seed, slot)
            if score > self._scores[slot] or (score == self._scores[slot] and name < (self.table[slot] or "")):
                self._scores[slot], self.table[slot] = score, name

    def remove(self, name: str) -> None:
        if self._seeds.pop(name, None) is None:
            return
        for slot in range(self.size):
            if self.table[slot] == name:
                self.table[slot], self._scores[slot] = None, -1
                for other in sorted(self._seeds):
                    score = self._score(self._seeds[other], slot)
                    if score > self._scores[slot]:
                        self._scores[slot], self.table[slot] = score, other

    def set_backends(self, names: Iterable[str]) -> None:
        wanted = set(names)
        for name in set(self._seeds) - wanted:
            self.remove(name)
        for name in sorted(wanted - set(self._seeds)):
            self.add(name)

    def lookup(self, key: str) -> str | None:
        return self.table[_hash64(key, "maglev-key") % self.size]


def affinity_key(affinity: str, client_ip: str, client_port: int) -> str:
    """The string hashed to pick a backend, by Windows NLB affinity mode."""
    if affinity == "none":
        return f"{client_ip}:{client_port}"
    if affinity == "single":
        return client_ip
    if affinity == "network":
        return str(ipaddress.IPv4Network(f"{client_ip}/24", strict=False).network_address)
    raise ValueError(f"affinity must be one of {AFFINITIES}, not {affinity!r}")


@dataclass
class Member:
    name: str
    ip: str
    mac: str
    port_name: str
    healthy: bool = True
    draining: bool = False
    port_up: bool = True
    admin_up: bool = True

    @property
    def in_service(self) -> bool:
        """Carries traffic at all: link up, healthy, not taken down by an admin."""
        return self.healthy and self.port_up and self.admin_up

    @property
    def accepts_new(self) -> bool:
        return self.in_service and not self.draining


@dataclass
class Pool:
    """One VIP's members and the Maglev table over those that accept new connections."""

    members: dict[str, Member]
    affinity: str = "none"
    table_size: int = DEFAULT_TABLE_SIZE
    _table: MaglevTable | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.affinity not in AFFINITIES:
            raise ValueError(f"affinity must be one of {AFFINITIES}, not {self.affinity!r}")
        self.rebuild()

    def rebuild(self) -> None:
        if self._table is None:
            self._table = MaglevTable((), self.table_size)
        self._table.set_backends(m.name for m in self.members.values() if m.accepts_new)

    def choose(self, client_ip: str, client_port: int) -> Member | None:
        name = self._table.lookup(affinity_key(self.affinity, client_ip, client_port))
        return self.members[name] if name else None

    def set_state(self, name: str, **changes) -> bool:
        """Change a member's healthy/draining/port_up/admin_up; True if its eligibility changed."""
        member = self.members[name]
        before = member.accepts_new
        for key, value in changes.items():
            setattr(member, key, value)
        self.rebuild()
        return before != member.accepts_new


FlowKey = tuple[str, int, str, int]  # client ip, client port, vip, service port


@dataclass
class Connection:
    key: FlowKey
    backend: str
    client_mac: str
    in_port: int
    created_ns: int
    client_isn: int | None = None  # the client's initial sequence number, from its SYN


class ConnectionTable:
    """Connections pinned to a backend; the switch holds their flows, this holds the index."""

    def __init__(self):
        self.by_key: dict[FlowKey, Connection] = {}

    def add(self, conn: Connection) -> None:
        self.by_key[conn.key] = conn

    def get(self, key: FlowKey) -> Connection | None:
        return self.by_key.get(key)

    def remove(self, key: FlowKey) -> Connection | None:
        return self.by_key.pop(key, None)

    def on_backend(self, backend: str) -> list[Connection]:
        return [c for c in self.by_key.values() if c.backend == backend]

    def count_by_backend(self) -> dict[str, int]:
        counts: dict[str, int] = {}
        for conn in self.by_key.values():
            counts[conn.backend] = counts.get(conn.backend, 0) + 1
        return counts

    def __len__(self) -> int:
        return len(self.by_key)


@dataclass
class HealthTracker:
    """fall/rise counting of active probe results, as load balancers do."""

    fall: int = 2
    rise: int = 2
    healthy: bool = True
    _streak: int = 0

    def record(self, success: bool) -> bool | None:
        """Feed one probe result; returns the new state when it flips, else None."""
        if success == self.healthy:
            self._streak = 0
            return None
        self._streak += 1
        if self._streak >= (self.rise if success else self.fall):
            self.healthy = success
            self._streak = 0
            return self.healthy
        return None
