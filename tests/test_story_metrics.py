"""Unit tests of the stories' pure parts: served users by resolved address, database
outages and the dumpster, the WAN firewall's rules, the async copy queue, the dumpster."""

from __future__ import annotations

import asyncio

from caslab.results.metrics.addresses import by_address, merge
from caslab.results.metrics.databases import database_outages, dumpster
from caslab.network.wan import firewall_commands
from roles.dumpster import TransportDumpster

MS = 1_000_000
PLAN = {"cas1": {"role": "cas", "ip": "10.1.1.1", "site": "HQ"}, "cas2": {"role": "cas", "ip": "10.2.1.1",
                                                                          "site": "Branch"}}


def ev(ts, event, **fields):
    return {"ts": ts * MS, "src": "cl1", "ev": event, **fields}


def test_served_users_are_grouped_by_the_first_address_of_their_answer():
    events = [ev(0, "scenario_start", mode="dns-rr", label="x", repetition=0, datapath="user", plan=PLAN)]
    for i, first in enumerate(["10.1.1.1", "10.2.1.1", "10.1.1.1"]):
        sid = f"cl1-s{i}"
        other = "10.2.1.1" if first == "10.1.1.1" else "10.1.1.1"
        events += [ev(1, "resolved", session=sid, name="outlook.hq.lab.test", addresses=[first, other]),
                   ev(2, "logon", session=sid, cas=None, db="DB1", reauth=False, resumed=False)]
        works = first == "10.2.1.1"
        events += [ev(100 + k, "op", session=sid, op="read", ok=works, lat_us=1, cas="c") for k in range(3)]
        events += [ev(104, "op", session=sid, op="ping", ok=True, lat_us=1, cas="c")]
        if not works:
            events.append(ev(105, "down", session=sid, reason="timeout"))
    rows = by_address(events, 50 * MS, 200 * MS)
    assert [(r["address"], r["host"], r["site"], r["sessions"], r["served"], r["mailbox_ok"], r["failures"])
            for r in rows] == [("10.1.1.1", "cas1", "HQ", 2, 0, 0, 8), ("10.2.1.1", "cas2", "Branch", 1, 1, 3, 0)]
    merged = merge([rows, rows])
    assert [(r["sessions"], r["success_pct"]) for r in merged] == [(4, 0.0), (2, 100.0)]


def test_a_database_is_unmounted_until_a_copy_mounts_and_dismounted_if_none_does():
    events = [ev(1000, "db_role", db="DB1", server="mbx2", active=True, missing=40),
              ev(1000, "dumpster_resubmit", db="DB1", cas="cas1", resubmitted=50, recovered=45)]
    out = database_outages(events, 600 * MS, 5000 * MS, {"mbx1", "db:DB1", "db:DB2"})
    assert out == {"DB1": {"unmounted_ms": 400.0, "missing": 40, "dismounted": False},
                   "DB2": {"unmounted_ms": None, "missing": None, "dismounted": True}}
    assert dumpster(events) == {"resubmitted": 50, "recovered": 45}


def test_the_wan_firewall_drops_only_cross_site_cas_to_mailbox():
    rules = [c for c in firewall_commands([1, 2]) if c[2] == "rule"]
    assert len(rules) == 2
    assert " ".join(rules[0]).endswith("ip saddr 10.1.1.0/24 ip daddr 10.2.0.0/16 tcp dport 7001 counter drop")
    assert all(isinstance(a, str) for c in firewall_commands([1, 2]) for a in c)


def test_the_dumpster_resubmits_what_it_kept_and_counts_what_was_missing():
    dumpster_ = TransportDumpster(2)
    for i in range(3):
        dumpster_.keep("DB1", "u", {"op": "send", "msg_id": f"m{i}", "subject": "s"}, {"ok": True})
    dumpster_.keep("DB1", "u", {"op": "read"}, {"ok": True})
    dumpster_.keep("DB1", "u", {"op": "send", "msg_id": "failed"}, {"ok": False})
    stored = {"m1"}

    async def send(message, state):
        duplicate = message["msg_id"] in stored
        stored.add(message["msg_id"])
        return {"ok": True, "duplicate": duplicate}

    reply = asyncio.run(dumpster_.resubmit("DB1", send))
    assert (reply["resubmitted"], reply["recovered"]) == (2, 1), "the quota kept m1 and m2; m1 was there"
    assert stored == {"m1", "m2"}
    assert TransportDumpster(0).kept == {} and asyncio.run(TransportDumpster(0).resubmit("DB1", send))["resubmitted"] == 0


def test_async_replication_announces_closed_generations_and_ships_on_the_copier_cycle(tmp_path):
    """The copy queue: a closed generation is announced at once (head only), its rows
    follow on the copier's cycle; the open generation is neither announced nor shipped."""
    from labcommon.events import NullLog
    from roles.dag import DatabaseCopy, Shipper

    async def scenario():
        active = DatabaseCopy(tmp_path / "a.sqlite", True, ["127.0.0.1:9"])
        passive = DatabaseCopy(tmp_path / "p.sqlite", False, [])

        class Link:  # the passive copy's side of the wire, in process (as roles.mailbox answers it)
            async def call(self, message):
                outcome = passive.apply(message["rows"], message["head"], message.get("prev_seq"),
                                        message.get("prev_chain"))
                return {"ok": outcome == "ok", "last_seq": passive.last_seq,
                        **({} if outcome == "ok" else {"error": outcome})}

            def close(self):
                pass

        shipper = Shipper("DB1", active, "127.0.0.1:9", NullLog(), "async", log_messages=5, log_interval_s=0.4)
        shipper.link = Link()
        task = asyncio.get_running_loop().create_task(shipper.run())
        await asyncio.sleep(0.05)  # the first cycle ships what exists (nothing)
        for i in range(12):
            active.append({"msg_id": f"m{i}", "user": "u", "folder": "Inbox", "subject": ""})
            shipper.notify()
        await asyncio.sleep(0.05)
        queued = (passive.last_seq, passive.behind)
        await asyncio.sleep(0.5)  # the copier's cycle came: everything ships, the open generation closes
        task.cancel()
        return queued, (passive.last_seq, passive.behind)

    queued, shipped = asyncio.run(scenario())
    assert queued == (0, 10), "two generations of 5 announced, none shipped; the open one (2 rows) unknown"
    assert shipped == (12, 0)


def test_a_dismounted_database_is_not_recovered_by_pings():
    from caslab.results.metrics.sessions import FaultWindow, outages, session_fault, tracks

    sid = "cl1-s0"
    events = [ev(0, "client_up", sessions=[sid], target={}),
              ev(1, "logon", session=sid, cas="cas1", db="DB1", reauth=False, resumed=False),
              ev(10, "op", session=sid, op="read", ok=True, lat_us=1, cas="cas1"),
              ev(1100, "down", session=sid, reason="timeout")]
    events += [ev(1200 + 100 * k, "op", session=sid, op="ping", ok=True, lat_us=1, cas="cas2") for k in range(30)]
    track = tracks(events, 500, 5000 * MS)[sid]

    def under(elements):
        window = FaultWindow(0, 0, 100 * MS, 5000 * MS, frozenset(elements))
        return session_fault(track, window, outages(track, [window], 0, 5000 * MS, 1050 * MS), 5000 * MS, {})

    down = under({"mbx1", "db:DB1"})
    assert down.affected and not down.recovered, "only pings answered: the mailbox never did"
    cas_fault = under({"cas1"})
    assert cas_fault.recovered and cas_fault.reconnect_ms == 1100.0, "a CAS failure is over when a CAS answers"