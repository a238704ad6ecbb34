"""``caslab doctor``: can this machine run the lab? Every check printed, one verdict."""

from __future__ import annotations

import shutil

from caslab.base import system
from caslab.base.system import Check


def checks() -> list[Check]:
    out = [Check("root", system.is_root(), "running as root" if system.is_root() else "run as root (sudo)")]
    database, daemon = system.ovs_running(), system.vswitchd_answers()
    if database and daemon:
        detail = "ovsdb-server and ovs-vswitchd answer"
    elif database:
        detail = ("ovs-vswitchd does not answer (only its database server does): start it with "
                  "/usr/share/openvswitch/scripts/ovs-ctl start")
    else:
        detail = "Open vSwitch is not running: start it with /usr/share/openvswitch/scripts/ovs-ctl start"
    out.append(Check("openvswitch", database and daemon, detail))
    datapath = system.preferred_datapath()
    out.append(Check("datapath", True, f"{datapath} ({'kernel module loaded' if datapath == 'kernel' else 'no openvswitch kernel module: userspace netdev datapath'})"))
    mnexec = shutil.which("mnexec")
    out.append(Check("mnexec", bool(mnexec), mnexec or "missing: apt-get install mininet"))
    for tool in ("ethtool", "ip", "tcpdump"):
        path = shutil.which(tool)
        out.append(Check(tool, bool(path), path or f"missing: apt-get install {'iproute2' if tool == 'ip' else tool}"))
    for tool, package in (("haproxy", "haproxy"), ("dnsmasq", "dnsmasq-base"), ("nft", "nftables")):
        path = shutil.which(tool) or shutil.which(f"/usr/sbin/{tool}")
        out.append(Check(tool, bool(path), path or f"missing: apt-get install {package} (needed by its HA mode)",
                         required=False))
    version = system.framework_version()
    out.append(Check("controller framework", bool(version), f"os-ken {version}" if version else "os-ken missing: pip install os-ken"))
    try:
        import mininet.net  # noqa: F401
        out.append(Check("mininet (python)", True, "importable"))
    except Exception as exc:  # noqa: BLE001 - report whatever breaks the import
        out.append(Check("mininet (python)", False, f"import failed: {exc}"))
    netem = system.netem_available()
    out.append(Check("netem", netem, "link delay/loss available" if netem else
                     "sch_netem absent: link delay and loss are skipped (bandwidth limits still work)", required=False))
    out.append(Check("checksum offload", shutil.which("ethtool") is not None,
                     "TX checksum offload is turned off on every lab veth at start (userspace datapath needs it)"))
    return out


def run() -> int:
    results = checks()
    width = max(len(c.name) for c in results)
    for check in results:
        mark = "ok  " if check.ok else ("FAIL" if check.required else "warn")
        print(f"[{mark}] {check.name.ljust(width)}  {check.detail}")
    failed = [c.name for c in results if c.required and not c.ok]
    if failed:
        print(f"\nThe lab cannot run: fix {', '.join(failed)} (or run ./lab.sh setup as root).")
        return 1
    print("\nThe lab can run.")
    return 0
