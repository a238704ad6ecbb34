"""Per-session facts from one run's events, and each session's fate under each fault.

A session is known from its client's ``client_up`` (so a session that never logged a
thing still counts, and is stalled) and from its own events. Under fault *i* (instant
``t_i``; its window runs to the next fault or the end of the measurement):

* affected      it was on one of the fault's elements at ``t_i`` (its CAS, its database,
                the controller); for faults that ``affect`` only the ``disrupted``, also
                disrupted in the window: a fault that disrupts nobody affects nobody;
* dropped       a ``down`` or a failed operation in the window;
* stalled       no successful operation for longer than ``stall_ms`` (a gap that starts in
                the window, from ``t_i`` or a success to the next success or the end):
                a silent session, or one whose client died, is stalled;
* recovered     affected and a successful operation after ``t_i`` and after its drop (or
                the end of its stall); silence is never recovery;
* reconnect     that success minus ``t_i``, for affected sessions that dropped or stalled;
* collateral    not affected, yet dropped, stalled or late in the window.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from labcommon.catalogue import CLIENT_UP, CONNECT_OK, DOWN, LB_MEMBER, LOGON, OP

from caslab.metrics.outcomes import SessionFault

SESSION_EVENTS = {OP, DOWN, LOGON, CONNECT_OK}


@dataclass
class SessionTrack:
    """One session's events, indexed for lookups by time."""

    sid: str
    host: str
    ok_ts: list[int] = field(default_factory=list)
    ok_cas: list[str | None] = field(default_factory=list)
    mailbox_ok_ts: list[int] = field(default_factory=list)  # successes that reached the mailbox (not pings)
    drop_ts: list[int] = field(default_factory=list)
    late_ts: list[int] = field(default_factory=list)
    logons: list[tuple[int, str | None, bool, bool]] = field(default_factory=list)  # ts, cas, reauth, prompt
    connect_ts: list[int] = field(default_factory=list)
    db: str | None = None
    address: str | None = None

    def cas_at(self, t: int) -> str | None:
        """The CAS of the last successful operation before t (else of the last logon)."""
        i = bisect.bisect_left(self.ok_ts, t)
        if i:
            return self.ok_cas[i - 1]
        logons = [cas for ts, cas, _, _ in self.logons if ts < t]
        return logons[-1] if logons else None

    def first(self, series: list[int], start: int, end: int | None = None) -> int | None:
        """First time in series at or after start (and before end)."""
        i = bisect.bisect_left(series, start)
        if i < len(series) and (end is None or series[i] < end):
            return series[i]
        return None

    def longest_gap(self, start: int, window_end: int, run_end: int,
                    series: list[int] | None = None) -> tuple[int, int | None]:
        """Longest stretch without a successful operation that begins in [start, window_end),
        counted up to the window's end (what follows belongs to the next fault): (its
        length in ns, the success that ended it, or None if it ran to the end)."""
        series = self.ok_ts if series is None else series
        successes = series[bisect.bisect_left(series, start):bisect.bisect_right(series, run_end)]
        best, ended_by, previous = 0, None, start
        for ts in successes:
            if previous >= window_end:
                return best, ended_by
            if min(ts, window_end) - previous > best:
                best, ended_by = min(ts, window_end) - previous, ts
            previous = ts
        if previous < window_end and min(run_end, window_end) - previous > best:
            best, ended_by = min(run_end, window_end) - previous, None
        return best, ended_by


def tracks(events: list[dict], late_ms: float) -> dict[str, SessionTrack]:
    """Every session of the run: declared by its client, or seen in its own events."""
    out: dict[str, SessionTrack] = {}
    for e in events:
        if e["ev"] == CLIENT_UP and isinstance(e.get("sessions"), list):  # (runs before 0.2 logged a count)
            for sid in e["sessions"]:
                out.setdefault(sid, SessionTrack(sid, e["src"]))
    late_us = late_ms * 1000
    for e in events:
        if e["ev"] not in SESSION_EVENTS or "session" not in e:
            continue
        track = out.setdefault(e["session"], SessionTrack(e["session"], e["src"]))
        ts = e["ts"]
        if e["ev"] == OP:
            if e.get("ok"):
                track.ok_ts.append(ts)
                if e.get("op") != "ping":
                    track.mailbox_ok_ts.append(ts)
                track.ok_cas.append(e.get("cas"))
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
    for track in out.values():  # events are merged in time order, but a caller may not be
        order = sorted(range(len(track.ok_ts)), key=track.ok_ts.__getitem__)
        track.ok_ts = [track.ok_ts[i] for i in order]
        track.ok_cas = [track.ok_cas[i] for i in order]
        track.mailbox_ok_ts.sort()
        track.drop_ts.sort()
        track.late_ts.sort()
        track.connect_ts.sort()
        track.logons.sort(key=lambda x: x[0])
    return out


def member_down_times(events: list[dict]) -> dict[str, list[int]]:
    """When a load balancer stopped sending new connections to each member."""
    out: dict[str, list[int]] = {}
    for e in events:
        if e["ev"] == LB_MEMBER and not e.get("accepts_new", True):
            out.setdefault(e["member"], []).append(e["ts"])
    return out


def _ms(t: int | None, t0: int) -> float | None:
    return None if t is None else round((t - t0) / 1e6, 3)


def session_fault(track: SessionTrack, t: int, window_end: int, run_end: int, elements: set[str],
                  affects: str, stall_ns: int, downs: dict[str, list[int]]) -> SessionFault:
    """One session's fate under one fault (see the module docstring)."""
    cas = track.cas_at(t)
    on = bool({cas, f"db:{track.db}", "controller"} & elements)
    # A session hit only through its database is served again when its mailbox answers:
    # an RPC ping the CAS answers alone is no recovery from a dismounted database.
    successes = track.mailbox_ok_ts if f"db:{track.db}" in elements and cas not in elements else track.ok_ts
    drop = track.first(track.drop_ts, t, window_end)
    gap, gap_end = track.longest_gap(t, window_end, run_end, successes)
    stalled = gap > stall_ns
    disrupted = drop is not None or stalled
    late = track.first(track.late_ts, t, window_end) is not None
    affected = on and (affects == "on_elements" or disrupted)
    recovered_at = None
    if drop is not None:
        recovered_at = track.first(successes, drop + 1)
    elif stalled:
        recovered_at = gap_end
    else:
        recovered_at = track.first(successes, t)
    reconnect = _ms(recovered_at, t) if affected and disrupted and recovered_at is not None else None
    cas_after = None
    if recovered_at is not None:
        cas_after = track.ok_cas[bisect.bisect_left(track.ok_ts, recovered_at)]
    logons = [x for x in track.logons if t <= x[0] < window_end]
    phases = None
    if affected and drop is not None:
        noticed = next((d for d in downs.get(cas or "", []) if d >= t), None)
        connected = track.first(track.connect_ts, drop)
        logged_on = next((x[0] for x in track.logons if x[0] >= drop), None)
        phases = {"lb_noticed": _ms(noticed, t), "client_saw": _ms(drop, t), "connected": _ms(connected, t),
                  "logged_on": _ms(logged_on, t), "first_op": _ms(recovered_at, t)}
    return SessionFault(
        session=track.sid, host=track.host, address=track.address, cas_at_fault=cas, db=track.db, affected=affected,
        dropped_ms=_ms(drop, t), stalled=stalled, longest_gap_ms=round(gap / 1e6, 3), late=late,
        disrupted=disrupted, recovered=affected and recovered_at is not None, reconnect_ms=reconnect,
        cas_after=cas_after, reauth=sum(1 for x in logons if x[2]), prompts=sum(1 for x in logons if x[2] and x[3]),
        silent_reauth=sum(1 for x in logons if x[2] and not x[3]), phases=phases)
