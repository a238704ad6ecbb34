"""sdn-nlb: the lab's own network load balancer, a Ryu/os-ken app that owns the array VIP
(``controllers/sdn_nlb.py``), with health agents probing the CAS from the lb host."""

from __future__ import annotations

from typing import Any

from caslab import nlb_client
from caslab.modes import VipMode
from caslab.schema import Field, choice, int_range
from labcommon.ports import CAS_PORT

AFFINITIES = ("none", "single", "network")


class SdnNlb(VipMode):
    name = "sdn-nlb"
    description = "SDN load balancer: port-status and active-probe detection, consistent hashing, fast RST"
    controller_app = "controllers.sdn_nlb"
    capabilities = frozenset({"load_balancer", "controller"})
    section = "nlb"
    settings = {
        "fast_fail": Field(bool, True, doc="reset the clients of a dead CAS at once"),
        "affinity": choice("none", AFFINITIES, "none: per connection, single: client IP, network: client /24"),
        "probe_interval_ms": int_range(100, 10, 60000),
        "probe_timeout_ms": int_range(100, 10, 60000),
        "fall": int_range(2, 1, 20),
        "rise": int_range(2, 1, 20),
        "probes": Field(bool, True, doc="active application probes from the lb host"),
    }

    def controller_config(self, ctx):
        return self.nlb_config(ctx, ctx.spec["nlb"]["affinity"], fast_fail=ctx.spec["nlb"]["fast_fail"])

    def nlb_config(self, ctx, affinity: str, **settings) -> dict[str, Any]:
        vips = []
        for site in ctx.plan.sites:
            members = [{"name": h.name, "ip": h.ip, "mac": h.mac, "port_name": ctx.lab.switch_port_name(h.name)}
                       for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            vips.append({"name": site.name, "fqdn": ctx.arrays().get(site.name, {}).get("fqdn", ""),
                         "ip": site.vip, "mac": site.vip_mac,
                         "dpid": site.index, "ports": [CAS_PORT], "affinity": affinity, "members": members})
        ctx.nlb_socket = str(ctx.socket_dir() / "nlb-health.sock")
        nlb = ctx.spec["nlb"]
        return {
            "events": ctx.events_path("nlb"), "vips": vips,
            "health": {"socket": ctx.nlb_socket, "fall": nlb["fall"], "rise": nlb["rise"]},
            "api": {"host": "127.0.0.1", "port": ctx.nlb_api_port}, **settings,
        }

    def start(self, ctx):
        nlb = ctx.spec["nlb"]
        if nlb["probes"]:
            self.start_probes(ctx, nlb["probe_interval_ms"], nlb["probe_timeout_ms"], "app")

    def start_probes(self, ctx, interval_ms: int, timeout_ms: int, check: str) -> None:
        for site in ctx.plan.sites:
            members = [{"name": h.name, "ip": h.ip} for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            lb = ctx.plan.by_role("lb", site.name)[0]
            config = {"vip": site.vip, "members": members, "port": CAS_PORT, "interval_ms": interval_ms,
                      "timeout_ms": timeout_ms, "check": check, "socket": ctx.nlb_socket,
                      "events": ctx.events_path(f"health-{lb.name}")}
            ctx.start_module(lb.name, f"health-{lb.name}", "controllers.health_agent", config)

    def drain(self, ctx, host, deadline_s):
        site = ctx.plan.site(ctx.plan.host(host).site)
        nlb_client.call(ctx.nlb_api_port, f"/nlb/{site.vip}/members/{host}/drain", {"deadline_s": deadline_s})

    def rejoin(self, ctx, host):
        site = ctx.plan.site(ctx.plan.host(host).site)
        nlb_client.call(ctx.nlb_api_port, f"/nlb/{site.vip}/members/{host}/rejoin", {})
