"""Who was served, grouped by the address a user's server name resolved to.

Some failures are not caused by a fault at an instant but by where a name sends a user:
an array FQDN that resolves by DNS round robin to a CAS in each site works for a user
only when it resolves to a CAS that can reach his database. Each session's resolution
is its ``resolved`` event (the addresses in the order it tries them; the first is the
one it uses), and a session is *served* when at least one of its mailbox operations
(read, send, sync: an RPC ping never reaches the mailbox) succeeded in the measurement
window. Grouping by database and resolved address shows the symptom and its cause side
by side.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any

from labcommon.catalogue import DOWN, LOGON, OP, RESOLVED, SCENARIO_START

MAILBOX_OPS = {"read", "send", "sync"}


def by_address(events: list[dict], start: int, end: int) -> list[dict[str, Any]]:
    """One row per (database, resolved address): sessions, served, mailbox ops ok, failures
    (failed mailbox operations and dropped connections) and the success share."""
    plan = next((e.get("plan", {}) for e in events if e["ev"] == SCENARIO_START), {})
    host_of = {info.get("ip"): (name, info.get("site")) for name, info in plan.items()}
    resolved: dict[str, str] = {}
    db: dict[str, str] = {}
    ok: dict[str, int] = defaultdict(int)
    failed: dict[str, int] = defaultdict(int)
    for e in events:
        sid = e.get("session")
        if sid is None:
            continue
        if e["ev"] == RESOLVED and e.get("addresses") and (sid not in resolved or e["ts"] <= start):
            resolved[sid] = e["addresses"][0]
        elif e["ev"] == LOGON and isinstance(e.get("db"), str):
            db.setdefault(sid, e["db"])
        elif start <= e["ts"] <= end and e["ev"] == OP and e.get("op") in MAILBOX_OPS:
            if e.get("ok"):
                ok[sid] += 1
            else:
                failed[sid] += 1
        elif start <= e["ts"] <= end and e["ev"] == DOWN:
            failed[sid] += 1
    groups: dict[tuple[str, str], dict[str, Any]] = {}
    for sid, address in resolved.items():
        host, site = host_of.get(address, (None, None))
        row = groups.setdefault((db.get(sid, ""), address), {
            "db": db.get(sid, ""), "address": address, "host": host, "site": site, "sessions": 0, "served": 0,
            "mailbox_ok": 0, "failures": 0})
        row["sessions"] += 1
        row["served"] += ok[sid] > 0
        row["mailbox_ok"] += ok[sid]
        row["failures"] += failed[sid]
    return [groups[k] for k in sorted(groups)]


def merge(rows_per_run: list[list[dict[str, Any]]]) -> list[dict[str, Any]]:
    """The rows of several repetitions, summed per (database, address), with the shares."""
    merged: dict[tuple[str, str], dict[str, Any]] = {}
    for rows in rows_per_run:
        for row in rows:
            into = merged.setdefault((row["db"], row["address"]), {**row, "sessions": 0, "served": 0,
                                                                   "mailbox_ok": 0, "failures": 0})
            for key in ("sessions", "served", "mailbox_ok", "failures"):
                into[key] += row[key]
    out = []
    for key in sorted(merged):
        row = merged[key]
        attempts = row["mailbox_ok"] + row["failures"]
        out.append({**row, "success_pct": round(100 * row["mailbox_ok"] / attempts, 1) if attempts else None})
    return out
