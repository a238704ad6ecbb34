"""Hypothesis strategies for event logs, for the differential test of the metrics.

A generated log is a whole run folder's worth: one scenario with 0-3 repetitions, each a
sorted list of events that conform to labcommon/catalogue.py. Times sit on a
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


def _op(ts: int, sid: str, cas: str | None, name: str = "read", ok: bool = True, lat: int = 2_000) -> dict:
    return {"ev": "op", "ts": ts, "session": sid, "op": name, "ok": ok, "lat_us": lat, "cas": cas}


def _connect(ts: int, sid: str) -> dict:
    return {"ev": "connect_ok", "ts": ts, "session": sid, "addr": "10.0.0.100", "lport": 40000, "laddr": "10.1.0.2"}


def _logon(ts: int, sid: str, cas: str, db: str, reauth: bool, prompt: bool | None) -> dict:
    ev = {"ev": "logon", "ts": ts, "session": sid, "cas": cas, "db": db, "reauth": reauth, "resumed": not reauth}
    if prompt is not None:
        ev["prompt"] = prompt
    return ev


@st.composite
def session_events(draw, sid: str, end_slot: int, plan: list[dict]) -> list[dict]:
    """One RPC session: a logon before the window, a story (steady service, a failover around one of the
    plan's faults with or without a logged drop, a drain, silence), then a random walk of noise."""
    out: list[dict] = []
    cas = draw(st.sampled_from([f["cas"] for f in plan] + list(CAS)))
    db = draw(st.sampled_from(DBS))
    first = draw(st.integers(1, START_SLOT))
    if draw(st.integers(0, 4)) != 4:
        out.append(_connect(at(first), sid))
        out.append(_logon(at(first), sid, cas, db, False, None))
    story = draw(st.sampled_from(("failover", "failover", "failover", "failover", "failover", "steady", "walk", "silent")))
    every = draw(st.sampled_from((1, 2, 5)))
    mailbox = st.sampled_from(("read", "read", "ping", "send"))
    if story == "steady":                               # a drain if its CAS is failed: it keeps being served there
        for slot in range(first + 1, end_slot + 6, every):
            out.append(_op(at(slot), sid, cas, draw(mailbox)))
    elif story == "failover" and plan:
        f = draw(st.sampled_from(plan))
        fslot = START_SLOT + f["offset"]
        for slot in range(first + 1, fslot + draw(st.integers(0, 2)), every):
            out.append(_op(at(slot), sid, cas, draw(mailbox)))
        slot = fslot + draw(st.sampled_from((1, 0, 2, 4, 12)))
        how = draw(st.sampled_from(("down", "fail", "stall", "late-ping")))
        if how == "down":
            out.append({"ev": "down", "ts": at(slot), "session": sid, "reason": "reset"})
        elif how == "fail":
            out.append(_op(at(slot), sid, None, "sync", ok=False, lat=1_500_000))
        elif how == "late-ping":                         # a ping still answered by the failed CAS
            out.append(_op(at(slot), sid, cas, "ping", lat=250_000))
        slot += draw(st.sampled_from((1, 0, 3, 30)))
        new = draw(st.sampled_from(CAS))
        out.append(_connect(at(slot, draw(st.sampled_from((0, 1)))), sid))
        slot += draw(st.integers(0, 3))
        reauth = draw(st.booleans())
        out.append(_logon(at(slot), sid, new, db, reauth, draw(st.sampled_from((None, True, False)))))
        slot += draw(st.integers(0, 3))
        for s2 in range(slot, end_slot + 6, every):
            out.append(_op(at(s2), sid, new, draw(mailbox)))
    elif story == "walk":
        slot = first
        for _ in range(draw(st.integers(0, 14))):
            slot += draw(st.sampled_from((0, 1, 1, 2, 4, 8, 16, 30)))
            ts = at(slot, draw(st.sampled_from((0, 0, 0, 2))))
            kind = draw(st.sampled_from(("ok", "ok", "ok", "ping", "send", "fail", "down", "logon", "connect",
                                         "switch")))
            lat = draw(st.sampled_from((2_000, 40_000, 250_000, 1_500_000, 200_000, 1_000_000)))
            if kind == "switch":
                cas = draw(st.sampled_from(CAS))
            elif kind in ("ok", "ping", "send", "fail"):
                out.append(_op(ts, sid, cas if kind != "fail" or draw(st.booleans()) else None,
                               {"ok": "read", "fail": "sync"}.get(kind, kind), ok=kind != "fail", lat=lat))
            elif kind == "down":
                out.append({"ev": "down", "ts": ts, "session": sid, "reason": draw(st.sampled_from(("reset", "timeout")))})
            elif kind == "connect":
                out.append(_connect(ts, sid))
            else:
                reauth = draw(st.booleans())
                out.append(_logon(ts, sid, cas, db, reauth, draw(st.sampled_from((None, True, False)))))
    for e in out:                                        # sends carry message ids; a few ops are late
        if e["ev"] == "op" and e["op"] == "send":
            e["msg_id"] = draw(st.sampled_from(MSG_IDS))
            if e["ok"] and draw(st.integers(0, 3)) == 0:
                e["unreplicated"] = ["10.0.2.12:7000"]
    if out and draw(st.integers(0, 3)) == 0:
        draw(st.sampled_from([e for e in out if e["ev"] == "op"] or [{}])).update(lat_us=900_000)
    return out


def _request(slot: int, sid: str, proto: str, cmd: str, ok: bool, cas: str | None, lat: int) -> dict:
    return {"ev": "http_request", "ts": at(slot), "session": sid, "protocol": proto, "cmd": cmd, "ok": ok,
            "status": 200 if ok else None, "lat_us": lat, "cas": cas}


HTTP_CMDS = {"owa": ("login", "read", "send"), "eas": ("ping", "ping", "sync"), "oa": ("read", "send", "ping", "keepalive")}


@st.composite
def http_events(draw, host: str, end_slot: int, plan: list[dict]) -> list[dict]:
    n = draw(st.integers(0, 3))
    if not n:
        return []
    sessions = {f"{host}-{p}{i}": p for i, p in enumerate(draw(st.lists(st.sampled_from(("owa", "eas", "oa")),
                                                                       min_size=n, max_size=n)))}
    out = [{"ev": "http_client_up", "ts": at(2), "sessions": sessions, "external": draw(st.booleans())}]
    for sid, proto in sessions.items():
        cas = draw(st.sampled_from([f["cas"] for f in plan] + list(CAS)))
        slot = draw(st.integers(3, START_SLOT))
        if plan and draw(st.booleans()):               # a failover story: served, cut off at a fault, served again
            f = draw(st.sampled_from(plan))
            fslot = START_SLOT + f["offset"]
            cmds = HTTP_CMDS[proto]
            for s2 in range(slot, fslot, 4):
                out.append(_request(s2, sid, proto, draw(st.sampled_from(cmds)), True, cas, 30_000))
            slot = fslot + draw(st.integers(0, 10))
            if draw(st.booleans()):
                out.append({"ev": "http_down", "ts": at(slot), "session": sid, "protocol": proto, "reason": "reset"})
            else:
                out.append(_request(slot, sid, proto, draw(st.sampled_from(cmds)), False, None, 2_500_000))
            cas = draw(st.sampled_from(CAS))
            slot += draw(st.integers(0, 20))
            if draw(st.booleans()):
                out.append({"ev": "http_logon", "ts": at(slot), "session": sid, "protocol": proto, "cas": cas,
                            "reauth": True, "prompt": draw(st.booleans())})
            for s2 in range(slot, end_slot + 6, 4):
                out.append(_request(s2, sid, proto, draw(st.sampled_from(cmds)), True, cas, 750_000))
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
                    ev["msg_id"] = draw(st.sampled_from(MSG_IDS))
                    if draw(st.integers(0, 3)) == 0:
                        ev["unreplicated"] = ["10.0.2.12:7000"]
                out.append(ev)
            elif kind == "down":
                out.append({"ev": "http_down", "ts": ts, "session": sid, "protocol": proto, "reason": "reset"})
            else:
                reauth = draw(st.booleans())
                out.append({"ev": "http_logon", "ts": ts, "session": sid, "protocol": proto, "cas": cas,
                            "reauth": reauth, "prompt": reauth and draw(st.booleans())})
    return out


@st.composite
def fault_plan(draw) -> list[dict]:
    """A scenario's [[faults]]: kind, elements, affects, when (slot), undo after (slots). Shared by its
    repetitions, as in a real spec; fired in (time, index) order, as the runner does."""
    plan = []
    for i in range(draw(st.integers(0, 3))):
        kind, shape, affects = draw(st.sampled_from(FAULT_SHAPES))
        cas = draw(st.sampled_from(CAS))
        elements = {"cas": [cas], "two_cas": [cas, draw(st.sampled_from(CAS))], "controller": ["controller"],
                    "db": [f"db:{draw(st.sampled_from(DBS))}"],
                    "cas_db": [cas, f"db:{draw(st.sampled_from(DBS))}"]}[shape]
        plan.append({"index": i, "kind": kind, "cas": cas, "elements": sorted(set(elements)), "affects": affects,
                     "offset": draw(st.one_of(st.integers(1, 40), st.integers(-2, 150))),  # also before/after the window
                     "undo": draw(st.sampled_from((None, None, 0, 5, 20, 40)))})
    return sorted(plan, key=lambda f: (f["offset"], f["index"]))


def fault_events(plan: list[dict], explicit_index: bool, end_slot: int) -> list[dict]:
    out = []
    for f in plan:
        slot = START_SLOT + f["offset"]
        ev = {"ev": "fault", "ts": at(slot), "kind": f["kind"], "targets": [f["cas"]], "elements": f["elements"],
              "label": f"{f['kind']} {f['cas']}"}
        if f["affects"]:
            ev["affects"] = f["affects"]
        if explicit_index:
            ev["index"] = f["index"]
            if f["undo"] is not None:
                out.append({"ev": "fault_undone", "ts": at(slot + f["undo"]), "kind": f["kind"], "targets": [f["cas"]],
                            "index": f["index"]})
        out.append(ev)
    return out


@st.composite
def run_events(draw, scenario: str, rep: int, plan: list[dict], explicit_index: bool) -> list[dict]:
    """One repetition, sorted by ts (equal ts keep the order drawn), tagged scenario/rep."""
    end_slot = START_SLOT + draw(st.integers(20, 140))
    cut = at(end_slot + 100)
    if draw(st.integers(0, 7)) == 7:                                  # the repetition aborted: its log stops here
        cut = at(draw(st.integers(START_SLOT // 2, end_slot)))
    events = [{"ev": "scenario_start", "ts": at(0), "mode": "sdn", "label": scenario, "repetition": rep,
               "datapath": "netdev", "plan": {}}]
    if draw(st.integers(0, 5)) != 5:
        events.append({"ev": "measure_start", "ts": at(START_SLOT), "observe_s": 6.0})
    if draw(st.booleans()):
        events.append({"ev": "clients_ready", "ts": at(draw(st.integers(5, START_SLOT + 5))), "sessions": 1})
    sessions = []
    for c in range(draw(st.integers(1, 2))):
        host = f"c{c + 1}"
        ids = [f"{host}-s{j}" for j in range(draw(st.integers(0, 3)))]
        declared = ids if draw(st.integers(0, 5)) != 5 else ids[:-1]    # a session seen only in its own events
        events.append({"ev": "client_up", "ts": at(1), "sessions": declared, "target": {}})
        client = [e for sid in ids for e in draw(session_events(sid, end_slot, plan))]
        if ids and draw(st.integers(0, 3)) == 3:                      # the client process dies: its sessions go silent
            death = at(draw(st.integers(START_SLOT, end_slot)))
            client = [e for e in client if e["ts"] < death]
        events += client
        sessions += ids
        events += draw(http_events(f"h{c + 1}", end_slot, plan))
    events += fault_events(plan, explicit_index, end_slot)
    for f in plan:                                     # the load balancer notices (or not) the failed CAS
        if draw(st.integers(0, 2)) != 2:
            events.append({"ev": "lb_member", "ts": at(START_SLOT + f["offset"] + draw(st.integers(0, 8))),
                           "member": f["cas"], "reason": "port_down", "alive": False, "accepts_new": False})
    for _ in range(draw(st.integers(0, 2))):
        events.append({"ev": "lb_member", "ts": draw(when(START_SLOT - 2, end_slot + 2)),
                       "member": draw(st.sampled_from(CAS)), "reason": "port_down", "alive": draw(st.booleans()),
                       "accepts_new": draw(st.booleans())})
    for _ in range(draw(st.sampled_from((3, 6, 1, 0, 0)))):
        events.append({"ev": "cpu", "ts": draw(when(START_SLOT - 10, end_slot + 10)),
                       "idle_pct": 100 - draw(st.integers(0, 400)) / 4})
    if draw(st.integers(0, 3)):                    # the runner's CPU counters, one reading per slot or so
        idle, total, pressure = 10_000, 20_000, draw(st.sampled_from((None, 5_000_000)))
        for slot in range(START_SLOT - 12, end_slot + 4):
            if draw(st.integers(0, 5)) == 5:
                continue                             # a reading the sampler missed (it was late)
            busy = draw(st.integers(0, 10))
            idle, total = idle + 10 - busy, total + 10
            if pressure is not None:
                pressure += draw(st.integers(0, 50_000))
            events.append({"ev": "load", "ts": at(slot, draw(st.sampled_from((0, 0, 1)))), "idle_ticks": idle,
                           "total_ticks": total, "tick_ms": 10.0, "pressure_us": pressure})
    for name, kind in draw(st.lists(st.sampled_from((("c1", "client"), ("cas1", "cas"), ("controller", "controller"),
                                                     ("ovs-vswitchd", "ovs"))), max_size=4)):
        events.append({"ev": "process_cpu", "ts": at(end_slot + draw(st.integers(0, 2))), "name": name, "kind": kind,
                       "pid": 100 + len(events), "cpu_ms": draw(st.integers(0, 4000)) / 2, "window_ms": 6000.0,
                       "started_in_window": draw(st.booleans()), "ended_in_window": draw(st.booleans())})
    if draw(st.integers(0, 7)) == 7:
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
    if draw(st.integers(0, 7)) != 7:                                     # else: aborted, no measure_end
        events.append({"ev": "measure_end", "ts": at(end_slot)})
    ending = draw(st.sampled_from(("ok", "ok", "ok", "failed", "none")))
    if ending != "none":
        events.append({"ev": "scenario_end", "ts": at(end_slot + 6), "ok": ending == "ok"})
    events = [e for e in events if e["ts"] < cut]
    for e in events:
        e.setdefault("src", "runner")
        e["scenario"], e["rep"] = scenario, rep
    return sorted(events, key=lambda e: e["ts"])


@st.composite
def scenario_logs(draw) -> tuple[dict, list[list[dict]]]:
    """Thresholds and 0-3 repetitions of one scenario."""
    params = {"late_ms": draw(st.sampled_from((200, 1000))), "stall_ms": draw(st.sampled_from((400, 1000, 2000, 425))),
              "min_cpu_idle_pct": draw(st.sampled_from((20, 50)))}
    reps = draw(st.sampled_from((2, 1, 3, 0)))
    plan, explicit = draw(fault_plan()), draw(st.integers(0, 3)) > 0
    return params, [draw(run_events("s0", rep, plan, explicit)) for rep in range(reps)]
