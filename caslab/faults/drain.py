"""drain: an admin removes a CAS from the load balancer; existing sessions finish."""

from __future__ import annotations

from caslab.faults.base import Fault
from caslab.schema.fields import Field, non_negative


class Drain(Fault):
    kind = "drain"
    summary = "graceful removal from the load balancer: no new sessions, existing ones stay (until deadline_s)"
    requires = frozenset({"load_balancer"})
    example = {"target": "cas1", "deadline_s": 5.0}
    fields = {"deadline_s": Field((int, float), 30.0, non_negative,
                                  "seconds after which remaining sessions are cut (SDN NLB)")}

    def inject(self, ctx):
        for host in self.targets:
            ctx.mode.drain(ctx, host, self.spec["deadline_s"])
