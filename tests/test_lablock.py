"""The lab lock (caslab/network/machine.py ``LabLock``, issue 18 item 6) and ``caslab cleanup``'s use
of it. The lock file is root's and 0600 in a folder only root may write to, so no other
user can open it, let alone flock it and block every run; a lock file an older caslab
made 0644 is replaced unless a root process (a running lab) holds it. ``caslab cleanup``
holds the lock while it sweeps the lab's names, so a run that starts meanwhile waits."""

from __future__ import annotations

import fcntl
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from caslab.network import cleanup, machine
from caslab.network.machine import LabLock
from caslab.base.waits import LabError

# root (to act as another user with setpriv), but no network: not require_root, whose lock
# waits for other suites' real-network tests
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (acts as another user with setpriv)")

HOLD = "import fcntl,sys,time; f=open(sys.argv[1]); fcntl.flock(f, fcntl.LOCK_EX); print('held', flush=True); time.sleep(60)"
NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups", "--"]


@pytest.fixture
def run_dir(monkeypatch):
    """A run folder others may enter (as /run/caslab is), with LOCK_PATH inside it."""
    folder = Path(tempfile.mkdtemp(prefix="caslab-lock-"))
    folder.chmod(0o755)
    monkeypatch.setattr(machine, "LOCK_PATH", folder / "lab.lock")
    yield folder
    shutil.rmtree(folder, ignore_errors=True)


def hold(path: Path, as_user: list[str]) -> subprocess.Popen:
    """A process (as ``as_user``) that flocks ``path`` and keeps it."""
    proc = subprocess.Popen([*as_user, sys.executable, "-I", "-c", HOLD, str(path)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()
    assert line.strip() == "held", proc.stderr.read()
    return proc


def end(proc: subprocess.Popen) -> None:
    proc.kill()
    proc.wait(5)


def test_the_lock_file_is_roots_and_private(run_dir):
    with LabLock(wait_s=0):
        info = os.stat(machine.LOCK_PATH)
        assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600
        assert not os.stat(run_dir).st_mode & 0o022
    opened = subprocess.run([*NOBODY, sys.executable, "-I", "-c", "import sys; open(sys.argv[1])",
                             str(machine.LOCK_PATH)], capture_output=True, text=True)
    assert opened.returncode != 0 and "PermissionError" in opened.stderr


def test_an_insecure_lock_file_held_by_another_user_does_not_block_runs(run_dir):
    machine.LOCK_PATH.write_text("")
    machine.LOCK_PATH.chmod(0o644)  # as an older caslab left it
    squatter = hold(machine.LOCK_PATH, NOBODY)
    try:
        with LabLock(wait_s=0):
            info = os.stat(machine.LOCK_PATH)
            assert stat.S_IMODE(info.st_mode) == 0o600 and info.st_uid == 0
    finally:
        end(squatter)


def test_an_insecure_lock_file_held_by_root_is_still_respected(run_dir):
    machine.LOCK_PATH.write_text("")
    machine.LOCK_PATH.chmod(0o644)
    older_caslab = hold(machine.LOCK_PATH, [])
    try:
        with pytest.raises(LabError, match="another caslab network is running"):
            LabLock(wait_s=0).acquire()
    finally:
        end(older_caslab)
    with LabLock(wait_s=0):
        assert stat.S_IMODE(os.stat(machine.LOCK_PATH).st_mode) == 0o600


def test_cleanup_holds_the_lock_while_it_sweeps(run_dir, monkeypatch):
    during = []

    def sweep(say=print):
        with open(machine.LOCK_PATH) as probe:
            try:
                fcntl.flock(probe, fcntl.LOCK_EX | fcntl.LOCK_NB)
                during.append("free")
                fcntl.flock(probe, fcntl.LOCK_UN)
            except BlockingIOError:
                during.append("held")
        return 0

    monkeypatch.setattr(cleanup, "live_labs", lambda: [])
    monkeypatch.setattr(cleanup, "sweep_dead_labs", sweep)
    assert cleanup.run() == 0
    assert during == ["held"], "a run starting during the sweep would lose its bridges"
    with LabLock(wait_s=0):  # and released afterwards
        pass


def test_the_test_suites_lock_is_private_too(run_dir):
    """tests/conftest.py's suite lock goes through the same opener: an older 0644 file that
    another account holds is replaced, and the new one cannot be opened by others."""
    suite_lock = run_dir / "tests.lock"
    suite_lock.write_text("")
    suite_lock.chmod(0o644)  # as the suite left it before
    squatter = hold(suite_lock, NOBODY)
    try:
        with machine.open_private_lock(suite_lock) as handle:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)  # not blocked by the other account
            info = os.stat(suite_lock)
            assert info.st_uid == 0 and stat.S_IMODE(info.st_mode) == 0o600
    finally:
        end(squatter)
    opened = subprocess.run([*NOBODY, sys.executable, "-I", "-c", "import sys; open(sys.argv[1])", str(suite_lock)],
                            capture_output=True, text=True)
    assert opened.returncode != 0 and "PermissionError" in opened.stderr
