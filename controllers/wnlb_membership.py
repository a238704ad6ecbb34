"""Windows NLB's heartbeats and convergence, pure: what a host knows of its peers and when
it moves buckets. The agent (``controllers/wnlb_agent.py``) feeds it frames and ticks.

The mechanism, as Microsoft documents it, with the lab's choices where it is silent:

* Every host sends a heartbeat each period (AliveMsgPeriod, 1 s by default). At each of
  its own ticks a host counts, per peer, a missed heartbeat when none arrived since its
  previous tick; AliveMsgTolerance (5) missed in a row and the peer is gone. A heartbeat
  from a host it did not count as alive makes it a member again (a join).
* A host's *view* is the set of live hosts with each one's drain flag. When the view
  changes, the host starts converging (and says so in its heartbeats); it keeps serving
  the buckets it owns meanwhile, so a dead host's buckets stay unserved until the end.
* Convergence completes when, at ``stable`` consecutive ticks, every host of the view sent
  a heartbeat in the last two ticks announcing the same view ("all present hosts
  exchange consistent information and a sufficient number of status messages", KB 232997;
  three periods reproduce the documented 2.5-3 s). A change of view meanwhile restarts it.
* At completion every host applies :func:`wnlb_logic.rebalance` to the bucket map of the
  lowest-id host of the view that has one (all converged hosts hold the same map) with
  the hosts that are not draining as owners.
* Each heartbeat also names the buckets in which its host serves established connections
  (``busy``). A host that owns a bucket another live host is busy in takes only new
  connections there (a "dirty" bucket): hosts do not complete convergence at the same
  instant, and the old owner may keep its connections (drain, connection tracking).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

from controllers.wnlb_logic import BUCKETS, BucketMap, moved, owned_by, rebalance
from labcommon.protocol import nesting_depth

VERSION = 1
View = tuple  # tuple[tuple[int, bool], ...]: (host id, draining), sorted by id


@dataclass
class Peer:
    host_id: int
    name: str
    alive: bool = False
    heard: bool = False          # a heartbeat arrived since this host's last tick
    missed: int = 0
    state: str = "converging"
    view: View = ()
    draining: bool = False
    bucket_map: BucketMap = field(default_factory=list)
    busy: list[int] = field(default_factory=list)
    conns: int = 0


@dataclass
class Change:
    """Something the agent must log or act on: ``kind`` is member_down, member_up,
    converging or converged."""

    kind: str
    detail: dict[str, Any]


def encode(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), sort_keys=True).encode()


MAX_HOSTS_ID = 2**31    # host ids (Windows NLB: 1-32), view entries and counters stay in range
MAX_NAME = 255


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a number a heartbeat carries")


def _count(value: Any, limit: int = 2**62) -> int:
    """An integer (not a bool, not a float) in [0, limit); ValueError otherwise."""
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value < limit:
        raise ValueError(f"not an integer in range: {value!r}"[:80])
    return value


def _text(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_NAME:
        raise ValueError("not a short string")
    return value


def decode(data: bytes) -> dict[str, Any] | None:
    """A heartbeat's payload, or None if it is not one. Frames come from anyone on the
    segment: nothing in one may raise (Infinity, NaN, deep nesting, huge numbers, wrong
    types are all "not a heartbeat", as a driver would ignore them)."""
    try:
        text = data.rstrip(b"\0").decode()
        if len(text) > 2048 or nesting_depth(text) > 3:  # a heartbeat nests 3 deep (view entries)
            return None
        payload = json.loads(text, parse_constant=_reject_constant)
    except (ValueError, UnicodeDecodeError, RecursionError):
        return None
    if not isinstance(payload, dict) or payload.get("v") != VERSION:
        return None
    try:
        entries = payload["view"]
        if not isinstance(entries, list) or len(entries) > BUCKETS or not all(
                isinstance(e, list) and len(e) == 2 and isinstance(e[1], bool) for e in entries):
            return None
        view = tuple((_count(i, MAX_HOSTS_ID), d) for i, d in entries)
        bucket_map = payload["map"]
        if not (bucket_map == [] or (isinstance(bucket_map, list) and len(bucket_map) == BUCKETS and all(
                x is None or (isinstance(x, int) and not isinstance(x, bool) and 0 <= x < MAX_HOSTS_ID)
                for x in bucket_map))):
            return None
        busy = payload["busy"]
        if not isinstance(busy, list) or len(busy) > BUCKETS:
            return None
        if not isinstance(payload["drain"], bool):
            return None
        return {"id": _count(payload["id"], MAX_HOSTS_ID), "name": _text(payload["name"]),
                "vip": _text(payload["vip"]), "state": _text(payload["state"]), "view": view,
                "drain": payload["drain"], "map": list(bucket_map), "busy": [_count(b, BUCKETS) for b in busy],
                "conns": _count(payload["conns"])}
    except (KeyError, TypeError, ValueError):
        return None


class Membership:
    """One host's knowledge of its cluster (see the module docstring)."""

    def __init__(self, host_id: int, name: str, vip: str, tolerance: int, stable: int):
        self.host_id, self.name, self.vip = host_id, name, vip
        self.tolerance, self.stable_needed = tolerance, stable
        self.peers: dict[int, Peer] = {}
        self.draining = False
        self.state = "converging"
        self.view: View = ()                  # the view of the last completed convergence
        self.target: View = ((host_id, False),)  # the view being converged on
        self.bucket_map: BucketMap = []
        self.busy: list[int] = []   # buckets in which this host serves established connections
        self.conns = 0
        self.stable = 0
        self.restarts = 0
        self.started_ns = 0
        self.ticks = 0

    # ---- what this host sends --------------------------------------------------------

    def heartbeat(self) -> dict[str, Any]:
        view = self.target if self.state == "converging" else self.view
        return {"v": VERSION, "id": self.host_id, "name": self.name, "vip": self.vip, "state": self.state,
                "view": [list(x) for x in view], "drain": self.draining, "map": self.bucket_map,
                "busy": self.busy, "conns": self.conns}

    # ---- what it hears ---------------------------------------------------------------

    def receive(self, hb: dict[str, Any]) -> list[Change]:
        """A decoded heartbeat from the wire (own frames and other clusters are ignored)."""
        if hb["id"] == self.host_id or hb["vip"] != self.vip:
            return []
        peer = self.peers.setdefault(hb["id"], Peer(hb["id"], hb["name"]))
        peer.heard = True
        peer.state, peer.view, peer.draining = hb["state"], hb["view"], hb["drain"]
        peer.bucket_map, peer.busy, peer.conns = hb["map"], hb["busy"], hb["conns"]
        if not peer.alive:
            peer.alive, peer.missed = True, 0
            return [Change("member_up", {"member": peer.name, "id": peer.host_id})]
        return []

    def current_view(self) -> View:
        members = [(self.host_id, self.draining)]
        members += [(p.host_id, p.draining) for p in self.peers.values() if p.alive]
        return tuple(sorted(members))

    def names(self, view: View) -> list[str]:
        return [self.name if i == self.host_id else self.peers[i].name for i, _ in view]

    # ---- each period -----------------------------------------------------------------

    def tick(self, now_ns: int) -> list[Change]:
        """This host's heartbeat period elapsed: count missed heartbeats, then converge."""
        self.ticks += 1
        if self.ticks == 1:
            self.started_ns = now_ns
        out: list[Change] = []
        for peer in self.peers.values():
            peer.missed = 0 if peer.heard else peer.missed + 1
            peer.heard = False
            if peer.alive and peer.missed >= self.tolerance:
                peer.alive = False
                out.append(Change("member_down", {"member": peer.name, "id": peer.host_id, "missed": peer.missed}))
        view = self.current_view()
        if self.state == "converged" and view != self.view:
            self._start(view, now_ns, out, restart=False)
        elif self.state == "converging" and view != self.target:
            self._start(view, now_ns, out, restart=self.ticks > 1)
        elif self.state == "converging":
            # a peer agrees if its latest heartbeat, at most one tick old, names the view: the
            # periods of two hosts are not in phase, so one tick may see two heartbeats of a
            # peer and the next none (counting only "since the last tick" made a host that
            # missed such a beat converge seconds after its peers)
            agreed = all(self.peers[i].missed <= 1 and self.peers[i].view == view for i, _ in view
                         if i != self.host_id)
            self.stable = self.stable + 1 if agreed else 0
            if self.stable >= self.stable_needed:
                out.append(self._complete(now_ns))
        return out

    def _start(self, view: View, now_ns: int, out: list[Change], restart: bool) -> None:
        before = self.target if self.state == "converging" else self.view
        if restart:
            self.restarts += 1
        else:
            self.restarts = 0
            self.started_ns = now_ns
        self.state, self.target, self.stable = "converging", view, 0
        out.append(Change("converging", {"view": self.names(view), "reason": self._reason(before, view),
                                         "restart": restart, "restarts": self.restarts}))

    def _reason(self, before: View, after: View) -> str:
        old, new = dict(before), dict(after)
        parts = [f"member_down:{self._name(i)}" for i in sorted(set(old) - set(new))]
        parts += [f"member_up:{self._name(i)}" for i in sorted(set(new) - set(old))]
        parts += [f"{'drainstop' if new[i] else 'start'}:{self._name(i)}" for i in sorted(set(old) & set(new))
                  if old[i] != new[i]]
        return ",".join(parts) or "start"

    def _name(self, host_id: int) -> str:
        return self.name if host_id == self.host_id else self.peers[host_id].name

    def base_map(self, view: View) -> BucketMap:
        """The cluster's current map: the lowest-id host of the view that has one."""
        for i, _ in view:
            bucket_map = self.bucket_map if i == self.host_id else self.peers[i].bucket_map
            if bucket_map:
                return list(bucket_map)
        return []

    def _complete(self, now_ns: int) -> Change:
        view = self.target
        base = self.base_map(view)
        owners = [i for i, draining in view if not draining]
        new = rebalance(base, owners)
        mine_before = owned_by(self.bucket_map, self.host_id) if self.bucket_map else set()
        mine_after = owned_by(new, self.host_id)
        departed = {self.peers[i].name: self.peers[i].conns for i, _ in self.view
                    if i != self.host_id and i not in dict(view)}
        change = Change("converged", {
            "view": self.names(view), "members": self.names(tuple(x for x in view if not x[1])),
            "buckets": {self._name(i): len(owned_by(new, i)) for i in owners}, "moved": len(moved(base, new)),
            "gained": sorted(mine_after - mine_before), "lost": sorted(mine_before - mine_after),
            "took_ms": round((now_ns - self.started_ns) / 1e6, 1), "restarts": self.restarts,
            "departed": departed, "owned": sorted(mine_after)})
        self.bucket_map, self.view, self.state, self.stable = new, view, "converged", 0
        return change
