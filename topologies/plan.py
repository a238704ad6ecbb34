"""The addressing plan: which host plays which role, with which address, in which site.

Pure data, computed from a few counts, so the topology, the runner, spec validation and
the services all read the same plan and it can be unit-tested without root.

Site k (1-based) is the subnet 10.k.0.0/16 on switch ``clab<k>``; the third octet names
the role:

    10.k.0.1     router (only with more than one site)
    10.k.0.2     DNS server (site 1 only: authoritative for the lab zone)
    10.k.0.3     autodiscover
    10.k.0.4     load-balancer host (HAProxy holds the VIP there; the SDN NLB's prober)
    10.k.0.100   array VIP
    10.k.1.n     CAS n of the site          (up to 64)
    10.k.2.n     mailbox server n            (up to 16)
    10.k.3.n     client host n               (up to 32)
    10.k.(10+c).1-250   extra source addresses of the site's client host c (0-based)

With a back-end network (``LabPlan.backend``, one site only), the site's Exchange servers
(its CAS and mailbox servers) have a second NIC on a Linux bridge ``clab<k>b``, in
10.(100+k).0.0/16 with the same last two octets as their client-facing address
(cas1 10.1.1.1 -> 10.101.1.1): CAS-to-mailbox and DAG replication traffic stay off the
load balancer's switch, as Exchange's MAPI and replication networks are split in the
field.

A site may run its CAS as virtual machines on ``hypervisors`` hypervisor switches
(``clab<k>hv<n>``, each joined to the site switch by one uplink: the site switch is then
the physical switch). ``placement`` says which hypervisor each VM starts on; a CAS not
named there goes to hv1, hv2, ... in turn. Addresses do not depend on placement.

Multi-role servers (a site's ``multi_role`` count): the first ones of the site's CAS run
the mailbox role too, as two-server Exchange 2010 sites did (CAS + Hub + Mailbox on each,
one DAG). They are named ``ex<n>``, keep the CAS addresses, and count among the
site's CAS and its mailbox servers (``by_role`` finds them under both); the site's other
CAS and mailbox servers stay single-role with their usual names and addresses. Without
it the plan is exactly the single-role one.

An "Internet" site (``external``) stands for the world outside the organisation: no AD, so
no autodiscover host, no load balancer, no Exchange server; only external client hosts
(role ``external``, named ``ext<n>``, at 10.k.3.n) that reach the published load balancer
through the router, as a home user or a phone would.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

SWITCH_PREFIX = "clab"
MAX_CAS, MAX_MAILBOXES, MAX_CLIENTS = 64, 16, 32
MAX_SITES = 4
BACKEND_OCTET_OFFSET = 100  # site k's back end is 10.(100+k).0.0/16
MAX_HYPERVISORS = 4
ROLE_OCTET = {"cas": 1, "mailbox": 2, "client": 3, "external": 3}
LAB_DOMAIN = "lab.test"
INTERNET = "Internet"


@dataclass(frozen=True)
class HostPlan:
    name: str
    role: str
    site: str
    ip: str
    prefix: int = 16
    extra_roles: tuple[str, ...] = ()  # a multi-role server: ("mailbox",) beside its "cas"

    @property
    def roles(self) -> tuple[str, ...]:
        return (self.role,) + self.extra_roles

    @property
    def mac(self) -> str:
        return mac_for(self.ip)

    @property
    def cidr(self) -> str:
        return f"{self.ip}/{self.prefix}"

    @property
    def fqdn(self) -> str:
        return f"{self.name}.{LAB_DOMAIN}"


@dataclass(frozen=True)
class SitePlan:
    name: str
    index: int
    cas: int
    mailboxes: int
    clients: int
    hypervisors: int = 0
    external: bool = False  # the Internet: no AD site, only external clients
    multi_role: int = 0  # of the site's CAS, how many run the mailbox role too (the first ones)

    @property
    def hypervisor_names(self) -> list[str]:
        return [f"hv{n + 1}" for n in range(self.hypervisors)]

    def hypervisor_switch(self, hypervisor: str) -> str:
        """The switch of one of the site's hypervisors ('hv1' -> 'clab1hv1')."""
        if hypervisor not in self.hypervisor_names:
            raise KeyError(f"site {self.name} has no hypervisor {hypervisor!r}")
        return f"{self.switch}{hypervisor}"

    def hypervisor_dpid(self, hypervisor: str) -> int:
        return 0x100 * self.index + self.hypervisor_names.index(hypervisor) + 1

    @property
    def subnet(self) -> ipaddress.IPv4Network:
        return ipaddress.IPv4Network(f"10.{self.index}.0.0/16")

    @property
    def switch(self) -> str:
        return f"{SWITCH_PREFIX}{self.index}"

    @property
    def vip(self) -> str:
        return f"10.{self.index}.0.100"

    @property
    def vip_mac(self) -> str:
        return "02:00:0a:%02x:00:64" % self.index

    @property
    def array_fqdn(self) -> str:
        return f"outlook.{self.name.lower()}.{LAB_DOMAIN}"

    def address(self, host_octet: int, block: int = 0) -> str:
        return f"10.{self.index}.{block}.{host_octet}"

    def gateway(self) -> str:
        return self.address(1)


def backend_switch(site: SitePlan) -> str:
    """A site's back-end bridge ('clab1b')."""
    return f"{site.switch}b"


def backend_ip(host: HostPlan, site: SitePlan) -> str:
    """A server's back-end address: its own, in the site's back-end subnet."""
    octets = host.ip.split(".")
    return f"10.{BACKEND_OCTET_OFFSET + site.index}.{octets[2]}.{octets[3]}"


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the IPv4 address (stable across runs)."""
    octets = [int(part) for part in ip.split(".")]
    return "02:00:" + ":".join("%02x" % o for o in octets)


@dataclass
class LabPlan:
    sites: list[SitePlan]
    hosts: list[HostPlan] = field(default_factory=list)
    placement: dict[str, str] = field(default_factory=dict)  # VM (CAS) -> hypervisor it starts on
    backend: bool = False  # the Exchange servers' second NIC on a back-end Linux bridge

    @classmethod
    def build(cls, sites: list[dict], backend: bool = False) -> "LabPlan":
        """sites: [{name, cas, mailboxes, clients, hypervisors, placement, multi_role, external}],
        in order; the first one is HQ. ``placement`` maps CAS names to hypervisor names ('hv1').
        ``backend``: a back-end network for the Exchange servers (one site, no hypervisors)."""
        if not 1 <= len(sites) <= MAX_SITES:
            raise ValueError(f"the addressing plan has room for 1..{MAX_SITES} sites, not {len(sites)}")
        if backend and (len(sites) > 1 or sites[0].get("hypervisors")):
            raise ValueError("a back-end network is planned for one site whose servers are not VMs: "
                             "no Branch, no Internet site, no hypervisors")
        site_plans = [SitePlan(s["name"], i + 1, s.get("cas", 0), s.get("mailboxes", 0), s.get("clients", 0),
                               hypervisors=s.get("hypervisors", 0), external=bool(s.get("external", False)),
                               multi_role=s.get("multi_role", 0))
                      for i, s in enumerate(sites)]
        if site_plans[0].external:
            raise ValueError("the first site is HQ: it cannot be the Internet")
        for site in site_plans:
            for role, count, limit in (("cas", site.cas, MAX_CAS), ("mailboxes", site.mailboxes, MAX_MAILBOXES),
                                       ("clients", site.clients, MAX_CLIENTS)):
                if not 0 <= count <= limit:
                    raise ValueError(f"site {site.name}: {role} must be 0..{limit} in the addressing plan, not {count}")
            if not 0 <= site.multi_role <= min(site.cas, site.mailboxes):
                raise ValueError(f"site {site.name}: multi-role servers must be 0..min(cas, mailboxes) = "
                                 f"{min(site.cas, site.mailboxes)}, not {site.multi_role}")
        plan = cls(site_plans, backend=backend)
        counters = {"cas": 0, "mbx": 0, "cl": 0, "ad": 0, "lb": 0, "ex": 0, "ext": 0}

        def add(prefix: str, role: str, site: SitePlan, octet: int, block: int = 0, extra: tuple = ()) -> None:
            counters[prefix] += 1
            plan.hosts.append(HostPlan(f"{prefix}{counters[prefix]}", role, site.name, site.address(octet, block),
                                       extra_roles=extra))

        for site in site_plans:
            if site.external:
                if site.cas or site.mailboxes:
                    raise ValueError(f"site {site.name}: the Internet holds no Exchange server")
                for i in range(site.clients):
                    add("ext", "external", site, 1 + i, ROLE_OCTET["external"])
                continue
            if site.index == 1:
                plan.hosts.append(HostPlan("dns1", "dns", site.name, site.address(2)))
            add("ad", "autodiscover", site, 3)
            add("lb", "lb", site, 4)
            for i in range(site.multi_role):
                add("ex", "cas", site, 1 + i, ROLE_OCTET["cas"], ("mailbox",))
            for i in range(site.multi_role, site.cas):
                add("cas", "cas", site, 1 + i, ROLE_OCTET["cas"])
            for i in range(site.mailboxes - site.multi_role):
                add("mbx", "mailbox", site, 1 + i, ROLE_OCTET["mailbox"])
            for i in range(site.clients):
                add("cl", "client", site, 1 + i, ROLE_OCTET["client"])
        for site, raw in zip(site_plans, sites):
            plan._place(site, dict(raw.get("placement") or {}))
        return plan

    def _place(self, site: SitePlan, wanted: dict[str, str]) -> None:
        if not 0 <= site.hypervisors <= MAX_HYPERVISORS:
            raise ValueError(f"site {site.name}: hypervisors must be 0..{MAX_HYPERVISORS}, not {site.hypervisors}")
        cas = [h.name for h in self.by_role("cas", site.name)]
        if wanted and not site.hypervisors:
            raise ValueError(f"site {site.name}: VM placement needs hypervisors")
        for vm, hypervisor in wanted.items():
            if vm not in cas:
                raise ValueError(f"site {site.name}: only its CAS run as VMs ({cas}), not {vm!r}")
            if hypervisor not in site.hypervisor_names:
                raise ValueError(f"site {site.name}: {vm} placed on {hypervisor!r}, not one of "
                                 f"{site.hypervisor_names}")
        for i, vm in enumerate(cas if site.hypervisors else []):
            self.placement[vm] = wanted.get(vm, site.hypervisor_names[i % site.hypervisors])

    @property
    def routed(self) -> bool:
        return len(self.sites) > 1

    def site(self, name: str) -> SitePlan:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def by_role(self, role: str, site: str | None = None) -> list[HostPlan]:
        return [h for h in self.hosts if role in h.roles and (site is None or h.site == site)]

    def host(self, name: str) -> HostPlan:
        for host in self.hosts:
            if host.name == name:
                return host
        raise KeyError(name)

    def source_ips(self, client: HostPlan, count: int) -> list[str]:
        """Extra source addresses for a client host's sessions (for affinity tests)."""
        site = self.site(client.site)
        index = self.by_role(client.role, client.site).index(client)
        if count > 250:
            raise ValueError("at most 250 source addresses per client host")
        return [f"10.{site.index}.{10 + index}.{i + 1}" for i in range(count)]

    def switch_names(self) -> list[str]:
        """Every OpenFlow switch: the sites' switches, then their hypervisors' switches."""
        return [site.switch for site in self.sites] + [
            site.hypervisor_switch(hv) for site in self.sites for hv in site.hypervisor_names]

    def backend_switch_names(self) -> list[str]:
        """The back-end Linux bridges (none without a back-end network)."""
        return [backend_switch(site) for site in self.sites] if self.backend else []

    def bridge_names(self) -> list[str]:
        """Every bridge the lab makes: its OpenFlow switches and its back-end bridges."""
        return self.switch_names() + self.backend_switch_names()

    def on_backend(self, host: HostPlan) -> bool:
        """Whether a host has a back-end NIC: the Exchange servers, with a back-end network."""
        return self.backend and bool({"cas", "mailbox"} & set(host.roles))

    def server_ip(self, host: HostPlan) -> str:
        """The address Exchange servers reach ``host`` at (a CAS its mailbox servers, a
        mailbox server its DAG peers): its back-end address when it has one."""
        return backend_ip(host, self.site(host.site)) if self.on_backend(host) else host.ip

    def switch_of(self, host: str, placement: dict[str, str] | None = None) -> str:
        """The switch a host's NIC is on (``placement`` overrides the plan's, after a move)."""
        plan_host = self.host(host)
        site = self.site(plan_host.site)
        hypervisor = (placement or self.placement).get(host)
        return site.hypervisor_switch(hypervisor) if hypervisor else site.switch

    @property
    def virtualized(self) -> bool:
        return any(site.hypervisors for site in self.sites)


def plan_from_topology(topology: dict[str, Any]) -> LabPlan:
    """The plan of a spec's [topology] section: HQ, Branch when ``branch`` is set, and the
    Internet when ``internet_client_hosts`` is above 0; HQ's CAS are VMs when
    ``hypervisors`` is set."""
    multi = min(topology["cas"], topology["mailboxes"]) if topology.get("multi_role") else 0
    sites = [{"name": "HQ", "cas": topology["cas"], "mailboxes": topology["mailboxes"],
              "clients": topology["client_hosts"], "hypervisors": topology.get("hypervisors", 0),
              "placement": topology.get("vm_placement", {}), "multi_role": multi}]
    if topology["branch"]:
        sites.append({"name": "Branch", "cas": topology["branch_cas"], "mailboxes": topology.get("branch_mailboxes", 0),
                      "clients": topology["branch_client_hosts"]})
    if topology.get("internet_client_hosts", 0):
        sites.append({"name": INTERNET, "clients": topology["internet_client_hosts"], "external": True})
    return LabPlan.build(sites, backend=topology.get("backend_network", False))
