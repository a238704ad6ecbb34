"""controller-crash: the SDN controller dies and is restarted after restart_after_s."""

from __future__ import annotations

import signal

from caslab.faults.base import Fault
from caslab.schema.fields import Field, non_negative


class ControllerCrash(Fault):
    kind = "controller-crash"
    summary = "the SDN controller is killed and restarted after restart_after_s; the switch keeps its flows"
    target_roles = ()
    requires = frozenset({"controller"})
    affects = "disrupted"
    example = {"restart_after_s": 0.5}
    fields = {"restart_after_s": Field((int, float), 2.0, non_negative, "seconds until the controller restarts")}

    def elements(self, ctx):
        return ["controller"]

    def label(self):
        return f"controller-crash (restart after {self.spec['restart_after_s']:g} s)"

    def inject(self, ctx):
        if ctx.controller is None or ctx.restart_controller is None:
            raise ValueError("controller-crash needs a controller")
        ctx.controller.signal(signal.SIGKILL)
        ctx.later(self.spec["restart_after_s"], ctx.restart_controller)
