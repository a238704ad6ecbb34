"""The program catalogue: every program the lab runs inside its hosts, declared once.

One record per program: its module (``python -m <module> CONFIG.json``) or, for the
outside tools (dnsmasq, HAProxy, tcpdump), none; the kind its CPU counts under in the
lab's cost (``process_cpu``); its typed configuration; the event that says it serves;
its start order; how its process (and its event log) is named after its host. The
controller is one too, though it runs in the root namespace: ``controllers.launcher``
runs its app, and the SDN NLB app reads its configuration from the file
``CASLAB_NLB_CONFIG`` names.

The configuration types are shared by both sides: the engine builds one (a dataclass,
so an unknown or missing key is a ``TypeError`` where it is written) and ``write_config``
checks its types before the file is written; the program reads it back with
``read_config``, which rejects an unknown or missing key and a value of the wrong type,
naming the file, the key and what was expected. No program reads a key its record does
not declare, and no key is written that no program reads.

The catalogue sits on the common floor (``labcommon``) so that the engine and the
programs, which never import each other, share it. This is to the programs what
``labcommon.catalogue`` is to the events.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import dacite

from labcommon.catalogue import HTTP_AUTODISCOVER, HTTP_REQUEST, NLB_UP, OP, SERVICE_UP, WNLB_UP
from labcommon.ports import ADMIN_PORT


class ConfigError(ValueError):
    """A program's configuration file is not what its record declares."""


# ---- the configurations ------------------------------------------------------------------
# kw_only: a record's required keys may follow a shared base's defaulted ones.

@dataclass(kw_only=True)
class ServiceConfig:
    """What every framed Exchange service (roles.service.listen) reads."""
    name: str
    listen_port: int
    events: str | None = None
    admin_port: int = ADMIN_PORT
    idle_timeout_s: float = 300.0      # a client connection silent this long is closed
    partial_timeout_s: float = 10.0    # a frame begun must be complete within this
    max_connections: int = 8192


@dataclass(kw_only=True)
class CasHttpConfig:
    """The HTTPS virtual directories a CAS serves beside RPC Client Access (roles.cas_http)."""
    port: int
    cert: str
    key: str
    users: dict[str, str]
    external_url: str
    time_scale: float = 1.0
    channel_idle_s: float = 300.0     # an Outlook Anywhere channel silent this long is closed
    idle_timeout_s: float = 120.0     # IIS's connectionTimeout default
    max_connections: int = 8192
    max_devices: int = 50_000         # ActiveSync devices remembered (LRU)


@dataclass(kw_only=True)
class CasConfig(ServiceConfig):
    databases: dict[str, list[str]]   # database -> every copy's mailbox address, active first
    dumpster_messages: int = 0
    max_sessions: int = 50_000
    mailbox_timeout_ms: int = 300
    locate_deadline_ms: int = 5000
    http: CasHttpConfig | None = None


@dataclass(kw_only=True)
class DatabaseCopyConfig:
    active: bool
    peers: list[str]


@dataclass(kw_only=True)
class MailboxConfig(ServiceConfig):
    store_dir: str
    databases: dict[str, DatabaseCopyConfig]
    replication: str = "sync"
    log_messages: int = 10
    log_interval_ms: int = 500


@dataclass(kw_only=True)
class AutodiscoverConfig(ServiceConfig):
    users: dict[str, str]              # user -> database
    rcas: dict[str, str]               # database -> RpcClientAccessServer
    urls: dict[str, str] | None = None  # internal / external HTTPS URL


@dataclass(kw_only=True)
class TargetConfig:
    """Where a client connects (traffic.resolver): fixed addresses, a DNS name, or
    autodiscover first (``address`` is then the autodiscover service)."""
    kind: str = "address"
    addresses: list[str] = field(default_factory=list)
    name: str = ""
    server: str = ""
    dns: str = ""
    address: str = ""
    rotate: bool = False
    refresh_s: float = 3600           # how long an autodiscover answer is kept
    timeout_ms: int = 1000
    max_ttl_s: int = 86_400


DEFAULT_OPS = {"read": 4, "send": 2, "sync": 1, "ping": 3}


@dataclass(kw_only=True)
class ClientConfig:
    name: str
    port: int
    target: TargetConfig
    sessions: int = 8
    interval_ms: int = 50
    op_timeout_ms: int = 1000
    connect_timeout_ms: int = 1000
    backoff_ms: list[int] = field(default_factory=lambda: [0, 100, 250, 500, 1000, 2000])
    select: str = "first"
    ops: dict[str, int] = field(default_factory=lambda: dict(DEFAULT_OPS))
    users: list[dict[str, str]] = field(default_factory=list)
    source_ips: list[str] = field(default_factory=list)
    seed: int = 1
    events: str | None = None
    auth: str = "ntlm"  # ntlm: a re-authentication is a credential prompt; kerberos: silent
    prompt_answer_ms: int = 0  # the user's time to type credentials at a prompt


@dataclass(kw_only=True)
class HttpTiming:
    """The HTTP clients' clock (the spec's ``http`` and ``clients`` timings)."""
    owa_interval_ms: int
    eas_sync_interval_ms: int
    oa_interval_ms: int
    request_timeout_ms: int
    eas_heartbeat_s: int
    oa_keepalive_s: float
    time_scale: float
    autodiscover_retry_ms: int
    connect_timeout_ms: int
    backoff_ms: list[int]


@dataclass(kw_only=True)
class HttpClientConfig:
    name: str
    events: str | None = None
    external: bool
    ca: str
    dns: str
    domain: str
    sessions: list[dict[str, Any]]
    ops: dict[str, int]
    seed: int = 1
    timing: HttpTiming
    autodiscover: str | None = None   # an internal client's autodiscover service


@dataclass(kw_only=True)
class ProberConfig:
    name: str
    target_ip: str
    port: int
    rate_hz: float = 10.0
    events: str | None = None
    duration_s: float | None = None
    iface: str | None = None
    timeout_ms: int = 200
    sport_range: list[int] = field(default_factory=lambda: [10000, 29999])
    send_rst: bool = False
    source_ip: str | None = None


@dataclass(kw_only=True)
class AppProberConfig:
    name: str
    rate_hz: float
    port: int
    target: TargetConfig
    user: str
    db: str
    timeout_ms: int = 1000
    events: str | None = None


@dataclass(kw_only=True)
class HealthMember:
    name: str
    ip: str


@dataclass(kw_only=True)
class HealthAgentConfig:
    vip: str
    members: list[HealthMember]
    port: int
    interval_ms: int
    timeout_ms: int
    check: str = "app"
    socket: str
    events: str | None = None


@dataclass(kw_only=True)
class WnlbAgentConfig:
    name: str
    host: str
    host_id: int
    vip: str
    interface: str
    mode: str
    heartbeat_ms: int
    missed: int
    stable: int
    affinity: str
    track_connections: bool
    control: str
    events: str | None = None


@dataclass(kw_only=True)
class NlbMember:
    """A CAS behind a VIP, and the switch port it hangs on."""
    name: str
    ip: str
    mac: str
    port_name: str


@dataclass(kw_only=True)
class NlbSource:
    """Who may send to a VIP: the sources behind one switch port (a client host, or the router)."""
    port_name: str
    mac: str              # the next hop behind that port (a challenge to a client is sent to it)
    prefixes: list[str]


@dataclass(kw_only=True)
class NlbVip:
    """One array VIP, on the switch with datapath id ``dpid``."""
    name: str
    ip: str
    mac: str
    dpid: int
    ports: list[int]                  # the TCP services balanced
    members: list[NlbMember]
    affinity: str = "none"            # none: per connection, single: client IP, network: client /24
    sources: list[NlbSource] = field(default_factory=list)


@dataclass(kw_only=True)
class NlbHealth:
    """The health agents' verdicts: ``fall`` failed probes take a member out, ``rise`` good ones bring it back."""
    fall: int = 2
    rise: int = 2
    socket: str | None = None         # the Unix datagram socket the agents report to; None: no probes


@dataclass(kw_only=True)
class NlbMeter:
    """OpenFlow meter 1: what the switch lets through to the controller."""
    rate_pps: int = 2000
    burst: int = 500


@dataclass(kw_only=True)
class NlbApi:
    """The admin API (controllers/nlb_api.py). Its token is never here: ``token_file`` (0600) holds it."""
    host: str = "127.0.0.1"
    port: int = 0
    fd: int | None = None             # a listening socket the controller inherits (the lab's way)
    token_file: str | None = None


# A dead CAS's connection is challenged at once, then again at these delays until its reset is
# seen. The switch forgets the connection (a conntrack flush) before the first challenge, so
# the client's answer reaches a survivor at once; a repeat is only for a lost challenge or
# answer. A dense schedule (1, 2, 3, 5, ... ms) repeated each challenge about ten times under
# a thousand sessions, while the answers queued for the saturated cores: 3.8 ms of CPU per
# reconnect against 2.3, reconnect p50 242 ms against 161 (docs/NLB.md, docs/SCALING.md).
CHALLENGE_DELAYS_MS = [25, 75, 175, 350]


@dataclass(kw_only=True)
class NlbConfig:
    """The SDN NLB app (controllers/sdn_nlb.py), named by ``CASLAB_NLB_CONFIG`` (the
    controller runs in the root namespace, started by controllers.launcher)."""
    vips: list[NlbVip]
    events: str | None = None
    dataplane: str = "controller"     # switch: OVS select group + conntrack; controller: a packet-in per connection
    fast_fail: bool = True            # reset a dead member's clients at once (challenges)
    conn_idle_s: int = 120            # controller dataplane: a pinned connection's flows expire after this
    challenge_delays_ms: list[float] = field(default_factory=lambda: list(CHALLENGE_DELAYS_MS))
    port_detection: bool = True       # a member's link state counts (the Windows NLB emulation turns it off)
    convergence_ms: float = 0         # a probe verdict waits this long (Windows NLB's convergence)
    packet_in_rate: float = 5000      # packet-ins per second the controller handles (token bucket)
    packet_in_burst: float = 1000
    meter: NlbMeter = field(default_factory=NlbMeter)
    health: NlbHealth = field(default_factory=NlbHealth)
    state_file: str | None = None     # what an admin set, kept across a restart; None: not kept
    datapath_name: str | None = None  # the switch's datapath, for its conntrack (None: the default one)
    ct_refresh_ms: float = 250        # the periodic conntrack read's shortest interval
    api: NlbApi | None = None


# ---- the records -------------------------------------------------------------------------

@dataclass(frozen=True)
class Program:
    """One program the lab runs in a host."""
    key: str
    kind: str                   # what its CPU counts under (labcommon.catalogue PROCESS_CPU)
    module: str | None          # python -m <module> CONFIG.json; None: an outside tool
    config: type | None         # its configuration's type (None: argv only)
    ready: str | None           # the event that says it serves; None: it says nothing
    order: int                  # start order in a run's start-up (lower first; the lab refuses another)
    named: str = "{host}"       # its process (and event log) name, after its host
    doc: str = ""
    # a program of sessions (the clients): the events, with their ``ok``, that say one of
    # its sessions is ready; the run waits until every session it started said so
    session_ready: tuple[tuple[str, bool], ...] = ()

    def process_name(self, host: str) -> str:
        """Its process (and event source) name on ``host``."""
        return self.named.format(host=host)


def program(key: str, kind: str, module: str | None, config: type | None, ready: str | None, order: int,
            named: str = "{host}", doc: str = "", session_ready: tuple[tuple[str, bool], ...] = ()) -> Program:
    record = Program(key, kind, module, config, ready, order, named, doc, session_ready)
    if key in PROGRAMS:
        raise ValueError(f"program {key!r} declared twice")
    PROGRAMS[key] = record
    return record


PROGRAMS: dict[str, Program] = {}

CONTROLLER = program("controller", "controller", "controllers.launcher", NlbConfig, NLB_UP, 0, named="controller",
                     doc="the OpenFlow controller (the SDN NLB or an L2 switch), in the root namespace; "
                         "the SDN NLB's configuration file is named by CASLAB_NLB_CONFIG")
WNLB_AGENT = program("wnlb-agent", "wnlb", "controllers.wnlb_agent", WnlbAgentConfig, WNLB_UP, 1, named="wnlb-{host}",
                     doc="a CAS's Windows NLB driver: NIC filter, heartbeats, convergence")
DNSMASQ = program("dnsmasq", "dns", None, None, None, 2, named="dnsmasq", doc="the lab's DNS server")
MAILBOX = program("mailbox", "mailbox", "roles.mailbox", MailboxConfig, SERVICE_UP, 3,
                  doc="a mailbox server: databases, DAG replication")
CAS = program("cas", "cas", "roles.cas", CasConfig, SERVICE_UP, 4, doc="RPC Client Access on a CAS")
CAS_HTTP = program("cas-http", "cas", "roles.cas_http", CasConfig, SERVICE_UP, 4,
                   doc="a CAS serving RPC Client Access and its HTTPS virtual directories")
AUTODISCOVER = program("autodiscover", "autodiscover", "roles.autodiscover", AutodiscoverConfig, SERVICE_UP, 5,
                       doc="a site's autodiscover service")
HEALTH_AGENT = program("health-agent", "health", "controllers.health_agent", HealthAgentConfig, SERVICE_UP, 6,
                       named="health-{host}", doc="the SDN NLB's health probes of its members")
HAPROXY = program("haproxy", "haproxy", None, None, None, 6, named="haproxy-{host}", doc="HAProxy, the hardware-style LB")
TCPDUMP = program("tcpdump", "capture", None, None, None, 7, named="tcpdump-{host}", doc="a client link's capture")
PROBER = program("prober", "prober", "traffic.prober", ProberConfig, None, 7, named="probe-{host}",
                 doc="scapy SYN probes to the array's first address")
APP_PROBER = program("app-prober", "prober", "traffic.app_prober", AppProberConfig, None, 7, named="appprobe-{host}",
                     doc="application probes through the array name")
CLIENT = program("client", "client", "traffic.client", ClientConfig, None, 8,
                 doc="a client host's Outlook sessions", session_ready=((OP, True),))
IPERF3 = program("iperf3", "bench", None, None, None, 9, named="iperf3", doc="caslab bench's throughput server")
# an HTTP session is also ready when it found autodiscover unreachable: it may never find
# its server, and that is what is measured
HTTP_CLIENT = program("http-client", "client", "traffic.http_client", HttpClientConfig, None, 8, named="{host}-http",
                      doc="a client host's OWA, ActiveSync and Outlook Anywhere sessions",
                      session_ready=((HTTP_REQUEST, True), (HTTP_AUTODISCOVER, False)))


# ---- both sides of a configuration file --------------------------------------------------

_DACITE = dacite.Config(strict=True, type_hooks={float: float})  # a JSON 10 is a fine float


def _unknown_keys(kind: type, data: Any, path: str = "") -> list[str]:
    """Every key of ``data`` that its dataclass (or a nested one) does not declare, by path."""
    if not (dataclasses.is_dataclass(kind) and isinstance(data, dict)):
        return []
    hints = typing.get_type_hints(kind)
    out = [f"{path}{key}" for key in data if key not in hints]
    for key, value in data.items():
        if key in hints:
            for part in _dataclass_parts(hints[key], value):
                out += _unknown_keys(part[0], part[1], f"{path}{key}{part[2]}.")
    return out


def _dataclass_parts(hint: Any, value: Any) -> list[tuple[type, Any, str]]:
    """The dataclass values inside one field's value: (type, value, path suffix)."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if dataclasses.is_dataclass(hint):
        return [(hint, value, "")]
    if len(args) == 1 and dataclasses.is_dataclass(args[0]) and typing.get_origin(hint) is not list:
        return [(args[0], value, "")]  # X | None
    if typing.get_origin(hint) is list and args and dataclasses.is_dataclass(args[0]) and isinstance(value, list):
        return [(args[0], v, f"[{i}]") for i, v in enumerate(value)]
    if typing.get_origin(hint) is dict and len(args) == 2 and dataclasses.is_dataclass(args[1]) \
            and isinstance(value, dict):
        return [(args[1], v, f"[{k!r}]") for k, v in value.items()]
    return []


def _checked(kind: type, data: Any, origin: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{origin}: expected a JSON object for {kind.__name__}, got {type(data).__name__}")
    unknown = _unknown_keys(kind, data)
    if unknown:
        raise ConfigError(f"{origin}: unknown key(s) {unknown} for {kind.__name__}; its keys are "
                          f"{[f.name for f in dataclasses.fields(kind)]}")
    try:
        return dacite.from_dict(kind, data, _DACITE)
    except dacite.MissingValueError as exc:
        raise ConfigError(f"{origin}: key {exc.field_path!r} is missing ({kind.__name__})") from None
    except dacite.WrongTypeError as exc:
        expected = getattr(exc.field_type, "__name__", str(exc.field_type))
        raise ConfigError(f"{origin}: key {exc.field_path!r} is {exc.value!r}; expected {expected}") from None
    except dacite.DaciteError as exc:
        raise ConfigError(f"{origin}: {exc}") from None


def config_json(record: Program, config: Any) -> str:
    """The engine's side: a program's configuration as the JSON its file holds, after
    checking it is the record's type and that the program will read it back."""
    if record.config is None or not isinstance(config, record.config):
        raise ConfigError(f"{record.key}: expected a {getattr(record.config, '__name__', 'no configuration')}, "
                          f"got {type(config).__name__}")
    data = dataclasses.asdict(config)
    _checked(record.config, data, f"{record.key} configuration")
    return json.dumps(data, indent=1, sort_keys=True)


def read_config(record: Program, path: str | Path) -> Any:
    """The program's side: its configuration file, checked against its record."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"{path}: cannot read a JSON configuration: {exc}") from None
    return _checked(record.config, data, str(path))
