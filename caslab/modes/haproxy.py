"""haproxy: a hardware-style load balancer; real HAProxy in the lb host holds the VIP.

RPC Client Access is balanced in TCP mode, round robin. With HTTP clients in the spec,
HTTPS on the VIP is balanced at layer 4 too (TCP mode, no TLS termination) with
source-IP affinity, as layer-4 guidance for Outlook Anywhere and OWA asked: the client's
address is hashed (``balance source``) and remembered in a stick table, so both
Outlook Anywhere channels and every OWA click of a client reach one CAS. Its idle
timeout is ``http.lb_idle_timeout_s`` scaled. ``haproxy-l7`` terminates TLS instead.
"""

from __future__ import annotations

import socket

from caslab.schema.http import http_enabled, lab_seconds
from caslab.modes.base import VipMode
from caslab.schema.fields import Field, int_range
from labcommon.catalogue import LB_ADMIN, LB_MEMBER
from labcommon.ports import CAS_PORT, HTTPS_PORT
from labcommon.programs import HAPROXY

HTTPS_BACKEND = "cas_https"


def idle_timeout(ctx) -> str:
    """HAProxy's client/server timeouts on HTTPS: the scaled idle timeout, or an hour."""
    idle_s = ctx.spec["http"]["lb_idle_timeout_s"]
    return f"{max(1, round(lab_seconds(ctx.spec, idle_s) * 1000))}ms" if idle_s else "1h"


class Haproxy(VipMode):
    name = "haproxy"
    colour, line = "#CC79A7", ":"  # in every plot
    description = "real HAProxy (TCP mode) holding the VIP; health checks inter/fall/rise; HTTPS with source affinity"
    capabilities = frozenset({"load_balancer", "idle_timeout"})
    section = "haproxy"
    settings = {
        "inter_ms": int_range(2000, 10, 600000),
        "fall": int_range(3, 1, 100),
        "rise": int_range(2, 1, 100),
        "shutdown_sessions": Field(bool, False, doc="on-marked-down shutdown-sessions"),
    }

    @staticmethod
    def default_server(ctx) -> str:
        h = ctx.spec["haproxy"]
        marked_down = " on-marked-down shutdown-sessions" if h["shutdown_sessions"] else ""
        return f"    default-server inter {h['inter_ms']} fall {h['fall']} rise {h['rise']}{marked_down}\n"

    def https_text(self, ctx, site) -> str:
        """HTTPS at layer 4: TLS passes through to the CAS; source-IP affinity."""
        idle = idle_timeout(ctx)
        servers = "\n".join(f"    server {c.name} {c.ip}:{HTTPS_PORT} check"
                            for c in ctx.plan.by_role("cas", site.name))
        return (f"frontend cas_https_front\n    mode tcp\n    bind {site.vip}:{HTTPS_PORT}\n    timeout client {idle}\n"
                f"    default_backend {HTTPS_BACKEND}\n"
                f"backend {HTTPS_BACKEND}\n    mode tcp\n    balance source\n    hash-type consistent\n"
                "    stick-table type ip size 100k expire 1h\n    stick on src\n"
                f"    timeout server {idle}\n" + self.default_server(ctx) + servers + "\n")

    def config_text(self, ctx, site) -> str:
        servers = "\n".join(f"    server {c.name} {c.ip}:{CAS_PORT} check"
                            for c in ctx.plan.by_role("cas", site.name))
        https = self.https_text(ctx, site) if http_enabled(ctx.spec) else ""
        return (
            "global\n    log stdout format raw local0 info\n    maxconn 4096\n"
            f"    stats socket {self.admin_socket(ctx, site)} mode 600 level admin\n"
            "defaults\n    mode tcp\n    log global\n    timeout connect 1s\n    timeout client 1h\n"
            "    timeout server 1h\n    retries 2\n    option redispatch\n"
            f"frontend cas_array\n    bind {site.vip}:{CAS_PORT}\n    default_backend cas\n"
            "backend cas\n    balance roundrobin\n" + self.default_server(ctx) + f"{servers}\n" + https)

    def start(self, ctx):
        for site in ctx.plan.sites:
            if not ctx.plan.by_role("cas", site.name):
                continue
            lb = ctx.plan.by_role("lb", site.name)[0]
            ctx.lab.run_in(lb.name, ["ip", "addr", "add", f"{site.vip}/16", "dev", ctx.lab.host_interface(lb.name)])
            path = ctx.raw_dir / "config" / f"{HAPROXY.process_name(lb.name)}.cfg"
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self.config_text(ctx, site))
            ctx.start_tool(HAPROXY, lb.name, ["haproxy", "-db", "-f", str(path)],
                           on_line=lambda ts, line: self.on_log(ctx, ts, line))

    @staticmethod
    def admin_socket(ctx, site) -> str:
        """HAProxy's runtime API: a Unix socket, reachable from the root namespace."""
        return str(ctx.socket_dir() / f"haproxy-{site.name.lower()}.sock")

    def runtime(self, ctx, host: str, command: str) -> str:
        site = ctx.plan.site(ctx.plan.host(host).site)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
            sock.settimeout(5)
            sock.connect(self.admin_socket(ctx, site))
            sock.sendall(command.encode() + b"\n")
            answer = b""
            while chunk := sock.recv(4096):
                answer += chunk
        ctx.log.emit(LB_ADMIN, command=command, answer=answer.decode(errors="replace").strip()[:200])
        return answer.decode(errors="replace")

    @staticmethod
    def backends(ctx) -> list[str]:
        return ["cas", HTTPS_BACKEND] if http_enabled(ctx.spec) else ["cas"]

    def drain(self, ctx, host, deadline_s):
        """As an admin would: no new sessions to the server, existing ones stay."""
        for backend in self.backends(ctx):
            self.runtime(ctx, host, f"set server {backend}/{host} state drain")

    def rejoin(self, ctx, host):
        for backend in self.backends(ctx):
            self.runtime(ctx, host, f"set server {backend}/{host} state ready")

    @staticmethod
    def on_log(ctx, ts: int, line: str) -> None:
        """Turn HAProxy's 'Server cas/cas1 is DOWN' log lines (any backend) into timed events."""
        if not line.startswith("Server ") or "/" not in line or (" is DOWN" not in line and " is UP" not in line):
            return
        member = line[len("Server "):].split()[0].split("/", 1)[1]
        up = " is UP" in line
        ctx.log.emit(LB_MEMBER, ts=ts, member=member, reason="check_up" if up else "check_down", alive=up,
                     accepts_new=up, detail=line[:200])
