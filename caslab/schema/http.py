"""The ``[http]`` section of a spec: OWA, ActiveSync and Outlook Anywhere clients, how
external clients find their server, and the time scale of the HTTP world.

Durations that are minutes long in the field (an ActiveSync heartbeat, an Outlook
Anywhere keep-alive, a load balancer's idle timeout) are given in real-world seconds
and multiplied by ``time_scale`` in the lab: 0.01 turns a 5-minute idle timeout into
3 s, so one short run shows what a day of minutes-long timers would. User activity
(clicks, operations) and request timeouts are lab milliseconds, like ``[clients]``.
"""

from __future__ import annotations

from typing import Any

from caslab.schema.fields import Field, SpecError, int_range, num_range, pattern
from topologies.plan import LAB_DOMAIN

PROTOCOL_KEYS = {"owa": "owa_users_per_host", "eas": "eas_devices_per_host", "oa": "oa_profiles_per_host"}
MAX_SOURCES = 250  # extra source addresses per client host (topologies.plan)

HTTP_FIELDS: dict[str, Field] = {
    "owa_users_per_host": int_range(0, 0, 100, "OWA browser sessions per HTTP client host"),
    "eas_devices_per_host": int_range(0, 0, 100, "ActiveSync devices per HTTP client host"),
    "oa_profiles_per_host": int_range(0, 0, 100, "Outlook Anywhere profiles per HTTP client host"),
    "internal": Field(bool, False, doc="internal client hosts run these sessions too (their URL from the site's "
                                       "autodiscover); Internet hosts always do"),
    "publish_autodiscover": Field(bool, True, doc="autodiscover.<domain> resolves to the published load balancer"),
    "external_host": pattern("mail." + LAB_DOMAIN, r"[a-z0-9-]{1,63}(\.[a-z0-9-]{1,63})+",
                             "a lower-case DNS name like 'mail.lab.test'", "the published name of OWA, "
                             "ActiveSync and Outlook Anywhere"),
    "time_scale": num_range(0.01, 0.0001, 1, "", "lab duration = real-world duration x this"),
    "eas_heartbeat_s": int_range(480, 60, 3540, "ActiveSync Ping HeartbeatInterval, real-world seconds"),
    "oa_keepalive_s": num_range(300, 1, 3600, "s", "Outlook Anywhere keep-alive when idle, real world"),
    "lb_idle_timeout_s": num_range(0, 0, 86400, "s", "the load balancer's idle timeout on HTTPS, real world; "
                                                     "0: an hour in the lab (none to speak of)"),
    "owa_interval_ms": int_range(200, 10, 600000, "lab ms between an OWA user's clicks"),
    "eas_sync_interval_ms": int_range(500, 10, 600000, "lab ms between a device's Sync requests"),
    "oa_interval_ms": int_range(100, 10, 600000, "lab ms between Outlook Anywhere operations"),
    "request_timeout_ms": int_range(3000, 10, 600000, "lab ms a request (not a Ping) may take before it fails"),
    "autodiscover_retry_ms": int_range(1000, 10, 600000, "lab ms between autodiscover attempts that failed"),
}


def counts(spec: dict[str, Any]) -> dict[str, int]:
    """Protocol -> sessions per HTTP client host (only protocols with sessions)."""
    return {p: spec["http"][key] for p, key in PROTOCOL_KEYS.items() if spec["http"][key]}


def http_enabled(spec: dict[str, Any]) -> bool:
    return bool(counts(spec))


def check_http(source: str, scenario: dict[str, Any], mode_capabilities: frozenset[str], mode: str,
               host_names: set[str]) -> None:
    """Consistency of the [http] section with the rest of one scenario."""
    http, topo, clients = scenario["http"], scenario["topology"], scenario["clients"]
    per_host = sum(counts(scenario).values())
    if topo["internet_client_hosts"] and not per_host:
        raise SpecError(source, "topology.internet_client_hosts", "0, or HTTP sessions to run there "
                                                                  "(http.owa_users_per_host, ...)",
                        topo["internet_client_hosts"])
    if not clients["sessions_per_host"] and not (per_host and (http["internal"] or topo["internet_client_hosts"])):
        raise SpecError(source, "clients.sessions_per_host", "at least 1 when no HTTP session runs anywhere", 0)
    if clients["distinct_source_ips"] and clients["sessions_per_host"] + per_host > MAX_SOURCES:
        raise SpecError(source, "http", f"at most {MAX_SOURCES} sessions per client host with "
                                        "clients.distinct_source_ips (RPC and HTTP together)",
                        clients["sessions_per_host"] + per_host)
    if http["lb_idle_timeout_s"] and "idle_timeout" not in mode_capabilities:
        raise SpecError(source, "http.lb_idle_timeout_s", f"0: mode {mode} has no idle timeout to set",
                        http["lb_idle_timeout_s"])
    name = http["external_host"]
    if name.split(".")[0] in host_names or name == f"autodiscover.{LAB_DOMAIN}" or name == LAB_DOMAIN:
        raise SpecError(source, "http.external_host", "a name that is not a lab host's nor autodiscover's", name)


def lab_seconds(spec: dict[str, Any], real_s: float) -> float:
    """A real-world duration as the lab runs it."""
    return real_s * spec["http"]["time_scale"]
