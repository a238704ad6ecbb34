"""What a fault cost the HTTP clients, per session and per protocol (OWA, ActiveSync,
Outlook Anywhere), from their events alone.

A session is known from its client's ``http_client_up``. Under a fault (instant ``t``,
window to the next fault or the end of the measurement; a run without faults has one
window, the whole measurement):

* configured    autodiscover gave the session a URL (at any time of the run);
* affected      its last successful request before ``t`` was answered by a failed element;
* dropped       a failed request, or a broken long-lived exchange (``http_down``), in the
                window;
* recovered     affected, dropped, and a request succeeded after the drop; **reconnect**
                is that success minus ``t`` (a slow success is no drop: it has no
                reconnect time); **undisturbed**: affected, never dropped, served after ``t``;
* re-logins     logons a CAS forced (OWA's 440, RPC's auth_required) in the window; for
                OWA every one is a login form the user sees;
* long-polls    (ActiveSync) Pings that ended without their answer in the window (lost),
                and of those, how many a later Ping re-established: one that was answered;
                **re-establish** is that Ping's start minus ``t`` (the device was
                listening again from then);
* disconnects   broken long-lived exchanges in the window: the idle-timeout measure.

Silence is never recovery: an affected session with no success after its drop is
unrecovered. Nothing logged after the measurement's end counts. Definitions:
docs/METRICS.md section 9.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from labcommon.catalogue import HTTP_AUTODISCOVER, HTTP_CLIENT_UP, HTTP_DOWN, HTTP_LOGON, HTTP_REQUEST

from caslab.results.metrics.outcomes import HttpFaultRun, HttpSessionFault


@dataclass
class HttpTrack:
    sid: str
    protocol: str
    host: str
    external: bool
    ok_end: list[int] = field(default_factory=list)
    ok_cas: list[str | None] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    downs: list[int] = field(default_factory=list)
    relogins: list[tuple[int, bool]] = field(default_factory=list)   # ts, prompt
    pings: list[tuple[int, int, bool]] = field(default_factory=list)  # start, end, ok
    latencies: list[tuple[int, float]] = field(default_factory=list)  # end, ms (successful requests)
    configured: bool = False

    def cas_at(self, t: int) -> str | None:
        i = bisect.bisect_left(self.ok_end, t)
        return self.ok_cas[i - 1] if i else None


def http_tracks(events: list[dict], end: int | None = None) -> dict[str, HttpTrack]:
    """Every HTTP session with its events up to ``end`` (nothing after the window counts)."""
    out: dict[str, HttpTrack] = {}
    for e in events:
        if e["ev"] == HTTP_CLIENT_UP:
            for sid, protocol in e["sessions"].items():
                out.setdefault(sid, HttpTrack(sid, protocol, e["src"], bool(e["external"])))
    for e in sorted(events, key=lambda x: x["ts"]):
        track = out.get(e.get("session", "")) if e["ev"] in (HTTP_REQUEST, HTTP_DOWN, HTTP_LOGON,
                                                              HTTP_AUTODISCOVER) else None
        if track is None or (end is not None and e["ts"] > end):
            continue
        ts = e["ts"]
        if e["ev"] == HTTP_REQUEST:
            if e["ok"]:
                track.ok_end.append(ts)
                track.ok_cas.append(e.get("cas"))
                if e["cmd"] != "ping" or track.protocol != "eas":  # a long-poll's hold is no latency
                    track.latencies.append((ts, e["lat_us"] / 1000))
            else:
                track.failed.append(ts)
            if track.protocol == "eas" and e["cmd"] == "ping":
                track.pings.append((ts - e["lat_us"] * 1000, ts, bool(e["ok"])))
        elif e["ev"] == HTTP_DOWN:
            track.downs.append(ts)
        elif e["ev"] == HTTP_LOGON and e["reauth"]:
            track.relogins.append((ts, bool(e["prompt"])))
        elif e["ev"] == HTTP_AUTODISCOVER and e["ok"]:
            track.configured = True
    return out


def _in(series: list[int], start: int, end: int) -> list[int]:
    return series[bisect.bisect_left(series, start):bisect.bisect_left(series, end)]


def _ms(t: int | None, t0: int) -> float | None:
    return None if t is None else round((t - t0) / 1e6, 3)


def session_fault(track: HttpTrack, t: int, window_end: int, elements: set[str]) -> HttpSessionFault:
    cas = track.cas_at(t)
    affected = cas is not None and cas in elements
    drops = sorted(_in(track.failed, t, window_end) + _in(track.downs, t, window_end))
    drop = drops[0] if drops else None
    i = bisect.bisect_right(track.ok_end, drop) if drop is not None else bisect.bisect_left(track.ok_end, t)
    served_at = track.ok_end[i] if i < len(track.ok_end) else None  # after the drop; never dropped: after t
    recovered = affected and drop is not None and served_at is not None
    lost = [p for p in track.pings if t <= p[1] < window_end and not p[2]]
    reestablished = None
    if lost:
        reestablished = next((p[0] for p in track.pings if p[2] and p[0] >= lost[0][1]), None)
    relogins = [r for r in track.relogins if t <= r[0] < window_end]
    return HttpSessionFault(
        session=track.sid, protocol=track.protocol, external=track.external, configured=track.configured,
        cas_at_fault=cas, affected=affected, dropped_ms=_ms(drop, t), disrupted=drop is not None,
        recovered=recovered, undisturbed=affected and drop is None and served_at is not None,
        reconnect_ms=_ms(served_at, t) if recovered else None,
        relogins=len(relogins), prompts=sum(1 for r in relogins if r[1]), pings_lost=len(lost),
        pings_reestablished=1 if lost and reestablished is not None else 0,
        reestablish_ms=_ms(reestablished, t), disconnects=len(_in(track.downs, t, window_end)),
        requests=len(_in(track.ok_end, t, window_end)) + len(_in(track.failed, t, window_end)),
        failed=len(_in(track.failed, t, window_end)),
        latencies_ms=[round(ms, 3) for end, ms in track.latencies if t <= end < window_end])


def http_faults(events: list[dict], windows: list[tuple[int, str, int, int, set[str]]],
                end: int | None = None) -> list[HttpFaultRun]:
    """One HttpFaultRun per window: (index, label, t, window end, failed elements)."""
    tracks = http_tracks(events, end)
    if not tracks:
        return []
    return [HttpFaultRun(index, label, t, end, [session_fault(tracks[sid], t, end, elements)
                                                for sid in sorted(tracks)])
            for index, label, t, end, elements in windows]
