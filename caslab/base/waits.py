"""Waiting for the lab: a condition polled to a deadline, and processes' event logs read
as they grow until the events a start-up waits for have all been seen.

Below the run (``caslab.run.scenario``) and the modes, which both wait; it knows nothing
of either. A wait that times out raises ``LabError``, naming what never happened.
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Callable, Iterable


class LabError(Exception):
    """The lab cannot run (missing tool, leftover bridge, network not converging)."""


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str, interval_s: float = 0.05,
               required: bool = True) -> bool:
    """Poll until the predicate holds; on timeout raise LabError, or return False when the
    wait is not ``required``."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval_s)
    if not required:
        return False
    raise LabError(f"timed out after {timeout_s:.0f} s waiting for {what}")


class LogTail:
    """Reads processes' event logs as they grow (each byte once), for start-up waits."""

    def __init__(self, raw_dir: Path, sources: list[str]):
        self.paths = {source: raw_dir / f"{source}.jsonl" for source in sources}
        self.offsets = dict.fromkeys(sources, 0)

    def new_events(self):
        for source, path in self.paths.items():
            if not path.exists():
                continue
            with open(path, "rb") as handle:
                handle.seek(self.offsets[source])
                data = handle.read()
            complete = data[:data.rfind(b"\n") + 1]
            self.offsets[source] += len(complete)
            for line in complete.splitlines():
                try:
                    yield source, json.loads(line)
                except ValueError:
                    continue


def wait_for_events(tail: LogTail, want: int, key: Callable[[str, dict], str | None], timeout_s: float,
                    what: str, required: bool = True) -> set[str]:
    """Poll the logs until ``want`` distinct keys were seen (key returns None to skip);
    returns the keys seen (fewer only when the wait was not ``required``)."""
    seen: set[str] = set()

    def enough() -> bool:
        for source, ev in tail.new_events():
            k = key(source, ev)
            if k is not None:
                seen.add(k)
        return len(seen) >= want

    wait_until(enough, timeout_s, what, interval_s=0.1, required=required)
    return seen


def wait_ready(raw_dir: Path, procs: Iterable, timeout_s: float, what: str) -> None:
    """Until every process has logged its program's ready event (``labcommon.programs``:
    the record says which); a process whose program says nothing is not waited for."""
    ready = {proc.name: proc.program.ready for proc in procs if proc.program.ready is not None}
    wait_for_events(LogTail(raw_dir, sorted(ready)), len(ready),
                    lambda source, ev: source if ev.get("ev") == ready[source] else None, timeout_s, what)


def session_ready(programs: Iterable) -> Callable[[str, dict], str | None]:
    """The predicate ``wait_for_events`` counts sessions with: an event one of the programs'
    records names as a session's ready (``Program.session_ready``) gives its session."""
    ready = {(event, ok) for program in programs for event, ok in program.session_ready}

    def session_of(source: str, ev: dict) -> str | None:
        return ev.get("session") if (ev.get("ev"), bool(ev.get("ok"))) in ready else None
    return session_of
