"""rejoin: a drained CAS takes new sessions again."""

from __future__ import annotations

from caslab.faults.base import Fault


class Rejoin(Fault):
    kind = "rejoin"
    summary = "a drained CAS takes new sessions again (fails nothing)"
    requires = frozenset({"load_balancer"})

    def elements(self, ctx):
        return []

    def inject(self, ctx):
        for host in self.targets:
            ctx.mode.rejoin(ctx, host)
