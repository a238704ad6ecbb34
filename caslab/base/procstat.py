"""The kernel's CPU counters, parsed: the machine's (``/proc/stat``, ``/proc/pressure/cpu``)
and a process's (``/proc/<pid>/stat``). Pure parsing is kept apart from reading so tests can feed it
real lines."""

from __future__ import annotations

import os
from pathlib import Path

TICK_MS = 1000 / os.sysconf("SC_CLK_TCK")


def machine_times(line: str) -> tuple[int, int]:
    """(idle, total) clock ticks from the ``cpu`` line of /proc/stat.

    Its columns are user nice system idle iowait irq softirq steal guest guest_nice
    (proc(5); older kernels stop earlier). The kernel already counts ``guest`` inside
    ``user`` and ``guest_nice`` inside ``nice``, so the total is the sum of the first
    eight only: adding the last two would count a virtual machine's time twice and show
    a host running guests as busier than it is.

    Idle is ``idle + iowait``: iowait is time a core had nothing to run while some task
    waited for a disk, so the core was free for the lab's processes (the fidelity check
    asks whether the emulation had spare CPU, not whether anything waited for I/O).
    """
    fields = line.split()
    try:
        values = [int(v) for v in fields[1:]]
    except ValueError:
        values = []
    if not fields or fields[0] != "cpu" or len(values) < 4:
        raise ValueError(f"/proc/stat: expected the 'cpu' line with at least 4 tick counts "
                         f"(user nice system idle ...), got {line.strip()[:80]!r}")
    ticks = values[:8]  # user .. steal; guest and guest_nice are already in user and nice
    return sum(ticks[3:5]), sum(ticks)


def idle_pct(earlier: tuple[int, int], later: tuple[int, int]) -> float | None:
    """Idle share of all cores between two ``machine_times`` readings (None: no tick passed)."""
    total = later[1] - earlier[1]
    if total <= 0:
        return None
    return 100.0 * (later[0] - earlier[0]) / total


def read_machine_times() -> tuple[int, int]:
    with open("/proc/stat") as handle:
        return machine_times(handle.readline())


def cpu_pressure_us(text: str) -> int:
    """Microseconds so far in which some runnable task waited for a CPU: the ``total`` of
    the ``some`` line of /proc/pressure/cpu (the kernel's pressure stall information)."""
    for line in text.splitlines():
        fields = dict(part.split("=", 1) for part in line.split()[1:] if "=" in part)
        if line.startswith("some ") and fields.get("total", "").isdigit():
            return int(fields["total"])
    raise ValueError(f"/proc/pressure/cpu: expected a 'some ... total=<us>' line, got {text.strip()[:80]!r}")


def read_cpu_pressure_us() -> int | None:
    """The CPU pressure counter, or None where the kernel has no PSI (or it is switched off)."""
    try:
        with open("/proc/pressure/cpu") as handle:
            return cpu_pressure_us(handle.read())
    except (OSError, ValueError):
        return None


def process_cpu_ms(pid: int) -> float | None:
    """User + system CPU of a process (all its threads), in ms; None when it is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return (int(fields[11]) + int(fields[12])) * TICK_MS  # utime + stime
