"""The same NLB app file loads and programs a real switch under os-ken and upstream Ryu 4.34.

Upstream Ryu lives in a venv of its own (``.venv-ryu`` or ``$CASLAB_RYU_VENV``, made by
``lab.sh``'s ``install_ryu_venv``: Ryu 4.34 needs eventlet 0.33.3, dnspython 2.2.x and
setuptools < 58, see docs/ARCHITECTURE.md). On Python 3.12+ it cannot build: there the
Ryu half skips and names the platform. For each framework the test starts ``controllers.launcher`` with
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
RYU_VENV = Path(os.environ.get("CASLAB_RYU_VENV") or ROOT / ".venv-ryu")  # lab.sh exports where it made it
TIMEOUT_S = 30.0


def platform_name() -> str:
    try:
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("PRETTY_NAME="):
                return line.split("=", 1)[1].strip('"')
    except OSError:
        pass
    return "this platform"


def interpreter(framework: str) -> str:
    """The Python that runs the app under this framework. os-ken: the suite's own. Ryu
    4.34: its venv, where it can exist; a skip that names the platform where it cannot
    (it does not build on Python 3.12+); under CI a failure where it should have built."""
    if framework == "os_ken":
        return sys.executable
    python = RYU_VENV / "bin" / "python"
    if python.exists():
        return str(python)
    version = f"Python {sys.version_info.major}.{sys.version_info.minor}"
    if sys.version_info >= (3, 12):
        pytest.skip(f"{platform_name()}, {version}: upstream Ryu 4.34 does not build on Python 3.12 or later "
                    f"(its build needs setuptools < 58 and eventlet 0.33); the same app runs on os-ken")
    marker = Path(f"{RYU_VENV}.unavailable")
    why = marker.read_text().splitlines()[-1] if marker.exists() else "it was not made"
    reason = f"{platform_name()}, {version}: no Ryu 4.34 venv at {RYU_VENV} ({why}); './lab.sh test' makes it"
    if os.environ.get("CI"):
        pytest.fail(f"CI must run the Ryu smoke test where Ryu 4.34 builds: {reason}")
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


TIMED_WAIT = ("import os,time;from controllers.launcher import patch_ryu_for_modern_python;"
              "os.environ['CASLAB_FRAMEWORK'] == 'ryu' and patch_ryu_for_modern_python();"
              "from controllers.compat import FRAMEWORK, hub, timed_event;"
              "e=timed_event();t=time.monotonic();r=e.wait(0.05);d=time.monotonic()-t;"
              "print(FRAMEWORK, getattr(hub, 'HUB_TYPE', 'eventlet'), r, round(d, 3))")


@pytest.mark.parametrize("framework", ["os_ken", "ryu"])
def test_the_apps_timed_waits_end_when_their_timeout_does(framework):
    """The NLB's timer thread sleeps in ``wakeup.wait(until its next timer)`` and a failover
    waits for a barrier at most 50 ms: os-ken's native hub Event ignores its timeout (the
    wait blocks until set), so the app takes its events from ``compat.timed_event``."""
    result = subprocess.run([interpreter(framework), "-c", TIMED_WAIT], cwd=ROOT, capture_output=True, text=True,
                            timeout=20, env={**os.environ, "CASLAB_FRAMEWORK": framework})
    assert result.returncode == 0, result.stderr
    name, hub_type, returned, waited = result.stdout.split()
    assert name == framework and returned == "False", result.stdout
    assert 0.04 <= float(waited) < 1.0, f"{framework} ({hub_type} hub): waited {waited} s for a 0.05 s timeout"
