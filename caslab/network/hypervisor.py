"""The hypervisors of a virtualized site, live: each vSwitch programmed from its VMs' current
MACs, VMs announced with a RARP (Notify Switches), a VM moved to another host (vMotion).

The flows and the RARP frame come from ``topologies/vswitch.py`` (pure); this module reads
the live state they need (OpenFlow port numbers, the MAC each VM's NIC has now: a Windows
NLB node in unicast mode has replaced its own with the cluster MAC) and applies them with
``ovs-ofctl`` in the root namespace. Where each VM runs now is ``ctx.placement``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caslab.base import system
from caslab.base.waits import LabError
from labcommon.catalogue import VM_MOVED, VM_NOTIFY
from topologies.vswitch import COOKIE, rarp_frame, vswitch_flows

if TYPE_CHECKING:
    from caslab.network.context import RunContext

OFCTL = ["ovs-ofctl", "-O", "OpenFlow13"]


def _checked(argv: list[str]) -> str:
    result = system.run(argv)
    if result.returncode != 0:
        raise LabError(f"{argv[0]} failed: {' '.join(argv[1:])}: {result.stderr.strip()[:300]}")
    return result.stdout


def ofport(interface: str) -> int:
    return int(_checked(["ovs-vsctl", "--timeout=5", "get", "Interface", interface, "ofport"]).strip())


def uplink_ends(ctx: "RunContext", switch: str, site_switch: str) -> tuple[str, str]:
    """(the hypervisor switch's end, the physical switch's end) of a hypervisor's uplink."""
    hv, physical = ctx.lab.node(switch), ctx.lab.node(site_switch)
    link = ctx.lab.net.linksBetween(hv, physical)[0]
    ends = (link.intf1, link.intf2) if link.intf1.node is hv else (link.intf2, link.intf1)
    return ends[0].name, ends[1].name


def uplink_interface(ctx: "RunContext", switch: str, site_switch: str) -> str:
    return uplink_ends(ctx, switch, site_switch)[0]


def live_mac(ctx: "RunContext", host: str) -> str:
    interface = ctx.lab.host_interface(host)
    status, out = ctx.lab.run_in(host, ["cat", f"/sys/class/net/{interface}/address"])
    if status != 0:
        raise LabError(f"cannot read the MAC of {host}: {out.strip()[:200]}")
    return out.strip().lower()


def program(ctx: "RunContext", site_name: str, hypervisor: str) -> None:
    """Replace one vSwitch's flows with what its VMs need now."""
    site = ctx.plan.site(site_name)
    switch = site.hypervisor_switch(hypervisor)
    uplink = ofport(uplink_interface(ctx, switch, site.switch))
    vms = sorted(vm for vm, hv in ctx.placement.items() if hv == hypervisor and ctx.plan.host(vm).site == site_name)
    flows = vswitch_flows(uplink, [(ofport(ctx.lab.switch_port_name(vm)), live_mac(ctx, vm)) for vm in vms])
    path = ctx.raw_dir / "config" / f"vswitch-{switch}.flows"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(flows) + "\n")
    _checked(OFCTL + ["del-flows", switch, f"cookie=0x{COOKIE:x}/-1"])
    _checked(OFCTL + ["add-flows", switch, str(path)])


def notify(ctx: "RunContext", vm: str) -> None:
    """Notify Switches: the VM's hypervisor sends a RARP for the VM's MAC out of its uplink."""
    site = ctx.plan.site(ctx.plan.host(vm).site)
    hypervisor = ctx.placement[vm]
    switch = site.hypervisor_switch(hypervisor)
    uplink = ofport(uplink_interface(ctx, switch, site.switch))
    mac = live_mac(ctx, vm)
    _checked(OFCTL + ["packet-out", switch, f"in_port=controller,packet={rarp_frame(mac).hex()},"
                                            f"actions=output:{uplink}"])
    ctx.log.emit(VM_NOTIFY, vm=vm, hypervisor=hypervisor, mac=mac)


def start(ctx: "RunContext") -> None:
    """VMs start where the plan puts them: vSwitches programmed, then (Notify Switches)
    each VM announced, in name order."""
    if not ctx.plan.virtualized:
        return
    ctx.placement = dict(ctx.plan.placement)
    for site in ctx.plan.sites:
        for hypervisor in site.hypervisor_names:
            program(ctx, site.name, hypervisor)
    if ctx.spec["topology"]["notify_switches"]:
        for vm in sorted(ctx.placement):
            notify(ctx, vm)


def move(ctx: "RunContext", vm: str, to: str) -> None:
    """vMotion: the VM's port moves to another hypervisor's vSwitch (same interface, same
    MAC), both vSwitches are reprogrammed and, with Notify Switches, the new host
    announces the VM."""
    site = ctx.plan.site(ctx.plan.host(vm).site)
    previous = ctx.placement[vm]
    if previous == to:
        return
    port = ctx.lab.switch_port_name(vm)
    _checked(["ovs-vsctl", "--timeout=5", "--", "del-port", site.hypervisor_switch(previous), port,
              "--", "add-port", site.hypervisor_switch(to), port])
    ctx.placement[vm] = to
    program(ctx, site.name, previous)
    program(ctx, site.name, to)
    ctx.log.emit(VM_MOVED, vm=vm, previous=previous, hypervisor=to)
    if ctx.spec["topology"]["notify_switches"]:
        notify(ctx, vm)
