"""Per-session facts from one run's events, the session's outages, and its fate under
each fault: docs/METRICS.md sections 3-7 (that document is the definition; this module
follows it section by section).

An outage is found from the session's own events alone (a drop, or a stall longer than
the threshold); it then belongs to at most one fault, the latest eligible one that
fails an element the session was on (section 5). Everything a fault reports about a
session follows from the outages it owns, so no outage is counted twice and a fault that
disrupts nobody affects nobody.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from labcommon.catalogue import CLIENT_UP, CONNECT_OK, DOWN, LB_MEMBER, LOGON, OP

from caslab.results.metrics.outcomes import SessionFault

SESSION_EVENTS = {OP, DOWN, LOGON, CONNECT_OK}


@dataclass(frozen=True)
class Success:
    ts: int
    cas: str | None
    op: str | None
    sent: int = 0            # when its request was sent: ts - lat_us

    @property
    def mailbox(self) -> bool:
        """A success that reached the mailbox (a ping is answered by the CAS alone)."""
        return self.op != "ping"


@dataclass
class FaultWindow:
    """What the session metrics need of one fault (section 2)."""

    position: int
    index: int
    t: int
    end: int                 # its window's end e (exclusive)
    elements: frozenset[str]
    affects: str = "on_elements"

    @property
    def weak(self) -> bool:
        """A ``disrupted``-kind fault: it only may have disrupted the sessions it carries."""
        return self.affects == "disrupted"


@dataclass
class SessionTrack:
    """One session's events up to the end of the measurement, in time order."""

    sid: str
    host: str
    ok: list[Success] = field(default_factory=list)
    drop_ts: list[int] = field(default_factory=list)
    late_ts: list[int] = field(default_factory=list)
    logons: list[tuple[int, str | None, bool, bool]] = field(default_factory=list)  # ts, cas, reauth, prompt
    connect_ts: list[int] = field(default_factory=list)
    db: str | None = None
    address: str | None = None
    _ok_ts: list[int] = field(default_factory=list, repr=False)

    @property
    def ok_ts(self) -> list[int]:
        if len(self._ok_ts) != len(self.ok):
            self._ok_ts = [s.ts for s in self.ok]
        return self._ok_ts

    def cas_at(self, t: int) -> str | None:
        """The CAS of the last success before t, else of the last logon before t."""
        i = bisect.bisect_left(self.ok_ts, t)
        if i:
            return self.ok[i - 1].cas
        logons = [cas for ts, cas, _, _ in self.logons if ts < t]
        return logons[-1] if logons else None

    def carried_by(self, fault: FaultWindow) -> bool:
        """The fault failed an element the session was on at its instant (section 5)."""
        return bool({self.cas_at(fault.t), f"db:{self.db}", "controller"} & fault.elements)

    def mailbox_only(self, fault: FaultWindow) -> bool:
        """Served again only by a mailbox success: the fault fails the database, not the CAS."""
        return f"db:{self.db}" in fault.elements and self.cas_at(fault.t) not in fault.elements

    def beyond(self, success: Success, fault: FaultWindow) -> bool:
        """Service after the fault (section 5): a request sent after its instant was answered
        (a reply already on its way proves nothing), and by the mailbox if the fault failed
        the session's database."""
        if success.sent < fault.t:
            return False
        return success.mailbox or f"db:{self.db}" not in fault.elements

    def first_ok_after(self, t: int, mailbox: bool = False) -> Success | None:
        i = bisect.bisect_right(self.ok_ts, t)
        return next((s for s in self.ok[i:] if s.mailbox or not mailbox), None)

    def ok_between(self, start: int, stop: int) -> list[Success]:
        """Successes with start <= ts < stop."""
        return self.ok[bisect.bisect_left(self.ok_ts, start):bisect.bisect_left(self.ok_ts, stop)]


@dataclass
class Outage:
    """A stretch during which the session was not served (section 4)."""

    onset: int
    by_drop: bool
    owner: int | None            # position of the fault it belongs to
    end: Success | None          # the success that ended it (None: still open at the end)
    first_drop: int | None

    @property
    def ended(self) -> bool:
        return self.end is not None


def tracks(events: list[dict], late_ms: float, end: int) -> dict[str, SessionTrack]:
    """Every session of the run (declared by its client, or seen in its own events), with
    its events up to ``end`` (section 3)."""
    out: dict[str, SessionTrack] = {}
    for e in events:
        if e["ev"] == CLIENT_UP and isinstance(e.get("sessions"), list):  # (runs before 0.2 logged a count)
            for sid in e["sessions"]:
                out.setdefault(sid, SessionTrack(sid, e["src"]))
    late_us = late_ms * 1000
    for e in sorted(events, key=lambda x: x["ts"]):
        if e["ev"] not in SESSION_EVENTS or "session" not in e:
            continue
        track = out.setdefault(e["session"], SessionTrack(e["session"], e["src"]))
        if e["ts"] > end:
            continue
        ts = e["ts"]
        if e["ev"] == OP:
            if e.get("ok"):
                track.ok.append(Success(ts, e.get("cas"), e.get("op"), ts - int(e.get("lat_us", 0)) * 1000))
            else:
                track.drop_ts.append(ts)
            if e.get("lat_us", 0) > late_us:
                track.late_ts.append(ts)
        elif e["ev"] == DOWN:
            track.drop_ts.append(ts)
        elif e["ev"] == LOGON:
            track.logons.append((ts, e.get("cas"), bool(e.get("reauth")), bool(e.get("prompt", e.get("reauth")))))
            track.db = track.db or e.get("db")
        elif e["ev"] == CONNECT_OK:
            track.connect_ts.append(ts)
            track.address = track.address or e.get("laddr")
    return out


def owner_of(track: SessionTrack, onset: int, faults: list[FaultWindow], owners: set[int]) -> FaultWindow | None:
    """The fault an outage beginning at ``onset`` belongs to (section 5); ``owners``: faults
    that already own an outage of this session (a fault owns one at most)."""
    if not track.ok or track.ok[0].ts >= onset:
        return None  # never served before: no fault cut it off
    eligible = [f for f in faults if f.t <= onset and f.position not in owners and track.carried_by(f)
                and (onset < f.end or not any(track.beyond(s, f) for s in track.ok_between(f.t, onset)))]
    strong = [f for f in eligible if not f.weak]
    chosen = strong or eligible
    return max(chosen, key=lambda f: (f.t, f.position)) if chosen else None


def outages(track: SessionTrack, faults: list[FaultWindow], start: int, end: int, stall_ns: int) -> list[Outage]:
    """The session's outages, each with its owner (sections 4 and 5)."""
    out: list[Outage] = []
    ok_ts = track.ok_ts
    i = bisect.bisect_right(ok_ts, start)
    anchor = ok_ts[i - 1] if i else start
    while True:
        i = bisect.bisect_right(ok_ts, anchor)
        q = ok_ts[i] if i < len(ok_ts) else None
        limit = q if q is not None else end
        d = _first(track.drop_ts, max(start, anchor + 1), limit)
        s = anchor + stall_ns if limit - anchor > stall_ns else None
        if d is None and s is None:
            if q is None:
                return out
            anchor = q
            continue
        onset = d if s is None or (d is not None and d <= s) else s
        owner = owner_of(track, onset, faults, {o.owner for o in out if o.owner is not None})
        end_success = track.first_ok_after(onset, mailbox=owner is not None and track.mailbox_only(owner))
        stop = end_success.ts if end_success else None
        first_drop = _first(track.drop_ts, onset, stop)
        out.append(Outage(onset, onset == d, owner.position if owner else None, end_success, first_drop))
        if end_success is None:
            return out
        anchor = end_success.ts


def member_down_times(events: list[dict]) -> dict[str, list[int]]:
    """When a load balancer stopped sending new connections to each member."""
    out: dict[str, list[int]] = {}
    for e in events:
        if e["ev"] == LB_MEMBER and not e.get("accepts_new", True):
            out.setdefault(e["member"], []).append(e["ts"])
    return out


def _ms(t: int | None, t0: int) -> float | None:
    return None if t is None else round((t - t0) / 1e6, 3)


def _first(series: list[int], start: int, stop: int | None = None) -> int | None:
    """First time in a sorted series at or after start (and before stop)."""
    i = bisect.bisect_left(series, start)
    if i < len(series) and (stop is None or series[i] < stop):
        return series[i]
    return None


def longest_gap(track: SessionTrack, t: int, stop: int) -> int:
    """The longest part of [t, stop) without a success (ns)."""
    points = [t] + [s.ts for s in track.ok_between(t + 1, stop)] + [max(t, stop)]
    return max(b - a for a, b in zip(points, points[1:])) if len(points) > 1 else 0


def phases(track: SessionTrack, fault: FaultWindow, outage: Outage, cas: str | None,
           downs: dict[str, list[int]]) -> dict[str, float | None]:
    """The milestones of one recovered session's reconnect (section 7)."""
    t, r = fault.t, outage.end.ts if outage.end else None
    noticed = next((x for x in downs.get(cas or "", []) if fault.t <= x < fault.end), None)
    saw = outage.first_drop
    connected = _first(track.connect_ts, saw) if saw is not None else None
    if connected is not None and r is not None and connected > r:
        connected = None
    logged_on = next((x[0] for x in track.logons if connected is not None and x[0] >= connected
                      and r is not None and x[0] <= r), None)
    return {"lb_noticed": _ms(noticed, t), "client_saw": _ms(saw, t), "connected": _ms(connected, t),
            "logged_on": _ms(logged_on, t), "first_op": _ms(r, t)}


def in_causal_order(milestones: dict[str, float | None] | None, order: tuple[str, ...]) -> bool:
    """Every milestone exists and none comes before the one it follows."""
    if not milestones:
        return False
    values = [milestones.get(p) for p in order]
    return all(v is not None for v in values) and all(a <= b for a, b in zip(values, values[1:]))


def session_fault(track: SessionTrack, fault: FaultWindow, session_outages: list[Outage], run_end: int,
                  downs: dict[str, list[int]]) -> SessionFault:
    """One session's fate under one fault (section 6)."""
    t, e = fault.t, fault.end
    cas = track.cas_at(t)
    owned = [o for o in session_outages if o.owner == fault.position]
    if fault.weak:
        affected = bool(owned)
    else:
        affected = track.carried_by(fault)
    unowned_here = [o for o in session_outages if o.owner is None and t <= o.onset < e]
    counted = owned if affected else unowned_here
    recovered = affected and bool(owned) and all(o.ended for o in owned)
    served_after = any(s.mailbox or not track.mailbox_only(fault) for s in track.ok_between(t, run_end + 1))
    undisturbed = affected and not owned and served_after
    first = owned[0] if owned else None
    reconnect = _ms(first.end.ts, t) if recovered and first and first.end else None
    if first is not None:
        dropped = first.first_drop
    else:
        dropped = _first(track.drop_ts, t, e)
    late = _first(track.late_ts, t, e) is not None
    logons = [x for x in track.logons if t <= x[0] < e]
    return SessionFault(
        session=track.sid, host=track.host, address=track.address, cas_at_fault=cas, db=track.db,
        affected=affected, dropped_ms=_ms(dropped, t), stalled=any(not o.by_drop for o in counted),
        longest_gap_ms=round(longest_gap(track, t, min(e, run_end)) / 1e6, 3), late=late,
        disrupted=bool(counted), recovered=recovered, undisturbed=undisturbed, reconnect_ms=reconnect,
        cas_after=first.end.cas if recovered and first and first.end else None,
        reauth=sum(1 for x in logons if x[2]), prompts=sum(1 for x in logons if x[2] and x[3]),
        silent_reauth=sum(1 for x in logons if x[2] and not x[3]),
        collateral=not affected and (bool(unowned_here) or late),
        phases=phases(track, fault, first, cas, downs) if recovered and first else None)
