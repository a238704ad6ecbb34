"""Unit tests of controllers/nlb_logic.py: the SDN NLB's pure load-balancing logic.

No root, no switch: MaglevTable (consistent hashing), affinity keys, Pool, ConnectionTable
and HealthTracker, with hypothesis property tests for the consistency guarantees the
failover depends on.
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from controllers.nlb_logic import (
    AFFINITIES, DEFAULT_TABLE_SIZE, Connection, ConnectionTable, HealthTracker, MaglevTable, Member, Pool,
    affinity_key,
)

ROOT = Path(__file__).resolve().parent.parent
SMALL = 257
MEDIUM = 1031

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
SLOW = settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])

names = st.text(alphabet="abcdefghijklmnopqrstuvwxyz0123456789-", min_size=1, max_size=8)
backend_sets = st.sets(names, min_size=1, max_size=10)
keys = st.lists(st.text(min_size=0, max_size=20), min_size=1, max_size=60)
ipv4s = st.integers(min_value=0x01000000, max_value=0xDFFFFFFF).map(lambda n: str(ipaddress.IPv4Address(n)))
ports = st.integers(min_value=1, max_value=65535)


def owner_by_rendezvous(table: MaglevTable, slot: int) -> str | None:
    """The documented rule, computed independently: highest score wins, ties to the smaller name."""
    best = None
    for name in table.backends:
        score = MaglevTable._score(table._seeds[name], slot)
        if best is None or score > best[0] or (score == best[0] and name < best[1]):
            best = (score, name)
    return best[1] if best else None


# ---- MaglevTable -------------------------------------------------------------------------


def test_empty_table_has_no_backend_and_lookup_is_none():
    table = MaglevTable(size=SMALL)
    assert table.backends == []
    assert table.table == [None] * SMALL
    assert table.lookup("10.0.0.1:1234") is None


def test_default_table_size_is_the_documented_prime():
    assert DEFAULT_TABLE_SIZE == 4099
    assert all(DEFAULT_TABLE_SIZE % d for d in range(2, int(math.isqrt(DEFAULT_TABLE_SIZE)) + 1))
    assert MaglevTable(["a"]).size == DEFAULT_TABLE_SIZE


def test_single_backend_owns_every_slot():
    table = MaglevTable(["cas1"], size=SMALL)
    assert set(table.table) == {"cas1"}
    assert table.lookup("anything") == "cas1"


def test_removing_the_last_backend_empties_the_table():
    table = MaglevTable(["cas1", "cas2"], size=SMALL)
    table.remove("cas1")
    table.remove("cas2")
    assert table.backends == []
    assert set(table.table) == {None}
    assert table.lookup("k") is None


def test_add_existing_and_remove_unknown_are_no_ops():
    table = MaglevTable(["cas1", "cas2", "cas3"], size=SMALL)
    before = list(table.table)
    table.add("cas2")
    table.remove("cas9")
    assert table.table == before
    assert table.backends == ["cas1", "cas2", "cas3"]


def test_duplicate_backends_in_constructor_count_once():
    assert MaglevTable(["b", "a", "b", "a"], size=SMALL).table == MaglevTable(["a", "b"], size=SMALL).table


@FAST
@given(backend_sets)
def test_every_slot_goes_to_the_rendezvous_winner(backends):
    table = MaglevTable(backends, size=SMALL)
    assert table.backends == sorted(backends)
    for slot in range(SMALL):
        assert table.table[slot] == owner_by_rendezvous(table, slot)


@FAST
@given(st.sets(names, min_size=2, max_size=10), st.data(), keys)
def test_removing_one_backend_moves_only_its_own_slots_and_keys(backends, data, sample_keys):
    victim = data.draw(st.sampled_from(sorted(backends)))
    table = MaglevTable(backends, size=MEDIUM)
    before = list(table.table)
    key_before = {k: table.lookup(k) for k in sample_keys}
    table.remove(victim)
    assert victim not in table.table
    assert None not in table.table
    for slot, (old, new) in enumerate(zip(before, table.table)):
        if old != victim:
            assert new == old, f"slot {slot} of surviving backend {old} moved to {new}"
    for k, old in key_before.items():
        new = table.lookup(k)
        if old != victim:
            assert new == old
        else:
            assert new in backends - {victim}
    # and the incremental result is exactly the table built from scratch without the victim
    assert table.table == MaglevTable(backends - {victim}, size=MEDIUM).table


@SLOW
@given(st.sets(names, min_size=1, max_size=12), names)
def test_adding_one_backend_moves_only_slots_to_it_about_one_in_n_plus_one(backends, newcomer):
    assume(newcomer not in backends)
    size = DEFAULT_TABLE_SIZE
    n = len(backends)
    table = MaglevTable(backends, size=size)
    before = list(table.table)
    table.add(newcomer)
    moved = [slot for slot in range(size) if table.table[slot] != before[slot]]
    assert all(table.table[slot] == newcomer for slot in moved), "a slot moved between two old backends"
    assert table.table.count(newcomer) == len(moved)
    fraction = len(moved) / size
    assert 0.5 / (n + 1) <= fraction <= 1.6 / (n + 1), (n, fraction)


@FAST
@given(backend_sets, st.sets(names, max_size=5), st.randoms(use_true_random=False))
def test_table_is_independent_of_insertion_and_removal_order(backends, extras, rnd):
    size = SMALL
    at_once = MaglevTable(backends, size=size).table

    order = sorted(backends)
    rnd.shuffle(order)
    one_by_one = MaglevTable(size=size)
    for name in order:
        one_by_one.add(name)
    assert one_by_one.table == at_once

    # add everything plus extras in a random order, then remove the extras in a random order
    extras = extras - backends
    churn = MaglevTable(size=size)
    everything = sorted(backends | extras)
    rnd.shuffle(everything)
    for name in everything:
        churn.add(name)
    gone = sorted(extras)
    rnd.shuffle(gone)
    for name in gone:
        churn.remove(name)
    assert churn.table == at_once

    # remove and re-add a random member: back to the same table
    victim = rnd.choice(sorted(backends))
    churn.remove(victim)
    churn.add(victim)
    assert churn.table == at_once

    via_set = MaglevTable(extras, size=size)
    via_set.set_backends(backends)
    assert via_set.backends == sorted(backends)
    assert via_set.table == at_once


@SLOW
@given(st.sets(names, min_size=2, max_size=10))
def test_slots_are_balanced_within_a_few_percent(backends):
    size = DEFAULT_TABLE_SIZE
    n = len(backends)
    counts = Counter(MaglevTable(backends, size=size).table)
    assert set(counts) == backends
    expected = 1 / n
    # five binomial standard deviations: at most 3.9 points of share for 2 backends, ~2 for 10
    tolerance = 5 * math.sqrt(expected * (1 - expected) / size)
    for name, count in counts.items():
        assert abs(count / size - expected) <= tolerance, (name, count / size, expected)


def test_ten_backends_balance_and_key_spread():
    backends = [f"cas{i}" for i in range(1, 11)]
    table = MaglevTable(backends)
    counts = Counter(table.table)
    assert min(counts.values()) / DEFAULT_TABLE_SIZE >= 0.07
    assert max(counts.values()) / DEFAULT_TABLE_SIZE <= 0.13
    hits = Counter(table.lookup(f"10.1.{i // 250}.{i % 250 + 1}:{40000 + i}") for i in range(5000))
    assert set(hits) == set(backends)
    assert min(hits.values()) >= 300 and max(hits.values()) <= 700


@FAST
@given(backend_sets, keys)
def test_lookup_is_deterministic_across_instances(backends, sample_keys):
    a = MaglevTable(backends, size=MEDIUM)
    b = MaglevTable(sorted(backends, reverse=True), size=MEDIUM)
    for k in sample_keys:
        assert a.lookup(k) == a.lookup(k) == b.lookup(k)
        assert a.lookup(k) in backends


def test_lookup_does_not_depend_on_the_python_hash_seed():
    """A restarted controller must map keys exactly as before (it re-learns pinned flows)."""
    code = (
        "import hashlib\n"
        "from controllers.nlb_logic import MaglevTable\n"
        "t = MaglevTable(['cas1', 'cas2', 'cas3'], size=1031)\n"
        "ks = [t.lookup('10.1.0.%d:%d' % (i % 200, 30000 + i)) for i in range(500)]\n"
        "print(hashlib.sha256(repr((t.table, ks)).encode()).hexdigest())\n"
    )
    digests = set()
    for seed in ("0", "1", "12345"):
        env = dict(os.environ, PYTHONHASHSEED=seed)
        out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True,
                             timeout=60, check=True)
        digests.add(out.stdout.strip())
    local = MaglevTable(["cas1", "cas2", "cas3"], size=1031)
    ks = [local.lookup("10.1.0.%d:%d" % (i % 200, 30000 + i)) for i in range(500)]
    digests.add(hashlib.sha256(repr((local.table, ks)).encode()).hexdigest())
    assert len(digests) == 1


# ---- affinity ------------------------------------------------------------------------------


def test_affinity_keys_by_mode():
    assert affinity_key("none", "10.1.0.51", 40000) == "10.1.0.51:40000"
    assert affinity_key("single", "10.1.0.51", 40000) == "10.1.0.51"
    assert affinity_key("network", "10.1.7.51", 40000) == "10.1.7.0"
    assert AFFINITIES == ("none", "single", "network")


def test_unknown_affinity_is_rejected():
    with pytest.raises(ValueError):
        affinity_key("class-c", "10.1.0.51", 1)
    with pytest.raises(ValueError):
        Pool({"a": Member("a", "10.1.0.11", "02:00:0a:01:00:0b", "p1")}, affinity="sticky")


@FAST
@given(ipv4s, st.lists(ports, min_size=2, max_size=20))
def test_affinity_none_key_differs_per_port_and_single_ignores_port(ip, port_list):
    assume(len(set(port_list)) > 1)
    assert len({affinity_key("none", ip, p) for p in set(port_list)}) == len(set(port_list))
    assert {affinity_key("single", ip, p) for p in port_list} == {ip}


@FAST
@given(ipv4s, ipv4s)
def test_network_affinity_groups_exactly_the_slash_24(a, b):
    same_24 = a.rsplit(".", 1)[0] == b.rsplit(".", 1)[0]
    assert (affinity_key("network", a, 1) == affinity_key("network", b, 2)) == same_24


def make_pool(n: int = 4, affinity: str = "none", table_size: int = MEDIUM) -> Pool:
    members = {f"cas{i}": Member(f"cas{i}", f"10.1.0.{10 + i}", "02:00:0a:01:00:%02x" % (10 + i), f"clab1-eth{i}")
               for i in range(1, n + 1)}
    return Pool(members, affinity=affinity, table_size=table_size)


@FAST
@given(ipv4s, st.lists(ports, min_size=1, max_size=30))
def test_single_affinity_sends_all_ports_of_one_ip_to_one_member(ip, port_list):
    pool = make_pool(affinity="single")
    chosen = {pool.choose(ip, p).name for p in port_list}
    assert len(chosen) == 1


@FAST
@given(st.integers(0, 0xFFFFFF), st.lists(st.tuples(st.integers(0, 255), ports), min_size=1, max_size=30))
def test_network_affinity_sends_a_whole_slash_24_to_one_member(prefix, hosts):
    pool = make_pool(affinity="network")
    base = ".".join(str(b) for b in prefix.to_bytes(3, "big"))
    chosen = {pool.choose(f"{base}.{last}", p).name for last, p in hosts}
    assert len(chosen) == 1


def test_affinity_none_spreads_one_client_over_members():
    pool = make_pool(affinity="none")
    chosen = Counter(pool.choose("10.1.0.51", 30000 + p).name for p in range(400))
    assert len(chosen) == 4
    assert min(chosen.values()) >= 50


# ---- Pool ----------------------------------------------------------------------------------

member_state = st.fixed_dictionaries({"healthy": st.booleans(), "draining": st.booleans(), "port_up": st.booleans(),
                                      "admin_up": st.booleans()})


@FAST
@given(st.lists(member_state, min_size=1, max_size=6), st.sampled_from(AFFINITIES),
       st.lists(st.tuples(ipv4s, ports), min_size=1, max_size=25))
def test_choose_only_returns_members_that_accept_new(states, affinity, clients):
    pool = make_pool(n=len(states), affinity=affinity, table_size=SMALL)
    for name, state in zip(sorted(pool.members), states):
        pool.set_state(name, **state)
    eligible = {m.name for m in pool.members.values() if m.accepts_new}
    for ip, port in clients:
        member = pool.choose(ip, port)
        if not eligible:
            assert member is None
        else:
            assert member is not None and member.name in eligible
            assert member.healthy and member.port_up and member.admin_up and not member.draining


@pytest.mark.parametrize("change", [{"healthy": False}, {"draining": True}, {"port_up": False}, {"admin_up": False}])
def test_each_kind_of_ineligibility_removes_a_member_from_choice(change):
    pool = make_pool()
    assert pool.set_state("cas2", **change) is True
    picks = {pool.choose("10.1.0.51", p).name for p in range(1, 2000)}
    assert "cas2" not in picks
    assert picks == {"cas1", "cas3", "cas4"}


def test_no_eligible_member_means_none():
    pool = make_pool(n=2)
    pool.set_state("cas1", healthy=False)
    pool.set_state("cas2", draining=True)
    assert pool.choose("10.1.0.51", 1) is None
    assert make_pool(n=0).choose("10.1.0.51", 1) is None


def test_set_state_reports_only_eligibility_changes():
    pool = make_pool(n=3)
    assert pool.set_state("cas1", healthy=False) is True
    assert pool.set_state("cas1", draining=True) is False  # already ineligible
    assert pool.set_state("cas1", healthy=True) is False  # still draining
    assert pool.set_state("cas1", draining=False) is True
    assert pool.set_state("cas1", healthy=True) is False  # no change at all
    assert pool.members["cas1"].accepts_new
    assert "cas1" in {pool.choose("10.1.0.51", p).name for p in range(1, 500)}


@FAST
@given(st.lists(st.tuples(ipv4s, ports), min_size=1, max_size=40), st.integers(1, 4))
def test_a_member_going_away_never_moves_clients_of_the_survivors(clients, victim_no):
    pool = make_pool(n=4, affinity="none")
    victim = f"cas{victim_no}"
    before = {c: pool.choose(*c).name for c in clients}
    pool.set_state(victim, healthy=False)
    after = {c: pool.choose(*c).name for c in clients}
    for c in clients:
        if before[c] != victim:
            assert after[c] == before[c]
        else:
            assert after[c] != victim
    pool.set_state(victim, healthy=True)
    assert {c: pool.choose(*c).name for c in clients} == before


# ---- ConnectionTable -----------------------------------------------------------------------


def conn(client_port: int, backend: str, client_ip: str = "10.1.0.51") -> Connection:
    return Connection((client_ip, client_port, "10.1.0.100", 443), backend, "02:00:0a:01:00:33", 5, 0)


def test_connection_table_basics():
    table = ConnectionTable()
    assert len(table) == 0 and table.get(("x", 1, "y", 2)) is None
    a, b, c = conn(1, "cas1"), conn(2, "cas2"), conn(3, "cas1")
    for item in (a, b, c):
        table.add(item)
    assert len(table) == 3
    assert table.get(a.key) is a
    assert sorted(x.key[1] for x in table.on_backend("cas1")) == [1, 3]
    assert table.on_backend("cas9") == []
    assert table.count_by_backend() == {"cas1": 2, "cas2": 1}
    assert table.remove(a.key) is a
    assert table.remove(a.key) is None
    assert len(table) == 2 and table.count_by_backend() == {"cas1": 1, "cas2": 1}
    table.add(conn(2, "cas3"))  # same key re-pinned replaces the old entry
    assert len(table) == 2 and table.get(b.key).backend == "cas3"


@FAST
@given(st.lists(st.tuples(st.sampled_from(["add", "remove"]), st.integers(1, 8), st.sampled_from(["a", "b", "c"])),
                max_size=40))
def test_connection_table_matches_a_dict_model(ops):
    table, model = ConnectionTable(), {}
    for op, port, backend in ops:
        c = conn(port, backend)
        if op == "add":
            table.add(c)
            model[c.key] = backend
        else:
            removed = table.remove(c.key)
            expected = model.pop(c.key, None)
            assert (removed.backend if removed else None) == expected
        assert len(table) == len(model)
        assert table.count_by_backend() == dict(Counter(model.values()))
        for b in "abc":
            assert {x.key for x in table.on_backend(b)} == {k for k, v in model.items() if v == b}


# ---- HealthTracker -------------------------------------------------------------------------


def test_health_flips_down_only_after_fall_consecutive_failures():
    h = HealthTracker(fall=3, rise=2)
    assert [h.record(False), h.record(False)] == [None, None]
    assert h.healthy
    assert h.record(False) is False
    assert not h.healthy
    assert h.record(False) is None  # already down: no second flip


def test_health_flips_up_only_after_rise_consecutive_successes():
    h = HealthTracker(fall=1, rise=3, healthy=False)
    assert [h.record(True), h.record(True)] == [None, None]
    assert not h.healthy
    assert h.record(True) is True
    assert h.healthy


def test_mixed_sequence_resets_the_streak():
    h = HealthTracker(fall=2, rise=2)
    for result in [False, True, False, True, False, True]:
        assert h.record(result) is None
    assert h.healthy
    assert h.record(False) is None and h.record(False) is False
    for result in [True, False, True, False]:
        assert h.record(result) is None
    assert not h.healthy
    assert h.record(True) is None and h.record(True) is True


def test_fall_one_flips_at_once():
    h = HealthTracker(fall=1, rise=1)
    assert h.record(True) is None
    assert h.record(False) is False
    assert h.record(True) is True


def reference_health(results, fall, rise):
    """Independent model: the state flips at the end of every run of `fall` failures (while
    up) or `rise` successes (while down) that is not interrupted by a result equal to the state."""
    healthy, flips, run = True, [], []
    for i, ok in enumerate(results):
        if ok == healthy:
            run = []
            flips.append(None)
            continue
        run.append(i)
        if len(run) == (rise if ok else fall):
            healthy, run = ok, []
            flips.append(ok)
        else:
            flips.append(None)
    return healthy, flips


@FAST
@given(st.lists(st.booleans(), max_size=40), st.integers(1, 4), st.integers(1, 4))
def test_health_tracker_matches_the_fall_rise_model(results, fall, rise):
    h = HealthTracker(fall=fall, rise=rise)
    got = [h.record(r) for r in results]
    healthy, flips = reference_health(results, fall, rise)
    assert got == flips
    assert h.healthy == healthy
    # every reported flip is preceded by at least `fall`/`rise` equal results
    for i, flip in enumerate(got):
        if flip is not None:
            need = rise if flip else fall
            assert i + 1 >= need and all(r == flip for r in results[i + 1 - need:i + 1])
