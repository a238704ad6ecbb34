"""The lab's own cost: how much CPU each process used over the measurement window.

Every process the lab started that ran during the window counts for the CPU it used
inside it, plus ovs-vswitchd (which forwards every packet of the userspace datapath) and
the runner itself; one ``process_cpu`` event per process. The metrics divide by the
successful operations of the window: CPU ms per operation, per kind of process, is where
a lighter lab has to save.

* Lived through the window: user + system time (``/proc/<pid>/stat``) at its close
  minus at its opening.
* Died in the window (a powered-off CAS, a crashed controller, a client that crashed):
  counted up to its death, from the same counter read on its zombie: the lab reaps its
  processes in one place (``LabProcess.alive``), which first asks the kernel whether the
  child ended without reaping it (``waitid(WNOWAIT)``) and then reads its
  ``/proc/<pid>/stat``. A zombie cannot run again, so that figure is its final one, and
  it is the counter read at the opening, so the difference is exact to the clock tick
  of each read. Why not the alternatives: a read just before the lab kills a process
  misses what it does between the read and its death and every process that dies on its
  own; ``os.wait4``'s rusage adds, besides the process's own time, the CPU of every child
  it ever reaped (the kernel's RUSAGE_BOTH), which the opening read does not hold.
* Started in the window (a restarted controller, with a new pid): counted from its start,
  i.e. all its CPU. A process that ended before the window opened is not counted.

Each process counts under its program's kind (``labcommon.programs``: the record it was
started from says it; nothing is read back from its name).

Only a process's own time counts, never its reaped children's (``cutime``): the runner
reaps the lab's processes, so counting them would count each twice.
"""

from __future__ import annotations

import os
from pathlib import Path

from caslab.base.procstat import process_cpu_ms
from labcommon.catalogue import PROCESS_CPU

OVS, RUNNER = "ovs", "runner"  # the two processes the lab did not start but counts


def ovs_pid() -> int | None:
    try:
        return int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


class CostMeter:
    """CPU of the lab's processes between ``start`` and ``stop``."""

    def __init__(self, lab):
        self.lab = lab
        self.before: dict[object, float] = {}  # LabProcess -> its CPU when the window opened
        self.outside: dict[tuple[str, int], float] = {}  # (name, pid) of ovs-vswitchd and the runner
        self.started_ns = 0

    @staticmethod
    def _outside_pids() -> list[tuple[str, int]]:
        ovs = ovs_pid()
        return ([("ovs-vswitchd", ovs)] if ovs else []) + [(RUNNER, os.getpid())]

    def start(self, now_ns: int) -> None:
        self.started_ns = now_ns
        self.before = {proc: value for proc in list(self.lab.processes)
                       if proc.started_ns < now_ns and proc.alive() and (value := proc.cpu_ms()) is not None}
        self.outside = {key: value for key in self._outside_pids() if (value := process_cpu_ms(key[1])) is not None}

    def stop(self, log, now_ns: int) -> None:
        rows = []
        for proc in list(self.lab.processes):
            ended = not proc.alive()  # reaps it if it just ended, keeping its final CPU
            if proc in self.before:
                before, started = self.before[proc], False
            elif proc.started_ns >= self.started_ns:
                before, started = 0.0, True
            else:
                continue  # ended before the window opened
            after = proc.cpu_ms()
            if after is not None:
                rows.append((proc.name, proc.pid, proc.kind, after - before, started, ended))
        for (name, pid), before in self.outside.items():
            after = process_cpu_ms(pid)
            if after is not None:
                rows.append((name, pid, OVS if name == "ovs-vswitchd" else RUNNER, after - before, False, False))
        window_ms = round((now_ns - self.started_ns) / 1e6, 1)
        for name, pid, kind, used, started, ended in sorted(rows):
            log.emit(PROCESS_CPU, name=name, pid=pid, kind=kind, cpu_ms=round(used, 1),
                     window_ms=window_ms, started_in_window=started, ended_in_window=ended)
