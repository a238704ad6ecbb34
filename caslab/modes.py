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

    def array_addresses(self, ctx: Context) -> dict[str, list[str]]:
        """Site name -> the addresses the array FQDN resolves to in this mode."""
        raise NotImplementedError

    def start(self, ctx: Context) -> None:
        """Start this mode's own processes, after the roles are up."""

    rotate_answers = False  # dns-rr: sessions start at different A records

    def default_rcas(self, ctx: Context) -> str:
        """The RpcClientAccessServer databases get: the HQ array's FQDN where there is one,
        else (no array in HQ) the name of HQ's first CAS."""
        from topologies.plan import LAB_DOMAIN

        hq = ctx.plan.sites[0].name
        arrays = ctx.arrays()
        return arrays[hq]["fqdn"] if hq in arrays else f"{ctx.plan.by_role('cas', hq)[0].name}.{LAB_DOMAIN}"

    def target(self, ctx: Context, client: HostPlan) -> dict[str, Any]:
        """Every mode: autodiscover of the client's site -> profile server name -> DNS."""
        from caslab.services import AUTODISCOVER_PORT

        ad = ctx.plan.by_role("autodiscover", client.site)[0]
        return {"kind": "autodiscover", "address": f"{ad.ip}:{AUTODISCOVER_PORT}", "dns": ctx.extra["dns_server"],
                "refresh_s": ctx.spec["exchange"]["autodiscover_refresh_s"], "rotate": self.rotate_answers}

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

    def array_addresses(self, ctx):
        return {}

    def default_rcas(self, ctx):
        from topologies.plan import LAB_DOMAIN

        return f"{ctx.plan.by_role('cas')[0].name}.{LAB_DOMAIN}"


class DnsRoundRobin(Mode):
    """The array name has one A record per CAS ("poor man's failover"), cached by TTL.

    dnsmasq answers the records in a fixed order, while a Windows DNS server rotates them;
    each session therefore starts at its own position in the answer (``rotate``), which is
    what rotation achieves across many clients. After a connect failure a client may try
    the next address (``clients.select = "next_on_fail"``) or keep the first.
    """

    name = "dns-rr"
    description = "several A records for the array name, TTL from the spec"

    def array_addresses(self, ctx):
        return {site.name: [h.ip for h in ctx.plan.by_role("cas", site.name)] for site in ctx.plan.sites
                if ctx.plan.by_role("cas", site.name)}

    rotate_answers = True


class VipMode(Mode):
    """Modes where the array name resolves to a virtual IP."""

    def array_addresses(self, ctx):
        return {site.name: [site.vip] for site in ctx.plan.sites if ctx.plan.by_role("cas", site.name)}


class SdnNlb(VipMode):
    """The lab's Ryu/os-ken NLB owns the array VIP (controllers/sdn_nlb.py)."""

    name = "sdn-nlb"
    controller_app = "controllers.sdn_nlb"
    description = "SDN load balancer: port-status and active-probe detection, consistent hashing, fast RST"

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
        ctx.extra["nlb_socket"] = str(ctx.socket_dir() / "nlb-health.sock")
        ctx.extra["nlb_api_port"] = ctx.extra.get("nlb_api_port")
        nlb = ctx.spec["nlb"]
        return {
            "events": ctx.events_path("nlb"), "vips": vips,
            "health": {"socket": ctx.extra["nlb_socket"], "fall": nlb["fall"], "rise": nlb["rise"]},
            "api": {"host": "127.0.0.1", "port": ctx.extra["nlb_api_port"]}, **settings,
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
                      "timeout_ms": timeout_ms, "check": check, "socket": ctx.extra["nlb_socket"],
                      "events": ctx.events_path(f"health-{lb.name}")}
            ctx.start_module(lb.name, f"health-{lb.name}", "controllers.health_agent", config)

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


class WindowsNlb(SdnNlb):
    """An emulation of Windows NLB's observable behaviour, on the same switch and flows.

    What is emulated: every host "owns" the clients its hash assigns (affinity none /
    single / network); a host is noticed gone only by missed heartbeats (ICMP every
    ``heartbeat_ms``, ``missed`` in a row: NLB's heartbeats come from the host's driver,
    so a crashed or frozen *service* is never noticed); then a convergence round of
    ``convergence_ms`` passes before the survivors take over its clients; connections to
    the dead host are lost silently (no reset), so clients wait for their own timeout.
    What it does not capture: unicast/multicast flooding of every frame to every host and
    the load that puts on the switch, NLB's 60-bucket ownership and port rules, and
    convergence restarting when several hosts change at once.
    """

    name = "wnlb"
    description = "Windows NLB emulation: 1 s heartbeats, 5 missed, convergence delay, no resets"

    def controller_config(self, ctx):
        w = ctx.spec["wnlb"]
        config = self.nlb_config(ctx, w["affinity"], fast_fail=False, port_detection=False,
                                 convergence_ms=w["convergence_ms"])
        config["health"].update({"fall": w["missed"], "rise": 2})
        return config

    def start(self, ctx):
        w = ctx.spec["wnlb"]
        self.start_probes(ctx, w["heartbeat_ms"], min(w["heartbeat_ms"], 1000), "icmp")


class Haproxy(VipMode):
    """A hardware-style load balancer: real HAProxy in the lb host, which holds the VIP."""

    name = "haproxy"
    description = "real HAProxy (TCP mode) holding the VIP; health checks inter/fall/rise"

    def config_text(self, ctx, site) -> str:
        h = ctx.spec["haproxy"]
        marked_down = " on-marked-down shutdown-sessions" if h["shutdown_sessions"] else ""
        servers = "\n".join(f"    server {c.name} {c.ip}:{CAS_PORT} check"
                            for c in ctx.plan.by_role("cas", site.name))
        return (
            "global\n    log stdout format raw local0 info\n    maxconn 4096\n"
            f"    stats socket {self.admin_socket(ctx, site)} mode 600 level admin\n"
            "defaults\n    mode tcp\n    log global\n    timeout connect 1s\n    timeout client 1h\n"
            "    timeout server 1h\n    retries 2\n    option redispatch\n"
            f"frontend cas_array\n    bind {site.vip}:{CAS_PORT}\n    default_backend cas\n"
            "backend cas\n    balance roundrobin\n"
            f"    default-server inter {h['inter_ms']} fall {h['fall']} rise {h['rise']}{marked_down}\n"
            f"{servers}\n")

    def start(self, ctx):
        for site in ctx.plan.sites:
            if not ctx.plan.by_role("cas", site.name):
                continue
            lb = ctx.plan.by_role("lb", site.name)[0]
            node = ctx.lab.node(lb.name)
            node.cmd(f"ip addr add {site.vip}/16 dev {node.intf().name}")
            path = ctx.raw_dir / "config" / f"haproxy-{lb.name}.cfg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.config_text(ctx, site))
            ctx.lab.popen_in(lb.name, f"haproxy-{lb.name}", ["haproxy", "-db", "-f", str(path)],
                             on_line=lambda ts, line: self.on_log(ctx, ts, line))

    @staticmethod
    def admin_socket(ctx, site) -> str:
        """HAProxy's runtime API: a Unix socket, reachable from the root namespace."""
        return str(ctx.socket_dir() / f"haproxy-{site.name.lower()}.sock")

    def runtime(self, ctx, host: str, command: str) -> str:
        import socket

        site = ctx.plan.site(ctx.plan.host(host).site)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.admin_socket(ctx, site))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        ctx.log.emit("lb_admin", command=command, answer=answer.decode(errors="replace").strip()[:200])
        return answer.decode(errors="replace")

    def drain(self, ctx, host, deadline_s):
        """As an admin would: no new sessions to the server, existing ones stay."""
        self.runtime(ctx, host, f"set server cas/{host} state drain")

    def rejoin(self, ctx, host):
        self.runtime(ctx, host, f"set server cas/{host} state ready")

    @staticmethod
    def on_log(ctx, ts: int, line: str) -> None:
        """Turn HAProxy's 'Server cas/cas1 is DOWN' log lines into timed events."""
        if not line.startswith("Server cas/") or (" is DOWN" not in line and " is UP" not in line):
            return
        member = line[len("Server cas/"):].split()[0]
        up = " is UP" in line
        ctx.log.emit("lb_member_down" if not up else "lb_member_up", ts=ts, member=member,
                     accepts_new=up, detail=line[:200])


MODES: dict[str, Mode] = {m.name: m for m in (Direct(), DnsRoundRobin(), WindowsNlb(), Haproxy(), SdnNlb())}


def get(name: str) -> Mode:
    try:
        return MODES[name]
    except KeyError:
        raise ValueError(f"mode {name!r} is not implemented; available: {sorted(MODES)}") from None
