"""The SYN prober for real, without Mininet: on loopback against a listener this test
opens, then closed; in a private namespace (caslabtest-*) towards a silent address for
timeouts; and stopped by SIGTERM. Needs root (raw sockets, packet capture)."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import pytest

from labcommon.events import read_events

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.require_root


def write_config(tmp_path: Path, name: str, **fields) -> tuple[Path, Path]:
    events = tmp_path / f"{name}.jsonl"
    config = {"name": name, "events": str(events), "rate_hz": 50, "duration_s": 1.5, **fields}
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps(config))
    return path, events


def run_prober(config: Path, prefix: list[str] | None = None, timeout: float = 30) -> None:
    cmd = (prefix or []) + [sys.executable, "-m", "traffic.prober", str(config)]
    result = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=timeout)
    assert result.returncode == 0, result.stderr


def probes(events: Path) -> list[dict]:
    return [e for e in read_events(events) if e["ev"] == "probe"]


@pytest.fixture
def listener():
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(256)
    yield sock
    sock.close()


def syn_recv_count(port: int) -> int:
    out = subprocess.run(["ss", "-Htn", "state", "syn-recv", f"( sport = :{port} )"],
                         capture_output=True, text=True).stdout
    return len(out.splitlines())


def test_probes_succeed_then_fail_when_listener_closes(tmp_path, listener):
    from scapy.sendrecv import AsyncSniffer

    port = listener.getsockname()[1]
    config, events = write_config(tmp_path, "up", target_ip="127.0.0.1", port=port, iface="lo")
    resets = AsyncSniffer(iface="lo", filter=f"tcp dst port {port} and tcp[tcpflags] & tcp-rst != 0", store=True)
    resets.start()
    run_prober(config)
    rst_packets = resets.stop()
    up = probes(events)
    ok = [p for p in up if p["ok"]]
    assert len(up) >= 60, f"expected ~75 probes at 50 Hz for 1.5 s, got {len(up)}"
    assert len(ok) >= 0.9 * len(up)
    assert all(p["result"] == "synack" and p["rtt_us"] >= 0 for p in ok)
    assert [p["seq"] for p in sorted(up, key=lambda p: p["ts"])] == list(range(len(up)))
    # the probing kernel answers each SYN-ACK with a RST itself: nothing stays half-open
    assert len(rst_packets) >= len(ok)
    assert syn_recv_count(port) == 0

    listener.close()
    config, events = write_config(tmp_path, "down", target_ip="127.0.0.1", port=port, iface="lo")
    run_prober(config)
    down = probes(events)
    assert len(down) >= 60
    assert Counter(p["result"] for p in down) == {"rst": len(down)}
    assert not any(p["ok"] for p in down)


def test_explicit_rst_option(tmp_path, listener):
    port = listener.getsockname()[1]
    config, events = write_config(tmp_path, "rst", target_ip="127.0.0.1", port=port, iface="lo",
                                  send_rst=True, duration_s=0.5)
    run_prober(config)
    assert all(p["ok"] for p in probes(events))
    assert syn_recv_count(port) == 0


def test_silent_target_times_out(tmp_path):
    """A veth end with no address in a private namespace swallows every SYN: all time out."""
    ns = f"caslabtest-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ip", "netns", "add", ns], check=True)
    try:
        inside = ["ip", "netns", "exec", ns]
        for cmd in (["ip", "link", "add", "ctest0", "type", "veth", "peer", "name", "ctest1"],
                    ["ip", "addr", "add", "10.99.0.1/24", "dev", "ctest0"],
                    ["ip", "link", "set", "ctest0", "up"], ["ip", "link", "set", "ctest1", "up"],
                    ["ip", "neigh", "add", "10.99.0.2", "lladdr", "02:00:00:00:00:02", "dev", "ctest0"]):
            subprocess.run(inside + cmd, check=True)
        config, events = write_config(tmp_path, "silent", target_ip="10.99.0.2", port=6001, timeout_ms=100,
                                      duration_s=1.0)
        run_prober(config, prefix=inside)
        got = probes(events)
        assert len(got) >= 40
        assert all(p["result"] == "timeout" and not p["ok"] and "rtt_us" not in p for p in got)
        up = next(e for e in read_events(events) if e["ev"] == "probe_up")
        assert up["iface"] == "ctest0" and up["src"] == "10.99.0.1"
        # no route at all: the send fails, the probe fails, the prober carries on
        config, events = write_config(tmp_path, "noroute", target_ip="10.98.0.1", port=6001, iface="ctest0",
                                      source_ip="10.99.0.1", duration_s=0.5)
        run_prober(config, prefix=inside)
        got = probes(events)
        assert len(got) >= 20 and all(p["result"] == "error" and not p["ok"] for p in got)
    finally:
        subprocess.run(["ip", "netns", "del", ns], check=False)


def test_sigterm_stops_cleanly(tmp_path, listener):
    port = listener.getsockname()[1]
    config, events = write_config(tmp_path, "term", target_ip="127.0.0.1", port=port, iface="lo", duration_s=None)
    proc = subprocess.Popen([sys.executable, "-m", "traffic.prober", str(config)], cwd=ROOT,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and (not events.exists() or len(probes(events)) < 10):
            time.sleep(0.05)
        assert len(probes(events)) >= 10
        os.kill(proc.pid, signal.SIGTERM)
        assert proc.wait(timeout=5) == 0, proc.stderr.read()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    down = [e for e in read_events(events) if e["ev"] == "probe_down"]
    assert len(down) == 1 and down[0]["sent"] == len(probes(events))
