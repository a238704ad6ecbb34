"""What Windows NLB's mechanism cost, from the agents' and the runner's events alone:

* per fault: how long after the fault the cluster had converged (the last host to swap
  its bucket sets), how long convergence itself took and how often it restarted, how many
  buckets moved, how many established connections the move broke on hosts that are still
  alive (they did not keep them), and how many the departed hosts held at their last
  heartbeat (their connections are in moved buckets too, and break);
* per run: the bytes that reached hosts that are not cluster members only because the
  switch flooded them (frames for a cluster MAC, counted at those hosts' NICs over the
  measurement window), and the heartbeats' share of it.

Other modes produce none of these events, and every value is then None.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from labcommon.catalogue import WNLB_CONVERGED, WNLB_CONVERGING, WNLB_FLOOD


@dataclass
class Convergence:
    converged_ms: float | None = None  # fault -> the last host's convergence in the fault's window
    took_ms: float | None = None       # the longest convergence (its start to its end) in the window
    restarts: int | None = None
    buckets_moved: int | None = None
    conns_broken: int | None = None    # established connections of live hosts in buckets they lost
    conns_departed: int | None = None  # connections the departed hosts reported last


def convergence(events: list[dict], t_fault: int, window_end: int) -> Convergence:
    done = [e for e in events if e["ev"] == WNLB_CONVERGED and t_fault <= e["ts"] < window_end]
    if not done:
        started = any(e["ev"] == WNLB_CONVERGING and t_fault <= e["ts"] < window_end for e in events)
        return Convergence(restarts=0 if started else None)
    departed: dict[str, int] = {}
    for e in done:
        for host, conns in e["departed"].items():
            departed[host] = max(departed.get(host, 0), conns)
    return Convergence(
        converged_ms=round((max(e["ts"] for e in done) - t_fault) / 1e6, 1),
        took_ms=max(e["took_ms"] for e in done), restarts=max(e["restarts"] for e in done),
        buckets_moved=max(e["moved"] for e in done), conns_broken=sum(e["broken"] for e in done),
        conns_departed=sum(departed.values()))


def flooding(events: list[dict]) -> dict[str, Any]:
    """Bytes delivered to non-member hosts for the cluster MACs (and heartbeats), per run."""
    rows = [e for e in events if e["ev"] == WNLB_FLOOD]
    if not rows:
        return {}
    window_ms = max(e["window_ms"] for e in rows)
    unread = sorted(e["host"] for e in rows if e.get("cluster_bytes") is None)
    if unread:  # a host whose counters are unknown makes the total unknown, never smaller
        return {"hosts": len(rows), "window_ms": window_ms, "cluster_bytes": None, "cluster_frames": None,
                "heartbeat_bytes": None, "kbit_s": None, "unmeasured": unread}
    cluster = sum(e["cluster_bytes"] for e in rows)
    return {"hosts": len(rows), "window_ms": window_ms, "cluster_bytes": cluster,
            "cluster_frames": sum(e["cluster_frames"] for e in rows),
            "heartbeat_bytes": sum(e["heartbeat_bytes"] for e in rows),
            "kbit_s": round(cluster * 8 / window_ms, 1) if window_ms else None,
            "per_host": {e["host"] + ("" if e["host"] != "r1" else f":{e['port']}"): e["cluster_bytes"]
                         for e in rows}}
