"""Offline analysis of the client-link packet captures: a cross-check of the event log.

The metrics (caslab.results.metrics) trust what the client emulator logged. The runner also
captures each client host's link (``raw/<run>/<client>.pcap``, ``tcpdump -s 128`` of
``tcp port 6001``), and this module asks the wire the same question independently:
when was each session cut off, and when did it get its first good reply again?

Three problems and how they are solved:

* **Which connection is which session.** The wire names the session itself: the first
  request on every connection is a ``resume`` or ``logon`` frame carrying its session,
  and ``labcommon.protocol.peek`` reads a frame's op, ok and session from the wire (the
  protocol's encoder writes them first, inside the 128-byte snap length). Replies say
  ok or not and requests name their op, so a "successful operation" is recognisable on
  the wire too. Should a capture lack the payload (shorter snap length), connections
  fall back to the client's ``connect_ok`` events by local port (``lport``), else in
  time order, flagged ``ambiguous`` when two handshakes completed before one event.
* **Two clocks.** pcap times are CLOCK_REALTIME; events are CLOCK_MONOTONIC, and tcpdump
  cannot write the latter. The runner logs both clocks side by side (``clocks`` events,
  ``offset_from_clocks``: exact to a few hundred ns). The client stamps each ``op``/``logon``
  event with the kernel's receive time of the reply (``traffic.rxstamp``), the stamp tcpdump
  records for the same packet, so the two agree to microseconds. For runs without ``clocks``
  events, ``pcap_time - event_ts`` clusters at ``offset - delay`` (delay: the wire-to-event
  latency, ~0 with kernel stamps). ``estimate_offset`` finds that cluster
  by voting over a sample of (event, reply) pairs with no prior, then takes the median
  over every event's nearest reply. Wire times shifted by it read "as the client would
  have logged them"; the bias is that median delay (sub-ms), reported as its spread.
* **The same definitions as the metrics** (docs/METRICS.md): a session drops at the
  first RST/FIN, failed operation reply or new connection in the fault's window; it has
  reconnected at the first ``ok`` reply to an operation (not logon/resume) after that,
  before the measurement's end.
* **Disagreement is reported, not dropped.** ``one_sided`` lists the sessions one side saw
  reconnect and the other did not; ``cross_check`` counts them beside n, the median and
  the largest |difference|, and a capture it cannot read raises ``CaptureError``.

Connections that carry no request (the SYN prober's, aborted connects) never count as a
session's, so a prober running in a client host does not disturb the analysis.

Public entry points: ``connection_events``, ``load_captures``, ``estimate_offset``,
``offset_from_run``, ``assign_sessions``, ``reconnect_from_capture``, ``compare``,
``one_sided`` and ``cross_check`` (all of it for one run). Times are ns (wall clock in
``connection_events``, monotonic elsewhere) or ms after ``t_fault``.
"""

from __future__ import annotations

import bisect
import statistics
import struct
from pathlib import Path
from typing import Any, Iterable, NamedTuple

import numpy as np
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether  # noqa: F401  (registers the Ethernet link type for PcapReader)
from scapy.error import Scapy_Exception
from scapy.utils import PcapReader

from caslab.results.metrics import percentile
from labcommon.catalogue import CLOCKS, CONNECT_OK, LOGON, MEASURE_END, OP
from labcommon.ports import CAS_PORT
from labcommon.protocol import peek

SERVICE_PORT = CAS_PORT
FIN, SYN, RST, ACK = 0x01, 0x02, 0x04, 0x10
SESSION_OPS = ("logon", "resume")
REPLY_EVENTS = (OP, LOGON)  # client events emitted right after a reply arrived


class CaptureError(Exception):
    """A capture cannot answer the question asked (no data, no clock match)."""


class Segment(NamedTuple):
    t_ns: int
    client: str
    server: str
    from_client: bool
    flags: int
    seq: int
    length: int
    head: bytes  # the captured part of the TCP payload (snap length), without padding


# ---------------------------------------------------------------- reading captures

def read_segments(pcap_path: str | Path, service_port: int = SERVICE_PORT) -> list[Segment]:
    """Every IPv4 TCP segment to or from service_port, in capture order."""
    out = []
    with PcapReader(str(pcap_path)) as reader:
        for pkt in reader:
            seg = _segment(pkt, service_port)
            if seg is not None:
                out.append(seg)
    return out


def _segment(pkt, service_port: int) -> Segment | None:
    ip, tcp = pkt.getlayer(IP), pkt.getlayer(TCP)
    if ip is None or tcp is None or service_port not in (tcp.sport, tcp.dport):
        return None
    from_client = tcp.dport == service_port and tcp.sport != service_port
    ends = (f"{ip.src}:{tcp.sport}", f"{ip.dst}:{tcp.dport}")
    client, server = ends if from_client else ends[::-1]
    length = max(0, ip.len - 4 * ip.ihl - 4 * tcp.dataofs)
    head = bytes(tcp.payload)[:length]
    t_ns = int(pkt.time * 1_000_000_000)
    return Segment(t_ns, client, server, from_client, int(tcp.flags), tcp.seq, length, head)


# ---------------------------------------------------------------- per connection

class _Conn:
    """Accumulates one TCP connection's milestones from its segments."""

    def __init__(self, seg: Segment):
        self.d: dict[str, Any] = {
            "client": seg.client, "server": seg.server, "session": None, "session_from": None,
            "syn_ns": None, "syn_count": 0, "isn": None, "synack_ns": None, "rst_ns": None, "rst_by": None,
            "fin_ns": None, "fin_by": None, "first_data_ns": None, "last_data_ns": None,
            "requests": 0, "replies": 0, "exchanges": []}
        self.pending: tuple[int, str | None] | None = None

    def add(self, seg: Segment) -> None:
        d, side = self.d, "client" if seg.from_client else "server"
        if seg.flags & SYN and not seg.flags & ACK:
            if d["syn_ns"] is None:
                d["syn_ns"] = seg.t_ns
            d["syn_count"] += 1
            d["isn"] = seg.seq
        elif seg.flags & SYN and d["synack_ns"] is None:
            d["synack_ns"] = seg.t_ns
        if seg.flags & RST and d["rst_ns"] is None:
            d["rst_ns"], d["rst_by"] = seg.t_ns, side
        if seg.flags & FIN and d["fin_ns"] is None:
            d["fin_ns"], d["fin_by"] = seg.t_ns, side
        if seg.length > 0:
            self._data(seg)

    def _data(self, seg: Segment) -> None:
        d = self.d
        if d["first_data_ns"] is None:
            d["first_data_ns"] = seg.t_ns
        d["last_data_ns"] = seg.t_ns
        if seg.from_client:
            d["requests"] += 1
            frame = peek(seg.head)
            if d["session"] is None and frame.session is not None:
                d["session"], d["session_from"] = frame.session, "payload"
            self.pending = (seg.t_ns, frame.op)
            return
        d["replies"] += 1
        if self.pending is None:  # a later segment of the same reply
            if d["exchanges"]:
                d["exchanges"][-1]["reply_end_ns"] = seg.t_ns
            return
        ok = peek(seg.head).ok
        req_ns, op = self.pending
        self.pending = None
        d["exchanges"].append({"req_ns": req_ns, "op": op, "reply_ns": seg.t_ns, "reply_end_ns": seg.t_ns, "ok": ok})

    def is_new_syn(self, seg: Segment) -> bool:
        """A client SYN with another ISN (or after a mid-connection start): port reuse."""
        return bool(seg.from_client and seg.flags & SYN and not seg.flags & ACK and seg.seq != self.d["isn"])


def connection_events(pcap_path: str | Path, service_port: int = SERVICE_PORT) -> list[dict[str, Any]]:
    """Per TCP connection (client ip:port; a reused port with a new ISN is a new one), in
    order of first appearance: wall-clock ns of the first SYN (``syn_ns``, retransmits in
    ``syn_count``), first SYN-ACK, first RST and FIN (``*_by``: client or server), first
    and last data segment; the session named in its first request; and ``exchanges``:
    one {req_ns, op, reply_ns, reply_end_ns, ok} per request answered (first and last
    segment of the reply; op/ok None when the snap length cut them off)."""
    live: dict[tuple[str, str], _Conn] = {}
    conns: list[_Conn] = []
    for seg in read_segments(pcap_path, service_port):
        key = (seg.client, seg.server)
        conn = live.get(key)
        if conn is None or conn.is_new_syn(seg):
            conn = live[key] = _Conn(seg)
            conns.append(conn)
        conn.add(seg)
    return [c.d for c in conns]


# ---------------------------------------------------------------- clock offset

def _vote(sample: np.ndarray, replies: np.ndarray, bin_ns: int) -> int:
    """Coarse offset: the most popular (reply - event) difference, over two adjacent bins."""
    diffs = np.concatenate([(replies - e) // bin_ns for e in sample])
    vals, counts = np.unique(diffs, return_counts=True)
    nxt = np.searchsorted(vals, vals + 1)
    nxt_ok = (nxt < len(vals)) & (vals[np.minimum(nxt, len(vals) - 1)] == vals + 1)
    score = counts + np.where(nxt_ok, counts[np.minimum(nxt, len(vals) - 1)], 0)
    return int(vals[int(np.argmax(score))] + 1) * bin_ns


def _nearest(replies: list[int], target: int, window_ns: int) -> int | None:
    i = bisect.bisect_left(replies, target)
    near = [r for r in replies[max(0, i - 1):i + 1] if abs(r - target) <= window_ns]
    return min(near, key=lambda r: abs(r - target)) if near else None


def match_differences(event_ts: Iterable[int], reply_ns: Iterable[int], bin_us: int = 200,
                      sample: int = 100, window_us: int = 2000) -> list[int]:
    """(reply - event) for every event matched to a reply, the reply found around the
    voted offset. Events and replies are any ns clocks; no prior on the offset."""
    events, replies = sorted(event_ts), sorted(reply_ns)
    if not events or not replies:
        return []
    cap = max(10, 20_000_000 // len(replies))  # bound the vote to ~2e7 differences
    k = min(sample, cap, len(events))
    picks = np.asarray([events[i * len(events) // k] for i in range(k)], dtype=np.int64)
    coarse = _vote(picks, np.asarray(replies, dtype=np.int64), bin_us * 1000)
    out = []
    for e in events:
        r = _nearest(replies, e + coarse, window_us * 1000)
        if r is not None:
            out.append(r - e)
    return out


def estimate_offset(event_ts: Iterable[int], reply_ns: Iterable[int], min_matched: float = 0.5) -> dict[str, Any]:
    """offset_ns = median(pcap_time - event_ts) over matched pairs, so mono = wall - offset.
    Raises CaptureError when fewer than min_matched of the events found a reply."""
    events = list(event_ts)
    diffs = match_differences(events, reply_ns)
    if len(diffs) < max(3, min_matched * len(events)):
        raise CaptureError(f"clock match failed: {len(diffs)} of {len(events)} events matched a reply")
    return _offset_summary(diffs, len(events))


def _offset_summary(diffs: list[int], n_events: int) -> dict[str, Any]:
    offset = int(statistics.median(diffs))
    spread = sorted(d - offset for d in diffs)
    return {"offset_ns": offset, "events": n_events, "matched": len(diffs),
            "p10_us": round(percentile(spread, 10) / 1000, 1),
            "p90_us": round(percentile(spread, 90) / 1000, 1)}


def client_name(pcap_path: str | Path) -> str:
    """The runner names each capture after its client host: raw/<run>/<client>.pcap."""
    return Path(pcap_path).stem


def load_captures(pcap_paths: Iterable[str | Path]) -> dict[str, list[dict[str, Any]]]:
    """{client host name: its connections}, each capture parsed once. A capture that
    cannot be read (missing, empty, not a pcap) raises CaptureError naming it."""
    out = {}
    for path in pcap_paths:
        try:
            out[client_name(path)] = connection_events(path)
        except (OSError, EOFError, ValueError, struct.error, Scapy_Exception) as exc:
            raise CaptureError(f"{path}: cannot read the capture: {exc}") from None
    return out


def reply_event_ts(events: Iterable[dict], client: str) -> list[int]:
    return [e["ts"] for e in events if e.get("src") == client and e["ev"] in REPLY_EVENTS]


def reply_times(conns: list[dict[str, Any]]) -> list[int]:
    """When each reply was complete: what the client's op/logon events follow."""
    return [x["reply_end_ns"] for c in conns for x in c["exchanges"]]


def offset_from_clocks(events: list[dict]) -> dict[str, Any] | None:
    """The run's wall - monotonic offset as the runner read it (``clocks`` events): exact
    to the read's spread, where a statistical match of replies to events is biased by how
    late a busy client handles a reply. None for runs that logged no clocks."""
    reads = [e for e in events if e["ev"] == CLOCKS]
    if not reads:
        return None
    best = min(reads, key=lambda e: e["spread_ns"])
    return {"offset_ns": best["wall_ns"] - best["ts"], "from": "clocks", "spread_ns": best["spread_ns"]}


def offset_from_run(events: list[dict], captures: dict[str, list[dict]] | Iterable[str | Path]) -> dict[str, Any]:
    """One offset for a run: all hosts share one kernel, so every capture's pairs pool.
    captures: pcap paths, or load_captures()' result."""
    if not isinstance(captures, dict):
        captures = load_captures(captures)
    diffs, n_events = [], 0
    for client, conns in captures.items():
        ts = reply_event_ts(events, client)
        n_events += len(ts)
        diffs += match_differences(ts, reply_times(conns))
    if len(diffs) < max(3, 0.5 * n_events):
        raise CaptureError(f"clock match failed: {len(diffs)} of {n_events} events matched a reply")
    return _offset_summary(diffs, n_events)


# ---------------------------------------------------------------- sessions on the wire

def assign_sessions(conns: list[dict[str, Any]], client_events: list[dict], offset_ns: int,
                    slack_ns: int = 500_000) -> None:
    """Fallback for connections whose payload named no session: an ``lport`` in
    connect_ok if logged, else the connect_ok events in order of their handshakes
    (``ambiguous`` when two handshakes completed before one event). Connections that
    carried no request (SYN probes, aborted connects) are never a session's."""
    todo = sorted((c for c in conns if c["session"] is None and c["synack_ns"] and c["requests"]),
                  key=lambda c: c["synack_ns"])
    by_port = {c["client"].rsplit(":", 1)[1]: c for c in todo}
    for ev in sorted((e for e in client_events if e["ev"] == CONNECT_OK), key=lambda e: e["ts"]):
        conn = by_port.get(str(ev["lport"])) if "lport" in ev else None
        ready = [c for c in todo if c["synack_ns"] - offset_ns <= ev["ts"] + slack_ns]
        if conn is None and ready:
            conn = ready[0]
            conn["ambiguous"] = len(ready) > 1
        if conn is not None and any(conn is c for c in todo):
            conn["session"], conn["session_from"] = ev["session"], "lport" if "lport" in ev else "connect_ok"
            todo = [c for c in todo if c is not conn]


def _shift(record: dict[str, Any], offset_ns: int) -> dict[str, Any]:
    return {k: (v - offset_ns if k.endswith("_ns") and v is not None else v) for k, v in record.items()}


def _to_mono(conn: dict[str, Any], offset_ns: int) -> dict[str, Any]:
    """A copy of a connection with every *_ns time on the monotonic clock."""
    out = _shift({k: v for k, v in conn.items() if k != "exchanges"}, offset_ns)
    out["exchanges"] = [_shift(x, offset_ns) for x in conn["exchanges"]]
    return out


def _session_drop(conns: list[dict[str, Any]], t_fault: int, end: int) -> tuple[int, str] | None:
    """First RST/FIN, failed operation reply or new connection within [t_fault, end] (monotonic ns)."""
    marks = [(c[key], key[:3]) for c in conns for key in ("rst_ns", "fin_ns") if c[key] is not None]
    marks += [(x["reply_ns"], "failed_op") for c in conns for x in c["exchanges"]
              if x["ok"] is False and x["op"] not in SESSION_OPS]
    # A client that gave up on a silent peer closes a socket whose FIN queues behind the
    # unacknowledged request, so the wire may show no FIN for seconds: the session's next
    # connection (its SYN) is then the first sign on the wire that it dropped.
    marks += [(c["syn_ns"], "new_connection") for c in conns if c["syn_ns"] is not None]
    marks = [m for m in marks if t_fault <= m[0] <= end]
    return min(marks) if marks else None


def _first_ok_op(conns: list[dict[str, Any]], after: int, end: int) -> tuple[dict, dict] | None:
    """The first ok operation reply completed after ``after`` and by ``end`` (the measurement's end)."""
    hits = [(x["reply_end_ns"], x, c) for c in conns for x in c["exchanges"]
            if x["ok"] and x["op"] is not None and x["op"] not in SESSION_OPS and x["reply_ns"] > after
            and x["reply_end_ns"] <= end]
    return min(hits, key=lambda h: h[0])[1:] if hits else None


def _ms(t: int | None, t_fault: int) -> float | None:
    return None if t is None else round((t - t_fault) / 1e6, 3)


def _session_timeline(conns: list[dict[str, Any]], t_fault: int, end: int, window_end: int) -> dict[str, Any] | None:
    """Drop (in the fault's window), reconnect (by the end of the measurement) and the
    milestones of the connection that brought the session back (else of its first new
    connection after the drop)."""
    drop = _session_drop(conns, t_fault, min(window_end, end))
    if drop is None:
        return None
    hit = _first_ok_op(conns, drop[0], end)
    fresh = sorted((c for c in conns if c["syn_ns"] is not None and c["syn_ns"] >= drop[0]), key=lambda c: c["syn_ns"])
    conn = hit[1] if hit else (fresh[0] if fresh else None)
    new = conn is not None and any(conn is c for c in fresh)
    first_reply = conn["exchanges"][0]["reply_end_ns"] if new and conn["exchanges"] else None
    return {"drop_ms": _ms(drop[0], t_fault), "drop_by": drop[1],
            "reconnect_ms": _ms(hit[0]["reply_end_ns"], t_fault) if hit else None,
            "client": conn["client"] if conn else None, "new_connection": new,
            "syn_ms": _ms(conn["syn_ns"], t_fault) if new else None,
            "synack_ms": _ms(conn["synack_ns"], t_fault) if new else None,
            "first_reply_ms": _ms(first_reply, t_fault)}


def reconnect_from_capture(captures: dict[str, list[dict]] | Iterable[str | Path], t_fault_ns: int,
                           offset_ns: int | None = None, events: list[dict] | None = None,
                           end_ns: int | None = None, window_end_ns: int | None = None) -> dict[str, dict]:
    """Per session the wire saw drop in [t_fault, window_end] (monotonic ns; the fault's
    window, default end), in ms after t_fault: the drop (``drop_by`` rst / fin /
    failed_op / new_connection), the first ok operation reply after it by ``end_ns`` (the
    measurement's end: ``reconnect_ms``, the metrics' definition, None if none), and syn / synack /
    first_reply of the connection that brought it back when that is a new one.

    captures: pcap paths or load_captures()' result. offset_ns = wall - mono; None:
    estimated from events (offset_from_run). events are also what maps connections
    whose payload names no session (assign_sessions)."""
    if not isinstance(captures, dict):
        captures = load_captures(captures)
    if offset_ns is None:
        if events is None:
            raise CaptureError("need offset_ns or the run's events to estimate it")
        offset_ns = offset_from_run(events, captures)["offset_ns"]
    by_session: dict[str, list[dict]] = {}
    for client, conns in captures.items():
        if events is not None and any(c["session"] is None for c in conns):
            assign_sessions(conns, [e for e in events if e.get("src") == client], offset_ns)
        for conn in conns:
            if conn["session"] is not None:
                by_session.setdefault(conn["session"], []).append(_to_mono(conn, offset_ns))
    end = end_ns if end_ns is not None else 1 << 62
    window_end = window_end_ns if window_end_ns is not None else end
    timelines = {sid: _session_timeline(by_session[sid], t_fault_ns, end, window_end) for sid in sorted(by_session)}
    return {sid: t for sid, t in timelines.items() if t is not None}


# ---------------------------------------------------------------- cross-check

def compare(wire: dict[str, dict], reference: dict[str, float | None], field: str = "reconnect_ms") -> dict[str, Any]:
    """{n, median_abs_diff_ms, max_abs_diff_ms, median_diff_ms, abs_diffs_ms} of
    wire[field] - reference over sessions that have both; diff > 0: the wire milestone
    came later. Sessions only one side has are not here: see ``one_sided``."""
    diffs = [wire[s][field] - ref for s, ref in sorted(reference.items())
             if ref is not None and s in wire and wire[s].get(field) is not None]
    absd = [round(abs(d), 3) for d in diffs]
    return {"n": len(diffs),
            "median_abs_diff_ms": round(statistics.median(absd), 3) if absd else None,
            "max_abs_diff_ms": round(max(absd), 3) if absd else None,
            "median_diff_ms": round(statistics.median(diffs), 3) if diffs else None,
            "abs_diffs_ms": sorted(absd)}


def one_sided(wire: dict[str, dict], reference: dict[str, float | None],
              quiet: Iterable[str] = ()) -> dict[str, list[str]]:
    """Sessions that reconnected on one side only: a disagreement, never left out.

    ``only_events``: the events give a reconnect time, the wire shows none (no drop in the
    window, or no ok operation reply after it before the measurement's end). ``only_wire``: the wire shows a drop and
    an ok reply after it, but the events give no reconnect time for an affected session
    (reference value None), or saw a session neither affected nor disrupted (``quiet``).
    Sessions in neither argument (collateral ones, whose reconnect the metrics do not
    define; the application prober's) are not compared."""
    on_wire = {s for s, v in wire.items() if v.get("reconnect_ms") is not None}
    events = {s for s, v in reference.items() if v is not None}
    expected_none = {s for s, v in reference.items() if v is None} | set(quiet)
    return {"only_events": sorted(events - on_wire), "only_wire": sorted(on_wire & expected_none)}


def cross_check(events: list[dict], pcap_paths: Iterable[str | Path], reference: dict[str, float | None],
                t_fault_ns: int, offset_ns: int | None = None, end_ns: int | None = None,
                window_end_ns: int | None = None, quiet: Iterable[str] = ()) -> dict[str, Any]:
    """The capture's view of one run (one scenario repetition) against the metrics'
    reconnect times (``reference``: every affected session -> ms after ``t_fault_ns``,
    None where the metrics give none; ``quiet``: sessions neither affected nor disrupted).
    A drop counts in the fault's window (``window_end_ns``, default ``end_ns``), a
    reconnect by the end of the measurement (``end_ns``, default its ``measure_end``), as
    in docs/METRICS.md.

    ``reconnect`` compares like with like (first ok operation reply on the wire vs the
    first ok op event, both stamped by the kernel on arrival: expect |diff| well under
    1 ms) and counts ``one_sided`` sessions (``only_events`` / ``only_wire``) as
    disagreements; ``synack`` and ``first_reply`` show how much earlier the new connection
    was up (negative diffs). Raises CaptureError when a capture cannot be read or the
    clocks cannot be matched."""
    captures = load_captures(pcap_paths)
    if offset_ns is not None:
        clock = {"offset_ns": offset_ns}
    else:
        clock = offset_from_clocks(events) or offset_from_run(events, captures)
    end = end_ns if end_ns is not None else next((e["ts"] for e in events if e["ev"] == MEASURE_END), None)
    wire = reconnect_from_capture(captures, t_fault_ns, clock["offset_ns"], events, end, window_end_ns)
    quiet = set(quiet)
    sides = one_sided(wire, reference, quiet)
    compared = set(reference) | quiet
    reconnect = compare(wire, reference) | sides | {"one_sided": len(sides["only_events"]) + len(sides["only_wire"]),
                                                    "not_compared": len(set(wire) - compared)}
    return {"clock": clock, "sessions": {s: {"events_ms": reference.get(s), **wire[s]} for s in wire},
            "reconnect": reconnect, "synack": compare(wire, reference, "synack_ms"),
            "first_reply": compare(wire, reference, "first_reply_ms"), **sides}
