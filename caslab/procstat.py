"""The kernel's CPU counters, parsed: the machine's (``/proc/stat``) and a process's
(``/proc/<pid>/stat``). Pure parsing is kept apart from reading so tests can feed it
real lines."""

from __future__ import annotations

import os
from pathlib import Path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def machine_times(line: str) -> tuple[int, int]:
    """(idle, total) clock ticks from the ``cpu`` line of /proc/stat."""
    values = [int(v) for v in line.split()[1:]]
    return values[3] + values[4], sum(values)


def idle_pct(earlier: tuple[int, int], later: tuple[int, int]) -> float | None:
    """Idle share of all cores between two ``machine_times`` readings (None: no tick passed)."""
    total = later[1] - earlier[1]
    if total <= 0:
        return None
    return 100.0 * (later[0] - earlier[0]) / total


def read_machine_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        return machine_times(handle.readline())


def process_cpu_ms(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), in ms; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS  # utime + stime
