"""dag-switchover: an admin moves a database's active copy to another mailbox server."""

from __future__ import annotations

from caslab.network.exchange_admin import move_database
from caslab.faults.base import Fault
from caslab.schema.fields import Field, SpecError


class DagSwitchover(Fault):
    kind = "dag-switchover"
    summary = "the active copy of a database moves to another server (database, to: a mailbox server or the next copy)"
    target_roles = ()
    example = {"database": "DB1", "to": "mbx2"}
    fields = {"database": Field(str, "DB1", None, "a database name like 'DB1'"),
              "to": Field(str, "", None, "a mailbox server with a copy, e.g. 'mbx2' ('' = the next copy)")}

    @classmethod
    def check(cls, fault, scenario, plan, source, key):
        databases = [f"DB{i + 1}" for i in range(scenario["topology"]["databases"])]
        if fault["database"] not in databases:
            raise SpecError(source, f"{key}.database", f"a database of this topology, one of {databases}",
                            fault["database"])
        mailboxes = [h.name for h in plan.by_role("mailbox", plan.sites[0].name)]
        if len(mailboxes) < 2:
            raise SpecError(source, f"{key}.kind", "at least two mailbox servers (topology.mailboxes >= 2) "
                                                   "for a DAG switchover", fault["kind"])
        if fault["to"] and fault["to"] not in mailboxes:
            raise SpecError(source, f"{key}.to", f"a mailbox server holding a copy, one of {mailboxes}", fault["to"])

    def elements(self, ctx):
        return [f"db:{self.spec['database']}"]

    def label(self):
        return f"dag-switchover {self.spec['database']} to {self.spec['to'] or 'next copy'}"

    def inject(self, ctx):
        layout = ctx.databases[self.spec["database"]]
        to = self.spec["to"] or next(c for c in layout.copies if c != layout.active)
        move_database(ctx, self.spec["database"], to, set())  # a switchover: the old copy is alive
