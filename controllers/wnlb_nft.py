"""The nftables rulesets of the Windows NLB emulation, as text (pure, unit-tested).

In a CAS (written by its agent, the NLB driver's stand-in):

* ``ip wnlb``       the driver's filter. Client traffic to the VIP is hashed into one of
                    60 buckets (the key depends on affinity) and kept only if this host
                    owns the bucket. Sets, swapped atomically in one transaction:
                    ``owned`` (this host's buckets), ``held`` (buckets it gave away but whose
                    established connections it still serves: a drain, or Windows' connection
                    tracking when buckets move), ``dirty`` (buckets it owns whose old owner
                    still serves connections there: only new connections, SYNs, are taken,
                    other packets are left to that host, never answered with a reset).
                    Traffic to the host's own (dedicated) address and non-TCP traffic pass.
* ``netdev wnlb_nic`` unicast: frames leave with the masked source MAC 02-<id>-<VIP>
                    (egress hook); multicast: frames for 03-BF-<VIP> are handed to the
                    stack as the host's own (Linux TCP ignores frames not addressed to the
                    host's MAC, Windows' NLB driver passes them up).
* ``arp wnlb_arp``  multicast: ARP replies for the VIP carry the cluster MAC, as NLB's do.

Elsewhere (written by ``caslab.modes.wnlb``): ``netdev caslab_flood`` counts the bytes a
host that is not a cluster member receives for the cluster MAC (flooding) and NLB
heartbeats; ``arp caslab_router`` makes the router ignore ARP replies that map an IP
address to a multicast MAC, as Cisco IOS and most routers do.
"""

from __future__ import annotations

from controllers.wnlb_logic import ETHERTYPE, nft_hash_expression


def _elements(values) -> str:
    return ", ".join(str(v) for v in sorted(values))


def filter_table(vip: str, affinity: str) -> str:
    return f"""table ip wnlb {{
  set owned {{ type mark; }}
  set held {{ type mark; }}
  set dirty {{ type mark; }}
  chain input {{
    type filter hook input priority filter; policy accept;
    ip daddr != {vip} accept
    meta l4proto != tcp accept
    meta mark set {nft_hash_expression(affinity)}
    meta mark @owned ct state established,related accept
    meta mark @owned tcp flags & (syn | ack) == syn accept
    meta mark @held ct state established,related accept
    meta mark @dirty counter drop
    meta mark @owned accept
    counter drop
  }}
}}
"""


def sets_update(owned, held, dirty) -> str:
    """One transaction that replaces the three sets (nft -f applies a file atomically)."""
    lines = []
    for name, values in (("owned", owned), ("held", held), ("dirty", dirty)):
        lines.append(f"flush set ip wnlb {name}")
        if values:
            lines.append(f"add element ip wnlb {name} {{ {_elements(values)} }}")
    return "\n".join(lines) + "\n"


def nic_table(interface: str, mode: str, cluster_mac: str, masked_mac: str) -> str:
    if mode == "unicast":
        chain = (f"  chain egress {{\n    type filter hook egress device \"{interface}\" priority filter;\n"
                 f"    ether saddr {cluster_mac} ether saddr set {masked_mac}\n  }}\n")
    else:
        chain = (f"  chain ingress {{\n    type filter hook ingress device \"{interface}\" priority filter;\n"
                 f"    ether daddr {cluster_mac} meta pkttype set host\n  }}\n")
    return f"table netdev wnlb_nic {{\n{chain}}}\n"


def arp_table(vip: str, cluster_mac: str) -> str:
    return (f"table arp wnlb_arp {{\n  chain output {{\n    type filter hook output priority filter;\n"
            f"    arp saddr ip {vip} arp saddr ether set {cluster_mac}\n  }}\n}}\n")


def flood_counter_table(interface: str, cluster_macs: list[str]) -> str:
    """Counters on a non-member host's NIC: heartbeats (to the broadcast address in unicast
    mode, to the cluster MAC in multicast mode), and the other frames for a cluster MAC."""
    macs = ", ".join(sorted(cluster_macs))
    return f"""table netdev caslab_flood {{
  counter cluster {{ }}
  counter heartbeat {{ }}
  chain ingress {{
    type filter hook ingress device "{interface}" priority -500;
    ether type 0x{ETHERTYPE:04x} counter name "heartbeat" accept
    ether daddr {{ {macs} }} counter name "cluster"
  }}
}}
"""


def router_guard_table() -> str:
    """The router refuses ARP that resolves an IP address to a multicast MAC."""
    return ("table arp caslab_router {\n  chain input {\n    type filter hook input priority filter;\n"
            "    arp saddr ether & 01:00:00:00:00:00 == 01:00:00:00:00:00 counter drop\n  }\n}\n")
