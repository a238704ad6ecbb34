"""Windows NLB for real (Mininet, OVS, nftables in each CAS, heartbeat frames between
agents): flooding seen on ports that are not members, convergence after missed
heartbeats, buckets that move, drain, and the field's stories with their fixes. Short
heartbeats (250 ms, 3 missed, 2 agreeing periods) keep each run to a few seconds; the
assertions are about behaviour, never about speed."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from controllers.wnlb_logic import bucket_of
from labcommon.events import read_events

pytestmark = pytest.mark.require_root

FAST = {"heartbeat_ms": 250, "missed": 3, "stable": 2}
PERIOD_MS = 250


def run(tmp_path: Path, raw: dict) -> tuple[list[dict], list[dict]]:
    """Run a spec; returns each scenario's first fault row (with the scenario's own fields)
    and every event."""
    base = {"experiment": {"name": "wnlb", "modes": ["wnlb"]},
            "topology": {"cas": 2, "mailboxes": 1, "client_hosts": 2, "databases": 1},
            "clients": {"sessions_per_host": 8, "distinct_source_ips": True},
            "timing": {"warmup_s": 1.0, "observe_s": 4.0}, "probe": {"capture": False, "rate_hz": 5}}
    for section, values in raw.items():
        if isinstance(values, dict):
            base.setdefault(section, {}).update(values)
        else:
            base[section] = values
    spec = spec_mod.validate(base, "test")
    run_dir = runner.run_experiment(spec, Path("test.toml"), tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    rows = [{**s, **s["faults"][0]} for s in summary["scenarios"]]
    return rows, list(read_events(run_dir / "events.jsonl"))


def of(events: list[dict], scenario: str, kind: str) -> list[dict]:
    return [e for e in events if e.get("scenario") == scenario and e["ev"] == kind]


def flood_on(events: list[dict], scenario: str, host: str) -> dict:
    return next(e for e in of(events, scenario, "wnlb_flood") if e["host"] == host)


def owner_at(events: list[dict], scenario: str, ts: int) -> dict[int, str]:
    """Bucket -> host, from each agent's last convergence before ts."""
    owners: dict[int, str] = {}
    for e in of(events, scenario, "wnlb_converged"):
        if e["ts"] < ts:
            for bucket in e["owned"]:
                owners[bucket] = e["src"].removeprefix("wnlb-")
            for bucket in e["lost"]:
                if owners.get(bucket) == e["src"].removeprefix("wnlb-"):
                    del owners[bucket]
    return owners


def test_unicast_floods_bystanders_and_a_powered_off_host_is_converged_away(tmp_path, no_residue):
    rows, events = run(tmp_path, {"wnlb": FAST, "faults": [{"kind": "poweroff", "target": "@busiest", "at_s": 0.5}]})
    row = rows[0]
    sid = row["id"]
    fault = of(events, sid, "fault")[0]
    victim = fault["targets"][0]
    # the switch floods frames for the cluster MAC to a host with no part in it
    lb1 = flood_on(events, sid, "lb1")
    assert lb1["cluster_frames"] > 100 and lb1["port_tx_bytes"] >= lb1["cluster_bytes"] > 0
    assert row["flooded_bytes"] > 0
    # the filter and the Python hash agree: every session's CAS owns its client's bucket
    before = owner_at(events, sid, fault["ts"])
    assert sorted(set(before.values())) == ["cas1", "cas2"] and len(before) == 60
    for e in of(events, sid, "connect_ok"):
        served = [o for o in of(events, sid, "op") if o["session"] == e["session"] and o["ok"] and o["ts"] > e["ts"]]
        if served and served[0]["ts"] < fault["ts"]:
            assert served[0]["cas"] == before[bucket_of("single", e["laddr"])], e["session"]
    # missed heartbeats, then convergence: the victim's buckets move to the survivor
    downs = [e for e in of(events, sid, "lb_member") if e["member"] == victim and not e["accepts_new"]]
    assert downs and (downs[0]["ts"] - fault["ts"]) / 1e6 >= (FAST["missed"] - 1) * PERIOD_MS
    after = owner_at(events, sid, of(events, sid, "measure_end")[0]["ts"])
    assert set(after.values()) == {"cas2" if victim == "cas1" else "cas1"} and len(after) == 60
    assert row["buckets_moved"] == 30 and row["convergence_ms"]["p50"] > downs[0]["ts"] / 1e6 - fault["ts"] / 1e6
    # its connections broke (NLB sends no reset): the clients time out, then reconnect to the survivor
    assert row["affected"] > 0 and row["recovered"] == row["affected"] and row["conns_departed"] >= row["affected"]
    assert not [e for e in of(events, sid, "down") if e["ts"] > fault["ts"] and e["reason"] == "reset"]


def test_drain_keeps_sessions_and_rejoin_breaks_only_without_connection_tracking(tmp_path, no_residue):
    """Each CAS is drained and started again in turn. Which buckets a rejoining host takes
    back depends on the bucket history (a host that gets exactly its old buckets back
    breaks nothing), so both hosts take a turn: one of the two rejoins always takes buckets
    in which the other host holds connections, whichever host converged first."""
    rows, events = run(tmp_path, {
        "wnlb": FAST, "sweep": {"wnlb.track_connections": [True, False]}, "timing": {"observe_s": 6.5},
        "clients": {"sessions_per_host": 12},
        "faults": [{"kind": "drain", "target": "cas1", "at_s": 0.5, "deadline_s": 60},
                   {"kind": "rejoin", "target": "cas1", "at_s": 2.0},
                   {"kind": "drain", "target": "cas2", "at_s": 3.0, "deadline_s": 60},
                   {"kind": "rejoin", "target": "cas2", "at_s": 4.5}]})
    for row in rows:
        first = row["faults"][0]
        assert first["affected"] > 0 and first["disrupted"] == 0, "drainstop: existing sessions finish on the host"
        states = [e["state"] for e in of(events, row["id"], "wnlb_drain")]
        assert states[:1] == ["draining"] and states.count("started") == 2
        converged = [e for e in of(events, row["id"], "wnlb_converged") if e["src"] == "wnlb-cas1"]
        assert any(not e["owned"] and e["kept"] > 0 for e in converged), "it gave its buckets away, kept its conns"
    tracked, untracked = rows  # the sweep's order: true, false
    assert all(f["disrupted"] == 0 for f in tracked["faults"]), "Windows 2003+: drain and start break nothing"
    assert sum(f["conns_broken"] or 0 for f in tracked["faults"]) == 0
    rejoins = [untracked["faults"][1], untracked["faults"][3]]
    assert sum(f["conns_broken"] or 0 for f in rejoins) > 0 and sum(f["collateral"] for f in rejoins) > 0, \
        "without tracking the connections in the buckets a rejoining host takes back break"


def test_multicast_needs_the_routers_static_arp_entry_and_a_static_mac_entry_stops_flooding(tmp_path, no_residue):
    rows, events = run(tmp_path, {
        "topology": {"client_hosts": 1, "branch": True, "branch_cas": 0, "branch_client_hosts": 1},
        "wnlb": {**FAST, "mode": "multicast", "switch_static_mac": True},
        "sweep": {"wnlb.router_static_arp": [False, True]},
        "timing": {"observe_s": 3.0, "ready_timeout_s": 6.0, "all_ready": False},
        "faults": [{"kind": "poweroff", "target": "cas1", "at_s": 0.5}]})
    without, with_entry = rows
    assert without["never_served"] == 8 and with_entry["never_served"] == 0, "Branch users reach the VIP only " \
                                                                            "through a router that knows its MAC"
    missing = of(events, without["id"], "clients_ready")[0]["missing"]
    assert missing and all(s.startswith("cl2-") for s in missing)
    for row in rows:
        assert flood_on(events, row["id"], "lb1")["cluster_frames"] == 0, "no flooding past the static MAC entry"
        assert row["convergence_ms"]["n"] == 1 and row["buckets_moved"] == 30


@pytest.mark.parametrize("mode,notify,cut_off", [("unicast", True, True), ("unicast", False, False),
                                                 ("multicast", True, False)])
def test_a_vmotion_with_notify_switches_cuts_off_the_nodes_left_behind(tmp_path, no_residue, mode, notify, cut_off):
    rows, events = run(tmp_path, {
        "topology": {"hypervisors": 2, "vm_placement": {"cas1": "hv1", "cas2": "hv1"}, "notify_switches": notify},
        "wnlb": {**FAST, "mode": mode}, "clients": {"sessions_per_host": 12},
        "faults": [{"kind": "vm-move", "target": "cas2", "to": "hv2", "at_s": 0.5}]})
    row = rows[0]
    fault = of(events, row["id"], "fault")[0]
    ops = of(events, row["id"], "op")
    on = {cas: {e["session"] for e in ops if e["ok"] and e["cas"] == cas and e["ts"] < fault["ts"]}
          for cas in ("cas1", "cas2")}
    assert on["cas1"] and on["cas2"], "both nodes served sessions while both VMs sat on one hypervisor"
    late = {e["session"] for e in ops if e["ok"] and e["ts"] > fault["ts"] + 2_000_000_000}
    if cut_off:
        assert not late & on["cas1"] and on["cas2"] <= late, "the node left behind gets no traffic"
        assert row["unrecovered"] >= len(on["cas1"])
        assert any(e["vm"] == "cas2" and e["hypervisor"] == "hv2" for e in of(events, row["id"], "vm_notify"))
    else:
        assert on["cas1"] | on["cas2"] <= late and row["unrecovered"] == 0


KERNEL_CHECK = """
import json, socket, subprocess, sys
from controllers.wnlb_logic import bucket_of, nft_hash_expression
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
sources = [f"10.9.{x}.{y}" for x in (1, 2, 77, 200) for y in (1, 5, 99, 250)]
for address in sources + ["10.9.255.1"]:
    subprocess.run(["ip", "addr", "add", f"{address}/32", "dev", "lo"], check=True)
out = {}
for affinity in ("single", "network", "none"):
    subprocess.run(["nft", "flush", "ruleset"], check=True)
    subprocess.run(["nft", "-f", "-"], check=True, input=f'''table ip t {{
      set seen {{ type ipv4_addr . inet_service . mark; flags dynamic; }}
      chain input {{ type filter hook input priority 0;
        ip daddr 10.9.255.1 tcp dport 9 meta mark set {nft_hash_expression(affinity)}
        ip daddr 10.9.255.1 tcp dport 9 add @seen {{ ip saddr . tcp sport . meta mark }}
      }}
    }}'''.encode())
    for i, address in enumerate(sources):
        sock = socket.socket()
        sock.setblocking(False)
        sock.bind((address, 20000 + 7 * i))
        try:
            sock.connect(("10.9.255.1", 9))
        except BlockingIOError:
            pass
        sock.close()
    listed = json.loads(subprocess.run(["nft", "-j", "list", "set", "ip", "t", "seen"], check=True,
                                       capture_output=True).stdout)
    elements = [e for item in listed["nftables"] if "set" in item for e in item["set"].get("elem", [])]
    values = [e["elem"]["val"] if "elem" in e else e for e in elements]
    kernel = {(ip, port): mark for ip, port, mark in (v["concat"] for v in values)}
    out[affinity] = [[ip, port, mark, bucket_of(affinity, ip, port)] for (ip, port), mark in sorted(kernel.items())]
print(json.dumps(out))
"""


@pytest.mark.require_root
def test_the_kernel_hashes_every_affinity_as_python_does():
    """nft's jhash in a private network namespace (nothing of the lab's) against bucket_of."""
    import subprocess
    import sys

    from tests.conftest import ROOT

    result = subprocess.run(["unshare", "--net", sys.executable, "-c", KERNEL_CHECK], capture_output=True, text=True,
                            cwd=ROOT, timeout=60, check=True)
    found = json.loads(result.stdout)
    for affinity, rows in found.items():
        assert len(rows) == 16, affinity
        assert [r[2] for r in rows] == [r[3] for r in rows], affinity


# the agent, started inside a probe (its line {start_agent}): config and process
START_AGENT = r'''events = work / "agent.jsonl"
config = {"name": "wnlb-cas1", "host": "cas1", "host_id": 1, "vip": "10.1.0.100", "interface": "cx0",
          "mode": "unicast", "affinity": "single", "track_connections": True, "heartbeat_ms": 100, "missed": 3,
          "stable": 2, "control": str(work / "agent.sock"), "events": str(events)}
(work / "agent.json").write_text(json.dumps(config))
agent = subprocess.Popen([sys.executable, "-m", "controllers.wnlb_agent", str(work / "agent.json")],
                         cwd=sys.argv[2], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=open(work / "agent.stderr", "wb"))
'''

CRAFTED_PROBE = r'''
import json, socket, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from controllers.wnlb_logic import ETHERTYPE
from controllers.wnlb_membership import Membership, encode
from tests.test_wnlb_logic import crafted_heartbeats

work = Path(sys.argv[1])
for args in (["link", "set", "lo", "up"], ["link", "add", "cx0", "type", "veth", "peer", "name", "cx1"],
             ["link", "set", "cx0", "mtu", "9000", "up"], ["link", "set", "cx1", "mtu", "9000", "up"]):
    subprocess.run(["ip", *args], check=True)
{start_agent}try:
    def evs(kind):
        return [e for e in map(json.loads, events.read_text().splitlines()) if e["ev"] == kind] if events.exists() else []
    deadline = time.monotonic() + 10
    while not evs("wnlb_up") and agent.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    raw = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETHERTYPE))
    raw.bind(("cx1", ETHERTYPE))
    header = b"\xff" * 6 + b"\x02\x00\x00\x00\x00\x02" + ETHERTYPE.to_bytes(2, "big")
    for payload in crafted_heartbeats().values():
        raw.send(header + payload)
    time.sleep(0.5)  # five of the agent's periods
    alive_after_crafted = agent.poll() is None
    peer = Membership(2, "cas2", "10.1.0.100", 3, 2)
    for _ in range(10):
        raw.send(header + encode(peer.heartbeat()))
        time.sleep(0.1)
    result = {"up": bool(evs("wnlb_up")), "alive_after_crafted": alive_after_crafted,
              "alive": agent.poll() is None, "members_up": [e["member"] for e in evs("lb_member") if e["alive"]],
              "stderr": (work / "agent.stderr").read_text()[-2000:]}
finally:
    agent.terminate()
    agent.wait(timeout=10)
print(json.dumps(result))
'''


def run_agent_probe(probe: str, tmp_path: Path) -> dict:
    """Run a probe script (a Windows NLB agent on a veth pair) in a private network
    namespace of its own; its last line of output is its JSON result."""
    import subprocess
    import sys
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", probe.replace("{start_agent}", START_AGENT),
                           str(tmp_path), str(root)], cwd=root, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_a_running_agent_survives_crafted_heartbeat_frames(tmp_path):
    # Old behaviour: one frame with Infinity (OverflowError) or deep nesting (RecursionError)
    # killed the agent, on every CAS of the segment at once (heartbeats are broadcast).
    result = run_agent_probe(CRAFTED_PROBE, tmp_path)
    assert result["up"], result
    assert result["alive_after_crafted"] and result["alive"], f"the agent died: {result['stderr']}"
    assert "cas2" in result["members_up"], f"the agent no longer hears its peer: {result}"


MASK_PROBE = r"""
import json, socket, subprocess, sys, threading, time
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from controllers.wnlb_logic import cluster_mac, masked_mac

work = Path(sys.argv[1])
for args in (["link", "set", "lo", "up"], ["link", "add", "cx0", "type", "veth", "peer", "name", "cx1"],
             ["link", "set", "cx0", "address", "02:00:0a:01:01:01"], ["link", "set", "cx0", "up"],
             ["link", "set", "cx1", "up"], ["addr", "add", "10.1.1.1/16", "dev", "cx0"]):
    subprocess.run(["ip", *args], check=True)
capture = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(0x0003))
capture.bind(("cx1", 0))
capture.settimeout(0.05)
sources, stop = {}, [False]

def listen():
    while not stop[0]:
        try:
            frame = capture.recv(2048)
        except socket.timeout:
            continue
        mac = ":".join(f"{b:02x}" for b in frame[6:12])
        sources[mac] = sources.get(mac, 0) + 1

def chatter():  # the host's own traffic, as its stack sends it all the time
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST, 1)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_BINDTODEVICE, b"cx0")
    while not stop[0]:
        sock.sendto(b"x", ("10.1.255.255", 9))
        time.sleep(0.0002)

threads = [threading.Thread(target=listen), threading.Thread(target=chatter)]
for t in threads:
    t.start()
time.sleep(0.3)
{start_agent}try:
    deadline = time.monotonic() + 10
    while not (events.exists() and "wnlb_up" in events.read_text()) and agent.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.02)
    time.sleep(0.3)
finally:
    stop[0] = True
    agent.terminate()
    agent.wait(timeout=10)
    for t in threads:
        t.join()
print(json.dumps({"sources": sources, "cluster": cluster_mac("10.1.0.100", "unicast"),
                  "masked": masked_mac(1, "10.1.0.100"), "stderr": (work / "agent.stderr").read_text()[-2000:]}))
"""


def test_no_frame_leaves_a_unicast_member_with_the_cluster_mac_as_its_source(tmp_path):
    # Old behaviour: the agent set the cluster MAC on the NIC before the egress mask was in
    # place; a frame the host sent in between (under load, an IPv6 router solicitation)
    # taught the switch that the cluster MAC lives on that port, and the clients of the
    # other members' buckets could not connect for the 300 s the entry lived.
    result = run_agent_probe(MASK_PROBE, tmp_path)
    sources = result["sources"]
    assert sources.get("02:00:0a:01:01:01", 0) > 100, f"the host sent before the agent set up: {result}"
    assert sources.get(result["masked"], 0) > 100, f"and after, masked: {result}"
    assert result["cluster"] not in sources, f"frames left with the cluster MAC: {result}"
