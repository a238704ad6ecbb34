"""caslab.results.capture on synthetic captures: scapy builds the packets a client link would
carry (with explicit wall-clock times and tcpdump's 128-byte snap length) and the
matching client events (monotonic), so every expected number is known exactly."""

from __future__ import annotations

import json
import random
from decimal import Decimal
from pathlib import Path

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.l2 import Ether
from scapy.utils import wrpcap

from caslab.results import capture
from caslab.results.metrics import RunParams, analyze_run

VIP, CLIENT = "10.1.0.100", "10.1.0.51"
OFFSET = 1_795_577_630_578_826_000  # wall - mono as in a real run (whole us: pcap keeps us)
MS = 1_000_000
T_FAULT = 1_000_000 * MS  # monotonic ns


def frame(body: dict) -> bytes:
    data = json.dumps(body, separators=(",", ":")).encode()
    return len(data).to_bytes(4, "big") + data


class Link:
    """Packets of one client link and the client's events, times in monotonic ns."""

    def __init__(self, client: str = "cl1", seed: int = 1, snap: int = 128):
        self.client, self.snap = client, snap
        self.packets: list[tuple[int, Ether]] = []
        self.events: list[dict] = []
        self.rng = random.Random(seed)

    def _add(self, t: int, sport: int, from_client: bool, flags: str, seq: int = 1000, payload: bytes = b"") -> None:
        ip = IP(src=CLIENT, dst=VIP) if from_client else IP(src=VIP, dst=CLIENT)
        ports = dict(sport=sport, dport=6001) if from_client else dict(sport=6001, dport=sport)
        pkt = Ether() / ip / TCP(flags=flags, seq=seq, ack=1, **ports) / payload
        self.packets.append((t, pkt))

    def connect(self, t: int, sport: int, session: str, isn: int = 1000) -> int:
        self._add(t, sport, True, "S", isn)
        self._add(t + 700_000, sport, False, "SA")
        self._add(t + 710_000, sport, True, "A", isn + 1)
        self.event(t + 800_000, "connect_ok", session, addr=VIP)
        return t + 800_000

    def exchange(self, t: int, sport: int, request: dict, reply: dict, ev: str | None, session: str,
                 **fields) -> int:
        """Request at t, reply 1 ms later; the client's event follows 30-300 us after."""
        self._add(t, sport, True, "PA", payload=frame(request))
        self._add(t + MS, sport, False, "PA", payload=frame(reply))
        done = t + MS + self.rng.randrange(30_000, 300_000, 1000)
        if ev:
            self.event(done, ev, session, **fields)
        return done

    def op(self, t: int, sport: int, session: str, cas: str, ok: bool = True) -> int:
        reply = {"ok": True, "cas": cas} if ok else {"ok": False, "error": "mailbox_unavailable"}
        fields = {"op": "read", "ok": ok, "lat_us": 1200, "cas": cas if ok else None}
        return self.exchange(t, sport, {"op": "read"}, reply, "op", session, **fields)

    def logon(self, t: int, sport: int, session: str, cas: str, resume_first: bool = False) -> int:
        if resume_first:
            t = self.exchange(t, sport, {"op": "resume", "session": session},
                              {"ok": False, "error": "auth_required"}, None, session) + 100_000
        request = {"op": "logon", "session": session, "user": "cl1u0", "db": "DB1",
                   "password": "pw-cl1u0-with-a-long-tail-cut-by-the-snap-length", "reauth": resume_first}
        return self.exchange(t, sport, request, {"ok": True, "cas": cas}, "logon", session, cas=cas,
                             reauth=resume_first, resumed=False)

    def close(self, t: int, sport: int, by: str, flags: str = "R") -> None:
        self._add(t, sport, by == "client", flags)

    def event(self, ts: int, ev: str, session: str | None = None, **fields) -> None:
        record = {"ts": ts, "src": self.client, "ev": ev, **fields}
        if session:
            record["session"] = session
        self.events.append(record)

    def write(self, path) -> str:
        out = []
        for t, pkt in sorted(self.packets, key=lambda p: p[0]):
            cut = Ether(bytes(pkt)[:self.snap])
            cut.time = Decimal(t + OFFSET) / 10**9
            out.append(cut)
        wrpcap(str(path), out)
        return str(path)


def steady(link: Link, sport: int, session: str, cas: str, start: int, stop: int) -> None:
    t = link.connect(start, sport, session)
    t = link.logon(t + 100_000, sport, session, cas)
    while t < stop:
        t = link.op(t + 50 * MS - MS, sport, session, cas)


def failover_run(tmp_path) -> tuple[list[dict], str, Link]:
    """s0 on cas1 is reset 15 ms after cas1 fails and reconnects; s1 on cas2 carries on."""
    link = Link()
    start = T_FAULT - 2000 * MS
    steady(link, 40001, "cl1-s0", "cas1", start, T_FAULT - 60 * MS)
    steady(link, 40002, "cl1-s1", "cas2", start + 7 * MS, T_FAULT + 500 * MS)
    link.close(T_FAULT + 15 * MS, 40001, "server")
    link.event(T_FAULT + 15 * MS + 200_000, "down", "cl1-s0", reason="ConnectionResetError")
    t = link.connect(T_FAULT + 16 * MS, 40003, "cl1-s0", isn=5000)
    t = link.logon(t + 100_000, 40003, "cl1-s0", "cas2", resume_first=True)
    recovered = link.op(t + 100_000, 40003, "cl1-s0", "cas2")
    steady_after = recovered
    while steady_after < T_FAULT + 500 * MS:
        steady_after = link.op(steady_after + 49 * MS, 40003, "cl1-s0", "cas2")
    runner = [{"ts": T_FAULT, "src": "runner", "ev": "fault", "kind": "poweroff", "targets": ["cas1"],
               "elements": ["cas1"]},
              {"ts": T_FAULT + 600 * MS, "src": "runner", "ev": "measure_end"}]
    events = sorted(link.events + runner, key=lambda e: e["ts"])
    return events, link.write(tmp_path / "cl1.pcap"), link


def test_connection_events_milestones(tmp_path):
    _, pcap, _ = failover_run(tmp_path)
    conns = {c["client"]: c for c in capture.connection_events(pcap)}
    assert set(conns) == {f"{CLIENT}:40001", f"{CLIENT}:40002", f"{CLIENT}:40003"}
    old, new = conns[f"{CLIENT}:40001"], conns[f"{CLIENT}:40003"]
    assert old["session"] == new["session"] == "cl1-s0" and old["session_from"] == "payload"
    assert old["syn_ns"] == T_FAULT - 2000 * MS + OFFSET and old["syn_count"] == 1
    assert old["synack_ns"] == old["syn_ns"] + 700_000
    assert (old["rst_ns"], old["rst_by"], old["fin_ns"]) == (T_FAULT + 15 * MS + OFFSET, "server", None)
    assert old["first_data_ns"] == old["syn_ns"] + 900_000
    assert old["last_data_ns"] == old["exchanges"][-1]["reply_ns"] < T_FAULT + OFFSET
    assert old["requests"] == old["replies"] == len(old["exchanges"])
    first = new["exchanges"][:3]
    assert [(x["op"], x["ok"]) for x in first] == [("resume", False), ("logon", True), ("read", True)]
    assert all(x["reply_ns"] - x["req_ns"] == MS for x in new["exchanges"])


def test_reused_port_with_new_isn_is_a_new_connection(tmp_path):
    link = Link()
    link.connect(0, 40010, "cl1-s0", isn=100)
    link.close(5 * MS, 40010, "client", "FA")
    link.connect(9 * MS, 40010, "cl1-s0", isn=100)  # retransmitted SYN of the same ISN: not new
    link.connect(20 * MS, 40010, "cl1-s0", isn=900)
    conns = capture.connection_events(link.write(tmp_path / "reuse.pcap"))
    assert [c["syn_count"] for c in conns] == [2, 1]
    assert conns[0]["fin_by"] == "client" and conns[0]["fin_ns"] == 5 * MS + OFFSET


@pytest.mark.parametrize("offset", [OFFSET, -3 * 10**15, 12_345])
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_offset_estimate_finds_the_clock_gap(offset, seed):
    rng = random.Random(seed)
    replies = sorted(rng.randrange(0, 30_000 * MS) for _ in range(3000))
    delays = [rng.randrange(30_000, 300_000) for _ in replies]
    events = [r - offset + d for r, d in zip(replies, delays) if rng.random() < 0.9]  # some events lost
    noise = [rng.randrange(0, 30_000 * MS) for _ in range(3000)]  # other sessions' replies
    result = capture.estimate_offset(events, replies + noise)
    median_delay = sorted(delays)[len(delays) // 2]
    assert abs(result["offset_ns"] - (offset - median_delay)) < 20_000
    assert result["matched"] >= 0.95 * len(events)
    assert -200 < result["p10_us"] <= 0 <= result["p90_us"] < 200


def test_offset_estimate_refuses_unrelated_clocks():
    rng = random.Random(7)
    events = [rng.randrange(0, 10**12) for _ in range(300)]
    replies = [rng.randrange(0, 10**12) for _ in range(300)]
    with pytest.raises(capture.CaptureError):
        capture.estimate_offset(events, replies)


def test_offset_from_run_uses_the_clients_events(tmp_path):
    events, pcap, _ = failover_run(tmp_path)
    clock = capture.offset_from_run(events, [pcap])
    assert clock["events"] == sum(1 for e in events if e["ev"] in ("op", "logon"))
    assert clock["matched"] == clock["events"]
    assert 30_000 <= OFFSET - clock["offset_ns"] <= 300_000  # biased by the median delay only


def test_reconnect_from_capture_with_known_offset(tmp_path):
    events, pcap, _ = failover_run(tmp_path)
    wire = capture.reconnect_from_capture([pcap], T_FAULT, OFFSET)
    assert set(wire) == {"cl1-s0"}
    s0 = wire["cl1-s0"]
    assert (s0["drop_ms"], s0["drop_by"], s0["new_connection"]) == (15.0, "rst", True)
    assert (s0["syn_ms"], s0["synack_ms"], s0["client"]) == (16.0, 16.7, f"{CLIENT}:40003")
    assert s0["first_reply_ms"] == 17.9  # the failed resume's reply
    recovered = next(e for e in events if e.get("session") == "cl1-s0" and e["ev"] == "op" and e["ts"] > T_FAULT)
    assert 0 < (recovered["ts"] - T_FAULT) / MS - s0["reconnect_ms"] < 0.3


def metrics_reference(events: list[dict]) -> dict[str, float | None]:
    run = analyze_run(events, RunParams())
    return {s.session: s.reconnect_ms for s in run.faults[0].sessions if s.affected}


def test_cross_check_agrees_with_metrics(tmp_path):
    events, pcap, _ = failover_run(tmp_path)
    reference = metrics_reference(events)
    assert reference and reference["cl1-s0"] is not None
    result = capture.cross_check(events, [pcap], reference, T_FAULT)
    assert result["reconnect"]["n"] == 1 and result["reconnect"]["max_abs_diff_ms"] < 0.3
    assert result["synack"]["median_diff_ms"] < -2  # the handshake came before logon and op
    assert result["only_events"] == result["only_wire"] == []
    assert result["sessions"]["cl1-s0"]["events_ms"] > result["sessions"]["cl1-s0"]["synack_ms"]


def test_failed_operation_is_a_drop_without_new_connection(tmp_path):
    link = Link()
    t = link.connect(T_FAULT - 100 * MS, 40020, "cl1-s5")
    t = link.logon(t, 40020, "cl1-s5", "cas1")
    link.op(T_FAULT + 10 * MS, 40020, "cl1-s5", "cas1", ok=False)
    link.op(T_FAULT + 60 * MS, 40020, "cl1-s5", "cas1")
    wire = capture.reconnect_from_capture([link.write(tmp_path / "cl1.pcap")], T_FAULT, OFFSET)
    s5 = wire["cl1-s5"]
    assert (s5["drop_by"], s5["drop_ms"], s5["new_connection"], s5["syn_ms"]) == ("failed_op", 11.0, False, None)
    assert s5["reconnect_ms"] == 61.0


def test_sessions_from_connect_ok_when_payload_is_cut(tmp_path):
    """A 58-byte snap length keeps no JSON: connect_ok events (or lport) map connections.
    A SYN probe's connection (no request, reset by the client's kernel) stays unmapped."""
    link = Link(snap=58)
    for sport, session, t in ((40031, "cl1-s0", 0), (40032, "cl1-s1", 5 * MS)):
        ready = link.connect(t, sport, session)
        link.logon(ready + 100_000, sport, session, "cas2")
    link._add(2 * MS, 20000, True, "S")
    link._add(2 * MS + 500_000, 20000, False, "SA")
    link.close(2 * MS + 520_000, 20000, "client")
    pcap = link.write(tmp_path / "cl1.pcap")
    conns = capture.connection_events(pcap)
    assert [c["session"] for c in conns] == [None, None, None]
    assert all(x["op"] is None and x["ok"] is None for c in conns for x in c["exchanges"])
    capture.assign_sessions(conns, link.events, OFFSET)
    assert [(c["client"], c["session"], c.get("ambiguous")) for c in conns] == [
        (f"{CLIENT}:40031", "cl1-s0", False), (f"{CLIENT}:20000", None, None), (f"{CLIENT}:40032", "cl1-s1", False)]

    conns = capture.connection_events(pcap)
    swapped = [{"ts": 30 * MS, "ev": "connect_ok", "session": "cl1-s1", "lport": 40032},
               {"ts": 31 * MS, "ev": "connect_ok", "session": "cl1-s0", "lport": 40031}]
    capture.assign_sessions(conns, swapped, OFFSET)
    assert [(c["session"], c["session_from"]) for c in conns] == [("cl1-s0", "lport"), (None, None),
                                                                  ("cl1-s1", "lport")]


def test_probe_connections_do_not_disturb_sessions(tmp_path):
    """The prober may run in a client host whose capture then holds its SYNs too."""
    events, _, link = failover_run(tmp_path)
    for i in range(40):
        t = T_FAULT - 200 * MS + i * 20 * MS
        link._add(t, 20000 + i, True, "S")
        link._add(t + 400_000, 20000 + i, False, "SA")
        link.close(t + 420_000, 20000 + i, "client")
    result = capture.cross_check(events, [link.write(tmp_path / "cl1.pcap")], metrics_reference(events), T_FAULT)
    assert set(result["sessions"]) == {"cl1-s0"} and result["reconnect"]["n"] == 1


# ---------------------------------------------------------------- disagreement is reported, never dropped

def test_a_reconnect_the_wire_did_not_see_is_one_sided_on_the_events_side(tmp_path):
    events, pcap, _ = failover_run(tmp_path)
    reference = metrics_reference(events) | {"cl1-s1": 50.0}  # the wire saw cl1-s1 carry on undisturbed
    result = capture.cross_check(events, [pcap], reference, T_FAULT)
    r = result["reconnect"]
    assert (r["n"], r["only_events"], r["only_wire"], r["one_sided"]) == (1, ["cl1-s1"], [], 1)


@pytest.mark.parametrize("how", ["affected without a reconnect time", "neither affected nor disrupted"])
def test_a_reconnect_only_the_wire_saw_is_one_sided_on_the_wire_side(tmp_path, how):
    events, pcap, _ = failover_run(tmp_path)
    if how == "neither affected nor disrupted":
        result = capture.cross_check(events, [pcap], {}, T_FAULT, quiet=["cl1-s0", "cl1-s1"])
    else:
        result = capture.cross_check(events, [pcap], {"cl1-s0": None, "cl1-s1": None}, T_FAULT)
    r = result["reconnect"]
    assert (r["n"], r["only_events"], r["only_wire"], r["one_sided"]) == (0, [], ["cl1-s0"], 1)
    assert r["median_abs_diff_ms"] is None and r["not_compared"] == 0


def test_sessions_the_metrics_give_no_reconnect_for_are_not_compared(tmp_path):
    """A wire session in neither reference nor quiet (collateral, or the application
    prober's) is counted as not compared, not as agreement or disagreement."""
    events, pcap, _ = failover_run(tmp_path)
    r = capture.cross_check(events, [pcap], {}, T_FAULT)["reconnect"]
    assert (r["n"], r["one_sided"], r["not_compared"]) == (0, 0, 1)


def test_a_reply_after_the_measurement_is_no_reconnect_on_the_wire(tmp_path):
    events, pcap, _ = failover_run(tmp_path)
    reference = metrics_reference(events)
    end = T_FAULT + int(reference["cl1-s0"] * MS) - MS  # the measurement ends 1 ms before the recovering reply
    r = capture.cross_check(events, [pcap], reference, T_FAULT, end_ns=end)["reconnect"]
    assert (r["n"], r["only_events"]) == (0, ["cl1-s0"])


def test_a_drop_after_the_faults_window_is_another_faults_but_a_late_reconnect_counts(tmp_path):
    """Drops count in the fault's window; the reconnect may come after it (before the
    measurement's end), as the metrics own an outage by when it began."""
    events, pcap, _ = failover_run(tmp_path)
    reference = metrics_reference(events)
    wire = capture.reconnect_from_capture([pcap], T_FAULT, OFFSET, end_ns=T_FAULT + 600 * MS,
                                          window_end_ns=T_FAULT + 15 * MS + 1)  # the reset at +15 ms is inside
    assert wire["cl1-s0"]["reconnect_ms"] == pytest.approx(reference["cl1-s0"], abs=0.3)
    assert capture.reconnect_from_capture([pcap], T_FAULT, OFFSET, end_ns=T_FAULT + 600 * MS,
                                          window_end_ns=T_FAULT + 14 * MS) == {}  # the reset is after the window


@pytest.mark.parametrize("content", [b"", b"not a capture at all, just text\n" * 4])
def test_an_unreadable_capture_is_an_error_naming_it(tmp_path, content):
    events, _, _ = failover_run(tmp_path)
    bad = tmp_path / "cl2.pcap"
    bad.write_bytes(content)
    with pytest.raises(capture.CaptureError, match="cl2.pcap"):
        capture.cross_check(events, [bad], metrics_reference(events), T_FAULT)


def _run_folder(tmp_path, pcap_bytes: bytes | None):
    events, pcap, _ = failover_run(tmp_path)
    raw = tmp_path / "run" / "raw" / "s1-r1"
    raw.mkdir(parents=True)
    if pcap_bytes is not None:
        (raw / "cl1.pcap").write_bytes(pcap_bytes)
    return tmp_path / "run", events, analyze_run(events, RunParams()), Path(pcap).read_bytes()


def test_analysis_says_what_became_of_the_check(tmp_path):
    from caslab.results.analysis import capture_check

    run_dir, events, run, good = _run_folder(tmp_path, None)
    assert capture_check(run_dir, ("s1", 0), events, run, captured=False) == {"status": "not_captured", "rep": 0}
    missing = capture_check(run_dir, ("s1", 0), events, run, captured=True)
    assert missing["status"] == "error" and "no client-link pcap" in missing["error"]
    (run_dir / "raw" / "s1-r1" / "cl1.pcap").write_bytes(good[:10])  # cut inside the file header
    broken = capture_check(run_dir, ("s1", 0), events, run)
    assert broken["status"] == "error" and "cl1.pcap" in broken["error"]
    (run_dir / "raw" / "s1-r1" / "cl1.pcap").write_bytes(good)
    ok = capture_check(run_dir, ("s1", 0), events, run)
    assert (ok["status"], ok["n"], ok["one_sided"]) == ("ok", 1, 0) and ok["max_abs_diff_ms"] < 0.3


def _check(rep, diffs, only_events=(), only_wire=(), status="ok"):
    return {"status": status, "rep": rep, "n": len(diffs), "abs_diffs_ms": sorted(diffs),
            "only_events": list(only_events), "only_wire": list(only_wire),
            "one_sided": len(only_events) + len(only_wire), "not_compared": 1}


def test_merged_check_pools_every_session_and_keeps_every_disagreement():
    from caslab.results.metrics.summary import merge_capture_checks

    merged = merge_capture_checks([_check(0, [0.1, 0.2, 0.3]), _check(1, [5.0], only_events=["cl1-s4"]),
                                   _check(2, [0.4, 0.5, 0.6, 0.7], only_wire=["cl2-s1", "cl2-s2"])])
    assert merged["status"] == "ok" and merged["n"] == 8 and merged["repetitions"] == 3
    assert merged["median_abs_diff_ms"] == 0.45  # of all 8 sessions, not the median of the 3 medians (0.35)
    assert merged["max_abs_diff_ms"] == 5.0
    assert merged["one_sided"] == 3 and merged["not_compared"] == 3
    assert merged["only_events"] == [{"rep": 1, "session": "cl1-s4"}]
    assert merged["only_wire"] == [{"rep": 2, "session": "cl2-s1"}, {"rep": 2, "session": "cl2-s2"}]


def test_merged_check_reports_a_repetition_it_could_not_check():
    from caslab.results.metrics.summary import merge_capture_checks

    merged = merge_capture_checks([_check(0, [0.1]), {"status": "error", "rep": 1, "error": "cl1.pcap: bad magic"}])
    assert merged["status"] == "error" and merged["n"] == 1
    assert merged["errors"] == ["repetition 2: cl1.pcap: bad magic"]
    assert merge_capture_checks([{"status": "not_captured", "rep": 0}])["status"] == "not_captured"
    assert merge_capture_checks([{"status": "no_fault", "rep": 0}])["status"] == "no_fault"
    assert merge_capture_checks([None, None]) is None  # analysed without captures (caslab compare)
