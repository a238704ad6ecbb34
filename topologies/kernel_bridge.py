"""The back-end network's switch: a plain Linux bridge, no OpenFlow, no controller.

CAS-to-mailbox and DAG replication traffic needs no load balancing, so it should not cost
the userspace Open vSwitch datapath anything (about 30 us of ovs-vswitchd CPU per packet
here, against a few for the kernel's bridge). Mininet's own ``LinuxBridge`` needs
``brctl`` (bridge-utils) and types its commands into a shell; this one runs ``ip`` with
argument lists. Spanning tree stays off, so ports forward the moment they are enslaved.
"""

from __future__ import annotations

import subprocess

try:
    from mininet.node import Switch
except ImportError:  # pragma: no cover - planning needs no Mininet
    Switch = object  # type: ignore[assignment,misc]


def _ip(*args: str) -> None:
    result = subprocess.run(["ip", *args], capture_output=True, text=True, timeout=10)
    if result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")


class KernelBridge(Switch):
    """A Linux bridge holding the switch-side ends of its links (in the root namespace)."""

    def start(self, _controllers) -> None:
        _ip("link", "add", "name", self.name, "type", "bridge", "stp_state", "0")
        for intf in self.intfList():
            if intf.name != "lo":
                _ip("link", "set", "dev", intf.name, "master", self.name, "up")
        _ip("link", "set", "dev", self.name, "up")

    def connected(self) -> bool:
        return True

    def stop(self, deleteIntfs: bool = True) -> None:
        subprocess.run(["ip", "link", "del", "dev", self.name], capture_output=True, timeout=10)
        super().stop(deleteIntfs)
