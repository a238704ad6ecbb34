"""JSON-lines event log shared by every process the lab starts.

All Mininet hosts share one kernel, so CLOCK_MONOTONIC agrees across hosts: every event
carries ``ts`` in monotonic nanoseconds and that is what makes cross-host timing exact.
The event log is the single source of truth for metrics and reports. Events are the
constants of ``labcommon.catalogue``; with ``CASLAB_STRICT_EVENTS=1`` (the test suite
sets it) a record that does not match its declaration raises at once.
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any, Iterator

from labcommon.catalogue import EventType


class EventSchemaError(ValueError):
    """A producer emitted a record its catalogue entry does not describe."""


def now_ns() -> int:
    """CLOCK_MONOTONIC in nanoseconds (the lab's one clock)."""
    return time.monotonic_ns()


def _strict() -> bool:
    return os.environ.get("CASLAB_STRICT_EVENTS") == "1"


def make_record(source: str, event: EventType, ts: int | None, fields: dict[str, Any]) -> dict[str, Any]:
    if not isinstance(event, EventType):
        raise TypeError(f"emit() takes an event from labcommon.catalogue, not {event!r}")
    record = {"ts": now_ns() if ts is None else ts, "src": source, "ev": str(event), **fields}
    if _strict():
        wrong = event.problems(record)
        if wrong:
            raise EventSchemaError("; ".join(wrong))
    return record


class EventLog:
    """Append-only JSON-lines writer; each line is flushed so a crash keeps what it had."""

    def __init__(self, path: str | os.PathLike, source: str):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.source = source
        self._file = open(self.path, "a", buffering=1, encoding="utf-8")
        self._lock = threading.Lock()

    def emit(self, event: EventType, ts: int | None = None, **fields: Any) -> dict:
        record = make_record(self.source, event, ts, fields)
        line = json.dumps(record, separators=(",", ":"), sort_keys=True)
        with self._lock:
            if not self._file.closed:
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

    def emit(self, event: EventType, ts: int | None = None, **fields: Any) -> dict:
        return make_record(self.source, event, ts, fields)

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
