"""rebind: Set-MailboxDatabase -RpcClientAccessServer gives a database a new server name."""

from __future__ import annotations

from caslab.network.exchange_admin import admin_call, host_fqdn
from caslab.schema.exchange import server_names
from caslab.faults.base import Fault
from caslab.schema.fields import Field, SpecError
from labcommon.catalogue import RCAS_SET


class Rebind(Fault):
    kind = "rebind"
    summary = "Set-MailboxDatabase -RpcClientAccessServer: autodiscover answers a new name; profiles see it when they ask"
    target_roles = ()
    example = {"database": "DB1", "to": "cas2"}
    fields = {"database": Field(str, "DB1", None, "a database name like 'DB1'"),
              "to": Field(str, "", None, "the new RpcClientAccessServer: 'array:<site>' or a CAS like 'cas2'")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        databases = [f"DB{i + 1}" for i in range(scenario["topology"]["databases"])]
        if fault["database"] not in databases:
            raise SpecError(source, f"{key}.database", f"a database of this topology, one of {databases}",
                            fault["database"])
        allowed = server_names(scenario, plan)
        if fault["to"] not in allowed:
            missing = " (missing)" if not fault["to"] else ""
            raise SpecError(source, f"{key}.to", f"one of {allowed}{missing}", fault["to"] or None)

    def elements(self, ctx):
        return []

    def label(self):
        return f"rebind {self.spec['database']} to {self.spec['to']}"

    def inject(self, ctx):
        """Every site's autodiscover learns it now; profiles only when they next ask."""
        server = host_fqdn(ctx, self.spec["to"])
        for ad in ctx.plan.by_role("autodiscover"):
            reply = admin_call(ctx, ad.name, {"op": "set_rcas", "db": self.spec["database"], "server": server})
            ctx.log.emit(RCAS_SET, db=self.spec["database"], server=server, autodiscover=ad.name,
                         ok=bool(reply.get("ok")))
        ctx.rcas[self.spec["database"]] = server
