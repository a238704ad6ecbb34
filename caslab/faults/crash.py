"""crash: the role's service process is killed; the host's kernel answers RST."""

from __future__ import annotations

import signal

from caslab.network.exchange_admin import fail_over_databases, role_processes
from caslab.faults.base import Fault


class Crash(Fault):
    kind = "crash"
    summary = "the service process is killed: the kernel answers RST (Active Manager fails databases over)"
    target_roles = ("cas", "mailbox", "autodiscover")
    fails_databases = True
    example = {"target": "cas2"}

    def inject(self, ctx):
        for host in self.targets:
            for proc in role_processes(ctx, host):
                proc.signal(signal.SIGKILL)
        fail_over_databases(ctx, set(self.targets))
