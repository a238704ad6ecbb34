"""The same NLB app file loads and programs a real switch under os-ken and upstream Ryu 4.34.

Upstream Ryu lives in a venv of its own (``.venv-ryu``, made by ``lab.sh``'s
``install_ryu_venv``: Ryu 4.34 needs eventlet 0.33.3, dnspython 2.2.x and setuptools < 58,
see docs/ARCHITECTURE.md). For each framework the test starts ``controllers.launcher`` with
``controllers.sdn_nlb`` and one VIP, connects one userspace OVS bridge (``clabryu``) to it,
and waits for the app's flows (table-miss NORMAL, VIP ARP/ICMP/TCP to the controller) and
its events (``nlb_up``, ``nlb_switch``, ``nlb_relearn``). No Mininet, no traffic.
"""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.require_root

BRIDGE = "clabryu"               # the lab's prefix, so its teardown and leak checks see it
DPID = 0xCA5                     # set on the bridge so the VIP below lives on it
VIP = {"name": "RYU", "ip": "10.99.0.100", "mac": "02:00:0a:63:00:64"}
INTERPRETERS = {
    "os_ken": ROOT / ".venv" / "bin" / "python",
    "ryu": ROOT / ".venv-ryu" / "bin" / "python",
}
TIMEOUT_S = 30.0


def interpreter(framework: str) -> str:
    path = INTERPRETERS[framework]
    if path.exists():
        return str(path)
    if framework == "os_ken":
        return sys.executable  # whatever runs the suite has the project and os-ken
    reason = (f"{path} is missing: upstream Ryu 4.34 lives in a venv of its own, made by "
              f"'./lab.sh setup' (install_ryu_venv)")
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Ryu smoke test: {reason}")
    pytest.skip(reason)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def listening(port: int) -> bool:
    with socket.socket() as sock:
        sock.settimeout(0.2)
        return sock.connect_ex(("127.0.0.1", port)) == 0


def vsctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["ovs-vsctl", "--timeout=10", *args], capture_output=True, text=True)


def dump_flows() -> str:
    res = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-flows", BRIDGE], capture_output=True, text=True)
    groups = subprocess.run(["ovs-ofctl", "-O", "OpenFlow15", "dump-groups", BRIDGE], capture_output=True, text=True)
    return (res.stdout if res.returncode == 0 else "") + (groups.stdout if groups.returncode == 0 else "")


def events(path: Path) -> list[dict]:
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        try:
            out.append(json.loads(line))
        except json.JSONDecodeError:
            continue  # a line being written
    return out


VIP_IP = re.escape(VIP["ip"])
COMMON_FLOWS = {
    "table-miss NORMAL": re.compile(r"priority=0 actions=NORMAL"),
    "VIP ARP to controller": re.compile(rf"priority=300,arp,arp_tpa={VIP_IP} actions=meter:1,CONTROLLER:65535"),
    "VIP ICMP to controller": re.compile(rf"priority=300,icmp,nw_dst={VIP_IP} actions=meter:1,CONTROLLER:65535"),
    "VIP guard": re.compile(rf"priority=250,ip,nw_dst={VIP_IP} actions=goto_table:1"),
}
EXPECTED_FLOWS = {
    "controller": {**COMMON_FLOWS, "VIP TCP to controller": re.compile(
        rf"table=1,.*priority=100,tcp,nw_dst={VIP_IP} actions=meter:1,CONTROLLER:65535")},
    "switch": {**COMMON_FLOWS,
               "VIP TCP to conntrack": re.compile(rf"table=1,.*priority=100,tcp,nw_dst={VIP_IP},tp_dst=6001 "
                                                  rf"actions=ct\(table=2,zone=51793,nat\)"),
               "select group": re.compile(r"group_id=1,type=select,selection_method=hash,fields[=(]ip_src")},
}


def missing_flows(flows: str, dataplane: str) -> list[str]:
    return [name for name, pattern in EXPECTED_FLOWS[dataplane].items() if not pattern.search(flows)]


def output_of(tmp_path: Path) -> str:
    text = ""
    for name in ("controller.stdout", "controller.stderr"):
        path = tmp_path / name
        if path.exists():
            text += f"--- {name} ---\n{path.read_text(errors='replace')[-3000:]}\n"
    return text


@pytest.mark.parametrize("dataplane", ["switch", "controller"])
@pytest.mark.parametrize("framework", ["os_ken", "ryu"])
def test_nlb_app_programs_a_switch(tmp_path, framework, dataplane, no_residue):
    python = interpreter(framework)
    port = free_port()
    event_path = tmp_path / "nlb.jsonl"
    config = {"events": str(event_path), "fast_fail": True, "dataplane": dataplane, "vips": [{
        **VIP, "dpid": DPID, "ports": [6001], "affinity": "single", "members": [
            {"name": "cas1", "ip": "10.99.0.11", "mac": "02:00:0a:63:00:0b", "port_name": f"{BRIDGE}-p1"},
            {"name": "cas2", "ip": "10.99.0.12", "mac": "02:00:0a:63:00:0c", "port_name": f"{BRIDGE}-p2"}]}]}
    (tmp_path / "nlb.json").write_text(json.dumps(config))
    env = {**os.environ, "CASLAB_NLB_CONFIG": str(tmp_path / "nlb.json"),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    env.pop("CASLAB_FRAMEWORK", None)  # the launcher sets it from --framework
    controller = None
    try:
        # Our own bridge name only: a leftover of a killed earlier run goes first.
        vsctl("--if-exists", "del-br", BRIDGE)
        with open(tmp_path / "controller.stdout", "wb") as out, open(tmp_path / "controller.stderr", "wb") as err:
            controller = subprocess.Popen(
                [python, "-m", "controllers.launcher", "--framework", framework, "--port", str(port),
                 "controllers.sdn_nlb"], cwd=ROOT, env=env, stdout=out, stderr=err, stdin=subprocess.DEVNULL)
        deadline = time.monotonic() + TIMEOUT_S
        while not listening(port):
            assert controller.poll() is None, f"{framework} controller exited with {controller.returncode}\n{output_of(tmp_path)}"
            assert time.monotonic() < deadline, f"{framework} controller not listening on {port}\n{output_of(tmp_path)}"
            time.sleep(0.05)

        res = vsctl("add-br", BRIDGE,
                    "--", "set", "bridge", BRIDGE, "datapath_type=netdev", "protocols=OpenFlow13,OpenFlow15", "fail_mode=secure",
                    f"other-config:datapath-id={DPID:016x}",
                    "--", "set-controller", BRIDGE, f"tcp:127.0.0.1:{port}")
        assert res.returncode == 0, res.stderr
        bridges = [b for b in vsctl("list-br").stdout.split() if b.startswith("clab")]
        assert bridges == [BRIDGE], f"expected only {BRIDGE} among the lab's bridges, found {bridges}"

        deadline = time.monotonic() + TIMEOUT_S
        flows, seen, connected = "", set(), ""
        while True:
            flows = dump_flows()
            seen = {e["ev"] for e in events(event_path)}
            # ovs-vswitchd writes the controller's status to its database a little later
            connected = vsctl("get", "controller", BRIDGE, "is_connected").stdout.strip()
            if not missing_flows(flows, dataplane) and {"nlb_up", "nlb_switch", "nlb_relearn"} <= seen \
                    and connected == "true":
                break
            assert controller.poll() is None, f"{framework} controller died\n{output_of(tmp_path)}"
            assert time.monotonic() < deadline, (
                f"{framework}: missing flows {missing_flows(flows, dataplane)}, events seen {sorted(seen)}, "
                f"is_connected={connected}\nflows:\n{flows}\n{output_of(tmp_path)}")
            time.sleep(0.1)

        log = events(event_path)
        up = [e for e in log if e["ev"] == "nlb_up"]
        assert len(up) == 1 and up[0]["vips"] == [VIP["ip"]] and up[0]["fast_fail"] is True, up
        assert [e["dpid"] for e in log if e["ev"] == "nlb_switch"] == [DPID]
        assert [e["conns"] for e in log if e["ev"] == "nlb_relearn"] == [0]
        assert controller.poll() is None

        # SIGTERM ends the launcher cleanly (it always closes the app manager).
        controller.send_signal(signal.SIGTERM)
        try:
            code = controller.wait(timeout=15)
        except subprocess.TimeoutExpired:
            pytest.fail(f"{framework} controller ignored SIGTERM for 15 s")
        assert code == 0, f"{framework} controller exited with {code}\n{output_of(tmp_path)}"
    finally:
        vsctl("--if-exists", "del-br", BRIDGE)
        if controller is not None and controller.poll() is None:
            controller.terminate()
            try:
                controller.wait(timeout=10)
            except subprocess.TimeoutExpired:
                controller.kill()
                controller.wait(timeout=5)
