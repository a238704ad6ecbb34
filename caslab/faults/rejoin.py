"""rejoin: a drained CAS takes new sessions again."""

from __future__ import annotations

from caslab.faults import Fault


class Rejoin(Fault):
    kind = "rejoin"
    summary = "a drained CAS takes new sessions again (fails nothing)"
    requires = frozenset({"load_balancer"})

    def elements(self, ctx):
        return []

    def inject(self, ctx):
        from caslab.modes import mode_for

        mode = mode_for(ctx.mode)
        for host in self.targets:
            mode.rejoin(ctx, host)
