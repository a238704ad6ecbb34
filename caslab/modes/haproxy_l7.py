"""haproxy-l7: a layer-7 load balancer in front of the CAS's HTTPS, as a hardware load
balancer or an ISA-style reverse proxy was set up for Exchange 2010.

HAProxy terminates TLS on the VIP with the lab certificate, inserts a persistence cookie
(``CASLB``, the CAS's name) into the first answer, and sends every later request that
carries it to the same CAS: OWA's session, both Outlook Anywhere channels (the IN
channel carries the cookie the OUT channel's answer set) and a device's requests stay
together. To the CAS it re-encrypts (SSL bridging), verifying the CAS's certificate
against the lab CA and its name. Health checks fetch OWA's login page over HTTPS. When
the cookie names a CAS that is down, or a connection to it fails, HAProxy sends the
request elsewhere (``option redispatch``): the new CAS does not hold the OWA session and
answers 440, and the user logs in again. Outlook RPC on port 6001 stays at layer 4 as in
``haproxy``; checks, drain and idle timeout as there.
"""

from __future__ import annotations

from caslab.modes.haproxy import HTTPS_BACKEND, Haproxy, idle_timeout
from labcommon.ports import HTTPS_PORT

COOKIE = "CASLB"
CHECK_PATH = "/owa/auth/logon.aspx"


class HaproxyL7(Haproxy):
    name = "haproxy-l7"
    colour, line = "#D55E00", (0, (3, 1, 1, 1))  # in every plot
    description = "real HAProxy at layer 7 for HTTPS: TLS termination, cookie persistence, HTTP checks"

    def https_text(self, ctx, site) -> str:
        idle = idle_timeout(ctx)
        tls = ctx.tls
        servers = "\n".join(f"    server {c.name} {c.ip}:{HTTPS_PORT} ssl verify required ca-file {tls.ca} "
                            f"verifyhost {c.fqdn} check cookie {c.name}"
                            for c in ctx.plan.by_role("cas", site.name))
        return (f"frontend cas_https_front\n    mode http\n    bind {site.vip}:{HTTPS_PORT} ssl crt {tls.combined}\n"
                f"    timeout client {idle}\n    timeout http-request 10s\n    default_backend {HTTPS_BACKEND}\n"
                f"backend {HTTPS_BACKEND}\n    mode http\n    balance roundrobin\n"
                f"    cookie {COOKIE} insert indirect nocache secure httponly\n"
                f"    option httpchk GET {CHECK_PATH}\n    http-check expect status 200\n"
                f"    timeout server {idle}\n" + self.default_server(ctx) + servers + "\n")
