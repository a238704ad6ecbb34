"""``caslab soak N [SPEC]``: N short runs back to back, each followed by a check that
the lab left nothing and leaks nothing.

After every run (pass or fail): no bridge or interface of the lab's names, no Mininet
shell and no recorded process alive, no registry entry left, no conntrack entry in the
lab's zones, and the long-lived processes' open files and memory (this process, and
ovs-vswitchd which the lab drives) within ``BOUNDS`` of what they were after the first
run. The first run is the baseline: caches, imports and OVS's per-datapath state settle
there. Output: one line per run, then the growth figures.
"""

from __future__ import annotations

import datetime as dt
import os
import subprocess
from pathlib import Path

from caslab.run import runner

from caslab.spec import experiment as spec_mod

from caslab.base import system
from caslab.network.machine import LabLock, existing_bridges
from caslab.base.waits import LabError
from caslab.network.registry import live_labs
from controllers.nlb_flows import zone_of
from topologies.plan import MAX_SITES, SWITCH_PREFIX

BOUNDS = {"runner_fds": 16, "runner_rss_mb": 64, "ovs_fds": 32, "ovs_rss_mb": 64}


def fds(pid: int) -> int:
    try:
        return len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return -1


def rss_mb(pid: int) -> float:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) / 1024, 1)
    except OSError:
        pass
    return -1.0


def ovs_pid() -> int | None:
    try:
        return int(Path("/var/run/openvswitch/ovs-vswitchd.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def residue() -> list[str]:
    """What of the lab is still there."""
    found = [f"bridge {b}" for b in existing_bridges() if b.startswith(SWITCH_PREFIX)]
    links = system.run(["ip", "-o", "link", "show"]).stdout
    found += [f"link {line.split(':')[1].strip().split('@')[0]}" for line in links.splitlines()
              if line.split(":")[1].strip().startswith(SWITCH_PREFIX)]
    found += [f"registry {folder.name}" for folder, _, _ in live_labs()]
    for pid in (p for p in os.listdir("/proc") if p.isdigit() and int(p) != os.getpid()):
        try:
            cmd = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if cmd.startswith("bash --norc --noediting -is mininet:"):
            found.append(f"process {pid}: {cmd[:60]}")
    for datapath in ("netdev@ovs-netdev", "system@ovs-system"):
        for index in range(1, MAX_SITES + 1):
            res = subprocess.run(["ovs-appctl", "dpctl/dump-conntrack", datapath, f"zone={zone_of(index)}"],
                                 capture_output=True, text=True)
            entries = [line for line in res.stdout.splitlines() if line.strip()] if res.returncode == 0 else []
            if entries:
                found.append(f"{len(entries)} conntrack entries in zone {zone_of(index)} of {datapath}")
    return found


def sample() -> dict[str, float]:
    me, ovs = os.getpid(), ovs_pid()
    return {"runner_fds": fds(me), "runner_rss_mb": rss_mb(me),
            "ovs_fds": fds(ovs) if ovs else -1, "ovs_rss_mb": rss_mb(ovs) if ovs else -1}


def main_cli(count: int, spec_name: str, overrides: list[str], out: str | None) -> int:
    spec, path = spec_mod.load(spec_name, overrides)
    base = Path(out) if out else runner.results_dir() / f"soak-{dt.datetime.now():%Y%m%d-%H%M%S}"
    with LabLock():  # no other lab may appear between a run and its residue check
        return soak(count, spec, path, base)


def soak(count: int, spec: dict, path: Path, base: Path) -> int:
    first, failures = None, []
    for i in range(1, count + 1):
        outcome = "ok"
        try:
            runner.run(spec, path, base / f"run-{i:03d}")
        except (LabError, Exception) as exc:  # noqa: BLE001 - a failed run is counted, the soak goes on
            outcome = f"run failed: {type(exc).__name__}: {exc}"[:160]
        left = residue()
        now = sample()
        first = first or now
        growth = {k: round(now[k] - first[k], 1) for k in BOUNDS}
        over = [f"{k} +{v}" for k, v in growth.items() if v > BOUNDS[k]]
        problems = ([outcome] if outcome != "ok" else []) + left + over
        if problems:
            failures.append((i, problems))
        print(f"run {i:3d}/{count}: {'ok' if not problems else 'FAIL ' + '; '.join(problems)}  "
              f"runner fds {now['runner_fds']} rss {now['runner_rss_mb']} MB, "
              f"ovs-vswitchd fds {now['ovs_fds']} rss {now['ovs_rss_mb']} MB", flush=True)
        if left:  # this process holds the lab lock: no lab runs, whatever is left is the dead run's
            from caslab.network import cleanup

            cleanup.sweep_dead_labs()
    last = sample()
    print(f"\n{count - len(failures)} of {count} runs passed; growth from run 1 to run {count}: "
          + ", ".join(f"{k} {last[k] - first[k]:+.1f} (bound {BOUNDS[k]})" for k in BOUNDS))
    return 0 if not failures else 1
