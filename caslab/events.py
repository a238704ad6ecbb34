"""JSON-lines event log shared by every process the lab starts.

All Mininet hosts share one kernel, so CLOCK_MONOTONIC agrees across hosts: every event
carries ``ts`` in monotonic nanoseconds and that is what makes cross-host timing exact.
The event log is the single source of truth for metrics and reports.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterable, Iterator


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds (the lab's one clock)."""
    return time.monotonic_ns()


class EventLog:
    """Append-only JSON-lines writer; each line is flushed so a crash keeps what it had."""

    def __init__(self, path: str | os.PathLike, source: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, ev: str, ts: int | None = None, **fields: Any) -> dict:
        record = {"ts": now_ns() if ts is None else ts, "src": self.source, "ev": ev, **fields}
        line = json.dumps(record, separators=(",", ":"), sort_keys=True)
        with self._lock:
            self._file.write(line + "\n")
        return record

    def close(self) -> None:
        with self._lock:
            if not self._file.closed:
                self._file.close()

    def __enter__(self) -> "EventLog":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class NullLog:
    """Stands in for EventLog where a process runs without a log file."""

    source = "null"

    def emit(self, ev: str, ts: int | None = None, **fields: Any) -> dict:
        return {"ts": now_ns() if ts is None else ts, "ev": ev, **fields}

    def close(self) -> None:
        pass


def read_events(path: str | os.PathLike) -> Iterator[dict]:
    """Yield events from one JSON-lines file, skipping a torn last line."""
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                yield json.loads(line)
            except json.JSONDecodeError:
                continue


def merge_event_files(paths: Iterable[str | os.PathLike], out: str | os.PathLike) -> int:
    """Merge per-process logs into one file ordered by (ts, src); returns the event count."""
    events = [ev for path in paths for ev in read_events(path)]
    events.sort(key=lambda ev: (ev["ts"], ev.get("src", ""), json.dumps(ev, sort_keys=True)))
    with open(out, "w", encoding="utf-8") as handle:
        for ev in events:
            handle.write(json.dumps(ev, separators=(",", ":"), sort_keys=True) + "\n")
    return len(events)
