"""sdn-nlb: the lab's own network load balancer, a Ryu/os-ken app that owns the array VIP
(``controllers/sdn_nlb.py``), with health agents probing the CAS from the lb host.

``nlb.dataplane`` chooses where new connections are balanced: ``switch`` (Open vSwitch's
select group and conntrack, no packet-in in steady state) or ``controller`` (a packet-in
per connection, pinned by two flows). Both are kept so the lab can compare them.

With HTTP clients in the spec the VIP balances HTTPS (443) too, at layer 4: TLS goes
through to the CAS, and ``nlb.affinity = "single"`` keeps a client's connections (both
Outlook Anywhere channels, every OWA click) on one CAS, as Windows NLB's client-IP
affinity did. It has no idle timeout."""

from __future__ import annotations

from caslab.network import nlb_client
from caslab.schema.http import http_enabled
from caslab.modes.base import VipMode
from caslab.schema.fields import NUM, Field, choice, int_range, list_of
from labcommon.ports import CAS_PORT, HTTPS_PORT
from labcommon.programs import (
    CHALLENGE_DELAYS_MS, HEALTH_AGENT, HealthAgentConfig, HealthMember, NlbApi, NlbConfig, NlbHealth, NlbMember,
    NlbMeter, NlbSource, NlbVip,
)

AFFINITIES = ("none", "single", "network")


def ascending_delays(value: list) -> bool:
    return 0 < len(value) <= 32 and list_of(NUM, lambda v: 0.1 <= v <= 10000)(value) \
        and all(a < b for a, b in zip(value, value[1:]))


class SdnNlb(VipMode):
    name = "sdn-nlb"
    colour, line = "#0072B2", "-"  # in every plot
    description = "SDN load balancer: port-status and active-probe detection, consistent hashing, fast RST"
    controller_app = "controllers.sdn_nlb"
    capabilities = frozenset({"load_balancer", "controller"})
    multi_switch = False  # its dataplane is the site switch the CAS are on
    admin_api = True
    section = "nlb"
    settings = {
        "fast_fail": Field(bool, True, doc="reset the clients of a dead CAS at once"),
        "affinity": choice("none", AFFINITIES, "none: per connection, single: client IP, network: client /24"),
        "probe_interval_ms": int_range(100, 10, 60000),
        "probe_timeout_ms": int_range(100, 10, 60000),
        "fall": int_range(2, 1, 20),
        "rise": int_range(2, 1, 20),
        "probes": Field(bool, True, doc="active application probes from the lb host"),
        "dataplane": choice("switch", ("switch", "controller"),
                            "switch: OVS select group + conntrack; controller: a packet-in per connection"),
        "packet_in_rate": int_range(5000, 10, 1_000_000, "packet-ins per second the switch lets through (meter)"),
        "challenge_delays_ms": Field(list, list(CHALLENGE_DELAYS_MS), ascending_delays,
                                     "1 to 32 ascending delays in ms from 0.1 to 10000",
                                     "a dead CAS's connection is challenged at once, then again this many ms after "
                                     "(until its reset is seen)"),
    }

    def controller_config(self, ctx):
        nlb = ctx.spec["nlb"]
        rate = nlb["packet_in_rate"]
        return self.nlb_config(ctx, nlb["affinity"], fast_fail=nlb["fast_fail"], dataplane=nlb["dataplane"],
                               meter=NlbMeter(rate_pps=rate, burst=max(10, rate // 4)),
                               challenge_delays_ms=[float(d) for d in nlb["challenge_delays_ms"]])

    @staticmethod
    def sources(ctx, site) -> list[NlbSource]:
        """Who may send to a site's VIP: its client hosts (their own address and their
        sessions' source block), and through the router, the other sites' clients."""
        out = []
        for index, client in enumerate(ctx.plan.by_role("client", site.name)):
            block = f"10.{site.index}.{10 + index}.0/24"
            out.append(NlbSource(port_name=ctx.lab.switch_port_name(client.name), mac=client.mac,
                                 prefixes=[f"{client.ip}/32", block]))
        if ctx.plan.routed:
            others = [str(s.subnet) for s in ctx.plan.sites if s is not site]
            port, mac = ctx.lab.router_port(site.index)
            out.append(NlbSource(port_name=port, mac=mac, prefixes=others))
        return out

    def __init__(self):
        self.health_socket: str | None = None  # where the health agents report, this run

    def nlb_config(self, ctx, affinity: str, **settings) -> NlbConfig:
        vips = []
        for site in ctx.plan.sites:
            members = [NlbMember(name=h.name, ip=h.ip, mac=h.mac, port_name=ctx.lab.switch_port_name(h.name))
                       for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            vips.append(NlbVip(name=site.name, ip=site.vip, mac=site.vip_mac, dpid=site.index,
                               ports=[CAS_PORT, HTTPS_PORT] if http_enabled(ctx.spec) else [CAS_PORT],
                               affinity=affinity, members=members, sources=self.sources(ctx, site)))
        self.health_socket = str(ctx.socket_dir() / "nlb-health.sock")
        nlb = ctx.spec["nlb"]
        return NlbConfig(
            events=ctx.events_path("nlb"), vips=vips, datapath_name=ctx.lab.datapath_name,
            state_file=str(ctx.raw_dir / "nlb-admin-state.json"),
            health=NlbHealth(socket=self.health_socket, fall=nlb["fall"], rise=nlb["rise"]),
            api=NlbApi(host="127.0.0.1", port=ctx.nlb_api_port, fd=ctx.nlb_api_socket.fileno(),
                       token_file=str(ctx.nlb_token_file())), **settings)

    def start(self, ctx):
        nlb = ctx.spec["nlb"]
        if nlb["probes"]:
            self.start_probes(ctx, nlb["probe_interval_ms"], nlb["probe_timeout_ms"], "app")

    def start_probes(self, ctx, interval_ms: int, timeout_ms: int, check: str) -> None:
        for site in ctx.plan.sites:
            members = [HealthMember(name=h.name, ip=h.ip) for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            lb = ctx.plan.by_role("lb", site.name)[0]
            config = HealthAgentConfig(vip=site.vip, members=members, port=CAS_PORT, interval_ms=interval_ms,
                                       timeout_ms=timeout_ms, check=check, socket=self.health_socket,
                                       events=ctx.events_path(HEALTH_AGENT.process_name(lb.name)))
            ctx.start_program(HEALTH_AGENT, lb.name, config)

    def drain(self, ctx, host, deadline_s):
        site = ctx.plan.site(ctx.plan.host(host).site)
        nlb_client.call(ctx.nlb_api_port, f"/nlb/{site.vip}/members/{host}/drain", {"deadline_s": deadline_s},
                        ctx.nlb_api_token)

    def rejoin(self, ctx, host):
        site = ctx.plan.site(ctx.plan.host(host).site)
        nlb_client.call(ctx.nlb_api_port, f"/nlb/{site.vip}/members/{host}/rejoin", {}, ctx.nlb_api_token)
