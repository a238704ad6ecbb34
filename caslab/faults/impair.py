"""impair: a host's link is rate-limited, and given loss and delay where sch_netem exists.

Shaping is applied in both directions (on the host's interface and on its switch port) with
``tc``: ``tbf`` for the rate alone, ``netem`` when loss or delay is asked and the kernel
has it. Without ``sch_netem`` loss and delay are skipped with a ``capability_missing``
notice (the run and its report say so); the rate limit still applies.
"""

from __future__ import annotations

from caslab.base import system
from caslab.faults.base import Fault
from caslab.faults.poweroff import HOST_ROLES
from caslab.schema.fields import Field, num_range
from labcommon.catalogue import CAPABILITY_MISSING


class Impair(Fault):
    kind = "impair"
    summary = "rate-limit a host's link (rate_mbit); loss_pct and delay_ms where sch_netem exists, else a notice"
    target_roles = HOST_ROLES
    affects = "disrupted"
    example = {"target": "cas1", "rate_mbit": 5, "delay_ms": 20, "duration_s": 1.0}
    fields = {"rate_mbit": num_range(0, 0, 10000, "Mbit/s", "0: no rate limit"),
              "loss_pct": num_range(0, 0, 100, "%"),
              "delay_ms": num_range(0, 0, 5000, "ms"),
              "duration_s": Field((int, float), 0.0, lambda v: v >= 0, "seconds until the link is restored "
                                                                       "(0: impaired to the end)")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        from caslab.schema.fields import SpecError

        if not (fault["rate_mbit"] or fault["loss_pct"] or fault["delay_ms"]):
            raise SpecError(source, f"{key}.rate_mbit", "at least one of rate_mbit, loss_pct, delay_ms above 0")

    def label(self):
        parts = [f"{self.spec['rate_mbit']:g} Mbit/s" if self.spec["rate_mbit"] else "",
                 f"{self.spec['loss_pct']:g} % loss" if self.spec["loss_pct"] else "",
                 f"{self.spec['delay_ms']:g} ms" if self.spec["delay_ms"] else ""]
        return f"impair {','.join(self.targets)} " + ", ".join(p for p in parts if p)

    def qdisc(self, netem: bool) -> list[str]:
        rate, loss, delay = self.spec["rate_mbit"], self.spec["loss_pct"], self.spec["delay_ms"]
        if netem and (loss or delay):
            args = ["netem"]
            if delay:
                args += ["delay", f"{delay:g}ms"]
            if loss:
                args += ["loss", f"{loss:g}%"]
            if rate:
                args += ["rate", f"{rate:g}mbit"]
            return args
        return ["tbf", "rate", f"{rate:g}mbit", "burst", "64kb", "latency", "100ms"]

    def inject(self, ctx):
        netem = system.netem_available()
        if (self.spec["loss_pct"] or self.spec["delay_ms"]) and not netem:
            ctx.log.emit(CAPABILITY_MISSING, capability="netem",
                         detail=f"{self.label()}: loss and delay skipped, this kernel has no sch_netem"
                                + (" (the rate limit applies)" if self.spec["rate_mbit"] else " (nothing to apply)"))
            if not self.spec["rate_mbit"]:
                return
        for host in self.targets:
            for where, intf in ctx.lab.link_ends(host):
                ctx.lab.run_at(where, ["tc", "qdisc", "replace", "dev", intf, "root"] + self.qdisc(netem))

    def undo(self, ctx):
        for host in self.targets:
            for where, intf in ctx.lab.link_ends(host):
                ctx.lab.run_at(where, ["tc", "qdisc", "del", "dev", intf, "root"])
