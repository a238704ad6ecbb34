"""wnlb: an emulation of Windows NLB's observable behaviour, on the SDN NLB's switch and flows.

What is emulated: every host "owns" the clients its hash assigns (affinity none / single /
network); a host is noticed gone only by missed heartbeats (ICMP every ``heartbeat_ms``,
``missed`` in a row: NLB's heartbeats come from the host's driver, so a crashed or frozen
*service* is never noticed); then a convergence round of ``convergence_ms`` passes before
the survivors take over its clients; connections to the dead host are lost silently (no
reset), so clients wait for their own timeout. What it does not capture: unicast /
multicast flooding of every frame to every host and the load that puts on the switch,
NLB's 60-bucket ownership and port rules, and convergence restarting when several hosts
change at once.
"""

from __future__ import annotations

from caslab.modes.sdn_nlb import AFFINITIES, SdnNlb
from caslab.schema import choice, int_range


class WindowsNlb(SdnNlb):
    name = "wnlb"
    description = "Windows NLB emulation: 1 s heartbeats, 5 missed, convergence delay, no resets"
    capabilities = frozenset({"load_balancer"})
    section = "wnlb"
    settings = {
        "heartbeat_ms": int_range(1000, 10, 60000),
        "missed": int_range(5, 1, 100),
        "convergence_ms": int_range(2500, 0, 60000),
        "affinity": choice("single", AFFINITIES),
    }

    def controller_config(self, ctx):
        w = ctx.spec["wnlb"]
        config = self.nlb_config(ctx, w["affinity"], fast_fail=False, port_detection=False,
                                 convergence_ms=w["convergence_ms"], dataplane="controller")
        config["health"].update({"fall": w["missed"], "rise": 2})
        return config

    def start(self, ctx):
        w = ctx.spec["wnlb"]
        self.start_probes(ctx, w["heartbeat_ms"], min(w["heartbeat_ms"], 1000), "icmp")
