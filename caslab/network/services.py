"""Starting the Exchange roles and the clients inside their hosts, from one scenario spec.

Each process gets a JSON config file under the scenario's raw folder and writes its own
event log there; the runner merges the logs afterwards. What a start function learns
about the live lab it writes into the typed ``RunContext`` (see caslab/network/context.py).
"""

from __future__ import annotations

import json
from typing import Any, Callable

from caslab.network.context import DatabaseLayout, RunContext
from caslab.network.exchange_admin import host_fqdn
from caslab.network.netlab import LabProcess
from labcommon.catalogue import RCAS
from labcommon.ports import AUTODISCOVER_PORT, CAS_ADMIN_PORT, CAS_PORT, MAILBOX_PORT
from labcommon.programs import (
    AUTODISCOVER, CAS, CAS_HTTP, CLIENT, DNSMASQ, MAILBOX, AutodiscoverConfig, CasConfig, CasHttpConfig, ClientConfig,
    DatabaseCopyConfig, MailboxConfig, TargetConfig,
)
from topologies.plan import LAB_DOMAIN, HostPlan, LabPlan

DNSMASQ_BINARY = "/usr/sbin/dnsmasq"


def database_layout(spec: dict[str, Any], plan: LabPlan) -> dict[str, DatabaseLayout]:
    """DAG layout: DB i lives in its site (``exchange.database_site``, HQ by default), is
    active on that site's mailbox ((i-1) mod M)+1 and has a copy on every other one there."""
    layout = {}
    for i in range(spec["topology"]["databases"]):
        db = f"DB{i + 1}"
        mailboxes = plan.by_role("mailbox", spec["exchange"].get("database_site", {}).get(db, plan.sites[0].name))
        active = mailboxes[i % len(mailboxes)]
        copies = [active] + [m for m in mailboxes if m is not active]
        layout[db] = DatabaseLayout(active.name, [m.name for m in copies])
    return layout


def mailbox_address(plan: LabPlan, host: HostPlan) -> str:
    """Where CAS and DAG peers reach a mailbox server: its back-end address when the plan
    has a back-end network (the load balancer's switch never carries that traffic)."""
    return f"{plan.server_ip(host)}:{MAILBOX_PORT}"


def mailbox_process_name(host: HostPlan) -> str:
    """A mailbox server's service is named after its host, unless the host is a
    multi-role server whose CAS service has that name."""
    return f"{MAILBOX.key}-{host.name}" if "cas" in host.roles else MAILBOX.process_name(host.name)


def start_mailboxes(ctx: RunContext) -> list[LabProcess]:
    ctx.databases = database_layout(ctx.spec, ctx.plan)
    procs = []
    for host in ctx.plan.by_role("mailbox"):
        dbs = {}
        for db, entry in ctx.databases.items():
            if host.name in entry.copies:
                peers = [mailbox_address(ctx.plan, ctx.plan.host(n)) for n in entry.copies if n != host.name]
                dbs[db] = DatabaseCopyConfig(active=entry.active == host.name, peers=peers)
        exchange = ctx.spec["exchange"]
        name = mailbox_process_name(host)
        config = MailboxConfig(name=host.name, listen_port=MAILBOX_PORT, events=ctx.events_path(name),
                               store_dir=str(ctx.store_dir() / host.name), databases=dbs,
                               replication=exchange["replication"], log_messages=exchange["log_messages"],
                               log_interval_ms=exchange["log_interval_ms"])
        procs.append(ctx.start_program(MAILBOX, host.name, config, name=name))
    return procs


def start_cas(ctx: RunContext, http: CasHttpConfig | None = None) -> list[LabProcess]:
    """RPC Client Access on every CAS; with ``http`` (caslab.network.http_services), the same
    process serves the HTTPS virtual directories too (``roles.cas_http``)."""
    db_addresses = {db: [mailbox_address(ctx.plan, ctx.plan.host(n)) for n in entry.copies]
                    for db, entry in ctx.databases.items()}
    procs = []
    for host in ctx.plan.by_role("cas"):
        config = CasConfig(name=host.name, listen_port=CAS_PORT, events=ctx.events_path(host.name),
                           databases=db_addresses, admin_port=CAS_ADMIN_PORT,
                           dumpster_messages=ctx.spec["exchange"]["dumpster_messages"], http=http)
        procs.append(ctx.start_program(CAS_HTTP if http else CAS, host.name, config))
    return procs


def users_for(ctx: RunContext, client: HostPlan) -> list[dict[str, str]]:
    count = ctx.spec["clients"]["sessions_per_host"]
    dbs = sorted(ctx.databases)
    return [{"user": f"{client.name}u{i}", "db": dbs[i % len(dbs)]} for i in range(count)]


def probe_user(client: HostPlan) -> dict[str, str]:
    """The directory user the application prober of a client host logs on as."""
    return {"user": f"probe-{client.name}", "db": "DB1"}


def start_clients(ctx: RunContext, target_for: Callable[[HostPlan], TargetConfig]) -> list[LabProcess]:
    """target_for(client HostPlan) -> target config (see traffic.resolver)."""
    c = ctx.spec["clients"]
    procs = []
    if not c["sessions_per_host"]:
        return procs
    for index, host in enumerate(ctx.plan.by_role("client")):
        source_ips = []
        if c["distinct_source_ips"]:
            source_ips = ctx.plan.source_ips(host, c["sessions_per_host"])
            interface = ctx.lab.host_interface(host.name)
            for ip in source_ips:
                ctx.lab.run_in(host.name, ["ip", "addr", "add", f"{ip}/16", "dev", interface])
        config = ClientConfig(
            name=host.name, port=CAS_PORT, target=target_for(host), sessions=c["sessions_per_host"],
            interval_ms=c["interval_ms"], op_timeout_ms=c["op_timeout_ms"],
            connect_timeout_ms=c["connect_timeout_ms"], backoff_ms=c["backoff_ms"], select=c["select"],
            ops=c["ops"], users=users_for(ctx, host), source_ips=source_ips,
            auth=ctx.spec["exchange"]["auth"], prompt_answer_ms=c["prompt_answer_ms"],
            seed=ctx.spec["experiment"]["seed"] * 1000 + index + ctx.repetition * 100,
            events=ctx.events_path(host.name),
        )
        procs.append(ctx.start_program(CLIENT, host.name, config))
    return procs


def dns_records(ctx: RunContext, array_addresses: dict[str, list[str]]) -> dict[str, list[str]]:
    """Every host by name, plus each site's array FQDN -> the addresses the mode chose, or
    the CAS an admin listed by hand (``[[arrays]] records``)."""
    records = {f"{h.name}.{LAB_DOMAIN}": [h.ip] for h in ctx.plan.hosts}
    arrays = ctx.arrays()
    for site, addresses in array_addresses.items():
        if site in arrays:
            records[arrays[site]["fqdn"]] = addresses
    for array in arrays.values():
        if array.get("records"):
            records[array["fqdn"]] = [ctx.plan.host(name).ip for name in array["records"]]
    return records


DNS_USER, DNS_GROUP = "nobody", "nogroup"  # dnsmasq binds port 53, then runs as these


def dnsmasq_argv(listen_ip: str, records: dict[str, list[str]], ttl: int) -> list[str]:
    """dnsmasq authoritative for ``records`` only, on one address, as an unprivileged user
    once its socket is bound (a parser of network input never runs as root)."""
    argv = [DNSMASQ_BINARY, "--keep-in-foreground", "--conf-file=/dev/null", "--no-resolv", "--no-hosts", "--no-poll",
            "--bind-interfaces", f"--listen-address={listen_ip}", "--port=53", f"--user={DNS_USER}",
            f"--group={DNS_GROUP}", "--pid-file=", "--log-facility=-"]
    for name in sorted(records):
        for ip in records[name]:
            argv.append(f"--host-record={name},{ip},{ttl}")
    return argv


def start_dns(ctx: RunContext, records: dict[str, list[str]]) -> LabProcess:
    """A real DNS server (dnsmasq) in dns1, authoritative for the lab's names only."""
    dns = ctx.plan.by_role("dns")[0]
    argv = dnsmasq_argv(dns.ip, records, ctx.spec["dns"]["ttl_s"])
    ctx.dns_server = dns.ip
    (ctx.raw_dir / "dns-records.json").write_text(json.dumps(records, indent=1, sort_keys=True))
    return ctx.start_tool(DNSMASQ, dns.name, argv)


def rpc_client_access_servers(ctx: RunContext, default: str) -> dict[str, str]:
    """Each database's RpcClientAccessServer, as Set-MailboxDatabase would leave it.

    A database created before its site's array got the name of a CAS of the site at
    creation, and keeps it until an admin rebinds it: the classic stale profile.
    """
    exchange = ctx.spec["exchange"]
    first_cas = host_fqdn(ctx, ctx.plan.by_role("cas")[0].name)
    rcas = {}
    for db in sorted(ctx.databases):
        rcas[db] = first_cas if db in exchange["created_before_array"] else default
        if db in exchange["rpc_client_access_server"]:
            rcas[db] = host_fqdn(ctx, exchange["rpc_client_access_server"][db])
    return rcas


def start_autodiscover(ctx: RunContext, rcas: dict[str, str], more_users: dict[str, str] | None = None,
                       urls: dict[str, dict[str, str]] | None = None) -> list[LabProcess]:
    """One autodiscover service per site, all answering from the same directory; with
    ``urls`` (site -> {internal, external}) it also names the HTTPS URLs."""
    users = {u["user"]: u["db"] for client in ctx.plan.by_role("client")
             for u in users_for(ctx, client) + [probe_user(client)]}
    users.update(more_users or {})
    ctx.rcas = dict(rcas)
    procs = []
    for host in ctx.plan.by_role("autodiscover"):
        config = AutodiscoverConfig(name=host.name, listen_port=AUTODISCOVER_PORT, events=ctx.events_path(host.name),
                                    users=users, rcas=rcas, urls=(urls or {}).get(host.site))
        procs.append(ctx.start_program(AUTODISCOVER, host.name, config))
    ctx.log.emit(RCAS, servers=rcas, arrays=ctx.arrays())
    return procs
