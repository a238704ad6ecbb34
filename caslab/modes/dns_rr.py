"""dns-rr: the array name has one A record per CAS ("poor man's failover"), cached by TTL.

dnsmasq answers the records in a fixed order, while a Windows DNS server rotates them;
each session therefore starts at its own position in the answer (``rotate``), which is
what rotation achieves across many clients. After a connect failure a client may try the
next address (``clients.select = "next_on_fail"``) or keep the first. The TTL is the DNS
server's (``dns.ttl_s``).
"""

from __future__ import annotations

from caslab.modes.base import Mode


class DnsRoundRobin(Mode):
    name = "dns-rr"
    colour, line = "#E69F00", "--"  # in every plot
    description = "several A records for the array name, TTL from the spec"
    rotate_answers = True

    def array_addresses(self, ctx):
        return {site.name: [h.ip for h in ctx.plan.by_role("cas", site.name)] for site in ctx.plan.sites
                if ctx.plan.by_role("cas", site.name)}
