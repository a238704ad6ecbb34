"""poweroff: the host's links (its back-end NIC's too) go down and every lab process on it dies: silence."""

from __future__ import annotations

import signal

from caslab.network.exchange_admin import fail_over_databases
from caslab.faults.base import Fault

HOST_ROLES = ("cas", "mailbox", "autodiscover", "dns", "lb", "client")


class Poweroff(Fault):
    kind = "poweroff"
    summary = "links down and every lab process on the host killed: silence (Active Manager fails databases over)"
    target_roles = HOST_ROLES
    fails_databases = True

    def inject(self, ctx):
        for host in self.targets:
            ctx.lab.set_link(host, up=False, backend=True)
            for proc in ctx.lab.processes_on(host):
                proc.signal(signal.SIGKILL)
        fail_over_databases(ctx, set(self.targets))
