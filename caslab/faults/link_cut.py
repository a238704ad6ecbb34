"""link-cut: a CAS loses its path to the mailbox servers (blackhole routes in the CAS, to
the addresses it reaches them at: their back-end ones with a back-end network)."""

from __future__ import annotations

from caslab.faults.base import Fault
from caslab.schema.fields import Field, non_negative


class LinkCut(Fault):
    kind = "link-cut"
    summary = "a CAS loses its path to every mailbox server (blackhole routes); clients still reach it"
    target_roles = ("cas",)
    example = {"target": "cas1", "duration_s": 1.0}
    fields = {"duration_s": Field((int, float), 0.0, non_negative,
                                  "seconds until the routes are restored (0: cut to the end)")}

    def _routes(self, ctx, action: str) -> None:
        for host in self.targets:
            for mailbox in ctx.plan.by_role("mailbox"):
                ctx.lab.run_in(host, ["ip", "route", action, "blackhole", f"{ctx.plan.server_ip(mailbox)}/32"])

    def inject(self, ctx):
        self._routes(ctx, "add")

    def undo(self, ctx):
        self._routes(ctx, "del")
