"""A firewall on the WAN router: no CAS serves a database across the WAN.

Sites were often joined through firewalls that let mail and directory traffic pass but
not the RPC a CAS uses to reach a mailbox server in another site; a CAS then serves only
the databases of its own site. ``topology.wan_firewall`` emulates that with nftables in
the router's namespace: connections from one site's CAS block (10.k.1.0/24, multi-role
servers included) to the mailbox port of any other site are dropped silently, as a
firewall does (the CAS's own timeout notices). The rules die with the router's namespace.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from caslab.network.netlab import LabError
from labcommon.ports import MAILBOX_PORT
from topologies.plan import ROLE_OCTET

if TYPE_CHECKING:
    from caslab.network.context import RunContext

TABLE = "caslab_wan"


def firewall_commands(site_indexes: list[int]) -> list[list[str]]:
    """nft argument lists (no shell) that drop cross-site CAS-to-mailbox connections."""
    commands = [["nft", "add", "table", "inet", TABLE],
                ["nft", "add", "chain", "inet", TABLE, "forward", "{", "type", "filter", "hook", "forward",
                 "priority", "0", ";", "policy", "accept", ";", "}"]]
    for src in site_indexes:
        for dst in site_indexes:
            if src != dst:
                commands.append(["nft", "add", "rule", "inet", TABLE, "forward",
                                 "ip", "saddr", f"10.{src}.{ROLE_OCTET['cas']}.0/24", "ip", "daddr", f"10.{dst}.0.0/16",
                                 "tcp", "dport", str(MAILBOX_PORT), "counter", "drop"])
    return commands


def apply_firewall(ctx: "RunContext") -> None:
    """Install the rules in the router (r1); a spec that asked for them fails without."""
    for argv in firewall_commands([site.index for site in ctx.plan.sites]):
        code, out = ctx.lab.run_in("r1", argv)
        if code != 0:
            raise LabError(f"WAN firewall: {' '.join(argv)} failed: {out.strip()[:200]}")


def dropped_packets(ctx: "RunContext") -> int:
    """Packets the firewall dropped so far (its rules' counters)."""
    code, out = ctx.lab.run_in("r1", ["nft", "list", "table", "inet", TABLE])
    if code != 0:
        return 0
    return sum(int(line.split("packets", 1)[1].split()[0]) for line in out.splitlines() if "packets" in line)
