"""Windows NLB's load-balancing mechanism, pure: cluster MACs, the 60 buckets, the hash that
puts a client in a bucket, and the rule that deals buckets out at convergence.

Windows NLB has no load balancer in front of the hosts: every host receives every frame
for the cluster and each one's driver keeps only the clients hashed to the buckets it owns
(60 of them per port rule). Here the driver's filter is nftables in each CAS's namespace
(``controllers/wnlb_agent.py``): ``jhash <key> mod 60 seed SEED`` against a set of owned
buckets. :func:`bucket_of` is the same hash in Python (the kernel's ``jhash`` of the
register bytes, then ``reciprocal_scale``), so the lab can say which bucket a connection
is in without asking the kernel; a test checks both agree on live traffic.

Redistribution (:func:`rebalance`) is deterministic so that every host computes the same
map from the same inputs: each owner gets 60 // n buckets, and the 60 % n owners that
already hold the most (ties: lower host id) get one more; an owner keeps the buckets it
holds up to its quota (its lowest-numbered ones), and the freed buckets, lowest first, go
to the owner with the largest shortfall (ties: lower host id). Only the buckets that must
move do: a host that leaves hands out only its own buckets; one that joins takes only
what brings the others down to their quota. Applied to its own result it changes nothing,
so a host that computes a bucket map from a peer's newer map gets the same map.
"""

from __future__ import annotations

import ipaddress

BUCKETS = 60                  # per port rule, as Windows NLB
ETHERTYPE = 0x886F            # NLB heartbeats (IEEE-registered to Microsoft)
SEED = 0x4E4C4221             # every host must hash alike: a fixed jhash seed ("NLB!")
AFFINITIES = ("none", "single", "network")
MODES = ("unicast", "multicast")

_MASK = 0xFFFFFFFF


def _rol(x: int, k: int) -> int:
    return ((x << k) | (x >> (32 - k))) & _MASK


def _mix(a: int, b: int, c: int) -> tuple[int, int, int]:
    a = (a - c) & _MASK; a ^= _rol(c, 4); c = (c + b) & _MASK  # noqa: E702 - one line per round, as jhash.h
    b = (b - a) & _MASK; b ^= _rol(a, 6); a = (a + c) & _MASK  # noqa: E702
    c = (c - b) & _MASK; c ^= _rol(b, 8); b = (b + a) & _MASK  # noqa: E702
    a = (a - c) & _MASK; a ^= _rol(c, 16); c = (c + b) & _MASK  # noqa: E702
    b = (b - a) & _MASK; b ^= _rol(a, 19); a = (a + c) & _MASK  # noqa: E702
    c = (c - b) & _MASK; c ^= _rol(b, 4); b = (b + a) & _MASK  # noqa: E702
    return a, b, c


def _final(a: int, b: int, c: int) -> int:
    c ^= b; c = (c - _rol(b, 14)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rol(c, 11)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rol(a, 25)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rol(b, 16)) & _MASK  # noqa: E702
    a ^= c; a = (a - _rol(c, 4)) & _MASK  # noqa: E702
    b ^= a; b = (b - _rol(a, 14)) & _MASK  # noqa: E702
    c ^= b; c = (c - _rol(b, 24)) & _MASK  # noqa: E702
    return c


def jhash(key: bytes, initval: int) -> int:
    """Bob Jenkins' lookup3 hash exactly as the Linux kernel's ``jhash()`` computes it."""
    length = len(key)
    a = b = c = (0xDEADBEEF + length + initval) & _MASK
    k = key
    while length > 12:
        a = (a + int.from_bytes(k[0:4], "little")) & _MASK
        b = (b + int.from_bytes(k[4:8], "little")) & _MASK
        c = (c + int.from_bytes(k[8:12], "little")) & _MASK
        a, b, c = _mix(a, b, c)
        length -= 12
        k = k[12:]
    if length == 0:
        return c
    tail = k[:length] + bytes(12 - length)
    a = (a + int.from_bytes(tail[0:4], "little")) & _MASK
    b = (b + int.from_bytes(tail[4:8], "little")) & _MASK
    c = (c + int.from_bytes(tail[8:12], "little")) & _MASK
    return _final(a, b, c)


def hash_key(affinity: str, ip: str, port: int = 0) -> bytes:
    """The bytes nftables hashes for a client, as they sit in its registers: the source
    address (network order), masked to its /24 for network affinity, followed for no
    affinity by the source port padded to a 32-bit register (``ip saddr . tcp sport``)."""
    address = ipaddress.IPv4Address(ip).packed
    if affinity == "single":
        return address
    if affinity == "network":
        return address[:3] + b"\0"
    if affinity == "none":
        return address + port.to_bytes(2, "big") + b"\0\0"
    raise ValueError(f"affinity must be one of {AFFINITIES}, not {affinity!r}")


def bucket_of(affinity: str, ip: str, port: int = 0, seed: int = SEED, buckets: int = BUCKETS) -> int:
    """The bucket of a client: nft_jhash's ``reciprocal_scale(jhash(key, seed), buckets)``."""
    return (jhash(hash_key(affinity, ip, port), seed) * buckets) >> 32


def nft_hash_expression(affinity: str, seed: int = SEED, buckets: int = BUCKETS) -> str:
    """The nftables expression that computes :func:`bucket_of` in the kernel."""
    keys = {"single": "ip saddr", "network": "ip saddr & 255.255.255.0", "none": "ip saddr . tcp sport"}
    if affinity not in keys:
        raise ValueError(f"affinity must be one of {AFFINITIES}, not {affinity!r}")
    return f"jhash {keys[affinity]} mod {buckets} seed 0x{seed:08x}"


# ---------------------------------------------------------------- MAC addresses

def _vip_octets(vip: str) -> str:
    return ":".join("%02x" % o for o in ipaddress.IPv4Address(vip).packed)


def cluster_mac(vip: str, mode: str) -> str:
    """02-BF-<VIP> (unicast: it replaces each host's own MAC) or 03-BF-<VIP> (multicast:
    a group address every host adds to its NIC)."""
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
    return ("02:bf:" if mode == "unicast" else "03:bf:") + _vip_octets(vip)


def masked_mac(host_id: int, vip: str) -> str:
    """The source MAC a unicast-mode host sends with, 02-<host id>-<VIP>: the switch learns
    these and never the cluster MAC, so it floods every frame for the cluster."""
    if not 1 <= host_id <= 32:
        raise ValueError("NLB host ids run from 1 to 32")
    return "02:%02x:" % host_id + _vip_octets(vip)


# ---------------------------------------------------------------- the bucket map

BucketMap = list  # list[int | None] of length BUCKETS: the owner's host id per bucket


def empty_map() -> BucketMap:
    return [None] * BUCKETS


def rebalance(previous: BucketMap | None, owners: list[int]) -> BucketMap:
    """The bucket map after convergence (rule in the module docstring)."""
    prev = list(previous) if previous else empty_map()
    if len(prev) != BUCKETS:
        raise ValueError(f"a bucket map has {BUCKETS} entries, not {len(prev)}")
    owners = sorted(set(owners))
    if not owners:
        return empty_map()
    held = {o: sorted(b for b, owner in enumerate(prev) if owner == o) for o in owners}
    base, extra = divmod(BUCKETS, len(owners))
    by_holding = sorted(owners, key=lambda o: (-len(held[o]), o))
    quota = {o: base + (1 if i < extra else 0) for i, o in enumerate(by_holding)}
    new = empty_map()
    free = []
    for o in owners:
        keep, release = held[o][:quota[o]], held[o][quota[o]:]
        for b in keep:
            new[b] = o
        free += release
    free = sorted(free + [b for b, owner in enumerate(prev) if owner not in quota])
    count = {o: min(len(held[o]), quota[o]) for o in owners}
    for b in free:
        o = max(owners, key=lambda x: (quota[x] - count[x], -x))
        new[b] = o
        count[o] += 1
    return new


def owned_by(bucket_map: BucketMap, host_id: int) -> set[int]:
    return {b for b, owner in enumerate(bucket_map) if owner == host_id}


def moved(before: BucketMap, after: BucketMap) -> list[int]:
    """Buckets whose owner changed."""
    before = before or empty_map()
    return [b for b in range(BUCKETS) if before[b] != after[b]]
