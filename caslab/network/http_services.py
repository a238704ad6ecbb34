"""The HTTP side of a run: the lab CA, the CAS's HTTPS configuration, the published
names in DNS, and the OWA / ActiveSync / Outlook Anywhere clients.

Who finds what, as in an Exchange 2010 organisation:

* an **internal** HTTP client (in an AD site, ``http.internal``) asks its site's
  autodiscover service, which names the internal URL: the site's array FQDN (through
  its load balancer), or a CAS's own name where the mode has no array;
* an **external** client (the "Internet" site, no directory) resolves
  ``autodiscover.<domain>`` in DNS and asks it over HTTPS; the answer names the external
  URL (``http.external_host``). Both names resolve to the *published* addresses: HQ's
  array addresses in this mode (a VIP behind a load balancer, every CAS for DNS round
  robin, the first CAS for ``direct``). ``http.publish_autodiscover = false`` leaves
  ``autodiscover.<domain>`` out of DNS: external clients then never learn a URL.
"""

from __future__ import annotations

from typing import Any

from caslab.network.context import RunContext
from caslab.schema.http import counts, http_enabled
from caslab.network.netlab import LabProcess
from caslab.network.tls import make_lab_tls
from labcommon.ports import AUTODISCOVER_PORT, HTTPS_PORT
from labcommon.programs import HTTP_CLIENT, CasHttpConfig, HttpClientConfig, HttpTiming
from topologies.plan import LAB_DOMAIN, HostPlan

AUTODISCOVER_NAME = f"autodiscover.{LAB_DOMAIN}"


def prepare_tls(ctx: RunContext) -> None:
    """A lab CA for this run and a certificate for every name a client may ask for."""
    if not http_enabled(ctx.spec):
        return
    names = [ctx.spec["http"]["external_host"], AUTODISCOVER_NAME]
    names += [a["fqdn"] for a in ctx.arrays().values()]
    names += [h.fqdn for h in ctx.plan.by_role("cas")]
    ctx.tls = make_lab_tls(ctx.raw_dir / "tls", names, key_folder=ctx.socket_dir() / "tls")


def http_hosts(ctx: RunContext) -> list[HostPlan]:
    """Client hosts that run HTTP sessions: every Internet host, internal ones if asked."""
    if not http_enabled(ctx.spec):
        return []
    internal = ctx.plan.by_role("client") if ctx.spec["http"]["internal"] else []
    return internal + ctx.plan.by_role("external")


def session_specs(ctx: RunContext, host: HostPlan) -> list[dict[str, Any]]:
    """The HTTP sessions of one host: id (also the user name), protocol, database."""
    dbs = sorted(ctx.databases)
    out = []
    for protocol, count in counts(ctx.spec).items():
        for i in range(count):
            sid = f"{host.name}-{protocol}{i}"
            out.append({"sid": sid, "protocol": protocol, "user": sid, "db": dbs[len(out) % len(dbs)]})
    return out


def http_users(ctx: RunContext) -> dict[str, str]:
    return {s["user"]: s["db"] for host in http_hosts(ctx) for s in session_specs(ctx, host)}


def published_addresses(ctx: RunContext, array_addresses: dict[str, list[str]]) -> list[str]:
    """``array_addresses``: the mode's (site -> what its array name resolves to)."""
    hq = ctx.plan.sites[0].name
    return array_addresses.get(hq) or [ctx.plan.by_role("cas", hq)[0].ip]


def internal_host(ctx: RunContext, array_addresses: dict[str, list[str]], site: str) -> str:
    """The internal URL's host name of a site: its array, or a CAS where there is none."""
    arrays = ctx.arrays()
    if site in arrays and site in array_addresses:
        return arrays[site]["fqdn"]
    cas = ctx.plan.by_role("cas", site) or ctx.plan.by_role("cas")
    return cas[0].fqdn


def site_urls(ctx: RunContext, array_addresses: dict[str, list[str]]) -> dict[str, dict[str, str]] | None:
    """What each site's autodiscover names for HTTP clients (None without HTTP)."""
    if not http_enabled(ctx.spec):
        return None
    external = f"https://{ctx.spec['http']['external_host']}"
    return {s.name: {"internal": f"https://{internal_host(ctx, array_addresses, s.name)}", "external": external}
            for s in ctx.plan.sites if not s.external}


def dns_records(ctx: RunContext, array_addresses: dict[str, list[str]]) -> dict[str, list[str]]:
    """The published names: the external URL's host, and autodiscover if published."""
    if not http_enabled(ctx.spec):
        return {}
    published = published_addresses(ctx, array_addresses)
    records = {ctx.spec["http"]["external_host"]: published}
    if ctx.spec["http"]["publish_autodiscover"]:
        records[AUTODISCOVER_NAME] = published
    return records


def cas_config(ctx: RunContext) -> CasHttpConfig | None:
    """The ``http`` part of every CAS's config (None without HTTP)."""
    if not http_enabled(ctx.spec):
        return None
    from caslab.network.services import probe_user, users_for

    users = {u["user"]: u["db"] for c in ctx.plan.by_role("client") for u in users_for(ctx, c) + [probe_user(c)]}
    users.update(http_users(ctx))
    return CasHttpConfig(port=HTTPS_PORT, cert=str(ctx.tls.cert), key=str(ctx.tls.key), users=users,
                         external_url=f"https://{ctx.spec['http']['external_host']}",
                         time_scale=ctx.spec["http"]["time_scale"],
                         # an IN channel is silent at most one keep-alive period: twice that, and some
                         channel_idle_s=2 * ctx.spec["http"]["oa_keepalive_s"] * ctx.spec["http"]["time_scale"] + 30)


def source_addresses(ctx: RunContext, host: HostPlan, count: int) -> list[str]:
    """Addresses for a host's HTTP sessions, after those its Outlook sessions use."""
    if not ctx.spec["clients"]["distinct_source_ips"]:
        return []
    rpc = ctx.spec["clients"]["sessions_per_host"] if host.role == "client" else 0
    addresses = ctx.plan.source_ips(host, rpc + count)[rpc:]
    interface = ctx.lab.host_interface(host.name)
    for ip in addresses:
        ctx.lab.run_in(host.name, ["ip", "addr", "add", f"{ip}/16", "dev", interface])
    return addresses


def process_name(host: HostPlan) -> str:
    """A host's HTTP client process, and its event source."""
    return HTTP_CLIENT.process_name(host.name)


def client_config(ctx: RunContext, host: HostPlan, index: int) -> HttpClientConfig:
    http, clients = ctx.spec["http"], ctx.spec["clients"]
    sessions = session_specs(ctx, host)
    for spec, ip in zip(sessions, source_addresses(ctx, host, len(sessions))):
        spec["source_ip"] = ip
    for spec in sessions:
        spec["server"] = ctx.rcas.get(spec["db"], "")
    autodiscover = None
    if host.role == "client":
        autodiscover = f"{ctx.plan.by_role('autodiscover', host.site)[0].ip}:{AUTODISCOVER_PORT}"
    return HttpClientConfig(
        name=process_name(host), events=ctx.events_path(process_name(host)), external=host.role == "external",
        ca=str(ctx.tls.ca), dns=ctx.dns_server, domain=LAB_DOMAIN, sessions=sessions, ops=clients["ops"],
        seed=ctx.spec["experiment"]["seed"] * 1000 + 500 + index + ctx.repetition * 100,
        timing=HttpTiming(**{key: http[key] for key in ("owa_interval_ms", "eas_sync_interval_ms", "oa_interval_ms",
                                                        "request_timeout_ms", "eas_heartbeat_s", "oa_keepalive_s",
                                                        "time_scale", "autodiscover_retry_ms")},
                          connect_timeout_ms=clients["connect_timeout_ms"], backoff_ms=clients["backoff_ms"]),
        autodiscover=autodiscover)


def start_clients(ctx: RunContext) -> tuple[list[LabProcess], list[str], set[str]]:
    """Start every host's HTTP client; returns the processes, their event sources and
    the session ids the runner waits for."""
    procs, sources, sessions = [], [], set()
    for index, host in enumerate(http_hosts(ctx)):
        config = client_config(ctx, host, index)
        procs.append(ctx.start_program(HTTP_CLIENT, host.name, config))
        sources.append(config.name)
        sessions.update(s["sid"] for s in config.sessions)
    return procs, sources, sessions
