"""``caslab cleanup``: remove what a hard-killed run (SIGKILL, power loss) left behind.

Only the lab's own things, found in the registry every live lab keeps under /run/caslab
(caslab/registry.py), wherever its results went: the processes it recorded (checked
against their recorded start time, so a recycled pid is never hit), the bridge and
interface names of its plan, and its conntrack zones. A lab whose runner is still alive
is refused: cleanup never tears down a running experiment. Never Mininet's global
clean-up, never a kill by process name.
"""

from __future__ import annotations

import os
import shutil
import signal

from caslab.netlab import flush_lab_conntrack, sweep_lab_names
from caslab.registry import live_labs, same_process
from topologies.plan import MAX_SITES, SWITCH_PREFIX


def _kill(proc: dict) -> bool:
    pid = proc.get("pid")
    if not isinstance(pid, int) or not same_process(pid, proc.get("start")):
        return False  # gone, or the pid now belongs to another process
    for kill in (lambda: os.killpg(pid, signal.SIGKILL), lambda: os.kill(pid, signal.SIGKILL)):
        try:
            kill()
            return True
        except (ProcessLookupError, PermissionError):
            continue
    return False


def run() -> int:
    found, refused = 0, 0
    for folder, lab, procs in live_labs():
        runner = lab.get("runner_pid")
        if isinstance(runner, int) and same_process(runner, lab.get("runner_start")):
            print(f"refused: the run writing {lab.get('run_dir')} is still running (pid {runner}); "
                  f"stop it first (Ctrl-C or kill -TERM {runner})")
            refused += 1
            continue
        for proc in sorted(procs, key=lambda p: (p.get("host") or "", p.get("name", ""))):
            if _kill(proc):
                print(f"killed {proc.get('name')} (pid {proc['pid']})")
                found += 1
        bridges = [b for b in lab.get("bridges", []) if isinstance(b, str) and b.startswith(SWITCH_PREFIX)]
        for name in sweep_lab_names(bridges):
            print(f"removed {name}")
            found += 1
        if lab.get("datapath"):
            flush_lab_conntrack(lab["datapath"], len(bridges) or MAX_SITES)
        shutil.rmtree(folder, ignore_errors=True)
    if not refused:
        for name in sweep_lab_names([f"{SWITCH_PREFIX}{i}" for i in range(1, MAX_SITES + 1)]):
            print(f"removed {name}")
            found += 1
    print("nothing of the lab was left" if not found else f"removed {found} leftover(s)")
    return 1 if refused else 0
