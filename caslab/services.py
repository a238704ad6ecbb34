"""Starting the Exchange roles and the clients inside their hosts, from one scenario spec.

Each process gets a JSON config file under the scenario's raw folder and writes its own
event log there; the runner merges the logs afterwards.
"""

from __future__ import annotations

import json
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from caslab.netlab import LabNetwork, LabProcess
from topologies.plan import HostPlan, LabPlan

CAS_PORT = 6001
MAILBOX_PORT = 7001
AUTODISCOVER_PORT = 7002
PYTHON = sys.executable


@dataclass
class Context:
    """Everything one scenario run shares: spec, plan, live network, folders, log."""

    spec: dict[str, Any]
    plan: LabPlan
    lab: LabNetwork
    raw_dir: Path
    log: Any
    controller: LabProcess | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def socket_dir(self) -> Path:
        """A short private folder for Unix sockets (their paths must stay under 108 bytes,
        which a deep result folder would not); removed at teardown."""
        if "socket_dir" not in self.extra:
            self.extra["socket_dir"] = Path(tempfile.mkdtemp(prefix="caslab-"))
        return self.extra["socket_dir"]

    def arrays(self) -> dict[str, dict[str, str]]:
        """Site name -> {name, fqdn} of its CAS array (New-ClientAccessArray)."""
        configured = self.spec.get("arrays")
        if configured is None:
            return {s.name: {"name": f"{s.name}-Array", "fqdn": s.array_fqdn} for s in self.plan.sites
                    if self.plan.by_role("cas", s.name)}
        return {a["site"]: {"name": a["name"], "fqdn": a["fqdn"]} for a in configured}

    def events_path(self, source: str) -> str:
        return str(self.raw_dir / f"{source}.jsonl")

    def write_config(self, name: str, config: dict[str, Any]) -> Path:
        path = self.raw_dir / "config" / f"{name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(config, indent=1, sort_keys=True))
        return path

    def start_module(self, host: str, name: str, module: str, config: dict[str, Any]) -> LabProcess:
        path = self.write_config(name, config)
        return self.lab.popen_in(host, name, [PYTHON, "-m", module, str(path)])


def databases(spec: dict[str, Any], plan: LabPlan) -> dict[str, dict[str, Any]]:
    """DAG layout: DB i is active on mailbox ((i-1) mod M)+1 and has a copy on every other."""
    mailboxes = plan.by_role("mailbox", plan.sites[0].name)
    layout = {}
    for i in range(spec["topology"]["databases"]):
        active = mailboxes[i % len(mailboxes)]
        copies = [active] + [m for m in mailboxes if m is not active]
        layout[f"DB{i + 1}"] = {"active": active.name, "copies": [m.name for m in copies]}
    return layout


def mailbox_address(host: HostPlan) -> str:
    return f"{host.ip}:{MAILBOX_PORT}"


def start_mailboxes(ctx: Context) -> list[LabProcess]:
    layout = databases(ctx.spec, ctx.plan)
    ctx.extra["databases"] = layout
    procs = []
    for host in ctx.plan.by_role("mailbox", ctx.plan.sites[0].name):
        dbs = {}
        for db, entry in layout.items():
            if host.name in entry["copies"]:
                peers = [mailbox_address(ctx.plan.host(n)) for n in entry["copies"] if n != host.name]
                dbs[db] = {"active": entry["active"] == host.name, "peers": peers}
        config = {"name": host.name, "listen_port": MAILBOX_PORT, "events": ctx.events_path(host.name),
                  "store_dir": str(ctx.raw_dir / "store" / host.name), "databases": dbs}
        procs.append(ctx.start_module(host.name, host.name, "roles.mailbox", config))
    return procs


def start_cas(ctx: Context) -> list[LabProcess]:
    layout = ctx.extra["databases"]
    db_addresses = {db: [mailbox_address(ctx.plan.host(n)) for n in entry["copies"]] for db, entry in layout.items()}
    procs = []
    for host in ctx.plan.by_role("cas"):
        config = {"name": host.name, "listen_port": CAS_PORT, "events": ctx.events_path(host.name),
                  "databases": db_addresses}
        procs.append(ctx.start_module(host.name, host.name, "roles.cas", config))
    return procs


def users_for(ctx: Context, client: HostPlan) -> list[dict[str, str]]:
    count = ctx.spec["clients"]["sessions_per_host"]
    dbs = sorted(ctx.extra["databases"])
    return [{"user": f"{client.name}u{i}", "db": dbs[i % len(dbs)]} for i in range(count)]


def start_clients(ctx: Context, target_for) -> list[LabProcess]:
    """target_for(client HostPlan) -> target config (see traffic.resolver)."""
    c = ctx.spec["clients"]
    procs = []
    for index, host in enumerate(ctx.plan.by_role("client")):
        source_ips = []
        if c["distinct_source_ips"]:
            source_ips = ctx.plan.source_ips(host, c["sessions_per_host"])
            node = ctx.lab.node(host.name)
            for ip in source_ips:
                node.cmd(f"ip addr add {ip}/16 dev {node.intf().name}")
        config = {
            "name": host.name, "port": CAS_PORT, "target": target_for(host), "sessions": c["sessions_per_host"],
            "interval_ms": c["interval_ms"], "op_timeout_ms": c["op_timeout_ms"],
            "connect_timeout_ms": c["connect_timeout_ms"], "backoff_ms": c["backoff_ms"], "select": c["select"],
            "ops": c["ops"], "users": users_for(ctx, host), "source_ips": source_ips,
            "seed": ctx.spec["experiment"]["seed"] * 1000 + index + ctx.extra.get("repetition", 0) * 100,
            "events": ctx.events_path(host.name),
        }
        procs.append(ctx.start_module(host.name, host.name, "traffic.client", config))
    return procs


DNSMASQ = "/usr/sbin/dnsmasq"


def dns_records(ctx: Context, array_addresses: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every host by name, plus each site's array FQDN -> the addresses the mode chose."""
    from topologies.plan import LAB_DOMAIN

    records = {f"{h.name}.{LAB_DOMAIN}": [h.ip] for h in ctx.plan.hosts}
    arrays = ctx.arrays()
    for site, addresses in array_addresses.items():
        if site in arrays:
            records[arrays[site]["fqdn"]] = addresses
    return records


def start_dns(ctx: Context, records: dict[str, list[str]]) -> LabProcess:
    """A real DNS server (dnsmasq) in dns1, authoritative for the lab's names only."""
    dns = ctx.plan.by_role("dns")[0]
    ttl = ctx.spec["dns"]["ttl_s"]
    argv = [DNSMASQ, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
            "--bind-interfaces", f"--listen-address={dns.ip}", "--port=53", "--user=root", "--pid-file=",
            "--log-facility=-"]
    for name in sorted(records):
        for ip in records[name]:
            argv.append(f"--host-record={name},{ip},{ttl}")
    ctx.extra["dns_server"] = dns.ip
    (ctx.raw_dir / "dns-records.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    return ctx.lab.popen_in(dns.name, "dnsmasq", argv)


def host_fqdn(ctx: Context, name: str) -> str:
    """'cas2' -> 'cas2.lab.test', 'array:Branch' -> that site's array FQDN, an FQDN as is."""
    from topologies.plan import LAB_DOMAIN

    if name.startswith("array:"):
        return ctx.arrays()[name.split(":", 1)[1]]["fqdn"]
    return name if "." in name else f"{name}.{LAB_DOMAIN}"


def rpc_client_access_servers(ctx: Context, default: str) -> dict[str, str]:
    """Each database's RpcClientAccessServer, as Set-MailboxDatabase would leave it.

    A database created before its site's array got the name of a CAS of the site at
    creation, and keeps it until an admin rebinds it: the classic stale profile.
    """
    exchange = ctx.spec["exchange"]
    first_cas = host_fqdn(ctx, ctx.plan.by_role("cas")[0].name)
    rcas = {}
    for db in sorted(ctx.extra["databases"]):
        rcas[db] = first_cas if db in exchange["created_before_array"] else default
        if db in exchange["rpc_client_access_server"]:
            rcas[db] = host_fqdn(ctx, exchange["rpc_client_access_server"][db])
    return rcas


def start_autodiscover(ctx: Context, rcas: dict[str, str]) -> list[LabProcess]:
    """One autodiscover service per site, all answering from the same directory."""
    users = {u["user"]: u["db"] for client in ctx.plan.by_role("client") for u in users_for(ctx, client)}
    ctx.extra["rcas"] = dict(rcas)
    procs = []
    for host in ctx.plan.by_role("autodiscover"):
        config = {"name": host.name, "listen_port": AUTODISCOVER_PORT, "events": ctx.events_path(host.name),
                  "users": users, "rcas": rcas}
        procs.append(ctx.start_module(host.name, host.name, "roles.autodiscover", config))
    ctx.log.emit("rcas", servers=rcas, arrays=ctx.arrays())
    return procs
