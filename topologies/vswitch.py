"""A hypervisor's virtual switch, as OpenFlow flows (pure): what VMware's standard vSwitch
does with frames, and the RARP it sends when "Notify Switches" is on.

A vSwitch does not learn MAC addresses: it knows the MAC of every VM on it (the address
the VM's driver set, which for a Windows NLB node in unicast mode is the cluster MAC,
accepted with "MAC address changes: Accept"). So:

* from the uplink: a frame for a local VM's MAC goes to every local VM with that MAC; a
  broadcast or multicast frame goes to every local VM; anything else is dropped;
* from a VM: a frame for another local VM's MAC stays on the host; a broadcast or
  multicast frame goes to the uplink and the other local VMs; anything else goes to the
  uplink (the physical switch decides).

The physical switch behind the uplinks is a plain MAC-learning switch (OVS NORMAL). When
a VM starts or moves, a hypervisor with Notify Switches on sends a RARP with the VM's MAC
as source out of its uplink, and the physical switch learns that MAC behind that uplink.
"""

from __future__ import annotations

COOKIE = 0x5653  # "VS": every vSwitch flow carries it, so they are replaced as one
MULTICAST = "01:00:00:00:00:00/01:00:00:00:00:00"
RARP_ETHERTYPE = 0x8035


def _outputs(ports) -> str:
    ports = sorted(set(ports))
    return ",".join(f"output:{p}" for p in ports) if ports else "drop"


def vswitch_flows(uplink: int, vms: list[tuple[int, str]]) -> list[str]:
    """ovs-ofctl flow lines for one hypervisor: ``uplink`` is its uplink's OpenFlow port,
    ``vms`` the (port, MAC) of each VM on it (several VMs may share a MAC)."""
    by_mac: dict[str, list[int]] = {}
    for port, mac in vms:
        by_mac.setdefault(mac.lower(), []).append(port)
    ports = [port for port, _ in vms]
    head = f"cookie=0x{COOKIE:x}"
    flows = [f"{head},priority=300,in_port={uplink},dl_dst={mac},actions={_outputs(p)}"
             for mac, p in sorted(by_mac.items())]
    flows += [f"{head},priority=200,in_port={uplink},dl_dst={MULTICAST},actions={_outputs(ports)}",
              f"{head},priority=100,in_port={uplink},actions=drop"]
    for port in sorted(ports):
        for mac, local in sorted(by_mac.items()):
            others = [p for p in local if p != port]
            if others:
                flows.append(f"{head},priority=300,in_port={port},dl_dst={mac},actions={_outputs(others)}")
        flows.append(f"{head},priority=200,in_port={port},dl_dst={MULTICAST},"
                     f"actions={_outputs([uplink] + [p for p in ports if p != port])}")
        flows.append(f"{head},priority=100,in_port={port},actions=output:{uplink}")
    return flows


def rarp_frame(mac: str) -> bytes:
    """The RARP a hypervisor sends for a VM: broadcast, source and target hardware address
    the VM's MAC, no protocol addresses (what ESX's Notify Switches puts on the wire)."""
    hw = bytes(int(part, 16) for part in mac.split(":"))
    arp = (1).to_bytes(2, "big") + (0x0800).to_bytes(2, "big") + bytes([6, 4]) + (3).to_bytes(2, "big")
    arp += hw + bytes(4) + hw + bytes(4)
    return (b"\xff" * 6 + hw + RARP_ETHERTYPE.to_bytes(2, "big") + arp).ljust(60, b"\0")
