"""The lab's DNS server (caslab/network/services.py) for real: dnsmasq with the lab's own argument
list, in a network namespace of its own, answering on loopback (issue 18, low: it ran as
root)."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from caslab.network.services import DNSMASQ_BINARY as DNSMASQ

pytestmark = pytest.mark.skipif(not Path(DNSMASQ).exists() or not shutil.which("unshare"),
                                reason="needs dnsmasq and unshare")

PROBE = r"""
import json, subprocess, sys, time
sys.path.insert(0, sys.argv[1])
import dns.message, dns.query
from caslab.network.services import dnsmasq_argv
subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
proc = subprocess.Popen(dnsmasq_argv("127.0.0.1", {"mail.lab.test": ["10.1.0.100"]}, 5),
                        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
try:
    answer = None
    for _ in range(100):
        try:
            reply = dns.query.udp(dns.message.make_query("mail.lab.test", "A"), "127.0.0.1", timeout=0.2)
            answer = [r.to_text() for rrset in reply.answer for r in rrset]
            break
        except Exception:
            time.sleep(0.05)
    status = open(f"/proc/{proc.pid}/status").read()
    uids = [int(x) for x in next(l for l in status.splitlines() if l.startswith("Uid:")).split()[1:]]
    print(json.dumps({"answer": answer, "uids": uids, "alive": proc.poll() is None}))
finally:
    proc.terminate()
    proc.wait(timeout=10)
"""


@pytest.mark.skipif(__import__("os").geteuid() != 0, reason="needs root: a network namespace and port 53")
def test_the_lab_dns_answers_and_runs_unprivileged():
    root = Path(__file__).resolve().parent.parent
    done = subprocess.run(["unshare", "--net", sys.executable, "-c", PROBE, str(root)], cwd=root,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["answer"] == ["10.1.0.100"], result
    assert result["alive"] and 0 not in result["uids"], f"dnsmasq runs as root: {result}"
