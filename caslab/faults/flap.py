"""flap: a host's link goes down and up ``count`` times, once per ``period_s``."""

from __future__ import annotations

from caslab.faults.base import Fault
from caslab.faults.poweroff import HOST_ROLES
from caslab.schema.fields import Field, int_range, positive
from labcommon.catalogue import LINK_STATE


class Flap(Fault):
    kind = "flap"
    summary = "the host's link goes down and up count times, each cycle period_s long (down for down_s of it)"
    target_roles = HOST_ROLES
    example = {"target": "cas1", "count": 2, "period_s": 0.6}
    fields = {"count": int_range(3, 1, 1000, "down/up cycles"),
              "period_s": Field((int, float), 1.0, positive, "seconds per down/up cycle"),
              "down_s": Field((int, float), 0.0, lambda v: v >= 0, "seconds the link stays down per cycle "
                                                                   "(0: half the period)")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        from caslab.schema.fields import SpecError

        if fault["down_s"] >= fault["period_s"]:
            raise SpecError(source, f"{key}.down_s", f"less than period_s ({fault['period_s']:g})", fault["down_s"])

    def label(self):
        return f"flap {','.join(self.targets)} x{self.spec['count']} every {self.spec['period_s']:g} s"

    def _set(self, ctx, up: bool) -> None:
        for host in self.targets:
            ctx.lab.set_link(host, up=up)
            ctx.log.emit(LINK_STATE, host=host, up=up)

    def inject(self, ctx):
        period = self.spec["period_s"]
        down_for = self.spec["down_s"] or period / 2
        self._set(ctx, up=False)
        ctx.later(down_for, lambda: self._set(ctx, up=True))
        for cycle in range(1, self.spec["count"]):
            ctx.later(cycle * period, lambda: self._set(ctx, up=False))
            ctx.later(cycle * period + down_for, lambda: self._set(ctx, up=True))

    def undo(self, ctx):
        self._set(ctx, up=True)
