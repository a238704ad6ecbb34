"""server-switchover: an admin moves every database active on a server to another one.

``Move-ActiveMailboxDatabase -Server EX1 -ActivateOnServer EX2``: the step before taking
a DAG member down for maintenance. Each database moves as a switchover (the old copy is
alive and hands over every row: nothing acknowledged is lost); what it does *not* move is
the databases' RpcClientAccessServer, which is why powering the server off afterwards
can still cut every Outlook off (experiments/multi-role-switchover.toml).
"""

from __future__ import annotations

from caslab.network.exchange_admin import move_database
from caslab.faults.base import Fault
from caslab.schema.fields import Field, SpecError


class ServerSwitchover(Fault):
    kind = "server-switchover"
    summary = ("Move-ActiveMailboxDatabase -Server: every database active on the target mailbox server moves to "
               "'to' (or each database's next copy)")
    target_roles = ("mailbox",)
    example = {"target": "mbx1", "to": "mbx2"}
    fields = {"to": Field(str, "", None, "a mailbox server holding copies, e.g. 'mbx2' ('' = each database's "
                                         "next copy)")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        if len(fault["target"]) != 1:
            raise SpecError(source, f"{key}.target", "one mailbox server", fault["target"])
        site = plan.host(fault["target"][0]).site
        mailboxes = [h.name for h in plan.by_role("mailbox", site)]
        if len(mailboxes) < 2:
            raise SpecError(source, f"{key}.target", "a mailbox server with another one in its site to move to",
                            fault["target"][0])
        if fault["to"] and (fault["to"] not in mailboxes or fault["to"] == fault["target"][0]):
            others = [m for m in mailboxes if m != fault["target"][0]]
            raise SpecError(source, f"{key}.to", f"another mailbox server of the target's site, one of {others}",
                            fault["to"])

    def elements(self, ctx):
        return [f"db:{db}" for db, layout in sorted(ctx.databases.items()) if layout.active in self.targets]

    def label(self):
        return f"server-switchover {self.targets[0]} to {self.spec['to'] or 'next copies'}"

    def inject(self, ctx):
        for db, layout in sorted(ctx.databases.items()):
            if layout.active not in self.targets:
                continue
            to = self.spec["to"] if self.spec["to"] in layout.copies else \
                next(c for c in layout.copies if c not in self.targets)
            move_database(ctx, db, to, set())
