"""wnlb: Windows NLB emulated from its mechanism: one cluster MAC, every frame to every host,
60 buckets filtered in each host, heartbeats and convergence between the hosts.

There is no load balancer and no controller logic: the site switch is a plain learning
switch (``controllers.l2_switch``, OVS NORMAL) and each CAS runs an agent
(``controllers/wnlb_agent.py``) that does what the NLB driver does on the host (its
docstring has the details). What this module adds is what the *network admin* does or
fails to do around it:

* multicast mode: the router must be given the VIP -> 03-BF-<VIP> ARP entry statically
  (``router_static_arp``); without it the router, modelled on Cisco IOS, ignores ARP
  replies that map an IP address to a multicast MAC and cannot reach the cluster. The
  switch may be given a static MAC entry for the cluster MAC on the members' ports
  (``switch_static_mac``); without it multicast frames are flooded like unicast ones;
* the measurement of what that costs: counters on the NIC of every host of the site that
  is not a cluster member (frames for the cluster MAC, heartbeats) and the switch's own
  port counters, logged as ``wnlb_flood`` events for the measurement window.

Calibration: heartbeat 1 s, 5 missed (AliveMsgPeriod, AliveMsgTolerance), 60 buckets,
convergence after 3 agreeing heartbeat periods (Microsoft: 2.5-3 s after detection).
"""

from __future__ import annotations

import json
import re
import socket
import time
from typing import Any

from caslab.base import system
from caslab.base.table import Column
from caslab.modes.base import VipMode
from caslab.base.waits import LabError
from caslab.base.waits import LogTail, wait_for_events, wait_ready
from caslab.schema.fields import Field, choice, int_range
from controllers import wnlb_nft
from controllers.wnlb_logic import AFFINITIES, MODES, cluster_mac
from labcommon.catalogue import WNLB_CONVERGED, WNLB_FLOOD
from labcommon.programs import WNLB_AGENT, WnlbAgentConfig

STATIC_MAC_COOKIE = 0x4E4C  # "NL": the admin's static MAC entry on the switch


class WindowsNlb(VipMode):
    name = "wnlb"
    colour, line = "#56B4E9", "-."  # in every plot
    description = "Windows NLB: cluster MAC, flooding, 60 buckets filtered per host, heartbeats, convergence"
    capabilities = frozenset({"load_balancer"})
    section = "wnlb"
    multi_role_refusal = ("Windows NLB and the failover clustering a DAG needs cannot run on the same server "
                          "(use a hardware load balancer, as Microsoft advises)")
    # What only Windows NLB measures (caslab.results.metrics.nlb), shown after every mode's
    # common columns in each results table.
    columns = (
        Column("convergence_ms", "NLB converged", "ms", ".1f", 9, "convergence_ms.p50",
               "Windows NLB: fault to the last host's convergence (median over repetitions)"),
        Column("convergence_took_ms", "convergence took", "ms", ".1f",
               doc="Windows NLB: from the start of convergence to its end"),
        Column("convergence_restarts", "restarts", doc="Windows NLB: times convergence restarted (membership changed "
                                                       "again)"),
        Column("buckets_moved", "buckets moved", doc="Windows NLB: of the 60 buckets"),
        Column("conns_broken", "conns broken", doc="Windows NLB: established connections of live hosts in buckets "
                                                   "that moved away from them, not kept"),
        Column("conns_departed", "conns lost with hosts", doc="Windows NLB: connections the hosts that left held at "
                                                              "their last heartbeat"),
        Column("flooded_bytes", "flooded", "bytes", ",d", doc="Windows NLB: bytes of frames for the cluster MAC "
                                                              "delivered to hosts that are not members, over the window "
                                                              "(mean over repetitions)"),
        Column("flood_kbit_s", "flood rate", "kbit/s", ".1f", doc="Windows NLB: the same per second, all non-member "
                                                                  "hosts together"),
        Column("heartbeat_bytes", "heartbeat bytes", "bytes", ",d", doc="Windows NLB: heartbeat frames those hosts "
                                                                        "received"),
    )
    settings = {
        "mode": choice("unicast", MODES, "unicast: 02-BF-<VIP> replaces each host's MAC; multicast: 03-BF-<VIP>"),
        "heartbeat_ms": int_range(1000, 10, 60000, "AliveMsgPeriod"),
        "missed": int_range(5, 1, 100, "AliveMsgTolerance: heartbeats missed before convergence"),
        "stable": int_range(3, 1, 100, "heartbeat periods every host must agree on the new membership before "
                                       "convergence completes"),
        "affinity": choice("single", AFFINITIES, "none: client IP and port, single: client IP, network: client /24"),
        "track_connections": Field(bool, True, doc="a host keeps serving its established connections in buckets it "
                                                   "loses to a live host (Windows Server 2003 and later); false: "
                                                   "they break"),
        "router_static_arp": Field(bool, True, doc="multicast: the router has a static ARP entry for the VIP"),
        "switch_static_mac": Field(bool, False, doc="multicast: the switch has a static MAC entry for the cluster MAC "
                                                    "on the members' ports (no flooding to other ports)"),
    }

    def __init__(self):
        self.agents: dict[str, dict[str, Any]] = {}  # CAS -> its agent's control socket and site, this run
        self.flood_base: dict[str, Any] = {}  # the switch ports' counters when the window opened

    # ---- before the roles --------------------------------------------------------

    def prepare(self, ctx):
        w = ctx.spec["wnlb"]
        agents = []
        for site in self.cluster_sites(ctx):
            for host_id, cas in enumerate(ctx.plan.by_role("cas", site.name), start=1):
                name = WNLB_AGENT.process_name(cas.name)
                control = str(ctx.socket_dir() / f"{name}.sock")
                config = WnlbAgentConfig(name=name, host=cas.name, host_id=host_id, vip=site.vip,
                                         interface=ctx.lab.host_interface(cas.name), mode=w["mode"],
                                         heartbeat_ms=w["heartbeat_ms"], missed=w["missed"], stable=w["stable"],
                                         affinity=w["affinity"], track_connections=w["track_connections"],
                                         control=control, events=ctx.events_path(name))
                agents.append(ctx.start_program(WNLB_AGENT, cas.name, config))
                self.agents[cas.name] = {"control": control, "site": site.name}
        wait_ready(ctx.raw_dir, agents, ctx.spec["timing"]["ready_timeout_s"],
                   "every Windows NLB agent to set up its host")
        for site in self.cluster_sites(ctx):
            mac = cluster_mac(site.vip, w["mode"])
            if w["mode"] == "multicast":
                self.configure_router(ctx, site, mac, w["router_static_arp"])
                if w["switch_static_mac"]:
                    self.static_mac_entry(ctx, site, mac)
        self.install_flood_counters(ctx)

    def cluster_sites(self, ctx):
        return [site for site in ctx.plan.sites if ctx.plan.by_role("cas", site.name)]

    def configure_router(self, ctx, site, mac: str, static_arp: bool) -> None:
        """The router refuses multicast-MAC ARP replies; the admin may add the VIP statically."""
        if not ctx.plan.routed:
            return
        path = ctx.raw_dir / "config" / "router-arp-guard.nft"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(wnlb_nft.router_guard_table())
        status, _ = ctx.lab.run_in("r1", ["nft", "list", "table", "arp", "caslab_router"])
        if status != 0:
            self._run(ctx, "r1", ["nft", "-f", str(path)])
        if static_arp:
            self._run(ctx, "r1", ["ip", "neigh", "replace", site.vip, "lladdr", mac, "dev", f"r1-eth{site.index}",
                                  "nud", "permanent"])

    def static_mac_entry(self, ctx, site, mac: str) -> None:
        """mac address-table static <cluster MAC> interface <members>: frames for the cluster
        MAC leave only towards the members (for VMs: towards their hypervisors' uplinks)."""
        from caslab.network.hypervisor import uplink_ends

        ports = set()
        for cas in ctx.plan.by_role("cas", site.name):
            hypervisor = ctx.plan.placement.get(cas.name)
            if hypervisor:
                ports.add(uplink_ends(ctx, site.hypervisor_switch(hypervisor), site.switch)[1])
            else:
                ports.add(ctx.lab.switch_port_name(cas.name))
        outputs = ",".join(f"output:{self._ofport(p)}" for p in sorted(ports))
        flow = f"cookie=0x{STATIC_MAC_COOKIE:x},priority=500,dl_dst={mac},actions={outputs}"
        result = system.run(["ovs-ofctl", "-O", "OpenFlow13", "add-flow", site.switch, flow])
        if result.returncode != 0:
            raise LabError(f"static MAC entry on {site.switch}: {result.stderr.strip()[:200]}")

    @staticmethod
    def _ofport(interface: str) -> int:
        return int(system.run(["ovs-vsctl", "--timeout=5", "get", "Interface", interface, "ofport"]).stdout.strip())

    @staticmethod
    def _run(ctx, host: str, argv: list[str]) -> None:
        status, out = ctx.lab.run_in(host, argv)
        if status != 0:
            raise LabError(f"{host}: {' '.join(argv)}: {out.strip()[:200]}")

    # ---- flooding, measured where it lands ---------------------------------------

    def bystanders(self, ctx) -> list[tuple[str, str, str]]:
        """(host, its interface, its switch port) of every host that is no cluster member
        but shares a cluster's L2 domain; the router once per site."""
        out = [(h.name, ctx.lab.host_interface(h.name), ctx.lab.switch_port_name(h.name))
               for h in ctx.plan.hosts if h.role != "cas" and ctx.plan.by_role("cas", h.site)]
        if ctx.plan.routed:
            for site in self.cluster_sites(ctx):
                port, _ = ctx.lab.router_port(site.index)
                out.append(("r1", f"r1-eth{site.index}", port))
        return out

    def install_flood_counters(self, ctx) -> None:
        macs = [cluster_mac(site.vip, ctx.spec["wnlb"]["mode"]) for site in self.cluster_sites(ctx)]
        for host, interface, _ in self.bystanders(ctx):
            path = ctx.raw_dir / "config" / f"flood-{host}-{interface}.nft"
            path.write_text(wnlb_nft.flood_counter_table(interface, macs).replace(
                "caslab_flood", f"caslab_flood_{interface.replace('-', '_')}"))
            self._run(ctx, host, ["nft", "-f", str(path)])

    def measure_start(self, ctx):
        """Switch ports first, NIC counters after: the ports' window holds the NICs' one."""
        self.flood_base = {"ports": port_tx_bytes(ctx.plan.switch_names()), "ns": time.monotonic_ns()}
        for host, interface, _ in self.bystanders(ctx):
            self._run(ctx, host, ["nft", "reset", "counters", "table", "netdev", self._table(interface)])

    def measure_end(self, ctx):
        counters = {}
        for host, interface, port in self.bystanders(ctx):
            status, out = ctx.lab.run_in(host, ["nft", "-j", "list", "counters", "table", "netdev",
                                                self._table(interface)])
            counters[(host, port)] = parse_counters(out) if status == 0 else {}
        ports = port_tx_bytes(ctx.plan.switch_names())
        base = self.flood_base.get("ports", {})
        window_ms = round((time.monotonic_ns() - self.flood_base.get("ns", time.monotonic_ns())) / 1e6, 1)
        for (host, port), found in counters.items():
            tx = ports[port] - base[port] if port in ports and port in base else None
            if "cluster" not in found or "heartbeat" not in found:  # unread counters are unknown, never 0
                ctx.log.emit(WNLB_FLOOD, host=host, port=port, cluster_frames=None, cluster_bytes=None,
                             heartbeat_frames=None, heartbeat_bytes=None, port_tx_bytes=tx, window_ms=window_ms,
                             error=f"could not read the nft counters of {self._table_of(host, port, ctx)}")
                continue
            cluster, heartbeat = found["cluster"], found["heartbeat"]
            ctx.log.emit(WNLB_FLOOD, host=host, port=port, cluster_frames=cluster[0],
                         cluster_bytes=cluster[1] + 14 * cluster[0], heartbeat_frames=heartbeat[0],
                         heartbeat_bytes=heartbeat[1] + 14 * heartbeat[0], port_tx_bytes=tx, window_ms=window_ms)

    def _table_of(self, host: str, port: str, ctx) -> str:
        names = [self._table(i) for h, i, p in self.bystanders(ctx) if h == host and p == port]
        return f"{host} ({names[0] if names else port})"

    @staticmethod
    def _table(interface: str) -> str:
        return f"caslab_flood_{interface.replace('-', '_')}"

    # ---- after the roles ---------------------------------------------------------

    def start(self, ctx):
        """Clients start once every agent has converged with all of its site's hosts."""
        size = {site.name: len(ctx.plan.by_role("cas", site.name)) for site in self.cluster_sites(ctx)}

        def converged(source: str, ev: dict) -> str | None:
            if ev.get("ev") != WNLB_CONVERGED:
                return None
            cas = next(c for c in self.agents if WNLB_AGENT.process_name(c) == source)
            return source if len(ev.get("members", [])) == size[self.agents[cas]["site"]] else None

        w = ctx.spec["wnlb"]
        timeout = ctx.spec["timing"]["ready_timeout_s"] + (w["missed"] + 2 * w["stable"]) * w["heartbeat_ms"] / 1000
        wait_for_events(LogTail(ctx.raw_dir, [WNLB_AGENT.process_name(c) for c in self.agents]),
                        len(self.agents), converged, timeout, "every Windows NLB host to converge with all of its cluster")

    def command(self, ctx, host: str, message: dict[str, Any]) -> None:
        """nlb drainstop / nlb start, run on the host: a datagram to its agent."""
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(json.dumps(message).encode(), self.agents[host]["control"])

    def drain(self, ctx, host, deadline_s):
        self.command(ctx, host, {"cmd": "drainstop", "deadline_s": deadline_s})

    def rejoin(self, ctx, host):
        self.command(ctx, host, {"cmd": "start"})


def port_tx_bytes(switches: list[str]) -> dict[str, int]:
    """Bytes each port of the lab's switches sent to its host, read live from the datapath
    (``ovs-ofctl dump-ports``; the OVSDB statistics column lags by seconds)."""
    out: dict[str, int] = {}
    for switch in switches:
        result = system.run(["ovs-ofctl", "-O", "OpenFlow13", "--names", "dump-ports", switch])
        out.update(parse_dump_ports(result.stdout))
    return out


PORT_STATS = re.compile(r'port\s+"?([^":\s]+)"?:\s*rx pkts=\S+, bytes=\S+.*?\n\s*tx pkts=\S+, bytes=(\d+)', re.S)


def parse_dump_ports(text: str) -> dict[str, int]:
    """``ovs-ofctl --names dump-ports`` -> port name -> tx bytes (ports with known counts)."""
    return {name: int(tx) for name, tx in PORT_STATS.findall(text) if name != "LOCAL"}


def parse_counters(text: str) -> dict[str, tuple[int, int]]:
    """nft -j list counters -> name -> (packets, bytes)."""
    try:
        items = json.loads(text)["nftables"]
    except (ValueError, KeyError):
        return {}
    return {c["counter"]["name"]: (int(c["counter"]["packets"]), int(c["counter"]["bytes"]))
            for c in items if "counter" in c}
