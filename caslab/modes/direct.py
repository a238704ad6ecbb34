"""direct: no array; every Outlook profile names one CAS, as before Exchange 2010 arrays."""

from __future__ import annotations

from caslab.modes.base import Mode
from topologies.plan import LAB_DOMAIN


class Direct(Mode):
    name = "direct"
    colour, line = "#000000", (0, (1, 1))  # in every plot
    description = "profile bound to one CAS by name; no load balancer"

    def array_addresses(self, ctx):
        return {}

    def default_rcas(self, ctx):
        return f"{ctx.plan.by_role('cas')[0].name}.{LAB_DOMAIN}"
