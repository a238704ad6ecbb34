"""What a fault did to the mailbox databases it failed: how long each stayed unmounted,
what its new copy knew it lacked, and whether Active Manager left it dismounted.

A database fails with a fault when the fault lists it among its elements (``db:<name>``:
the databases active on a server that died, or the one a switchover moves). It is
unmounted from the fault's instant until a copy reports itself active again (the mailbox
server's ``db_role`` event, the moment the copy mounted); a database no copy mounted
before the window closed is dismounted, never "recovered". Loss is reported twice and
never silently: ``missing`` is what the mounted copy knew it lacked (the copy queue
AutoDatabaseMountDial judged), the run's ``messages.lost`` is every acknowledged message
the active copy does not hold at the end, known to a copy or not.
"""

from __future__ import annotations

from typing import Any

from labcommon.catalogue import DB_ROLE, DUMPSTER_RESUBMIT


def database_outages(events: list[dict], t_fault: int, window_end: int, elements: set[str]) -> dict[str, dict]:
    """db -> {unmounted_ms (None: never mounted again in the window), missing, dismounted}."""
    out: dict[str, dict[str, Any]] = {}
    for element in sorted(elements):
        if not element.startswith("db:"):
            continue
        db = element[3:]
        mounted = next((e for e in events if e["ev"] == DB_ROLE and e.get("db") == db and e.get("active")
                        and t_fault <= e["ts"] < window_end), None)
        out[db] = {"unmounted_ms": round((mounted["ts"] - t_fault) / 1e6, 1) if mounted else None,
                   "missing": mounted.get("missing") if mounted else None,
                   "dismounted": mounted is None}
    return out


def dumpster(events: list[dict]) -> dict[str, int]:
    """What the transport dumpsters resubmitted after lossy mounts, and how many of those
    messages the mounted copy lacked (recovered)."""
    resubmits = [e for e in events if e["ev"] == DUMPSTER_RESUBMIT]
    return {"resubmitted": sum(e["resubmitted"] for e in resubmits),
            "recovered": sum(e["recovered"] for e in resubmits)}
