"""The challenge schedule (pure: no thread, no clock, no lock; owned by NlbCore): until each
connection of a dead CAS has been reset, its client is sent a challenge segment (see
NlbCore.challenge_frame) at each delay of the schedule. A connection leaves the schedule
when the NLB resets it (``done``) or when the schedule of the last batch it was added in
has run out.

Why a schedule: a challenge, the client's answer or the survivor's reset can be lost, and
the controller dataplane's flow delete reaches the switch's cached datapath flows
asynchronously (a client's answer may still take the dead CAS's path until then: its
first challenge waits ``settle_s``). Why a sparse one: every repeat costs a packet-out, an
answer, a reset and its packet-in on the cores the reconnect burst needs; under load the
resets come back tens of ms after their challenge, and a dense schedule repeated each
challenge about ten times (labcommon.programs.CHALLENGE_DELAYS_MS).
Why one schedule for everything: a timer per retry costs more than the retries
themselves and competes with the packet-ins that carry the answers; the app wakes once
for whatever is due (``next_at``) and writes it to each switch in one piece.

Times are monotonic nanoseconds, given by the caller.
"""

from __future__ import annotations

import heapq
import itertools
from typing import Any


class ChallengeSchedule:
    def __init__(self, delays_s: list[float], settle_s: float | None = None):
        self.delays_ns = sorted(round(d * 1e9) for d in delays_s)
        self.settle_ns = None if settle_s is None else round(settle_s * 1e9)
        self.pending: dict[tuple, tuple[Any, Any, Any, int]] = {}  # key -> (channel, vip, connection, batch)
        self.heap: list[tuple[int, int, int, int, int, list[tuple]]] = []  # due, serial, attempt, start, batch, keys
        self.serial = itertools.count()

    def add(self, channel, vip, conns: list, now: int, at_once: bool = True) -> None:
        """Challenge these connections (at ``now`` if ``at_once``, else ``settle_s`` after it
        if set) and then on the schedule."""
        if not conns:
            return
        keys = [conn.key for conn in conns]
        batch = next(self.serial)
        for conn in conns:
            self.pending[conn.key] = (channel, vip, conn, batch)
        if at_once:
            heapq.heappush(self.heap, (now, next(self.serial), -1, now, batch, keys))
        elif self.settle_ns is not None:
            heapq.heappush(self.heap, (now + self.settle_ns, next(self.serial), -1, now, batch, keys))
        heapq.heappush(self.heap, (now + self.delays_ns[0], next(self.serial), 0, now, batch, keys))

    def done(self, key: tuple) -> bool:
        """The connection was reset: no more challenges for it. True if it was pending."""
        return self.pending.pop(key, None) is not None

    def due(self, now: int) -> list[tuple[Any, Any, Any]]:
        """Pop what is due at ``now`` as (channel, vip, connection), and reschedule each
        batch's next attempt."""
        out = []
        while self.heap and self.heap[0][0] <= now:
            _, _, attempt, start, batch, keys = heapq.heappop(self.heap)
            live = [k for k in keys if k in self.pending]
            out += [self.pending[k][:3] for k in live]
            if attempt < 0 or not live:
                continue
            if attempt + 1 < len(self.delays_ns):
                due = start + self.delays_ns[attempt + 1]
                heapq.heappush(self.heap, (due, next(self.serial), attempt + 1, start, batch, live))
            else:  # the batch's schedule is over: give up on its connections not added again since
                for k in live:
                    if self.pending[k][3] == batch:
                        del self.pending[k]
        return out

    def next_at(self) -> int | None:
        """When something is next due (monotonic ns), or None."""
        return self.heap[0][0] if self.heap else None
