"""``caslab cleanup``: remove what a hard-killed run (SIGKILL, power loss) left behind.

Only the lab's own things, found in the registry every live lab keeps under /run/caslab
(caslab/network/registry.py), wherever its results went: the processes it recorded (checked
against their recorded start time, so a recycled pid is never hit), the bridge and
interface names of its plan, and its conntrack zones. A lab whose runner is still alive
is refused: cleanup never tears down a running experiment. While one runs, a dead lab's
processes are still ended (each is checked by pid and start time), but no bridge,
interface, conntrack zone or Open vSwitch SSL configuration is touched: the names are fixed (``clab<k>``), so the live
lab owns them now. Never Mininet's global clean-up, never a kill by process name.
"""

from __future__ import annotations

import os
import shutil
import signal

from caslab.base import system
from caslab.network import machine
from caslab.network.machine import LabLock, flush_lab_conntrack, sweep_lab_names
from caslab.base.waits import LabError
from caslab.network.ofchannel import ChannelError, restore_ssl
from caslab.network.registry import live_labs, same_process
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


def _running(lab: dict) -> bool:
    runner = lab.get("runner_pid")
    return isinstance(runner, int) and same_process(runner, lab.get("runner_start"))


def sweep_dead_labs(say=print) -> int:
    """Remove what dead labs left; the caller holds the lab lock, so no lab runs now.

    ``LabNetwork.build`` calls this before it builds: a run killed by SIGKILL or a
    machine restart leaves its bridges in Open vSwitch's persistent database (and, after
    a reboot, no registry entry at all), and the next run should not trip over them."""
    found = 0
    for folder, lab, procs in live_labs():
        if _running(lab):
            continue
        found += _end_dead_lab(folder, lab, procs, sweep_names=True, say=say)
    every_site = [f"{SWITCH_PREFIX}{i}" for i in range(1, MAX_SITES + 1)]
    for name in sweep_lab_names(every_site + [f"{bridge}b" for bridge in every_site]):  # + back-end bridges
        say(f"removed {name}")
        found += 1
    try:
        if system.ovs_running() and restore_ssl():
            say("restored the Open vSwitch SSL configuration a dead run had replaced")
            found += 1
    except ChannelError as exc:
        say(f"could not restore Open vSwitch's SSL configuration: {exc}")
    return found


def _end_dead_lab(folder, lab: dict, procs: list[dict], sweep_names: bool, say=print) -> int:
    found = 0
    for proc in sorted(procs, key=lambda p: (p.get("host") or "", p.get("name", ""))):
        if _kill(proc):
            say(f"killed {proc.get('name')} (pid {proc['pid']})")
            found += 1
    if sweep_names:
        bridges = [b for b in lab.get("bridges", []) if isinstance(b, str) and b.startswith(SWITCH_PREFIX)]
        for name in sweep_lab_names(bridges):
            say(f"removed {name}")
            found += 1
        if lab.get("datapath"):
            flush_lab_conntrack(lab["datapath"], len(bridges) or MAX_SITES)
    shutil.rmtree(folder, ignore_errors=True)
    return found


def run() -> int:
    """Refuse while a lab runs; otherwise sweep, holding the lab lock throughout, so a run
    that starts meanwhile waits instead of losing its new bridges to the sweep."""
    labs = live_labs()
    running = [lab for _, lab, _ in labs if _running(lab)]
    for lab in running:
        print(f"refused: the run writing {lab.get('run_dir')} is still running (pid {lab['runner_pid']}); "
              f"stop it first (Ctrl-C or kill -TERM {lab['runner_pid']})")
    lock = LabLock(wait_s=0)
    if not running:
        try:
            lock.acquire()
        except LabError:
            print(f"refused: a lab holds {machine.LOCK_PATH} right now")
            running = [{}]
    try:
        if running:
            found = sum(_end_dead_lab(folder, lab, procs, sweep_names=False)
                        for folder, lab, procs in labs if not _running(lab))
            print("kept the lab's bridges and interfaces: the running lab owns those names now")
        else:
            found = sweep_dead_labs()
    finally:
        lock.release()
    print("nothing of the lab was left" if not found else f"removed {found} leftover(s)")
    return 1 if running else 0
