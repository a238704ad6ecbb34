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
    external: bool = False  # the Internet: no AD site, only external clients

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


def mac_for(ip: str) -> str:
    """A locally administered MAC derived from the IPv4 address (stable across runs)."""
    octets = [int(part) for part in ip.split(".")]
    return "02:00:" + ":".join("%02x" % o for o in octets)


@dataclass
class LabPlan:
    sites: list[SitePlan]
    hosts: list[HostPlan] = field(default_factory=list)

    @classmethod
    def build(cls, sites: list[dict]) -> "LabPlan":
        """sites: [{name, cas, mailboxes, clients, external}], in order; the first one is HQ."""
        if not 1 <= len(sites) <= MAX_SITES:
            raise ValueError(f"the addressing plan has room for 1..{MAX_SITES} sites, not {len(sites)}")
        site_plans = [SitePlan(s["name"], i + 1, s.get("cas", 0), s.get("mailboxes", 0), s.get("clients", 0),
                               bool(s.get("external", False))) for i, s in enumerate(sites)]
        if site_plans[0].external:
            raise ValueError("the first site is HQ: it cannot be the Internet")
        for site in site_plans:
            for role, count, limit in (("cas", site.cas, MAX_CAS), ("mailboxes", site.mailboxes, MAX_MAILBOXES),
                                       ("clients", site.clients, MAX_CLIENTS)):
                if not 0 <= count <= limit:
                    raise ValueError(f"site {site.name}: {role} must be 0..{limit} in the addressing plan, not {count}")
        plan = cls(site_plans)
        counters = {"cas": 0, "mbx": 0, "cl": 0, "ad": 0, "lb": 0, "ext": 0}

        def add(prefix: str, role: str, site: SitePlan, octet: int, block: int = 0) -> None:
            counters[prefix] += 1
            plan.hosts.append(HostPlan(f"{prefix}{counters[prefix]}", role, site.name, site.address(octet, block)))

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
            for i in range(site.cas):
                add("cas", "cas", site, 1 + i, ROLE_OCTET["cas"])
            for i in range(site.mailboxes):
                add("mbx", "mailbox", site, 1 + i, ROLE_OCTET["mailbox"])
            for i in range(site.clients):
                add("cl", "client", site, 1 + i, ROLE_OCTET["client"])
        return plan

    @property
    def routed(self) -> bool:
        return len(self.sites) > 1

    def site(self, name: str) -> SitePlan:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def by_role(self, role: str, site: str | None = None) -> list[HostPlan]:
        return [h for h in self.hosts if h.role == role and (site is None or h.site == site)]

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
        return [site.switch for site in self.sites]


def plan_from_topology(topology: dict[str, Any]) -> LabPlan:
    """The plan of a spec's [topology] section: HQ, Branch when ``branch`` is set, and the
    Internet when ``internet_client_hosts`` is above 0."""
    sites = [{"name": "HQ", "cas": topology["cas"], "mailboxes": topology["mailboxes"],
              "clients": topology["client_hosts"]}]
    if topology["branch"]:
        sites.append({"name": "Branch", "cas": topology["branch_cas"], "mailboxes": 0,
                      "clients": topology["branch_client_hosts"]})
    if topology.get("internet_client_hosts", 0):
        sites.append({"name": INTERNET, "clients": topology["internet_client_hosts"], "external": True})
    return LabPlan.build(sites)
