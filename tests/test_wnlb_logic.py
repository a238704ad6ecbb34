"""Windows NLB's pure parts: the bucket hash, cluster MACs, the redistribution rule, the
heartbeat codec and the membership/convergence state machine (no network)."""

from __future__ import annotations

import pytest

from controllers import wnlb_nft
from controllers.wnlb_logic import (
    BUCKETS, bucket_of, cluster_mac, hash_key, jhash, masked_mac, moved, nft_hash_expression, owned_by, rebalance,
)
from controllers.wnlb_membership import Membership, decode, encode
from labcommon.programs import WnlbAgentConfig

# ---------------------------------------------------------------- hashing


def test_jhash_matches_the_kernel_reference_values():
    # jhash(key, len, initval) from include/linux/jhash.h, computed by the kernel itself
    # (nft jhash ... mod 2**32 is not expressible, so these come from lookup3's own test
    # vectors: hashlittle("", 0) and hashlittle("Four score and seven years ago", 0/1)).
    assert jhash(b"", 0) == 0xDEADBEEF
    assert jhash(b"Four score and seven years ago", 0) == 0x17770551
    assert jhash(b"Four score and seven years ago", 1) == 0xCD628161


def test_bucket_keys_follow_affinity():
    assert hash_key("single", "10.1.10.7") == bytes([10, 1, 10, 7])
    assert hash_key("network", "10.1.10.7") == bytes([10, 1, 10, 0])
    assert hash_key("none", "10.1.10.7", 0x1234) == bytes([10, 1, 10, 7, 0x12, 0x34, 0, 0])
    with pytest.raises(ValueError):
        hash_key("sticky", "10.1.10.7")


def test_buckets_are_in_range_and_spread():
    buckets = [bucket_of("single", f"10.1.{c}.{h}") for c in range(10, 14) for h in range(1, 251)]
    assert all(0 <= b < BUCKETS for b in buckets)
    assert len(set(buckets)) == BUCKETS, "a thousand clients reach every bucket"


def test_single_affinity_ignores_the_port_and_network_affinity_the_last_octet():
    assert bucket_of("single", "10.1.10.7", 1000) == bucket_of("single", "10.1.10.7", 2000)
    assert bucket_of("network", "10.1.10.7") == bucket_of("network", "10.1.10.200")
    ports = {bucket_of("none", "10.1.10.7", p) for p in range(40000, 40100)}
    assert len(ports) > 30, "without affinity one client's connections spread over buckets"


def test_the_nft_expression_names_the_same_key_and_seed():
    assert nft_hash_expression("single") == "jhash ip saddr mod 60 seed 0x4e4c4221"
    assert "ip saddr & 255.255.255.0" in nft_hash_expression("network")
    assert "ip saddr . tcp sport" in nft_hash_expression("none")


def test_cluster_and_masked_macs_follow_the_vip():
    assert cluster_mac("10.1.0.100", "unicast") == "02:bf:0a:01:00:64"
    assert cluster_mac("10.1.0.100", "multicast") == "03:bf:0a:01:00:64"
    assert masked_mac(2, "10.1.0.100") == "02:02:0a:01:00:64"
    with pytest.raises(ValueError):
        masked_mac(33, "10.1.0.100")


# ---------------------------------------------------------------- redistribution


def counts(bucket_map):
    out = {}
    for owner in bucket_map:
        out[owner] = out.get(owner, 0) + 1
    return out


@pytest.mark.parametrize("n", [1, 2, 3, 4, 7, 32])
def test_a_fresh_cluster_splits_evenly(n):
    new = rebalance(None, list(range(1, n + 1)))
    sizes = counts(new)
    assert None not in sizes and set(sizes) == set(range(1, n + 1))
    assert max(sizes.values()) - min(sizes.values()) <= 1


def test_a_host_leaving_moves_only_its_buckets():
    before = rebalance(None, [1, 2, 3])
    after = rebalance(before, [1, 3])
    assert set(moved(before, after)) == owned_by(before, 2)
    assert counts(after) == {1: 30, 3: 30}


def test_a_host_joining_takes_only_its_share():
    before = rebalance(None, [1, 3])
    after = rebalance(before, [1, 2, 3])
    assert len(moved(before, after)) == 20
    assert owned_by(after, 2) == set(moved(before, after))
    assert owned_by(after, 1) <= owned_by(before, 1) and owned_by(after, 3) <= owned_by(before, 3)


@pytest.mark.parametrize("owners", [[1], [1, 2], [2, 3], [1, 2, 3], [1, 4, 5, 9]])
def test_rebalance_is_idempotent(owners):
    first = rebalance(rebalance(None, [1, 2, 3, 4, 5, 9]), owners)
    assert rebalance(first, owners) == first


def test_rebalance_does_not_depend_on_owner_order_and_empties_without_owners():
    base = rebalance(None, [1, 2, 3])
    assert rebalance(base, [3, 1]) == rebalance(base, [1, 3])
    assert rebalance(base, []) == [None] * BUCKETS
    with pytest.raises(ValueError):
        rebalance([1] * 59, [1])


# ---------------------------------------------------------------- heartbeats and convergence

PERIOD = 1_000_000_000


class Cluster:
    """Hosts exchanging heartbeats in lock step (a host that is down neither sends nor ticks)."""

    def __init__(self, n: int, tolerance: int = 5, stable: int = 3):
        self.hosts = {i: Membership(i, f"cas{i}", "10.1.0.100", tolerance, stable) for i in range(1, n + 1)}
        self.up = set(self.hosts)
        self.now = 0
        self.log: list[tuple[int, int, str, dict]] = []

    def step(self, periods: int = 1) -> None:
        for _ in range(periods):
            self.now += PERIOD
            frames = [encode(self.hosts[i].heartbeat()) for i in sorted(self.up)]
            for i in sorted(self.up):
                for frame in frames:
                    for change in self.hosts[i].receive(decode(frame)):
                        self.log.append((self.now, i, change.kind, change.detail))
            for i in sorted(self.up):
                for change in self.hosts[i].tick(self.now):
                    self.log.append((self.now, i, change.kind, change.detail))

    def converged(self, host: int) -> list[dict]:
        return [d for _, i, kind, d in self.log if i == host and kind == "converged"]


def test_hosts_starting_together_converge_on_one_even_map():
    cluster = Cluster(3)
    cluster.step(6)
    maps = {i: tuple(h.bucket_map) for i, h in cluster.hosts.items()}
    assert len(set(maps.values())) == 1 and counts(list(maps[1])) == {1: 20, 2: 20, 3: 20}
    assert all(h.state == "converged" for h in cluster.hosts.values())


def test_a_dead_host_is_dropped_after_tolerance_missed_heartbeats_then_its_buckets_move():
    cluster = Cluster(3, tolerance=5, stable=3)
    cluster.step(6)
    before = list(cluster.hosts[1].bucket_map)
    cluster.up.discard(2)
    down_at = cluster.now
    cluster.step(12)
    downs = [(t, i) for t, i, kind, d in cluster.log if kind == "member_down" and d["member"] == "cas2"]
    assert {i for _, i in downs} == {1, 3} and all(t - down_at == 5 * PERIOD for t, _ in downs)
    done = cluster.converged(1)[-1]
    assert done["view"] == ["cas1", "cas3"] and done["restarts"] == 0
    assert set(done["gained"]) | set(cluster.converged(3)[-1]["gained"]) == owned_by(before, 2)
    assert done["took_ms"] == 3000.0, "three agreeing periods after the start of convergence"
    assert done["moved"] == 20 and done["departed"] == {"cas2": 0}


def test_convergence_restarts_when_membership_changes_again():
    cluster = Cluster(4, tolerance=5, stable=3)
    cluster.step(6)
    cluster.up.discard(2)
    cluster.step(6)            # cas2 declared dead: convergence starts
    cluster.up.discard(3)      # cas3 dies during it
    cluster.step(12)
    restarts = [d for _, i, kind, d in cluster.log if i == 1 and kind == "converging" and d["restart"]]
    assert restarts and "member_down:cas3" in restarts[0]["reason"]
    done = cluster.converged(1)[-1]
    assert done["view"] == ["cas1", "cas4"] and done["restarts"] >= 1
    assert counts(cluster.hosts[1].bucket_map) == {1: 30, 4: 30}


def test_a_draining_host_owns_nothing_but_stays_a_member_and_rejoins():
    cluster = Cluster(3)
    cluster.step(6)
    cluster.hosts[1].draining = True
    cluster.step(6)
    assert owned_by(cluster.hosts[2].bucket_map, 1) == set()
    assert cluster.converged(2)[-1]["view"] == ["cas1", "cas2", "cas3"]
    assert cluster.converged(1)[-1]["members"] == ["cas2", "cas3"]
    cluster.hosts[1].draining = False
    cluster.step(6)
    assert counts(cluster.hosts[3].bucket_map) == {1: 20, 2: 20, 3: 20}


def test_a_heartbeat_that_is_not_one_is_ignored():
    assert decode(b"not json") is None
    assert decode(b'{"v": 2}') is None
    good = Membership(1, "cas1", "10.1.0.100", 5, 3).heartbeat()
    assert decode(encode({**good, "map": [1] * 59})) is None
    assert decode(encode(good) + b"\0" * 20)["name"] == "cas1", "padding to 60 bytes is tolerated"
    other = Membership(2, "cas2", "10.2.0.100", 5, 3)
    assert other.receive(decode(encode(good))) == [], "another cluster's heartbeat"


def crafted_heartbeats() -> dict[str, bytes]:
    """Heartbeat payloads a hostile host on the segment could send (each fits the 2,048
    bytes the agent reads of a frame)."""
    good = Membership(2, "cas2", "10.1.0.100", 5, 3).heartbeat()
    text = encode(good).decode()
    return {
        "infinite_id": text.replace('"id":2', '"id":Infinity').encode(),
        "infinite_conns": text.replace('"conns":0', '"conns":-Infinity').encode(),
        "nan_id": text.replace('"id":2', '"id":NaN').encode(),
        "overflowing_float": text.replace('"conns":0', '"conns":1e400').encode(),
        "huge_int": text.replace('"conns":0', '"conns":' + "9" * 1800).encode(),
        "deep_array": b"[" * 1017 + b"]" * 1017,
        "deep_busy": text.replace('"busy":[]', '"busy":' + "[" * 900 + "]" * 900).encode(),
        "deep_name": text.replace('"name":"cas2"', '"name":' + "{\"a\":" * 200 + "1" + "}" * 200).encode(),
        "float_id": text.replace('"id":2', '"id":2.5').encode(),
        "bool_id": text.replace('"id":2', '"id":true').encode(),
        "busy_out_of_range": text.replace('"busy":[]', '"busy":[-1,60,99999]').encode(),
        "busy_string": text.replace('"busy":[]', '"busy":"123"').encode(),
        "map_of_strings": encode({**good, "map": ["x"] * 60}),
        "view_of_triples": text.replace('"view":[[2,false]]', '"view":[[2,false,1]]').encode(),
        "view_huge_id": text.replace('"view":[[2,false]]', '"view":[[1e300,false]]').encode(),
    }


@pytest.mark.parametrize("name", list(crafted_heartbeats()))
def test_a_crafted_heartbeat_is_dropped_not_fatal(name):
    # Old behaviour: json.loads raised RecursionError on deep nesting and int() raised
    # OverflowError on Infinity: neither was caught, and the agent of every CAS died.
    payload = crafted_heartbeats()[name]
    assert len(payload) <= 2048 - 14, "a crafted heartbeat must fit what the agent reads of a frame"
    assert decode(payload) is None
    assert decode(encode(Membership(2, "cas2", "10.1.0.100", 5, 3).heartbeat()))["id"] == 2, "the untouched one"


def agent_config(tmp_path) -> WnlbAgentConfig:
    return WnlbAgentConfig(name="wnlb-cas1", host="cas1", host_id=1, vip="10.1.0.100", interface="lo", mode="unicast",
                           affinity="single", track_connections=True, heartbeat_ms=1000, missed=5, stable=3,
                           control=str(tmp_path / "control.sock"), events=str(tmp_path / "events.jsonl"))


@pytest.mark.parametrize("name", list(crafted_heartbeats()))
def test_the_agent_survives_a_crafted_frame_and_still_hears_its_peers(tmp_path, name):
    from controllers.wnlb_agent import Agent
    from controllers.wnlb_logic import ETHERTYPE
    agent = Agent(agent_config(tmp_path))
    header = b"\xff" * 6 + b"\x02" * 6 + ETHERTYPE.to_bytes(2, "big")
    agent.on_frame(header + crafted_heartbeats()[name])
    assert agent.membership.peers == {}
    agent.on_frame(header + encode(Membership(2, "cas2", "10.1.0.100", 5, 3).heartbeat()))
    assert [p.name for p in agent.membership.peers.values() if p.alive] == ["cas2"]


@pytest.mark.parametrize("command", [b"[" * 5000 + b"]" * 5000, b"[1]", b'"drainstop"', b"\xff\xfe",
                                     b'{"cmd": "drainstop", "deadline_s": 1e308}',
                                     b'{"cmd": "drainstop", "deadline_s": Infinity}',
                                     b'{"cmd": "drainstop", "deadline_s": NaN}'],
                         ids=["deep", "list", "string", "not_utf8", "huge_deadline", "infinite_deadline", "nan"])
def test_the_agent_survives_a_crafted_admin_command(tmp_path, command):
    from controllers.wnlb_agent import Agent
    agent = Agent(agent_config(tmp_path))
    agent.on_command(command)
    assert agent.deadline_ns is None


# ---------------------------------------------------------------- rulesets


def test_the_filter_ruleset_hashes_with_the_affinity_and_swaps_sets_in_one_file():
    text = wnlb_nft.filter_table("10.1.0.100", "network")
    assert "ip daddr != 10.1.0.100 accept" in text and nft_hash_expression("network") in text
    update = wnlb_nft.sets_update({3, 1}, set(), {1})
    assert update.splitlines() == ["flush set ip wnlb owned", "add element ip wnlb owned { 1, 3 }",
                                   "flush set ip wnlb held", "flush set ip wnlb dirty",
                                   "add element ip wnlb dirty { 1 }"]
    assert "ether saddr set 02:02:0a:01:00:64" in wnlb_nft.nic_table("cas2-eth0", "unicast", "02:bf:0a:01:00:64",
                                                                    "02:02:0a:01:00:64")
    assert "meta pkttype set host" in wnlb_nft.nic_table("cas2-eth0", "multicast", "03:bf:0a:01:00:64", "")


def test_flooding_with_an_unread_counter_is_unknown_not_zero():
    from caslab.results.metrics.nlb import flooding
    from labcommon.catalogue import WNLB_FLOOD

    read = {"ev": WNLB_FLOOD, "host": "mbx1", "port": "clab1-eth5", "cluster_frames": 10, "cluster_bytes": 6000,
            "heartbeat_frames": 3, "heartbeat_bytes": 300, "port_tx_bytes": 9000, "window_ms": 1000.0}
    assert flooding([read])["cluster_bytes"] == 6000 and flooding([read])["kbit_s"] == 48.0
    unread = read | {"host": "ad1", "cluster_frames": None, "cluster_bytes": None, "heartbeat_frames": None,
                     "heartbeat_bytes": None, "error": "could not read"}
    both = flooding([read, unread])
    assert both["cluster_bytes"] is None and both["kbit_s"] is None and both["unmeasured"] == ["ad1"]


def test_heartbeats_out_of_phase_with_the_ticks_do_not_delay_convergence():
    """Two hosts' periods drift: one tick sees two of the peer's heartbeats, the next none.
    A host that heard the peer within the last two ticks counts it as agreeing, so it
    converges after ``stable`` periods like its peer, not seconds later."""
    a, b = (Membership(i, f"cas{i}", "10.1.0.100", 5, 3) for i in (1, 2))
    log, now = [], 0
    for period in range(12):
        now += PERIOD
        beats = 2 if period % 2 == 0 else 0  # b's heartbeats reach a in pairs, every other tick
        for _ in range(beats):
            a.receive(decode(encode(b.heartbeat())))
        b.receive(decode(encode(a.heartbeat())))
        log += [(period, "a", c.kind) for c in a.tick(now)] + [(period, "b", c.kind) for c in b.tick(now)]
    done = {who: [p for p, w, kind in log if w == who and kind == "converged"] for who in ("a", "b")}
    assert done["a"] and done["b"] and abs(done["a"][0] - done["b"][0]) <= 1, log
    assert not [x for x in log if x[2] == "member_down"]
