"""Every event the lab writes, declared once: name, producer, meaning, fields and units.

Producers emit these constants (``log.emit(OP, session=..., ...)``) and consumers
compare against them (``e["ev"] == OP``): an ``EventType`` is a ``str`` with its schema
attached, so the JSON lines stay plain strings while the code can only name events that
are documented here. ``docs/EVENTS.md`` is generated from this module
(``python -m labcommon.catalogue``) and a test keeps the two equal; another test fails
when an event is consumed but never produced.

Every record also carries ``ts`` (CLOCK_MONOTONIC ns: all hosts share one kernel, so it
is one clock across hosts), ``src`` (the writing process: a host name like ``cl1``, or
``runner``, ``nlb``, ``probe-cl1``) and ``ev``; the runner adds ``scenario`` and ``rep``
when it merges a run's logs into ``events.jsonl``.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

TYPES = {"str": str, "int": int, "float": (int, float), "bool": bool, "list": list, "dict": dict,
         "str|null": (str, type(None)), "int|null": (int, type(None)), "float|null": (int, float, type(None)),
         "any": object}


@dataclass(frozen=True)
class FieldDoc:
    type: str
    doc: str
    unit: str = ""
    optional: bool = False


def f(type_: str, doc: str, unit: str = "") -> FieldDoc:
    return FieldDoc(type_, doc, unit)


def opt(type_: str, doc: str, unit: str = "") -> FieldDoc:
    return FieldDoc(type_, doc, unit, optional=True)


class EventType(str):
    """An event name that knows its schema; compares and serialises as the plain name."""

    producer: str
    doc: str
    fields: dict[str, FieldDoc]

    def __new__(cls, name: str, producer: str, doc: str, fields: dict[str, FieldDoc]):
        self = super().__new__(cls, name)
        self.producer, self.doc, self.fields = producer, doc, fields
        return self

    def problems(self, record: dict[str, Any]) -> list[str]:
        """What is wrong with one record of this event (empty when it conforms)."""
        out = []
        for name, spec in self.fields.items():
            if name not in record:
                if not spec.optional:
                    out.append(f"{self}: missing field {name!r}")
                continue
            value = record[name]
            kinds = TYPES[spec.type]
            if isinstance(value, bool) and spec.type in ("int", "float", "int|null", "float|null"):
                out.append(f"{self}.{name}: expected {spec.type}, got a bool")
            elif not isinstance(value, kinds):
                out.append(f"{self}.{name}: expected {spec.type}, got {type(value).__name__}")
        for name in record:
            if name not in self.fields and name not in ENVELOPE:
                out.append(f"{self}: undocumented field {name!r}")
        return out


ENVELOPE = {"ts": f("int", "CLOCK_MONOTONIC time of the event", "ns"),
            "src": f("str", "the process that wrote it (host name, runner, nlb, probe-<host> ...)"),
            "ev": f("str", "the event name"),
            "scenario": opt("str", "scenario id, added when the runner merges a run's logs"),
            "rep": opt("int", "repetition (0-based), added when the runner merges a run's logs")}

CATALOGUE: dict[str, EventType] = {}
GROUPS: dict[str, list[str]] = {}


def event(name: str, producer: str, doc: str, /, **fields: FieldDoc) -> EventType:
    if name in CATALOGUE:
        raise ValueError(f"event {name!r} declared twice")
    CATALOGUE[name] = EventType(name, producer, doc, fields)
    GROUPS.setdefault(producer, []).append(name)
    return CATALOGUE[name]


def problems(record: dict[str, Any]) -> list[str]:
    """Schema problems of one event record, whatever its kind."""
    name = record.get("ev")
    if name not in CATALOGUE:
        return [f"undocumented event {name!r}"]
    missing = [k for k in ("ts", "src") if k not in record]
    return [f"{name}: missing {k!r}" for k in missing] + CATALOGUE[name].problems(record)


SESSION = f("str", "client session id, '<client host>-s<index>'")

# ---------------------------------------------------------------- client emulator (traffic.client)
CLIENT_UP = event("client_up", "client", "the client process started its sessions",
                  sessions=f("list", "ids of every session this process runs"), target=f("dict", "how sessions find a CAS"))
CLIENT_DOWN = event("client_down", "client", "the client process is exiting (SIGTERM)",
                    sessions=f("int", "number of sessions it ran"))
AUTODISCOVER = event("autodiscover", "client", "autodiscover gave the session a (new) RpcClientAccessServer",
                     session=SESSION, server=f("str", "the profile's server name"), db=f("str|null", "mailbox database"))
RESOLVED = event("resolved", "client", "the session resolved its server name to addresses (DNS, TTL cached)",
                 session=SESSION, name=f("str", "the name asked"), addresses=f("list", "the answer, in the order this session tries it (the first is the "
                                                          "one it uses)"))
CONNECT_FAIL = event("connect_fail", "client", "a connection attempt failed",
                     session=SESSION, addr=f("str", "address tried"), reason=f("str", "exception name or 'resolve'"))
CONNECT_OK = event("connect_ok", "client", "a TCP connection to a CAS (or the VIP) is established",
                   session=SESSION, addr=f("str", "address connected to"), lport=f("int", "local TCP port"),
                   laddr=f("str", "local (client) address"))
LOGON = event("logon", "client", "the session is authenticated on a CAS; ts is when the reply reached the host "
                                 "(the kernel's receive stamp)",
              session=SESSION, cas=f("str|null", "the CAS that answered"), db=f("str", "the user's database"),
              reauth=f("bool", "credentials had to be given again (a CAS that did not know the session)"),
              resumed=f("bool", "the CAS still knew the session (no credentials needed)"),
              prompt=opt("bool", "with NTLM a re-authentication is a user-visible credential prompt"))
OP = event("op", "client", "one operation finished; ts is when its reply reached the host (the kernel's receive "
                           "stamp, however late the client's event loop read it) or when it failed",
           session=SESSION, op=f("str", "read / send / sync / ping"), ok=f("bool", "the reply said ok"),
           lat_us=f("int", "request to reply (or failure)", "us"), cas=f("str|null", "the CAS that answered"),
           msg_id=opt("str", "id of the message sent (op = send)"), error=opt("str|null", "error of a failed reply"),
           unreplicated=opt("list", "passive copies (addresses) that did not confirm this acknowledged send in time: "
                                    "it was stored on the active copy only"))
DOWN = event("down", "client", "the session's connection became unusable and was closed",
             session=SESSION, reason=f("str", "reset / timeout / eof / auth_required / ..."))

# ---------------------------------------------------------------- HTTP clients (traffic.http_client)
PROTOCOL = f("str", "owa / eas / oa (Outlook Web App, Exchange ActiveSync, Outlook Anywhere)")
HTTP_SESSION = f("str", "HTTP session id (also its user name), '<client host>-<protocol><index>'")
HTTP_CLIENT_UP = event("http_client_up", "http client", "an HTTP client process started its sessions",
                       sessions=f("dict", "HTTP session id -> protocol"),
                       external=f("bool", "an Internet host: it finds its server through autodiscover in DNS"))
HTTP_AUTODISCOVER = event("http_autodiscover", "http client", "a session asked autodiscover where to connect",
                          session=HTTP_SESSION, protocol=PROTOCOL, ok=f("bool", "it got a URL"),
                          via=f("str", "site (the AD site's autodiscover service) / dns (autodiscover.<domain> "
                                       "over HTTPS)"),
                          url=f("str|null", "the URL the session will use"),
                          lat_us=f("int", "from asking to the answer (or failure)", "us"),
                          cas=f("str|null", "the CAS that answered over HTTPS"),
                          reason=opt("str", "why it failed: resolve / connect / tls / http <status> / ..."))
HTTP_REQUEST = event("http_request", "http client", "one HTTP request (or one RPC over an Outlook Anywhere channel "
                                                    "pair) finished; ts is when it ended",
                     session=HTTP_SESSION, protocol=PROTOCOL,
                     cmd=f("str", "owa: login / read / send; eas: ping / sync; oa: rpc_out / rpc_in (channel "
                                  "set-up), logon, read / send / sync / ping, keepalive"),
                     ok=f("bool", "a good answer"), status=f("int|null", "HTTP status (null: none arrived)"),
                     lat_us=f("int", "request to answer (or failure)", "us"),
                     cas=f("str|null", "the CAS that answered (its X-FEServer header)"),
                     error=opt("str", "why it failed"),
                     msg_id=opt("str", "id of the message sent (cmd = send): acknowledged mail the metrics look "
                                       "for in the mailbox"),
                     unreplicated=opt("list", "passive copies that did not confirm this acknowledged send in time "
                                              "(OWA and Outlook Anywhere sends)"))
HTTP_LOGON = event("http_logon", "http client", "a session logged on at a CAS (OWA form login, Outlook Anywhere "
                                                "logon over its channels)",
                   session=HTTP_SESSION, protocol=PROTOCOL, cas=f("str|null", "the CAS that accepted it"),
                   reauth=f("bool", "it had logged on before: a CAS that did not hold its session forced it "
                                    "(OWA 440 Login Timeout, RPC auth_required)"),
                   prompt=f("bool", "the user saw it: an OWA login form, an NTLM credential prompt"))
HTTP_DOWN = event("http_down", "http client", "a long-lived exchange broke: an Outlook Anywhere channel pair, or an "
                                              "ActiveSync Ping long-poll that ended without its answer",
                  session=HTTP_SESSION, protocol=PROTOCOL, reason=f("str", "eof / reset / timeout / http <status> / ..."))

# ---------------------------------------------------------------- SYN prober (traffic.prober)
PROBE_UP = event("probe_up", "prober", "the SYN prober's sniffer is ready; probes follow",
                 target=f("str", "address probed"), port=f("int", "port probed"), rate_hz=f("float", "probe rate", "1/s"),
                 iface=f("str", "interface sniffed"), src=f("str", "probe source address"), filter=f("str", "BPF filter"),
                 timeout_ms=f("int", "a probe without reply fails after this", "ms"),
                 sport_range=f("list", "source ports used"), send_rst=f("bool", "explicit RST after a SYN-ACK"))
PROBE = event("probe", "prober", "one SYN probe; ts is when it was sent",
              seq=f("int", "probe counter"), sport=f("int", "source port"), isn=f("int", "initial sequence number"),
              ok=f("bool", "a SYN-ACK came back"), result=f("str", "synack / rst / timeout / error"),
              rtt_us=opt("int", "send to reply", "us"), error=opt("str", "why the send failed"))
PROBE_DOWN = event("probe_down", "prober", "the SYN prober stopped",
                   sent=f("int", "probes sent"), ok=f("int", "answered"), rst=f("int", "refused"),
                   timeout=f("int", "unanswered"), error=f("int", "could not be sent"))

# ---------------------------------------------------------------- application prober (traffic.app_prober)
APP_PROBE = event("app_probe", "prober", "one application probe through the array name: resolve, connect, "
                                         "logon, one operation; ts is when it started",
                  seq=f("int", "probe counter"), ok=f("bool", "every stage succeeded"),
                  stage=f("str", "the stage reached: resolve / connect / logon / op / done"),
                  lat_us=f("int", "start to end (success or failure)", "us"), cas=f("str|null", "the CAS that served it"),
                  error=opt("str", "why it failed"))

# ---------------------------------------------------------------- Exchange roles (roles.*)
SERVICE_UP = event("service_up", "role", "a service listens (or the health agent runs)",
                   role=f("str", "cas / mailbox / autodiscover / health"), port=opt("int", "TCP port"),
                   members=opt("list", "members probed (health agent)"))
PROTOCOL_ERROR = event("protocol_error", "role", "a peer sent a bad frame; it got an error and the connection closed",
                       peer=f("str", "the peer"), reason=f("str", "what was wrong"))
INTERNAL_ERROR = event("internal_error", "role", "a request raised inside a service (a bug); one connection closed",
                       peer=f("str", "the peer"), reason=f("str", "exception"))
IDLE_CLOSED = event("idle_closed", "role", "a connection idle or half-sent for too long was closed",
                    peer=f("str", "the peer"), reason=f("str", "idle / partial_frame"))
AUTH_FAILED = event("auth_failed", "role", "a logon with wrong credentials was refused",
                    session=SESSION, user=f("str", "user name"))
REAUTH = event("reauth", "role", "a session logged on again at this CAS (it did not know the session)",
               session=SESSION, user=f("str", "user name"))
HTTP_SESSION_UNKNOWN = event("http_session_unknown", "role", "a CAS's HTTPS service got a request for a session "
                                                              "it does not hold (an OWA cookie, an RPC channel)",
                             protocol=PROTOCOL, detail=f("str", "what was unknown"))
RPC_CHANNEL = event("rpc_channel", "role", "an Outlook Anywhere channel (RPC_IN_DATA / RPC_OUT_DATA) opened, was "
                                           "paired or closed at this CAS's RPC proxy",
                    channel=f("str", "in / out"), state=f("str", "open / paired / unpaired / closed"),
                    reason=opt("str", "why it closed"))
RCAS_CHANGED = event("rcas_changed", "role", "autodiscover's RpcClientAccessServer for a database changed",
                     db=f("str", "database"), server=f("str", "new server name"), previous=f("str", "old server name"))
REPLICATION_FAILED = event("replication_failed", "role", "a passive copy did not take the log (no answer in time, a "
                                                          "refusal, a frame that could not be read or written, a "
                                                          "shipper error): marked failed, retried; said once",
                           db=f("str", "database"), peer=f("str", "address of the copy"),
                           reason=f("str", "exception and its message"))
REPLICATION_RESUMED = event("replication_resumed", "role", "a copy that had failed was resynced",
                            db=f("str", "database"), peer=f("str", "address of the copy"), rows=f("int", "rows sent"))
DB_ROLE = event("db_role", "role", "a database copy became active or passive on this server",
                db=f("str", "database"), server=f("str", "mailbox server"), active=f("bool", "now active"),
                missing=opt("int", "acknowledged messages this copy lacks at activation"))

# ---------------------------------------------------------------- load balancers (controllers.*, HAProxy log)
NLB_UP = event("nlb_up", "nlb", "the SDN NLB app started", vips=f("list", "VIP addresses"),
               fast_fail=f("bool", "reset clients of a dead member"), dataplane=opt("str", "controller or switch"))
NLB_SWITCH = event("nlb_switch", "nlb", "a switch connected to the NLB", dpid=f("int", "datapath id"))
LB_MEMBER = event("lb_member", "nlb", "a load balancer changed a member's state (SDN NLB, HAProxy, Windows NLB)",
                  member=f("str", "CAS name"), reason=f("str", "port_down / probe_down:<detail> / drain / admin_down / ..."),
                  alive=f("bool", "member is healthy"), accepts_new=f("bool", "member takes new connections"),
                  vip=opt("str", "the VIP"), draining=opt("bool", "member is draining"),
                  detail=opt("str", "the load balancer's own words (HAProxy log line)"))
NLB_EVICT = event("nlb_evict", "nlb", "the NLB dropped every connection pinned to a member",
                  vip=f("str", "the VIP"), member=f("str", "CAS name"), reason=f("str", "why"),
                  conns=f("int", "connections dropped"), fast_fail=f("bool", "clients are being reset"),
                  lookup_ms=opt("float", "switch dataplane: reading the member's connections from conntrack", "ms"),
                  since_ms=opt("float", "from the member's change to the first challenges sent", "ms"),
                  flush_ms=opt("float", "switch dataplane: finding and dropping the member's cached datapath "
                                        "flows", "ms"),
                  cached=opt("int", "switch dataplane: connections challenged at once from the last conntrack read"),
                  flushed=opt("int", "switch dataplane: cached datapath flows of the member dropped"))
NLB_HEALTH_SOCKET_ERROR = event("nlb_health_socket_error", "nlb", "the health socket could not be opened",
                                path=f("str", "socket path"), reason=f("str", "error"))
NLB_CONVERGING = event("nlb_converging", "nlb", "a probe verdict waits for the convergence delay",
                      vip=f("str", "the VIP"), member=f("str", "CAS name"), alive=f("bool", "the verdict"))
NLB_SWITCH_ERROR = event("nlb_switch_error", "nlb", "the switch refused a message of the NLB (OpenFlow error)",
                         dpid=f("int", "datapath id"), type=f("int", "OpenFlow error type"),
                         code=f("int", "OpenFlow error code"), data=f("str", "start of the refused message, hex"))
NLB_SWITCH_UNUSABLE = event("nlb_switch_unusable", "nlb", "the NLB cannot serve its VIP on this switch",
                            dpid=f("int", "datapath id"), reason=f("str", "why"))
NLB_SWITCH_REFUSED = event("nlb_switch_refused", "nlb", "a second connection claimed the datapath id of a switch "
                                                     "whose channel is live: closed, nothing it sent was used",
                           dpid=f("int", "datapath id"))
NLB_SWITCH_GONE = event("nlb_switch_gone", "nlb", "a switch's OpenFlow channel to the NLB died (it may connect again)",
                        dpid=f("int", "datapath id"))
NLB_CONN = event("nlb_conn", "nlb", "a new connection was pinned to a member (controller dataplane)",
                 vip=f("str", "the VIP"), client=f("str", "client ip:port"), member=f("str", "CAS name"))
NLB_RELEARN = event("nlb_relearn", "nlb", "a restarted controller re-learned connections from the switch",
                    dpid=f("int", "datapath id"), conns=f("int", "connections re-learned"))
NLB_RESET = event("nlb_reset", "nlb", "a client was sent an exact RST for a dead member's connection (switch "
                                     "dataplane); with via = survivor the NLB saw a copy after the reset was sent",
                  vip=f("str", "the VIP"), client=f("str", "client ip:port"),
                  member=f("str|null", "the dead member (null: not known from the segment)"),
                  via=opt("str", "controller: the NLB's own RST; survivor: a live CAS's kernel answered the dead "
                                 "member's segment the switch readdressed to it"))
NLB_GUARD = event("nlb_guard", "nlb", "the NLB refused packets it was sent (over its packet-in rate)",
                  reason=f("str", "rate_limited"), count=f("int", "packets refused in the last second"))
PROBE_STATE = event("probe_state", "nlb", "a health agent's probe verdict for a member changed",
                    member=f("str", "CAS name"), ok=f("bool", "probe succeeded"), detail=f("str", "why it failed"))
# ---------------------------------------------------------------- Windows NLB agents (controllers.wnlb_agent)
WNLB_UP = event("wnlb_up", "wnlb", "a CAS's NLB driver (agent) configured its NIC and filter and starts heartbeats",
                vip=f("str", "the cluster IP"), host_id=f("int", "NLB host id (priority), 1-32"),
                mode=f("str", "unicast / multicast"), cluster_mac=f("str", "02-BF-<VIP> or 03-BF-<VIP>"),
                interface=f("str", "the cluster NIC"), heartbeat_ms=f("int", "AliveMsgPeriod", "ms"),
                missed=f("int", "AliveMsgTolerance"), affinity=f("str", "none / single / network"))
WNLB_CONVERGING = event("wnlb_converging", "wnlb", "a host's view of the cluster changed: it starts (or restarts) "
                                                  "convergence",
                        vip=f("str", "the cluster IP"), view=f("list", "hosts it now sees alive"),
                        reason=f("str", "member_down:<host> / member_up:<host> / drainstop:<host> / start:<host> ..."),
                        restart=f("bool", "membership changed again during a convergence"),
                        restarts=f("int", "restarts of this convergence so far"))
WNLB_CONVERGED = event("wnlb_converged", "wnlb", "a host completed convergence and swapped its bucket sets",
                       vip=f("str", "the cluster IP"), view=f("list", "hosts alive"),
                       members=f("list", "hosts that own buckets (alive, not draining)"),
                       buckets=f("dict", "host -> buckets it owns now"), owned=f("list", "the buckets this host owns now"),
                       moved=f("int", "buckets whose owner changed, cluster-wide"),
                       gained=f("list", "buckets this host took"), lost=f("list", "buckets this host gave away"),
                       took_ms=f("float", "from the start of this convergence", "ms"),
                       restarts=f("int", "times it restarted"),
                       departed=f("dict", "host that left -> connections it reported in its last heartbeat"),
                       broken=f("int", "this host's established connections in buckets it gave away and did not keep"),
                       kept=f("int", "established connections it keeps serving in buckets it gave away"))
WNLB_DRAIN = event("wnlb_drain", "wnlb", "drainstop / start on a host: draining, drained (no connection left), "
                                        "deadline (the rest cut), started",
                   vip=f("str", "the cluster IP"), state=f("str", "draining / drained / deadline / started"),
                   conns=f("int", "established connections to the VIP on this host (cut ones for deadline)"))
LB_ADMIN = event("lb_admin", "runner", "an admin command to HAProxy's runtime API",
                 command=f("str", "the command"), answer=f("str", "HAProxy's answer"))

# ---------------------------------------------------------------- runner (caslab.run.scenario, caslab.faults)
SCENARIO_START = event("scenario_start", "runner", "a scenario repetition starts",
                       mode=f("str", "HA mode"), label=f("str", "scenario label"), repetition=f("int", "0-based"),
                       datapath=f("str", "OVS datapath"), plan=f("dict", "host -> role, ip, site"))
SCENARIO_END = event("scenario_end", "runner", "a scenario repetition ended", ok=f("bool", "it completed"),
                     error=opt("str", "why it did not"))
MEASURE_START = event("measure_start", "runner", "the measurement window opens (faults count from here)",
                      observe_s=f("float", "window length", "s"))
CLIENTS_READY = event("clients_ready", "runner", "every client session completed an operation (warm-up starts)",
                      sessions=f("int", "sessions expected and seen"),
                      missing=opt("list", "sessions that had not completed one when the wait ended "
                                          "(timing.all_ready = false)"))
CLOCKS = event("clocks", "runner", "CLOCK_REALTIME read beside CLOCK_MONOTONIC (ts): how packet captures, "
                                   "stamped in wall time, are put on the events' clock",
               wall_ns=f("int", "CLOCK_REALTIME read right after ts", "ns"),
               spread_ns=f("int", "the two reads' distance: the uncertainty of wall_ns - ts", "ns"))
MEASURE_END = event("measure_end", "runner", "the measurement window closes")
FAULT = event("fault", "runner", "a fault is injected; ts is its instant t_fault",
              kind=f("str", "fault kind"), targets=f("list", "hosts targeted"),
              elements=f("list", "what it fails: host names, db:<name>, controller"), label=f("str", "readable label"),
              index=opt("int", "position in the spec's [[faults]]"),
              affects=opt("str", "'on_elements' or 'disrupted' (sessions count as affected only if disrupted)"))
FAULT_DONE = event("fault_done", "runner", "a fault's injection finished",
                   kind=f("str", "fault kind"), targets=f("list", "hosts targeted"), index=opt("int", "fault position"))
FAULT_UNDONE = event("fault_undone", "runner", "a fault was reverted (link up again, process continued, ...)",
                     kind=f("str", "fault kind"), targets=f("list", "hosts"), index=opt("int", "fault position"))
LIVE_COMMAND = event("live_command", "runner", "a command given to a live lab (caslab up) from another shell "
                                               "or its CLI: a fault, an NLB admin action, stop",
                     command=f("str", "the command, as the lab understood it"), ok=f("bool", "it was carried out"),
                     answer=f("str", "the lab's answer, or why it refused"))
LINK_STATE = event("link_state", "runner", "a fault set a link up or down", host=f("str", "host"),
                   up=f("bool", "link is up"))
DB_ACTIVE = event("db_active", "runner", "Active Manager made a copy of a database active",
                  db=f("str", "database"), server=f("str", "new active server"), previous=f("str", "old one"),
                  ok=f("bool", "the server confirmed"), missing=opt("int", "acknowledged messages the copy lacked"))
DB_DISMOUNTED = event("db_dismounted", "runner", "Active Manager left a database dismounted: no surviving copy "
                                                 "was allowed to mount (AutoDatabaseMountDial) or answered",
                      db=f("str", "database"), previous=f("str", "the copy that died"),
                      missing=f("int|null", "rows the best surviving copy lacked"), reason=f("str", "why"))
DUMPSTER_RESUBMIT = event("dumpster_resubmit", "runner", "after a failover mounted a copy, a CAS's transport "
                                                         "dumpster resubmitted its recent messages of the database",
                          db=f("str", "database"), cas=f("str", "the CAS (hub transport) whose dumpster it was"),
                          resubmitted=f("int", "messages resubmitted"),
                          recovered=f("int", "of them, messages the mounted copy lacked"))
RCAS_SET = event("rcas_set", "runner", "Set-MailboxDatabase -RpcClientAccessServer reached an autodiscover service",
                 db=f("str", "database"), server=f("str", "new server name"), autodiscover=f("str", "host"),
                 ok=f("bool", "it confirmed"))
RCAS = event("rcas", "runner", "each database's RpcClientAccessServer at start",
             servers=f("dict", "database -> server name"), arrays=f("dict", "site -> {name, fqdn}"))
CPU = event("cpu", "runner", "CPU idle over the last second (Mininet-HiFi fidelity check)",
            idle_pct=f("float", "idle share of all cores: idle + iowait over user .. steal of /proc/stat "
                                "(guest time is inside user and nice)", "%"))
LOAD = event("load", "runner", "the machine's CPU counters, read every 25 ms (cumulative, raw): what a failover's "
                              "recovery cost the cores (caslab.results.metrics.load)",
             idle_ticks=f("int", "idle + iowait of all cores so far (/proc/stat)", "ticks"),
             total_ticks=f("int", "user .. steal of all cores so far (/proc/stat)", "ticks"),
             tick_ms=f("float", "one tick (USER_HZ)", "ms"),
             pressure_us=f("int|null", "time so far in which some runnable task waited for a CPU (/proc/pressure/cpu, "
                                       "'some total'); null where the kernel has no PSI", "us"))
PROCESS_CPU = event("process_cpu", "runner", "CPU a process used over the measurement window (the lab's own cost): "
                                           "every lab process that ran in it, ovs-vswitchd and the runner",
                    name=f("str", "process name (role host, controller, ovs-vswitchd, runner, ...)"),
                    pid=f("int", "its process id (a restarted process is another event with the same name)"),
                    kind=f("str", "its program's kind (labcommon.programs): client / cas / mailbox / autodiscover / "
                                  "dns / controller / health / wnlb / prober / capture / haproxy / bench / ovs / runner"),
                    cpu_ms=f("float", "user + system CPU time in the window (its own, not its children's)", "ms"),
                    window_ms=f("float", "the window", "ms"),
                    started_in_window=f("bool", "started after the window opened: counted from its start"),
                    ended_in_window=f("bool", "ended before the window closed: counted up to its death"))
WAN_FIREWALL = event("wan_firewall", "runner", "what the WAN router's firewall dropped (topology.wan_firewall): "
                                               "CAS connections to another site's mailbox servers",
                     dropped=f("int", "packets dropped over the whole run"), detail=f("str", "the rule, in words"))
CAPABILITY_MISSING = event("capability_missing", "runner", "something the spec asked for is unavailable here",
                           capability=f("str", "e.g. netem"), detail=f("str", "what was skipped"))
CONTROLLER_START = event("controller_start", "runner", "the controller process started",
                         app=f("str", "app module"), pid=f("int", "process id"))
PROCESS_EXIT = event("process_exit", "runner", "a lab process ended on its own during the run (not by a fault)",
                     name=f("str", "process name"), host=f("str|null", "host it ran in"),
                     returncode=f("int|null", "exit status"))
WNLB_FLOOD = event("wnlb_flood", "runner", "what a host that is not a cluster member received over the "
                                         "measurement window (counters on its NIC and on its switch port)",
                   host=f("str", "the host"), port=f("str", "its switch port"),
                   cluster_frames=f("int|null", "frames for a cluster MAC (null: the counters could not be read)"),
                   cluster_bytes=f("int|null", "their bytes, Ethernet header included", "bytes"),
                   heartbeat_frames=f("int|null", "NLB heartbeat frames (ethertype 0x886F)"),
                   heartbeat_bytes=f("int|null", "their bytes, Ethernet header included", "bytes"),
                   port_tx_bytes=f("int|null", "every byte the switch sent to this port (OVS counter)", "bytes"),
                   window_ms=f("float", "measurement window", "ms"),
                   error=opt("str", "why the counters are unknown"))
VM_NOTIFY = event("vm_notify", "runner", "a hypervisor announced a VM's MAC with a RARP on its uplink "
                                        "(VMware 'Notify Switches'), at VM start or after a move",
                  vm=f("str", "the VM (host)"), hypervisor=f("str", "hv1, hv2 ..."), mac=f("str", "the MAC announced"))
VM_MOVED = event("vm_moved", "runner", "a VM's port moved to another hypervisor (vMotion)",
                 vm=f("str", "the VM (host)"), previous=f("str", "hypervisor it left"), hypervisor=f("str", "hypervisor it runs on"))
MAILBOX_CONTENTS = event("mailbox_contents", "runner", "what a database copy holds at the end",
                         db=f("str", "database"), server=f("str", "mailbox server"),
                         active=f("bool", "this copy is the active one at the end"), msg_ids=f("list", "message ids"))


def markdown() -> str:
    """docs/EVENTS.md: the schema of events.jsonl, generated from this module."""
    lines = ["# Events (`events.jsonl`)", "",
             "Generated by `python -m labcommon.catalogue > docs/EVENTS.md` from `labcommon/catalogue.py`;",
             "a test keeps it in step. One JSON object per line, sorted by `ts`. Load it with",
             "`pandas.read_json('events.jsonl', lines=True)`.", "",
             "Every event carries:", "", "| field | type | unit | meaning |", "|---|---|---|---|"]
    lines += [f"| `{k}` | {v.type}{' (optional)' if v.optional else ''} | {v.unit} | {v.doc} |"
              for k, v in ENVELOPE.items()]
    for producer, names in GROUPS.items():
        lines += ["", f"## {producer}", ""]
        for name in names:
            ev = CATALOGUE[name]
            lines += [f"### `{name}`", "", ev.doc + ".", ""]
            if ev.fields:
                lines += ["| field | type | unit | meaning |", "|---|---|---|---|"]
                lines += [f"| `{k}` | {v.type}{' (optional)' if v.optional else ''} | {v.unit} | {v.doc} |"
                          for k, v in ev.fields.items()]
                lines.append("")
    return "\n".join(lines).rstrip() + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
