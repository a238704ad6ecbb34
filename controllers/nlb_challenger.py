"""Challenges on a schedule, from one thread: until each connection of a dead CAS has
been reset, its client is sent a challenge segment (see FailoverMixin.challenge) at each
delay of the schedule. A connection leaves the schedule when the NLB resets it (``done``)
or when the schedule of the last batch it was added in has run out.

Why a schedule: the switch applies a flow change to its cached datapath flows
asynchronously (a few ms, tens under load), and until then a client's answer may still
take the dead CAS's path and be lost; so early retries are dense and later ones sparse.
Why one thread: a timer thread per retry costs more than the retries themselves and
competes with the packet-ins that carry the answers. The thread waits on an event of the
framework's hub (a native thread under os-ken, a green thread under Ryu's eventlet), so
it never blocks the framework.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable

Send = Callable[[list[tuple[Any, Any, Any]]], None]  # [(datapath, vip, connection)] -> None


class Challenger:
    def __init__(self, send: Send, delays_s: list[float], clock: Callable[[], float] = time.monotonic,
                 event_factory: Callable[[], Any] = threading.Event):
        self.send = send  # everything due at once, in one call: the app writes it to a switch in one piece
        self.delays_s = sorted(delays_s)
        self.clock = clock
        self.pending: dict[tuple, tuple[Any, Any, Any, int]] = {}  # key -> (dp, vip, connection, batch)
        self.heap: list[tuple[float, int, int, float, int, list[tuple]]] = []  # due, serial, attempt, start, batch, keys
        self.serial = itertools.count()
        self.lock = threading.Lock()  # never held across a wait or a send
        self.wakeup = event_factory()

    def add(self, dp, vip, conns: list, now: bool = True) -> None:
        """Challenge these connections (at once if ``now``) and then on the schedule."""
        if not conns:
            return
        keys = [conn.key for conn in conns]
        with self.lock:
            batch = next(self.serial)
            for conn in conns:
                self.pending[conn.key] = (dp, vip, conn, batch)
            start = self.clock()
            if now:
                heapq.heappush(self.heap, (start, next(self.serial), -1, start, batch, keys))
            heapq.heappush(self.heap, (start + self.delays_s[0], next(self.serial), 0, start, batch, keys))
        self.wakeup.set()

    def done(self, key: tuple) -> bool:
        """The connection was reset: no more challenges for it. True if it was pending."""
        with self.lock:
            return self.pending.pop(key, None) is not None

    def due(self) -> list[tuple[Any, Any, Any]]:
        """Pop what is due now and reschedule its next attempt (the thread's one step)."""
        out = []
        now = self.clock()
        with self.lock:
            while self.heap and self.heap[0][0] <= now:
                _, _, attempt, start, batch, keys = heapq.heappop(self.heap)
                live = [k for k in keys if k in self.pending]
                out += [self.pending[k][:3] for k in live]
                if attempt < 0 or not live:
                    continue
                if attempt + 1 < len(self.delays_s):
                    due = start + self.delays_s[attempt + 1]
                    heapq.heappush(self.heap, (due, next(self.serial), attempt + 1, start, batch, live))
                else:  # the batch's schedule is over: give up on its connections not added again since
                    for k in live:
                        if self.pending[k][3] == batch:
                            del self.pending[k]
        return out

    def wait_time(self) -> float | None:
        with self.lock:
            return max(0.0, self.heap[0][0] - self.clock()) if self.heap else None

    def run(self) -> None:
        while True:
            self.wakeup.wait(self.wait_time())
            self.wakeup.clear()
            due = self.due()
            if due:
                self.send(due)
