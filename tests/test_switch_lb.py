"""The switch-resident load balancer, verified on the switch itself with real TCP:

* consistent hashing: when one of N members leaves, only its own clients move (real TCP:
  each of 200 client addresses connects and the CAS that answers says its name), and the
  share of keys that moves is at most 1/N + 2 % (the switch's own choice for 3,000 keys,
  read with ``ofproto/trace``: too many for real connections, and the same datapath code);
* drain and rejoin move no established connection;
* a controller restart disrupts nothing, and new connections are balanced meanwhile (the
  group and conntrack live in the switch).
"""

from __future__ import annotations

import ipaddress
import json
import re
import signal
import sys
import time
from concurrent.futures import ThreadPoolExecutor

import pytest

from caslab.network import nlb_client

from caslab.base import system
from caslab.network.netlab import LabNetwork
from caslab.network.ofchannel import listening_socket, write_private
from caslab.base.waits import wait_until
from labcommon.programs import Program
from controllers.nlb_flows import zone_of
from controllers.nlb_io import dump_conntrack
from topologies.plan import LabPlan

pytestmark = pytest.mark.require_root
TEST_SERVER = Program("test-server", "other", None, None, None, 0)  # a test's own server, not the lab's

SERVER = r"""
import socket, sys, threading
name = sys.argv[1]
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", 6001)); s.listen(512)
def serve(c):
    f = c.makefile("rwb")
    for line in f:
        f.write(name.encode() + b":" + line); f.flush()
while True:
    c, _ = s.accept(); threading.Thread(target=serve, args=(c,), daemon=True).start()
"""

CLIENT = r"""
import json, socket, sys, time
vip, count, base, mode = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
def ask(conn):
    conn.sendall(b"x\n"); return conn.makefile("rb").readline().decode().split(":")[0]
if mode == "once":  # one new connection per source address: who answers?
    out = {}
    for i in range(1, count + 1):
        src = f"{base}.{i}"
        try:
            c = socket.create_connection((vip, 6001), timeout=2, source_address=(src, 0))
            out[src] = ask(c); c.close()
        except OSError as exc:
            out[src] = "error:" + type(exc).__name__
    print(json.dumps(out)); sys.exit()
# mode "hold": keep one connection per address, ask every 0.1 s until stdin closes
conns = {f"{base}.{i}": socket.create_connection((vip, 6001), timeout=2, source_address=(f"{base}.{i}", 0))
         for i in range(1, count + 1)}
seen = {src: [] for src in conns}
import select
while not select.select([sys.stdin], [], [], 0.1)[0]:
    for src, c in conns.items():
        try:
            seen[src].append(ask(c))
        except OSError as exc:
            seen[src].append("error:" + type(exc).__name__)
print(json.dumps(seen))
"""

# idle connections, one per source address; after "go" on stdin (the cable is pulled), how
# and when each one ended within 3 s: {source: [how, ms]}
IDLE = r"""
import json, select, socket, sys, time
vip, count, base = sys.argv[1], int(sys.argv[2]), sys.argv[3]
conns = {}
for i in range(1, count + 1):
    c = socket.create_connection((vip, 6001), timeout=2, source_address=(f"{base}.{i}", 0))
    c.sendall(b"x\n")
    conns[f"{base}.{i}"] = (c, c.makefile("rb").readline().decode().split(":")[0])
print(json.dumps({src: name for src, (c, name) in conns.items()}), flush=True)
sys.stdin.readline()
pulled = time.monotonic()
waiting = {c.fileno(): (src, c) for src, (c, _) in conns.items()}
ended = {}
while waiting and time.monotonic() - pulled < 3:
    for fd in select.select(list(waiting), [], [], 0.05)[0]:
        src, c = waiting.pop(fd)
        try:
            how = "eof" if not c.recv(1) else "data"
        except OSError as exc:
            how = type(exc).__name__
        ended[src] = [how, round((time.monotonic() - pulled) * 1000, 1)]
print(json.dumps(ended), flush=True)
"""


TRACE_BLOCK = "10.1.128.0/17"  # client addresses only traced, never sent: allowed by the guard
TRACE_KEYS = 2500
# The VIP's select group is the first group the trace enters; later "using bucket" lines
# are the delivery group's.
BUCKET = re.compile(r"group:1\n(?:.*\n)*?\s*-> using bucket (\d+)")


class Lab:
    def __init__(self, tmp_path, cas: int = 4, affinity: str = "single"):
        self.plan = LabPlan.build([{"name": "HQ", "cas": cas, "mailboxes": 1, "clients": 1}])
        self.tmp = tmp_path
        self.api_socket, self.token = listening_socket(), "tok"
        self.api = self.api_socket.getsockname()[1]
        self.token_file = tmp_path / "nlb-token"
        write_private(self.token_file, self.token.encode())
        self.lab = LabNetwork(self.plan, tmp_path)
        self.affinity = affinity
        self.site = self.plan.sites[0]
        self.client = self.plan.by_role("client")[0]
        self.base = "10.1.10"  # the client host's source block (plan.source_ips)

    def config(self) -> dict:
        members = [{"name": h.name, "ip": h.ip, "mac": h.mac, "port_name": self.lab.switch_port_name(h.name)}
                   for h in self.plan.by_role("cas")]
        source = {"port_name": self.lab.switch_port_name(self.client.name), "mac": self.client.mac,
                  "prefixes": [f"{self.client.ip}/32", f"{self.base}.0/24", TRACE_BLOCK]}
        return {"events": str(self.tmp / "nlb.jsonl"), "dataplane": "switch", "fast_fail": True,
                "datapath_name": self.lab.datapath_name, "state_file": str(self.tmp / "state.json"),
                "api": {"host": "127.0.0.1", "port": self.api, "fd": self.api_socket.fileno(),
                        "token_file": str(self.token_file)},
                "vips": [{"name": "HQ", "ip": self.site.vip, "mac": self.site.vip_mac, "dpid": 1, "ports": [6001],
                          "affinity": self.affinity, "members": members, "sources": [source]}]}

    def start_controller(self) -> None:
        path = self.tmp / "nlb.json"
        path.write_text(json.dumps(self.config()))
        self.controller = self.lab.popen_controller("controllers.sdn_nlb", env={"CASLAB_NLB_CONFIG": str(path)},
                                                    pass_fds=(self.api_socket.fileno(),))

    def __enter__(self):
        self.lab.build()
        self.start_controller()
        self.lab.start()
        self.lab.wait_connected()
        for cas in self.plan.by_role("cas"):
            self.lab.popen_in(cas.name, f"srv-{cas.name}", [sys.executable, "-c", SERVER, cas.name],
                              program=TEST_SERVER)
        interface = self.lab.host_interface(self.client.name)
        for i in range(1, 201):
            self.lab.run_in(self.client.name, ["ip", "addr", "add", f"{self.base}.{i}/16", "dev", interface])
        wait_until(lambda: "cas" in json.dumps(self.once(1)), 20, "the VIP to answer", 0.3)
        return self

    def __exit__(self, *exc):
        try:
            self.lab.stop()
        finally:
            self.api_socket.close()

    def once(self, count: int = 200) -> dict[str, str]:
        code, out = self.lab.run_in(self.client.name, [sys.executable, "-c", CLIENT, self.site.vip, str(count),
                                                       self.base, "once"], timeout_s=120)
        return json.loads(out.strip().splitlines()[-1])

    def bucket_for(self, src: str, sport: int) -> int:
        """The member the switch's select group picks for a new connection from ``src``."""
        port = system.run(["ovs-vsctl", "get", "Interface", self.lab.switch_port_name(self.client.name), "ofport"])
        flow = (f"in_port={port.stdout.strip()},tcp,dl_src={self.client.mac},dl_dst={self.site.vip_mac},"
                f"nw_src={src},nw_dst={self.site.vip},tp_src={sport},tp_dst=6001,tcp_flags=0x002")
        res = system.run(["ovs-appctl", "ofproto/trace", self.plan.switch_names()[0], flow,
                          "--ct-next", "trk,new", "--ct-next", "trk,new"])
        out = res.stdout + res.stderr
        found = BUCKET.findall(out)
        assert found, f"the trace of {src} chose no bucket:\n{out[-1500:]}"
        return int(found[0])

    def buckets(self, keys: list[tuple[str, int]]) -> list[int]:
        with ThreadPoolExecutor(4) as pool:
            return list(pool.map(lambda key: self.bucket_for(*key), keys))

    def nlb(self, path: str, body: dict | None = None) -> dict:
        return nlb_client.call(self.api, path, body, self.token)


def test_one_member_leaving_moves_only_its_clients(tmp_path, no_residue):
    with Lab(tmp_path, cas=4) as lab:
        before = lab.once()
        assert all(v.startswith("cas") for v in before.values()), before
        shares = {c: sum(1 for v in before.values() if v == c) for c in sorted(set(before.values()))}
        assert len(shares) == 4, f"every member takes clients: {shares}"
        gone = "cas2"  # a fixed member: which one must not matter
        lab.nlb(f"/nlb/{lab.site.vip}/members/{gone}/down", {})
        after = lab.once()
        moved = [src for src in before if before[src] != after[src]]
        assert all(before[src] == gone for src in moved), "a client of a surviving member moved"
        assert all(after[src] != gone and after[src].startswith("cas") for src in moved)
        assert len(moved) == shares[gone]
        lab.nlb(f"/nlb/{lab.site.vip}/members/{gone}/up", {})
        assert lab.once() == before, "the same member coming back takes back exactly its clients"


def test_the_share_of_keys_that_moves_is_about_one_nth(tmp_path, no_residue):
    members = 4
    block = ipaddress.ip_network(TRACE_BLOCK)
    keys = [(str(block[1 + i]), 20000 + i % 30000) for i in range(TRACE_KEYS)]
    with Lab(tmp_path, cas=members, affinity="none") as lab:  # 5-tuple: every key is its own
        before = lab.buckets(keys)
        leaving = 2  # a fixed member, not the one the hash happened to favour
        lab.nlb(f"/nlb/{lab.site.vip}/members/cas{leaving}/down", {})
        after = lab.buckets(keys)
    assert set(before) == set(range(1, members + 1)), f"every member takes keys: {sorted(set(before))}"
    moved = [i for i in range(len(keys)) if before[i] != after[i]]
    assert all(before[i] == leaving for i in moved), "a key of a surviving member moved"
    assert all(after[i] != leaving for i in range(len(keys))), "a key still goes to the member that left"
    share = len(moved) / len(keys)
    print(f"switch_lb: {share:.2%} of {len(keys)} keys moved when 1 of {members} left")
    assert share <= 1 / members + 0.02, f"{share:.1%} of {len(keys)} keys moved when 1 of {members} left"


def test_drain_and_rejoin_move_no_established_connection(tmp_path, no_residue):
    with Lab(tmp_path, cas=3) as lab:
        holder = lab.lab.node(lab.client.name).popen([sys.executable, "-c", CLIENT, lab.site.vip, "60", lab.base,
                                                      "hold"], stdin=__import__("subprocess").PIPE)
        time.sleep(1.0)
        drained = "cas1"
        lab.nlb(f"/nlb/{lab.site.vip}/members/{drained}/drain", {"deadline_s": 60})
        new_while_drained = lab.once(40)
        time.sleep(0.5)
        lab.nlb(f"/nlb/{lab.site.vip}/members/{drained}/rejoin", {})
        time.sleep(1.0)
        out, _ = holder.communicate(b"stop\n", timeout=30)
        seen = json.loads(out.decode().strip().splitlines()[-1])
        assert all(len(set(answers)) == 1 and not answers[0].startswith("error") for answers in seen.values()), \
            {s: sorted(set(a)) for s, a in seen.items() if len(set(a)) != 1}
        assert any(answers[0] == drained for answers in seen.values()), "some held connection was on the drained CAS"
        assert drained not in new_while_drained.values(), "no new connection went to the drained CAS"


def test_controller_restart_disrupts_nothing_and_balancing_goes_on(tmp_path, no_residue):
    with Lab(tmp_path, cas=3) as lab:
        holder = lab.lab.node(lab.client.name).popen([sys.executable, "-c", CLIENT, lab.site.vip, "40", lab.base,
                                                      "hold"], stdin=__import__("subprocess").PIPE)
        time.sleep(1.0)
        lab.controller.signal(signal.SIGKILL)
        during = lab.once(40)
        assert all(v.startswith("cas") for v in during.values()), f"new connections while the controller is away: {during}"
        assert len(set(during.values())) >= 2, "they are still balanced"
        lab.start_controller()
        wait_until(lambda: lab.lab.run_in(lab.client.name, ["true"])[0] == 0, 5, "lab")
        time.sleep(2.0)
        out, _ = holder.communicate(b"stop\n", timeout=30)
        seen = json.loads(out.decode().strip().splitlines()[-1])
        broken = {s: a for s, a in seen.items() if len(set(a)) != 1 or a[0].startswith("error")}
        assert not broken, broken


def test_a_dead_members_idle_clients_are_reset_by_a_survivors_kernel(tmp_path, no_residue):
    """Thirty idle connections (blocked in recv, sending nothing); one CAS's cable pulled:
    every connection of that CAS, and none other, ends in ECONNRESET, each by a survivor's
    kernel answering the segment the switch readdressed to it (the NLB only challenged and
    saw copies: no reset of its own)."""
    import subprocess

    with Lab(tmp_path, cas=3) as lab:
        holder = lab.lab.node(lab.client.name).popen([sys.executable, "-c", IDLE, lab.site.vip, "30", lab.base],
                                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            placed = json.loads(holder.stdout.readline())
            dead = "cas2"
            mine = {src for src, cas in placed.items() if cas == dead}
            assert mine and len(mine) < len(placed), placed
            before = dump_conntrack(zone_of(1), lab.lab.datapath_name)
            [mark] = {e.mark for e in before if e.client_ip in mine}
            lab.lab.set_link(dead, False)
            holder.stdin.write(b"go\n")
            holder.stdin.flush()
            ended = json.loads(holder.stdout.readline())
            after = dump_conntrack(zone_of(1), lab.lab.datapath_name)
        finally:
            holder.kill()
            holder.wait(10)
        events = [json.loads(line) for line in (tmp_path / "nlb.jsonl").read_text().splitlines()]
    print("switch_lb: idle clients of the dead CAS ended after (ms):", sorted(ms for _, ms in ended.values()))
    assert set(ended) == mine, f"ended: {sorted(ended)}; on {dead}: {sorted(mine)}"
    # the switch forgot the dead CAS's connections (one flush by their reply address), and
    # only those: the survivors' connections are all still there
    assert [e for e in after if e.mark == mark] == [], "the dead member's connections were flushed"
    survivors = {(e.client_ip, e.client_port) for e in before if e.mark != mark and e.state == "ESTABLISHED"}
    assert survivors and survivors <= {(e.client_ip, e.client_port) for e in after}
    assert {how for how, _ in ended.values()} == {"ConnectionResetError"}, ended
    resets = [e for e in events if e["ev"] == "nlb_reset"]
    assert {r["client"].split(":")[0] for r in resets if r.get("via") == "survivor"} == mine
    assert [r for r in resets if r.get("via") != "survivor"] == []
