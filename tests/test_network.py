"""Live network: real Mininet hosts on a real Open vSwitch carry TCP; the SDN NLB's VIP
answers ARP, ICMP and TCP, through the switch's own select group and conntrack (switch
dataplane) or through per-connection flows (controller dataplane)."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from caslab.network.netlab import LabNetwork
from caslab.network.ofchannel import listening_socket, write_private
from caslab.base.waits import wait_until
from labcommon.programs import Program
from topologies.plan import LabPlan

pytestmark = pytest.mark.require_root
TEST_SERVER = Program("test-server", "other", None, None, None, 0)  # a test's own server, not the lab's

ECHO_SERVER = ("import socket;s=socket.socket();s.setsockopt(socket.SOL_SOCKET,socket.SO_REUSEADDR,1);"
               "s.bind(('0.0.0.0',6001));s.listen(8)\n"
               "while True:\n c,_=s.accept();d=c.recv(100);c.sendall(b'%s:'+d);c.close()")
ECHO_CLIENT = ("import socket,sys;c=socket.create_connection((sys.argv[1],6001),timeout=3);"
               "c.sendall(b'hello');print(c.recv(100).decode())")


def start_network(tmp_path, app: str, config: dict | None = None, cas: int = 2, clients: int = 1, api=None):
    """A lab network with ``app`` on its OpenFlow channel; ``api``: a listening socket the
    controller inherits for its admin API."""
    plan = LabPlan.build([{"name": "HQ", "cas": cas, "mailboxes": 1, "clients": clients}])
    lab = LabNetwork(plan, tmp_path)
    lab.build()
    env = {}
    if config is not None:
        site = plan.sites[0]
        config = {"events": str(tmp_path / "nlb.jsonl"), "vips": [{
            "name": "HQ", "ip": site.vip, "mac": site.vip_mac, "dpid": 1, "ports": [6001], "members": [
                {"name": h.name, "ip": h.ip, "mac": h.mac, "port_name": lab.switch_port_name(h.name)}
                for h in plan.by_role("cas")],
            "sources": [{"port_name": lab.switch_port_name(h.name), "mac": h.mac, "prefixes": [f"{h.ip}/32"]}
                        for h in plan.by_role("client")]}], **config}
        path = tmp_path / "nlb.json"
        path.write_text(json.dumps(config))
        env["CASLAB_NLB_CONFIG"] = str(path)
    lab.popen_controller(app, env=env, pass_fds=(api.fileno(),) if api is not None else ())
    lab.start()
    lab.wait_connected()
    return lab, plan


def start_echo(lab, host: str):
    return lab.popen_in(host, f"echo-{host}", [sys.executable, "-c", ECHO_SERVER % host], program=TEST_SERVER)


def echo_from(lab, client: str, address: str) -> str:
    return lab.node(client).cmd(f"{sys.executable} -c \"{ECHO_CLIENT}\" {address}").strip()


def test_live_network_carries_tcp(tmp_path, no_residue):
    lab, plan = start_network(tmp_path, "controllers.l2_switch")
    try:
        start_echo(lab, "cas1")
        cas1 = plan.host("cas1").ip
        wait_until(lambda: "cas1:hello" in echo_from(lab, "cl1", cas1), 15, "TCP echo from cas1", 0.2)
        assert echo_from(lab, "cl1", cas1) == "cas1:hello"
    finally:
        lab.stop()


def nlb_cli(port: int, token_file, *args: str) -> dict:
    from tests.conftest import ROOT

    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "nlb", "--port", str(port), "--token-file",
                             str(token_file), *args],
                            cwd=ROOT, capture_output=True, text=True, timeout=30)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def dump(kind: str) -> str:
    return subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", kind, "clab1"], capture_output=True, text=True).stdout


@pytest.mark.parametrize("dataplane", ["switch", "controller"])
def test_vip_answers_arp_icmp_and_tcp(tmp_path, no_residue, dataplane):
    api = listening_socket()
    api_port, token = api.getsockname()[1], tmp_path / "nlb-token"
    write_private(token, b"t0ken")
    lab, plan = start_network(tmp_path, "controllers.sdn_nlb", api=api,
                              config={"fast_fail": True, "dataplane": dataplane,
                                      "api": {"host": "127.0.0.1", "port": api_port, "fd": api.fileno(),
                                              "token_file": str(token)}})
    try:
        for cas in plan.by_role("cas"):
            start_echo(lab, cas.name)
        vip = plan.sites[0].vip
        client = lab.node("cl1")
        wait_until(lambda: "hello" in echo_from(lab, "cl1", vip), 15, "TCP through the VIP", 0.2)
        neighbours = client.cmd(f"ip neigh show {vip}")
        assert plan.sites[0].vip_mac in neighbours.lower()
        assert " 0% packet loss" in client.cmd(f"ping -c 2 -W 1 {vip}")
        answers = {echo_from(lab, "cl1", vip) for _ in range(12)}
        served_by = {a.split(":")[0] for a in answers if a.endswith(":hello")}
        assert served_by <= {"cas1", "cas2"} and served_by, answers
        events = [json.loads(line) for line in (tmp_path / "nlb.jsonl").read_text().splitlines()]
        controller_conns = sum(1 for e in events if e["ev"] == "nlb_conn")
        shown = nlb_cli(api_port, token, "show")  # the admin API and `caslab nlb` on top of it
        assert shown["vips"][0]["ip"] == vip and shown["dataplane"] == dataplane
        if dataplane == "controller":
            pinned = [line for line in dump("dump-flows").splitlines() if "priority=400" in line]
            forwarded = [line for line in pinned if "n_packets=" in line and "set_field:10.1.1." in line]
            assert any(int(line.split("n_packets=")[1].split(",")[0]) >= 3 for line in forwarded), \
                "connection packets should be switched by flows, not the controller"
            assert controller_conns >= 12 and shown["stats"]["conns"] == controller_conns
        else:
            [select] = [line for line in dump("dump-groups").splitlines() if "group_id=1," in line]
            assert "type=select,selection_method=hash" in select and select.count("bucket=") == 2, select
            assert controller_conns == 0 and shown["stats"]["packet_in"] <= 4, \
                "new connections are balanced by the switch: no packet-in but ARP and ping"
            conntrack = subprocess.run(["ovs-appctl", "dpctl/dump-conntrack", lab.datapath_name, "zone=51793"],
                                       capture_output=True, text=True).stdout
            assert conntrack.count("dst=10.1.0.100,sport=") >= 12, conntrack
        drained = nlb_cli(api_port, token, "drain", vip, "cas1")
        cas1 = next(m for m in drained["vips"][0]["members"] if m["name"] == "cas1")
        assert cas1["draining"] and not cas1["accepts_new"]
        drained_answers = [echo_from(lab, "cl1", vip) for _ in range(8)]
        assert {a.split(":")[0] for a in drained_answers} == {"cas2"}, drained_answers
        rejoined = nlb_cli(api_port, token, "rejoin", vip, "cas1")
        assert next(m for m in rejoined["vips"][0]["members"] if m["name"] == "cas1")["accepts_new"]
    finally:
        lab.stop()
        api.close()


ABUSE_SCRIPT = '''
import sys
from scapy.all import ARP, Ether, IP, TCP, Raw, conf, sendp, srp1
conf.verb = 0
iface, vip, vip_mac = sys.argv[1], sys.argv[2], sys.argv[3]
me = Ether(dst="ff:ff:ff:ff:ff:ff", src="02:de:ad:be:ef:01")
frames = [
    me / ARP(op=2, psrc=vip, hwsrc="02:de:ad:be:ef:02", pdst=vip),                 # bogus "VIP is-at"
    me / ARP(op=1, psrc="0.0.0.0", hwsrc="00:00:00:00:00:00", pdst=vip),            # odd ARP request
    Ether(dst=vip_mac, type=0x88B5) / Raw(bytes(range(200))),                       # unknown ethertype
    Ether(dst=vip_mac) / IP(src="10.1.99.99", dst=vip, proto=99) / Raw(b"x" * 40),  # unknown protocol
    Ether(dst=vip_mac) / IP(src="10.1.99.99", dst=vip, proto=6) / Raw(b"\\x01\\x02"),  # truncated TCP
    Ether(dst=vip_mac, src="02:de:ad:be:ef:03") / IP(src="10.1.99.99", dst=vip) / TCP(dport=6001, flags="A"),
    Ether(dst=vip_mac) / IP(dst=vip) / TCP(dport=6001, flags="S", options=[(254, b"")]),  # zero-length option
]
for frame in frames * 5:
    sendp(frame, iface=iface)
reply = srp1(Ether(dst=vip_mac) / IP(dst=vip) / TCP(sport=40123, dport=6666, flags="S"), iface=iface, timeout=3)
print("closed-port-reply", reply[TCP].flags if reply is not None and TCP in reply else None)
'''


@pytest.mark.parametrize("dataplane", ["switch", "controller"])
def test_controller_survives_garbage_and_resets_closed_ports(tmp_path, no_residue, dataplane):
    lab, plan = start_network(tmp_path, "controllers.sdn_nlb", config={"fast_fail": True, "dataplane": dataplane})
    try:
        for cas in plan.by_role("cas"):
            start_echo(lab, cas.name)
        site = plan.sites[0]
        wait_until(lambda: "hello" in echo_from(lab, "cl1", site.vip), 15, "TCP through the VIP", 0.2)
        script = tmp_path / "abuse.py"
        script.write_text(ABUSE_SCRIPT)
        client = lab.node("cl1")
        out = client.cmd(f"{sys.executable} {script} {client.intf().name} {site.vip} {site.vip_mac}")
        assert "closed-port-reply RA" in out, out
        controller = next(p for p in lab.processes if p.name == "controller")
        assert controller.alive()
        answers = {echo_from(lab, "cl1", site.vip) for _ in range(6)}
        assert all(a.endswith(":hello") for a in answers), answers
        assert site.vip_mac in client.cmd(f"ip neigh show {site.vip}").lower(), "bogus ARP did not move the VIP"
    finally:
        lab.stop()


SPOOF_CLIENT = r"""
import socket, sys
vip, source = sys.argv[1], sys.argv[2]
try:
    c = socket.create_connection((vip, 6001), timeout=2, source_address=(source, 40999))
    c.sendall(b"hello"); print("answered", c.recv(100).decode())
except OSError as exc:
    print("refused", type(exc).__name__)
"""


def guard_drops() -> int:
    """Packets the VIP's source guard dropped (its drop flow: the lowest table-0 VIP rule)."""
    drops = [line for line in dump("dump-flows").splitlines()
             if "table=0" in line and "nw_dst=10.1.0.100" in line and "actions=drop" in line]
    assert drops, "the guard has a drop rule"
    return sum(int(line.split("n_packets=")[1].split(",")[0]) for line in drops)


@pytest.mark.parametrize("dataplane", ["switch", "controller"])
def test_a_host_spoofing_another_clients_address_is_dropped(tmp_path, no_residue, dataplane):
    lab, plan = start_network(tmp_path, "controllers.sdn_nlb", config={"fast_fail": True, "dataplane": dataplane},
                              clients=2)
    try:
        for cas in plan.by_role("cas"):
            start_echo(lab, cas.name)
        vip, victim = plan.sites[0].vip, plan.host("cl1").ip
        wait_until(lambda: "hello" in echo_from(lab, "cl1", vip), 15, "TCP through the VIP", 0.2)
        assert "hello" in echo_from(lab, "cl2", vip), "the other client is served from its own address"
        spoofer = lab.node("cl2")
        lab.run_in("cl2", ["ip", "addr", "add", f"{victim}/32", "dev", spoofer.intf().name])
        dropped_before = guard_drops()
        _, out = lab.run_in("cl2", [sys.executable, "-c", SPOOF_CLIENT, vip, victim], timeout_s=30)
        assert out.strip().startswith("refused"), f"a connection from cl1's address on cl2's port: {out}"
        assert guard_drops() > dropped_before, "the spoofed SYNs were dropped by the guard"
        for cas in plan.by_role("cas"):  # each CAS must ask who has cl1's address, and cl2 answers too:
            lab.run_in(cas.name, ["ip", "neigh", "flush", "all"])  # only the ARP guard keeps cl1 reachable
        _, out = lab.run_in("cl1", [sys.executable, "-c", SPOOF_CLIENT, vip, victim], timeout_s=30)
        assert out.strip().startswith("answered cas"), f"the real owner of the address and port is served: {out}"
    finally:
        lab.stop()


def rx_packets(lab, host: str, intf: str) -> int:
    status, out = lab.run_in(host, ["ip", "-s", "-j", "link", "show", "dev", intf])
    assert status == 0, out
    return json.loads(out)[0]["stats64"]["rx"]["packets"]


def test_backend_network_carries_cas_to_mailbox_traffic_off_the_switch_and_poweroff_cuts_it(tmp_path, no_residue):
    plan = LabPlan.build([{"name": "HQ", "cas": 2, "mailboxes": 1, "clients": 1}], backend=True)
    lab = LabNetwork(plan, tmp_path)
    lab.build()
    try:
        lab.popen_controller("controllers.l2_switch")
        lab.start()
        lab.wait_connected()
        start_echo(lab, "mbx1")
        mbx1 = plan.host("mbx1")
        backend_ip = plan.server_ip(mbx1)
        assert backend_ip != mbx1.ip
        assert "dev cas1-eth1" in lab.run_in("cas1", ["ip", "route", "get", backend_ip])[1]
        wait_until(lambda: "mbx1:hello" in echo_from(lab, "cas1", backend_ip), 15, "TCP echo over the back end", 0.2)
        front, back = rx_packets(lab, "mbx1", "mbx1-eth0"), rx_packets(lab, "mbx1", "mbx1-eth1")
        for _ in range(20):
            assert echo_from(lab, "cas1", backend_ip) == "mbx1:hello"
        assert rx_packets(lab, "mbx1", "mbx1-eth1") - back >= 20 * 4, "each connection's segments came in on eth1"
        assert rx_packets(lab, "mbx1", "mbx1-eth0") - front < 10, "the switch's port saw none of them"
        ports = subprocess.run(["ovs-vsctl", "list-ports", "clab1"], capture_output=True, text=True).stdout.split()
        assert ports and not any(p.startswith("clab1b") for p in ports), "the back end is not Open vSwitch's"
        assert "master clab1b" in subprocess.run(["ip", "link", "show", lab.backend_link_ends("mbx1")[1][1]],
                                                 capture_output=True, text=True).stdout
        lab.set_link("mbx1", up=False, backend=True)  # what poweroff does
        for intf in ("mbx1-eth0", "mbx1-eth1"):
            assert "state DOWN" in lab.run_in("mbx1", ["ip", "link", "show", "dev", intf])[1]
        assert "mbx1:hello" not in echo_from(lab, "cas1", backend_ip)
    finally:
        lab.stop()


def test_afxdp_switch_ports_carry_tcp_or_fall_back_with_a_notice(tmp_path, no_residue):
    """topology.switch_ports = "afxdp": the hosts' ports are created as afxdp-nonpmd (AF_XDP,
    native XDP on the veth) where Open vSwitch and the kernel have it, and carry the lab's
    TCP; elsewhere they are system ports and the lab says why."""
    from caslab.base import system
    from caslab.network.netlab import AFXDP_PORT

    plan = LabPlan.build([{"name": "HQ", "cas": 2, "mailboxes": 1, "clients": 1}])
    lab = LabNetwork(plan, tmp_path, switch_ports="afxdp")
    lab.build()
    try:
        lab.popen_controller("controllers.l2_switch")
        lab.start()
        lab.wait_connected()
        types = {}
        for port in subprocess.run(["ovs-vsctl", "list-ports", "clab1"], capture_output=True, text=True).stdout.split():
            types[port] = subprocess.run(["ovs-vsctl", "get", "Interface", port, "type"], capture_output=True,
                                         text=True).stdout.strip().strip('"')
        if lab.datapath == "user" and AFXDP_PORT in system.ovs_interface_types():
            assert lab.ports_used == AFXDP_PORT and not lab.port_notices, lab.port_notices
            assert len(types) == len(plan.hosts) and set(types.values()) == {AFXDP_PORT}, types
        else:
            assert lab.ports_used == "system" and lab.port_notices and "afxdp" in lab.port_notices[0]
            assert set(types.values()) == {""}, types
        start_echo(lab, "cas1")
        cas1 = plan.host("cas1").ip
        wait_until(lambda: "cas1:hello" in echo_from(lab, "cl1", cas1), 15, "TCP echo through afxdp ports", 0.2)
        for _ in range(10):
            assert echo_from(lab, "cl1", cas1) == "cas1:hello"
    finally:
        lab.stop()
