"""Facts about this machine that decide how the lab runs: OVS datapath, mnexec, netem.

Kept apart from the network code so ``caslab doctor`` and the runner ask the same
questions the same way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from dataclasses import dataclass

from caslab.base import safefs

OVS_CTL = "/usr/share/openvswitch/scripts/ovs-ctl"


@dataclass
class Check:
    name: str
    ok: bool
    detail: str
    required: bool = True


def run(argv: list[str], timeout: float = 10) -> subprocess.CompletedProcess:
    return subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)


def is_root() -> bool:
    return os.geteuid() == 0


def ovs_running() -> bool:
    if not shutil.which("ovs-vsctl"):
        return False
    try:
        return run(["ovs-vsctl", "--timeout=3", "show"]).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def vswitchd_answers() -> bool:
    """ovs-vswitchd itself answers (``ovs_running`` asks only its database server)."""
    if not shutil.which("ovs-appctl"):
        return False
    try:
        return run(["ovs-appctl", "--timeout=3", "-t", "ovs-vswitchd", "version"]).returncode == 0
    except subprocess.TimeoutExpired:
        return False


def vswitchd_uid() -> int:
    """The account ovs-vswitchd runs as (its sockets are the only ones the controller's
    OpenFlow listener admits); root where its pid file cannot be read."""
    for folder in ("/run/openvswitch", "/var/run/openvswitch"):
        try:
            with open(os.path.join(folder, "ovs-vswitchd.pid")) as handle:
                pid = int(handle.read().strip())
            return os.stat(f"/proc/{pid}").st_uid
        except (OSError, ValueError):
            continue
    return 0


def kernel_datapath_available() -> bool:
    """True where the openvswitch kernel module is loaded (a VM); the sandbox has none."""
    return os.path.isdir("/sys/module/openvswitch")


def preferred_datapath() -> str:
    """'kernel' where the module exists (faster), else OVS's userspace 'user' datapath."""
    forced = os.environ.get("CASLAB_DATAPATH")
    if forced in ("kernel", "user"):
        return forced
    return "kernel" if kernel_datapath_available() else "user"


def ovs_interface_types() -> set[str]:
    """The port types this Open vSwitch supports (``iface_types``: afxdp-nonpmd where it
    was built with AF_XDP)."""
    res = run(["ovs-vsctl", "--timeout=5", "get", "Open_vSwitch", ".", "iface_types"])
    return {t.strip() for t in res.stdout.strip().strip("[]").split(",") if t.strip()} if res.returncode == 0 else set()


def netem_available() -> bool:
    """sch_netem gives link delay and loss; this sandbox's kernel has none."""
    if os.path.isdir("/sys/module/sch_netem"):
        return True
    modules = f"/lib/modules/{os.uname().release}"
    if not os.path.isdir(modules):
        return False
    found = run(["find", modules, "-name", "sch_netem*"])
    return bool(found.stdout.strip())


def set_link_state(ifname: str, up: bool) -> None:
    """Set an interface of this namespace up or down with one rtnetlink message (no
    process to start: a poweroff's switch-side link goes down in microseconds)."""
    import socket
    import struct

    index = socket.if_nametoindex(ifname)
    iff_up = 0x1
    ifinfo = struct.pack("=BxHiII", socket.AF_UNSPEC, 0, index, iff_up if up else 0, iff_up)
    header = struct.pack("=IHHII", 16 + len(ifinfo), 16, 0x1 | 0x4, 1, 0)  # RTM_NEWLINK, REQUEST|ACK
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, 0) as sock:  # NETLINK_ROUTE
        sock.sendto(header + ifinfo, (0, 0))
        reply = sock.recv(4096)
    error = struct.unpack_from("=i", reply, 16)[0] if struct.unpack_from("=H", reply, 4)[0] == 2 else 0
    if error:
        raise OSError(-error, f"setting {ifname} {'up' if up else 'down'}: {os.strerror(-error)}")


def framework_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("os-ken")
    except Exception:  # noqa: BLE001 - any failure means "not installed"
        return None


def platform_info() -> dict[str, str]:
    """The OS the run ran on (from /etc/os-release), for the manifest."""
    info = {"kernel": os.uname().release, "machine": os.uname().machine}
    try:
        for line in open("/etc/os-release", encoding="utf-8"):
            key, _, value = line.strip().partition("=")
            if key in ("PRETTY_NAME", "ID", "VERSION_ID"):
                info[key.lower()] = value.strip('"')
    except OSError:
        pass
    return info


def git_state(repo: str) -> dict[str, object]:
    """The commit the lab ran from and whether its tree had uncommitted changes."""
    if not shutil.which("git"):
        return {"commit": None, "dirty": None}
    head = run(["git", "-C", repo, "rev-parse", "HEAD"])
    status = run(["git", "-C", repo, "status", "--porcelain", "--untracked-files=no"])
    if head.returncode != 0:
        return {"commit": None, "dirty": None}
    return {"commit": head.stdout.strip(), "dirty": bool(status.stdout.strip())}


def installed_packages() -> dict[str, str]:
    """Every distribution installed in this Python environment, with its version."""
    from importlib.metadata import distributions

    return {d.metadata["Name"]: d.version for d in distributions() if d.metadata["Name"]}


def give_to_invoking_user(path: str, recursive: bool = True) -> None:
    """Under sudo, hand a result folder (or file) to the user who ran sudo (SUDO_UID), not
    to root. ``recursive=False``: the folder itself only (``results/``, made by a run).
    Never through a symlink, even one swapped in meanwhile (``caslab.base.safefs``)."""
    uid, gid = os.environ.get("SUDO_UID"), os.environ.get("SUDO_GID")
    if os.geteuid() != 0 or not uid or not uid.isdigit():
        return
    gid_n = int(gid) if gid and gid.isdigit() else -1
    safefs.chown_tree(path, int(uid), gid_n, recursive=recursive and os.path.isdir(path))


def versions() -> dict[str, str | None]:
    """Versions recorded in every run's manifest, for reproducibility."""
    from importlib.metadata import PackageNotFoundError, version

    out: dict[str, str | None] = {}
    for package in ("caslab", "mininet", "os-ken", "scapy", "matplotlib", "dnspython"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = None
    ovs = run(["ovs-vsctl", "--version"]) if shutil.which("ovs-vsctl") else None
    out["openvswitch"] = ovs.stdout.splitlines()[0].split()[-1] if ovs and ovs.stdout else None
    out["kernel"] = os.uname().release
    for tool in ("haproxy", "dnsmasq"):
        path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}") else None)
        if path:
            res = run([path, "-v"])
            text = (res.stdout or res.stderr).splitlines()
            out[tool] = text[0] if text else None
    return out
