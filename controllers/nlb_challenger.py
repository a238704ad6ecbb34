"""Challenges on a schedule, from one thread: until each connection of a dead CAS has
been reset, its client is sent a challenge segment (see SdnNlb.challenge) at each delay
of the schedule. A connection leaves the schedule when the NLB resets it (``done``).

Why a schedule: the switch applies a flow change to its cached datapath flows
asynchronously (a few ms, tens under load), and until then a client's answer may still
take the dead CAS's path and be lost; so early retries are dense and later ones sparse.
Why one thread: a timer thread per retry costs more than the retries themselves and
competes with the packet-ins that carry the answers.
"""

from __future__ import annotations

import heapq
import itertools
import threading
import time
from typing import Any, Callable

Send = Callable[[Any, Any, Any], None]  # (datapath, vip, connection) -> None


class Challenger:
    def __init__(self, send: Send, delays_s: list[float], clock: Callable[[], float] = time.monotonic):
        self.send = send
        self.delays_s = sorted(delays_s)
        self.clock = clock
        self.pending: dict[tuple, tuple[Any, Any, Any]] = {}  # key -> (dp, vip, connection)
        self.heap: list[tuple[float, int, int, float, list[tuple]]] = []  # (due, serial, attempt, start, keys)
        self.serial = itertools.count()
        self.cond = threading.Condition()

    def add(self, dp, vip, conns: list, now: bool = True) -> None:
        """Challenge these connections (at once if ``now``) and then on the schedule."""
        if not conns:
            return
        keys = [conn.key for conn in conns]
        with self.cond:
            for conn in conns:
                self.pending[conn.key] = (dp, vip, conn)
            start = self.clock()
            if now:
                heapq.heappush(self.heap, (start, next(self.serial), -1, start, keys))
            heapq.heappush(self.heap, (start + self.delays_s[0], next(self.serial), 0, start, keys))
            self.cond.notify()

    def done(self, key: tuple) -> bool:
        """The connection was reset: no more challenges for it. True if it was pending."""
        with self.cond:
            return self.pending.pop(key, None) is not None

    def due(self) -> list[tuple[Any, Any, Any]]:
        """Pop what is due now; reschedule its next attempt. (The thread's one step.)"""
        out = []
        now = self.clock()
        with self.cond:
            while self.heap and self.heap[0][0] <= now:
                _, _, attempt, start, keys = heapq.heappop(self.heap)
                live = [k for k in keys if k in self.pending]
                out += [self.pending[k] for k in live]
                if attempt < 0 or not live:
                    continue
                if attempt + 1 < len(self.delays_s):
                    due = start + self.delays_s[attempt + 1]
                    heapq.heappush(self.heap, (due, next(self.serial), attempt + 1, start, live))
                else:
                    for k in live:  # the schedule is over: give up on it
                        self.pending.pop(k, None)
        return out

    def wait_time(self) -> float | None:
        with self.cond:
            return max(0.0, self.heap[0][0] - self.clock()) if self.heap else None

    def run(self) -> None:
        while True:
            with self.cond:
                while not self.heap:
                    self.cond.wait()
                delay = max(0.0, self.heap[0][0] - self.clock())
                if delay > 0:
                    self.cond.wait(delay)
            for dp, vip, conn in self.due():
                self.send(dp, vip, conn)
