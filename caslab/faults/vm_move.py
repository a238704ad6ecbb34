"""vm-move: a CAS virtual machine moves to another hypervisor (vMotion).

The VM keeps its NIC and MAC; its port moves to the other hypervisor's vSwitch and, with
``topology.notify_switches``, the new host announces the VM's MAC with a RARP. For a
Windows NLB node in unicast mode that MAC is the cluster MAC: the physical switch then
sends all cluster traffic to the new host only, and the nodes left behind stop receiving
their clients (the classic "NLB works only while both VMs sit on the same host").
"""

from __future__ import annotations

from caslab.network import hypervisor
from caslab.faults.base import Fault
from caslab.schema.fields import Field, SpecError


class VmMove(Fault):
    kind = "vm-move"
    summary = "a CAS VM moves to another hypervisor (vMotion); with notify_switches its new host sends a RARP"
    target_roles = ("cas",)
    affects = "disrupted"  # the sessions a move cuts off are rarely the moved VM's own
    example = {"target": "cas2", "to": "hv2"}
    example_topology = {"hypervisors": 2, "vm_placement": {"cas1": "hv1", "cas2": "hv1", "cas3": "hv1"}}
    fields = {"to": Field(str, "", None, "the hypervisor the VM moves to, e.g. 'hv2'")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        site = plan.sites[0]
        if not site.hypervisors:
            raise SpecError(source, f"{key}.kind", "a topology with hypervisors (topology.hypervisors >= 1) "
                                                   "for a VM to move", fault["kind"])
        if fault["to"] not in site.hypervisor_names:
            raise SpecError(source, f"{key}.to", f"a hypervisor of this topology, one of {site.hypervisor_names}",
                            fault["to"])
        for target in fault["target"]:
            if target not in plan.placement:
                raise SpecError(source, f"{key}.target", f"a VM (a CAS of {site.name}), one of "
                                                         f"{sorted(plan.placement)}", target)

    def elements(self, ctx):
        """Every CAS of the moved VMs' sites: a move can cut off any node's clients (with
        ``affects = disrupted`` only the sessions it actually disrupted count)."""
        sites = {ctx.plan.host(vm).site for vm in self.targets}
        return sorted(h.name for h in ctx.plan.by_role("cas") if h.site in sites)

    def label(self):
        return f"vm-move {','.join(self.targets)} to {self.spec['to']}"

    def inject(self, ctx):
        for vm in self.targets:
            hypervisor.move(ctx, vm, self.spec["to"])
