"""Hypothesis strategies for event logs, for the differential test of the metrics.

A generated log is a whole run folder's worth: one scenario with 0-3 repetitions, each a
sorted list of events that conform to labcommon/catalogue.py (one documented exception:
``http_request`` sends carry the ``msg_id`` docs/METRICS.md section 8 counts). Times sit on a
250 us grid, so every time in ms is an exact binary fraction and the two implementations'
sums cannot differ by float order; they are drawn from 50 ms slots, so equal timestamps are
common. What each repetition can hold (see ``run_events``): faults of every shape in any
order and spacing (also after measure_end and at equal instants), fault_undone, silent
sessions, drops, stalls, drains, late successes, dead client processes, pings and mailbox
ops, logons with reauth/prompt, connect_ok, lb_member, cpu samples, process_cpu,
process_exit, probes, sends and mailbox contents, HTTP sessions, aborted repetitions.
"""

from __future__ import annotations

from hypothesis import strategies as st

MS = 1_000_000
GRID = 250_000                      # ns: every time is a multiple of 0.25 ms
SLOT = 50 * MS
BASE = 7_000_000_000_000            # a CLOCK_MONOTONIC-like origin
CAS = ("cas1", "cas2", "cas3")
DBS = ("DB1", "DB2")
MSG_IDS = tuple(f"m{i}" for i in range(6))
START_SLOT = 20                     # measure_start at 1 s

FAULT_SHAPES = (                    # kind, elements (a function of a draw), affects (None: the default)
    ("poweroff", "cas", None), ("crash", "cas", "on_elements"), ("poweroff", "two_cas", None),
    ("db-fail", "db", None), ("controller-crash", "controller", "disrupted"),
    ("link-impair", "cas", "disrupted"), ("cas-and-db", "cas_db", None),
)


def at(slot: int, fine: int = 0) -> int:
    return BASE + slot * SLOT + fine * GRID


@st.composite
def when(draw, lo: int, hi: int) -> int:
    return at(draw(st.integers(lo, hi)), draw(st.sampled_from((0, 0, 0, 0, 1, 3))))


@st.composite
def session_events(draw, sid: str, end_slot: int) -> list[dict]:
    """One RPC session: a logon before the window, then a random walk of what it logs."""
    out: list[dict] = []
    cas = draw(st.sampled_from(CAS))
    db = draw(st.sampled_from(DBS))
    slot = draw(st.integers(1, START_SLOT))
    if draw(st.booleans()):
        out.append({"ev": "connect_ok", "ts": at(slot), "session": sid, "addr": "10.0.0.100", "lport": 40000,
                    "laddr": "10.1.0.2"})
    if draw(st.integers(0, 4)):
        out.append({"ev": "logon", "ts": at(slot), "session": sid, "cas": cas, "db": db, "reauth": False,
                    "resumed": False})
    steps = draw(st.integers(0, 14))                  # 0: a silent session
    for _ in range(steps):
        slot += draw(st.sampled_from((0, 1, 1, 2, 4, 8, 16, 30)))
        ts = at(slot, draw(st.sampled_from((0, 0, 0, 2))))
        kind = draw(st.sampled_from(("ok", "ok", "ok", "ping", "send", "fail", "down", "logon", "connect",
                                     "switch")))
        lat = draw(st.sampled_from((2_000, 40_000, 250_000, 1_500_000)))
        if kind == "switch":
            cas = draw(st.sampled_from(CAS))
        elif kind in ("ok", "ping", "send", "fail"):
            ev = {"ev": "op", "ts": ts, "session": sid, "op": {"ok": "read", "fail": "sync"}.get(kind, kind),
                  "ok": kind != "fail", "lat_us": lat, "cas": cas if kind != "fail" or draw(st.booleans()) else None}
            if kind == "send":
                ev["msg_id"] = draw(st.sampled_from(MSG_IDS))
            out.append(ev)
        elif kind == "down":
            out.append({"ev": "down", "ts": ts, "session": sid, "reason": draw(st.sampled_from(("reset", "timeout")))})
        elif kind == "connect":
            out.append({"ev": "connect_ok", "ts": ts, "session": sid, "addr": "10.0.0.100", "lport": 40001,
                        "laddr": "10.1.0.2"})
        else:
            reauth = draw(st.booleans())
            ev = {"ev": "logon", "ts": ts, "session": sid, "cas": cas, "db": db, "reauth": reauth, "resumed": not reauth}
            prompt = draw(st.sampled_from((None, True, False)))
            if prompt is not None:
                ev["prompt"] = prompt
            out.append(ev)
    return out


HTTP_CMDS = {"owa": ("login", "read", "send"), "eas": ("ping", "ping", "sync"), "oa": ("read", "send", "ping", "keepalive")}


@st.composite
def http_events(draw, host: str, end_slot: int) -> list[dict]:
    n = draw(st.integers(0, 3))
    if not n:
        return []
    sessions = {f"{host}-{p}{i}": p for i, p in enumerate(draw(st.lists(st.sampled_from(("owa", "eas", "oa")),
                                                                       min_size=n, max_size=n)))}
    out = [{"ev": "http_client_up", "ts": at(2), "sessions": sessions, "external": draw(st.booleans())}]
    for sid, proto in sessions.items():
        cas = draw(st.sampled_from(CAS))
        slot = draw(st.integers(3, START_SLOT))
        for _ in range(draw(st.integers(0, 10))):
            slot += draw(st.sampled_from((0, 1, 2, 4, 10, 25)))
            ts = at(slot)
            kind = draw(st.sampled_from(("req", "req", "req", "down", "logon", "switch")))
            if kind == "switch":
                cas = draw(st.sampled_from(CAS))
            elif kind == "req":
                ok = draw(st.booleans())
                cmd = draw(st.sampled_from(HTTP_CMDS[proto]))
                ev = {"ev": "http_request", "ts": ts, "session": sid, "protocol": proto, "cmd": cmd, "ok": ok,
                      "status": 200 if ok else None, "lat_us": draw(st.sampled_from((1_000, 30_000, 750_000, 2_500_000))),
                      "cas": cas if ok else None}
                if cmd == "send" and ok and draw(st.booleans()):
                    ev["msg_id"] = draw(st.sampled_from(MSG_IDS))      # METRICS.md section 8 (not in EVENTS.md)
                out.append(ev)
            elif kind == "down":
                out.append({"ev": "http_down", "ts": ts, "session": sid, "protocol": proto, "reason": "reset"})
            else:
                reauth = draw(st.booleans())
                out.append({"ev": "http_logon", "ts": ts, "session": sid, "protocol": proto, "cas": cas,
                            "reauth": reauth, "prompt": reauth and draw(st.booleans())})
    return out


@st.composite
def fault_events(draw, end_slot: int) -> list[dict]:
    n = draw(st.integers(0, 3))
    explicit = draw(st.booleans())
    out = []
    for i in range(n):
        kind, shape, affects = draw(st.sampled_from(FAULT_SHAPES))
        cas = draw(st.sampled_from(CAS))
        elements = {"cas": [cas], "two_cas": [cas, draw(st.sampled_from(CAS))], "controller": ["controller"],
                    "db": [f"db:{draw(st.sampled_from(DBS))}"],
                    "cas_db": [cas, f"db:{draw(st.sampled_from(DBS))}"]}[shape]
        slot = draw(st.integers(START_SLOT - 2, end_slot + 10))         # also before the window and after its end
        ev = {"ev": "fault", "ts": at(slot), "kind": kind, "targets": [cas], "elements": sorted(set(elements)),
              "label": f"{kind} {cas}"}
        if affects:
            ev["affects"] = affects
        if explicit:
            ev["index"] = i
            if draw(st.integers(0, 2)) == 0:
                out.append({"ev": "fault_undone", "ts": at(slot + draw(st.integers(0, 40))), "kind": kind,
                            "targets": [cas], "index": i})
        out.append(ev)
    return out


@st.composite
def run_events(draw, scenario: str, rep: int) -> list[dict]:
    """One repetition, sorted by ts (equal ts keep the order drawn), tagged scenario/rep."""
    end_slot = START_SLOT + draw(st.integers(20, 140))
    events = [{"ev": "scenario_start", "ts": at(0), "mode": "sdn", "label": scenario, "repetition": rep,
               "datapath": "netdev", "plan": {}}]
    if draw(st.integers(0, 5)):
        events.append({"ev": "measure_start", "ts": at(START_SLOT), "observe_s": 6.0})
    if draw(st.booleans()):
        events.append({"ev": "clients_ready", "ts": at(draw(st.integers(5, START_SLOT + 5))), "sessions": 1})
    sessions = []
    for c in range(draw(st.integers(1, 2))):
        host = f"c{c + 1}"
        ids = [f"{host}-s{j}" for j in range(draw(st.integers(0, 3)))]
        events.append({"ev": "client_up", "ts": at(1), "sessions": ids, "target": {}})
        client = [e for sid in ids for e in draw(session_events(sid, end_slot))]
        if ids and draw(st.integers(0, 3)) == 0:                      # the client process dies: its sessions go silent
            death = at(draw(st.integers(START_SLOT, end_slot)))
            client = [e for e in client if e["ts"] < death]
        events += client
        sessions += ids
        events += draw(http_events(f"h{c + 1}", end_slot))
    events += draw(fault_events(end_slot))
    for _ in range(draw(st.integers(0, 3))):
        events.append({"ev": "lb_member", "ts": draw(when(START_SLOT - 2, end_slot + 2)),
                       "member": draw(st.sampled_from(CAS)), "reason": "port_down", "alive": draw(st.booleans()),
                       "accepts_new": draw(st.booleans())})
    for _ in range(draw(st.sampled_from((0, 0, 1, 3, 6)))):
        events.append({"ev": "cpu", "ts": draw(when(START_SLOT - 10, end_slot + 10)),
                       "idle_pct": draw(st.integers(0, 100))})
    for name, kind in draw(st.lists(st.sampled_from((("c1", "client"), ("cas1", "cas"), ("controller", "controller"),
                                                     ("ovs-vswitchd", "ovs"))), max_size=4)):
        events.append({"ev": "process_cpu", "ts": at(end_slot + draw(st.integers(0, 2))), "name": name, "kind": kind,
                       "cpu_ms": draw(st.integers(0, 4000)) / 2, "window_ms": 6000.0})
    if draw(st.integers(0, 7)) == 0:
        events.append({"ev": "process_exit", "ts": draw(when(START_SLOT, end_slot + 5)), "name": "cas2",
                       "host": "cas2", "returncode": 1})
    for ev_name in ("probe", "app_probe"):
        for seq in range(draw(st.sampled_from((0, 0, 3, 8)))):
            ok = draw(st.booleans())
            ev = {"ev": ev_name, "ts": draw(when(START_SLOT - 4, end_slot + 4)), "seq": seq, "ok": ok}
            ev.update({"sport": 1000 + seq, "isn": seq, "result": "synack" if ok else "timeout"} if ev_name == "probe"
                      else {"stage": "done" if ok else "connect", "lat_us": 1000, "cas": None})
            events.append(ev)
    for db in DBS:
        for _ in range(draw(st.integers(0, 2))):
            ts = draw(when(START_SLOT, end_slot + 5))
            if draw(st.booleans()):
                events.append({"ev": "db_active", "ts": ts, "db": db, "server": "mb2", "previous": "mb1", "ok": True})
            else:
                events.append({"ev": "db_dismounted", "ts": ts, "db": db, "previous": "mb1", "missing": None,
                               "reason": "dial"})
        for server in draw(st.lists(st.sampled_from(("mb1", "mb2")), max_size=2, unique=True)):
            events.append({"ev": "mailbox_contents", "ts": at(end_slot + 3), "db": db, "server": server,
                           "active": draw(st.booleans()),
                           "msg_ids": draw(st.lists(st.sampled_from(MSG_IDS), unique=True, max_size=6))})
    if draw(st.integers(0, 3)) == 0:
        events.append({"ev": "dumpster_resubmit", "ts": draw(when(START_SLOT, end_slot)), "db": "DB1", "cas": "cas1",
                       "resubmitted": 3, "recovered": draw(st.integers(0, 3))})
    if draw(st.integers(0, 4)):                                          # else: aborted, no measure_end
        events.append({"ev": "measure_end", "ts": at(end_slot)})
    ending = draw(st.sampled_from(("ok", "ok", "ok", "failed", "none")))
    if ending != "none":
        events.append({"ev": "scenario_end", "ts": at(end_slot + 6), "ok": ending == "ok"})
    for e in events:
        e.setdefault("src", "runner")
        e["scenario"], e["rep"] = scenario, rep
    return sorted(events, key=lambda e: e["ts"])


@st.composite
def scenario_logs(draw) -> tuple[dict, list[list[dict]]]:
    """Thresholds and 0-3 repetitions of one scenario."""
    params = {"late_ms": draw(st.sampled_from((200, 1000))), "stall_ms": draw(st.sampled_from((400, 1000, 2000))),
              "min_cpu_idle_pct": draw(st.sampled_from((20, 50)))}
    reps = draw(st.integers(0, 3))
    return params, [draw(run_events("s0", rep)) for rep in range(reps)]
