"""Shared fixtures: the require_root marker and a residue check of what the lab made.

Integration tests need root, Open vSwitch and mnexec. On a developer machine without
them they are skipped with the reason; under CI (CI=true) a missing prerequisite is a
failure, so CI can never pass by skipping the real tests.
"""

from __future__ import annotations

import fcntl
import functools
import os
import time
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from topologies.plan import SWITCH_PREFIX  # noqa: E402

# Every process the tests start checks its events against labcommon/catalogue.py, and a
# test's network waits for one that another process (a second test run) holds.
pytest_plugins = ["tests.nlb_fixtures"]  # the NLB app tests' shared fixtures

os.environ["CASLAB_STRICT_EVENTS"] = "1"
os.environ.setdefault("CASLAB_LOCK_WAIT_S", "3600")


def free_tcp_port() -> int:
    """A loopback port free a moment ago, for a test's own server that must be told its
    port in advance (a Dask scheduler). The lab never picks ports so: its listeners are
    bound by the runner and handed over (caslab/network/ofchannel.py)."""
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@functools.cache
def lab_prerequisites() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not shutil.which("mnexec"):
        return "needs mnexec (Debian package mininet)"
    if subprocess.run(["ovs-vsctl", "--timeout=3", "show"], capture_output=True).returncode != 0:
        return "needs Open vSwitch running"
    return None


def pytest_runtest_setup(item):
    if "require_root" not in item.keywords:
        return
    missing = lab_prerequisites()
    if missing is None:
        return
    if os.environ.get("CI"):
        pytest.fail(f"CI must run this real-network test, but it {missing}", pytrace=False)
    pytest.skip(missing)


TEST_LOCK = Path(os.environ.get("CASLAB_RUN_DIR", "/run/caslab")) / "tests.lock"


@pytest.fixture(autouse=True)
def one_real_network_test_at_a_time(request):
    """Real-network tests of two suites (two checkouts, two users) never overlap.

    Runs take the lab lock themselves, but a test also checks before and after that the
    machine holds none of the lab's residue: that is only true while no other suite's test
    runs. A lock of its own (not the lab lock, which the test's runs take) makes it so.
    """
    if "require_root" not in request.keywords or lab_prerequisites() is not None:
        yield
        return
    from caslab.network.machine import open_private_lock

    with open_private_lock(TEST_LOCK) as handle:  # root's, 0600: no other account can hold the suite up
        deadline = time.monotonic() + float(os.environ["CASLAB_LOCK_WAIT_S"])
        while True:
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() >= deadline:
                    pytest.fail(f"another test suite held {TEST_LOCK} too long", pytrace=False)
                time.sleep(0.5)
        try:
            wait_for_other_labs()
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def wait_for_other_labs() -> None:
    """A run outside the suite (a soak, a user's experiment) holds the lab lock: wait for it
    to end, so that this test's residue checks see only its own lab."""
    from caslab.network.machine import LabLock

    with LabLock():
        pass


def lab_residue(marker: str | None = None) -> list[str]:
    """The lab's own leftovers: its bridges and veths, Open vSwitch's SSL configuration, mininet
    shells, lab processes."""
    found = []
    bridges = subprocess.run(["ovs-vsctl", "--timeout=5", "list-br"], capture_output=True, text=True).stdout.split()
    found += [f"bridge {b}" for b in bridges if b.startswith(SWITCH_PREFIX)]
    links = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True).stdout
    for line in links.splitlines():
        name = line.split(":")[1].strip().split("@")[0]
        if name.startswith(SWITCH_PREFIX):
            found.append(f"link {name}")
    ssl = subprocess.run(["ovs-vsctl", "--timeout=5", "--columns=external_ids", "list", "SSL"], capture_output=True,
                         text=True).stdout
    if "caslab-lab" in ssl:
        found.append("Open vSwitch's SSL configuration is still a lab's")
    me = os.getpid()
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit() or int(proc.name) == me:
            continue
        try:
            cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        lab_dns = cmd.startswith("/usr/sbin/dnsmasq") and ".lab.test," in cmd  # the lab's DNS names no folder
        if "mininet:" in cmd or lab_dns or (marker and marker in cmd):
            found.append(f"process {proc.name}: {cmd[:120]}")
    return found


@pytest.fixture
def no_residue():
    """Asserts the test left nothing of the lab behind (and that it started clean).

    Each check holds the lab lock, so a run outside the suite (another checkout's
    experiment) is waited for rather than mistaken for this test's residue. Under that
    lock no lab runs, so what a dead run left (a SIGKILL, a machine restart: Open
    vSwitch keeps bridges in its database) is swept first, as every run does; a test
    that leaves residue still fails its own check below."""
    from caslab.network.cleanup import sweep_dead_labs
    from caslab.network.machine import LabLock

    with LabLock():
        if lab_residue():
            sweep_dead_labs()
        before = lab_residue()
    assert not before, f"lab residue before the test: {before}"
    yield
    with LabLock():
        after = lab_residue()
    assert not after, f"lab residue after the test: {after}"
