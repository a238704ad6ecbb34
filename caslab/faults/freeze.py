"""freeze: the service process is stopped (SIGSTOP): handshakes complete, nothing answers."""

from __future__ import annotations

import signal

from caslab.network.exchange_admin import role_processes
from caslab.faults.base import Fault
from caslab.schema.fields import Field, non_negative


class Freeze(Fault):
    kind = "freeze"
    summary = "the service process is stopped (SIGSTOP): TCP handshakes still complete, no answers"
    target_roles = ("cas", "mailbox", "autodiscover")
    fails_databases = True
    example = {"target": "cas1", "duration_s": 1.0}
    fields = {"duration_s": Field((int, float), 0.0, non_negative,
                                  "seconds until the process continues (0: frozen to the end)")}

    def inject(self, ctx):
        for host in self.targets:
            for proc in role_processes(ctx, host):
                proc.signal(signal.SIGSTOP)

    def undo(self, ctx):
        for host in self.targets:
            for proc in role_processes(ctx, host):
                proc.signal(signal.SIGCONT)
