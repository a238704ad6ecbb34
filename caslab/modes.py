"""HA modes: how clients find a CAS, and what stands between them.

Each mode names the controller app it runs on the switches, writes that app's config,
starts its own extra processes (health agent, DNS server, HAProxy ...) and tells each
client host what to connect to. Adding a mode means adding one class here.
"""

from __future__ import annotations

from typing import Any

from caslab.services import CAS_PORT, Context
from topologies.plan import HostPlan


class Mode:
    name = ""
    controller_app = "controllers.l2_switch"
    description = ""

    def controller_config(self, ctx: Context) -> dict[str, Any] | None:
        return None

    def start(self, ctx: Context) -> None:
        """Start this mode's own processes, after the roles are up."""

    def target(self, ctx: Context, client: HostPlan) -> dict[str, Any]:
        raise NotImplementedError

    def drain(self, ctx: Context, host: str, deadline_s: float) -> None:
        raise NotImplementedError(f"mode {self.name} has no drain")

    def rejoin(self, ctx: Context, host: str) -> None:
        raise NotImplementedError(f"mode {self.name} has no rejoin")

    def home_cas(self, ctx: Context, client: HostPlan) -> list[str]:
        """CAS addresses a client of this mode may be sent to (for the report)."""
        return [h.ip for h in ctx.plan.by_role("cas", client.site)]


class Direct(Mode):
    """No array: every Outlook profile names one CAS (cas1), as before Exchange 2010 arrays."""

    name = "direct"
    description = "profile bound to one CAS by name; no load balancer"

    def target(self, ctx, client):
        cas = ctx.plan.by_role("cas", client.site)[0]
        return {"kind": "address", "addresses": [cas.ip]}


class SdnNlb(Mode):
    """The lab's Ryu/os-ken NLB owns the array VIP (controllers/sdn_nlb.py)."""

    name = "sdn-nlb"
    controller_app = "controllers.sdn_nlb"
    description = "SDN load balancer: port-status and active-probe detection, consistent hashing, fast RST"

    def controller_config(self, ctx):
        nlb = ctx.spec["nlb"]
        vips = []
        for site in ctx.plan.sites:
            members = [{"name": h.name, "ip": h.ip, "mac": h.mac, "port_name": ctx.lab.switch_port_name(h.name)}
                       for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            vips.append({"name": site.name, "fqdn": site.array_fqdn, "ip": site.vip, "mac": site.vip_mac,
                         "dpid": site.index, "ports": [CAS_PORT], "affinity": nlb["affinity"], "members": members})
        ctx.extra["nlb_socket"] = str(ctx.raw_dir / "nlb-health.sock")
        ctx.extra["nlb_api_port"] = ctx.extra.get("nlb_api_port")
        return {
            "events": ctx.events_path("nlb"), "fast_fail": nlb["fast_fail"], "vips": vips,
            "health": {"socket": ctx.extra["nlb_socket"], "fall": nlb["fall"], "rise": nlb["rise"]},
            "api": {"host": "127.0.0.1", "port": ctx.extra["nlb_api_port"]},
        }

    def start(self, ctx):
        nlb = ctx.spec["nlb"]
        if not nlb["probes"]:
            return
        for site in ctx.plan.sites:
            members = [{"name": h.name, "ip": h.ip} for h in ctx.plan.by_role("cas", site.name)]
            if not members:
                continue
            lb = ctx.plan.by_role("lb", site.name)[0]
            config = {"vip": site.vip, "members": members, "port": CAS_PORT, "interval_ms": nlb["probe_interval_ms"],
                      "timeout_ms": nlb["probe_timeout_ms"], "socket": ctx.extra["nlb_socket"],
                      "events": ctx.events_path(f"health-{lb.name}")}
            ctx.start_module(lb.name, f"health-{lb.name}", "controllers.health_agent", config)

    def target(self, ctx, client):
        return {"kind": "address", "addresses": [ctx.plan.site(client.site).vip]}

    def _api(self, ctx, path: str, body: dict | None = None) -> dict:
        import json
        import urllib.request

        url = f"http://127.0.0.1:{ctx.extra['nlb_api_port']}{path}"
        data = json.dumps(body or {}).encode()
        request = urllib.request.Request(url, data=data, method="POST", headers={"Content-Type": "application/json"})
        with urllib.request.urlopen(request, timeout=5) as response:
            return json.loads(response.read())

    def drain(self, ctx, host, deadline_s):
        site = ctx.plan.site(ctx.plan.host(host).site)
        self._api(ctx, f"/nlb/{site.vip}/members/{host}/drain", {"deadline_s": deadline_s})

    def rejoin(self, ctx, host):
        site = ctx.plan.site(ctx.plan.host(host).site)
        self._api(ctx, f"/nlb/{site.vip}/members/{host}/rejoin")


MODES: dict[str, Mode] = {m.name: m for m in (Direct(), SdnNlb())}


def get(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode {name!r} is not implemented; available: {sorted(MODES)}") from None
