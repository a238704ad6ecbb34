"""``caslab cleanup``: remove what a hard-killed run (SIGKILL, power loss) left behind.

Only the lab's own things: the pids a run recorded in ``pids.json`` (checked against
their command line so a recycled pid is never hit) and the bridge and interface names of
the lab's plan. Never Mininet's global clean-up, never a kill by process name.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

from caslab.netlab import sweep_lab_names
from topologies.plan import MAX_SITES, SWITCH_PREFIX

MARKERS = ("mininet:", "controllers.", "roles.", "traffic.", "haproxy", "dnsmasq", "tcpdump", "caslab")


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


def run(results: Path) -> int:
    found = 0
    for pids_file in sorted(results.glob("*/raw/*/pids.json")):
        record = json.loads(pids_file.read_text())
        for name, pid in sorted({**record.get("processes", {}), **record.get("hosts", {})}.items()):
            cmd = _cmdline(pid)
            if cmd and any(marker in cmd for marker in MARKERS):
                try:
                    os.killpg(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    try:
                        os.kill(pid, signal.SIGKILL)
                    except ProcessLookupError:
                        pass
                print(f"killed {name} (pid {pid})")
                found += 1
        for name in sweep_lab_names(record.get("bridges", [])):
            print(f"removed {name}")
            found += 1
        pids_file.unlink()
    for name in sweep_lab_names([f"{SWITCH_PREFIX}{i}" for i in range(1, MAX_SITES + 1)]):
        print(f"removed {name}")
        found += 1
    print("nothing of the lab was left" if not found else f"removed {found} leftover(s)")
    return 0
