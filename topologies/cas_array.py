"""CAS-array topologies: one switch per AD site, hosts for every Exchange role.

One site (the default)::

    cas1  cas2  cas3   mbx1  mbx2   dns1  ad1  lb1
       \\    |    /        \\  /        |    |    /
        +---------------- clab1 -----------------+
                      /    |    \\
                   cl1    cl2   ...          (array VIP 10.1.0.100)

A back-end network (``topology.backend_network``) gives the CAS and mailbox servers a
second NIC on a Linux bridge, ``clab1b`` (topologies/kernel_bridge.py)::

    cas1  cas2  cas3   mbx1  mbx2
       \\    |    /      \\  /
        +-- clab1b (10.101.0.0/16, no OpenFlow) --+

Two sites add a router joining the site switches (a WAN link)::

    [HQ hosts] -- clab1 -- r1 -- clab2 -- [Branch hosts]

With hypervisors, HQ's CAS are VMs on hypervisor switches joined by the site switch::

    cas1  cas2        cas3                    (VMs, placed from the spec)
      \\   /            |
    clab1hv1        clab1hv2                  (the hypervisors' vSwitches)
           \\          /
            +-- clab1 --+-- mbx1, dns1, ad1, lb1, cl1 ...   (the physical switch)

Run it by hand with ``mn --custom topologies/cas_array.py --topo casarray``.
"""

from __future__ import annotations

try:
    from mininet.topo import Topo
except ImportError:  # pragma: no cover - the graph can be planned without Mininet
    Topo = object  # type: ignore[assignment,misc]

from topologies.kernel_bridge import KernelBridge
from topologies.plan import LabPlan, backend_ip, backend_switch

DEFAULT_SITES = [{"name": "HQ", "cas": 3, "mailboxes": 2, "clients": 2}]


class CasArrayTopo(Topo):
    """Exchange 2010 CAS array: per-site switch, CAS, mailbox, DNS, autodiscover, clients."""

    def build(self, sites=None, plan: LabPlan | None = None, wan_bw_mbit: float | None = None,
              wan_delay_ms: float | None = None, **_params):
        self.plan = plan or LabPlan.build(sites or DEFAULT_SITES)
        for site in self.plan.sites:
            self.addSwitch(site.switch, dpid="%016x" % site.index, protocols="OpenFlow13,OpenFlow15")
        for site in self.plan.sites:
            for hypervisor in site.hypervisor_names:
                switch = site.hypervisor_switch(hypervisor)
                self.addSwitch(switch, dpid="%016x" % site.hypervisor_dpid(hypervisor),
                               protocols="OpenFlow13,OpenFlow15")
                self.addLink(switch, site.switch)  # the hypervisor's uplink: its first port
        for host in self.plan.hosts:
            default_route = f"via {self.plan.site(host.site).gateway()}" if self.plan.routed else None
            self.addHost(host.name, ip=host.cidr, mac=host.mac, role=host.role, site=host.site,
                         defaultRoute=default_route)
            self.addLink(host.name, self.plan.switch_of(host.name))
        self.build_backend()
        if self.plan.routed:
            self.addHost("r1", ip=None, role="router", site=self.plan.sites[0].name)
            for site in self.plan.sites:
                link_opts = wan_link_options(wan_bw_mbit, wan_delay_ms) if site.index > 1 else {}
                self.addLink("r1", site.switch, intfName1=f"r1-eth{site.index}",
                             params1={"ip": f"{site.gateway()}/16"}, **link_opts)


    def build_backend(self) -> None:
        """With a back-end network: a Linux bridge per site, and a second NIC (eth1) on it
        for each Exchange server, added after the client-facing one so that stays eth0."""
        for site in self.plan.sites if self.plan.backend else []:
            self.addSwitch(backend_switch(site), cls=KernelBridge, dpid="%016x" % (0x1000 + site.index))
        for host in self.plan.hosts:
            if self.plan.on_backend(host):
                site = self.plan.site(host.site)
                self.addLink(host.name, backend_switch(site), params1={"ip": f"{backend_ip(host, site)}/16"})


def wan_link_options(bw_mbit: float | None, delay_ms: float | None) -> dict:
    """tc shaping for a WAN link: HTB for bandwidth, netem for delay (needs sch_netem)."""
    opts: dict = {}
    if bw_mbit:
        opts["bw"] = bw_mbit
    if delay_ms:
        opts["delay"] = f"{delay_ms:g}ms"
    if opts:
        from mininet.link import TCLink

        opts["cls"] = TCLink
    return opts


def casarray(cas: int = 3, mailboxes: int = 2, clients: int = 2) -> CasArrayTopo:
    """``mn --topo casarray,3,2,2``: one site with the given counts."""
    return CasArrayTopo(sites=[{"name": "HQ", "cas": int(cas), "mailboxes": int(mailboxes), "clients": int(clients)}])


def twosites(cas: int = 2, clients: int = 1) -> CasArrayTopo:
    """``mn --topo twosites``: HQ and Branch joined by a router."""
    return CasArrayTopo(sites=[
        {"name": "HQ", "cas": int(cas), "mailboxes": 2, "clients": int(clients)},
        {"name": "Branch", "cas": int(cas), "mailboxes": 1, "clients": int(clients)},
    ])


topos = {"casarray": casarray, "twosites": twosites}
