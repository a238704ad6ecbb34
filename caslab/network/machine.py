"""What a lab holds on the machine itself, beyond its own processes: the lock that lets
one lab run at a time (its bridge names are fixed), and the names a run may leave behind
if it dies (bridges, root-namespace veths, the switch dataplane's conntrack zones).

Below both the live network (``caslab.network.netlab``, which takes the lock and sweeps a dead
run's leftovers under it) and the sweeper (``caslab.network.cleanup``): neither imports the other
for these.
"""

from __future__ import annotations

import fcntl
import os
import stat
import time
from pathlib import Path

from caslab.base import system
from caslab.base.waits import LabError
from topologies.plan import SWITCH_PREFIX


LOCK_PATH = Path(os.environ.get("CASLAB_RUN_DIR", "/run/caslab")) / "lab.lock"


class LabLock:
    """One lab network at a time on a machine: its bridge names are fixed (``clab<k>``).

    A second run waits for the first up to ``CASLAB_LOCK_WAIT_S`` seconds (default 0: it
    fails at once with a clear error) instead of tearing into the first one's bridges.
    Re-entrant within a process: ``caslab soak`` holds it across its runs and checks, so
    no other lab can appear between a run and the check that the run left nothing.

    The lock file is root's, 0600, in a folder only root may write to: no other user can
    open it, so none can flock it and block every run. A lock file others may open (an
    older caslab made it 0644) is replaced by a private one unless a process of root's
    holds it (a lab of that older caslab, which is respected); whoever held the old file
    then holds nothing. After taking the lock a holder checks that the path still names
    the file it locked, so a replacement never lets two labs in.
    """

    _handle = None  # the process's one open lock file while any holder has it
    _depth = 0

    def __init__(self, wait_s: float | None = None):
        self.wait_s = float(os.environ.get("CASLAB_LOCK_WAIT_S", "0")) if wait_s is None else wait_s
        self.held = False

    def acquire(self) -> None:
        if LabLock._depth == 0:
            LabLock._handle = self._lock_file()
        LabLock._depth += 1
        self.held = True

    def _lock_file(self):
        deadline = time.monotonic() + self.wait_s
        while True:
            handle = open_private_lock()
            try:
                fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                handle.close()
                if time.monotonic() >= deadline:
                    raise LabError("another caslab network is running on this machine (lock "
                                   f"{LOCK_PATH}); wait for it, or set CASLAB_LOCK_WAIT_S to queue") from None
                time.sleep(0.2)
                continue
            if _same_file(handle, LOCK_PATH):
                return handle
            handle.close()  # replaced meanwhile: lock the file the path names now

    def release(self) -> None:
        if not self.held:
            return
        self.held = False
        LabLock._depth -= 1
        if LabLock._depth == 0 and LabLock._handle is not None:
            fcntl.flock(LabLock._handle, fcntl.LOCK_UN)
            LabLock._handle.close()
            LabLock._handle = None

    def __enter__(self) -> "LabLock":
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def _same_file(handle, path: Path) -> bool:
    try:
        here, there = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (here.st_dev, here.st_ino) == (there.st_dev, there.st_ino)


def _private(info: os.stat_result) -> bool:
    return info.st_uid == os.geteuid() and not info.st_mode & 0o077


def open_private_lock(path: Path | None = None):
    """A lock file (the lab lock unless ``path``), opened; made private first if it was not
    (see LabLock): a file others can open is a lock others can take."""
    path = LOCK_PATH if path is None else path
    folder = path.parent
    folder.mkdir(mode=0o755, parents=True, exist_ok=True)
    info = os.lstat(folder)
    if not stat.S_ISDIR(info.st_mode) or info.st_uid != os.geteuid():
        raise LabError(f"{folder}: must be a folder of the user running the lab (uid {os.geteuid()}), "
                       f"not a link or another user's (uid {info.st_uid})")
    if info.st_mode & 0o022:
        os.chmod(folder, stat.S_IMODE(info.st_mode) & ~0o022)
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    info = os.fstat(fd)
    if not _private(info) and not any(uid == os.geteuid() for uid in _lock_holders(info)):
        fresh = folder / f".{path.name}.{os.getpid()}"
        new_fd = os.open(fresh, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        os.replace(fresh, path)
        os.close(fd)
        fd = new_fd
    return os.fdopen(fd, "r+")


def _lock_holders(info: os.stat_result) -> list[int]:
    """The uids of the processes holding a lock on this file (from /proc/locks)."""
    node = f"{os.major(info.st_dev):02x}:{os.minor(info.st_dev):02x}:{info.st_ino}"
    uids = []
    try:
        lines = Path("/proc/locks").read_text().splitlines()
    except OSError:
        return [os.geteuid()]  # cannot tell: assume a lab holds it
    for line in lines:
        fields = line.replace("->", "").split()
        if len(fields) >= 6 and fields[5] == node:
            try:
                uids.append(os.stat(f"/proc/{fields[4]}").st_uid)
            except (OSError, ValueError):
                continue
    return uids


def existing_bridges() -> list[str]:
    res = system.run(["ovs-vsctl", "--timeout=5", "list-br"])
    return res.stdout.split()


def existing_links() -> list[str]:
    """The root namespace's interface names (a Linux bridge is one)."""
    names = []
    for line in system.run(["ip", "-o", "link", "show"]).stdout.splitlines():
        if ":" in line:
            names.append(line.split(":")[1].strip().split("@")[0])
    return names


def flush_lab_conntrack(datapath_name: str, sites: int) -> None:
    """The switch dataplane's connections live in the datapath, not the bridges: flush the
    lab's own conntrack zones (one per VIP) so a run leaves none behind."""
    from controllers.nlb_flows import zone_of

    if not system.ovs_running():
        return
    for index in range(1, sites + 1):
        system.run(["ovs-appctl", "dpctl/flush-conntrack", datapath_name, f"zone={zone_of(index)}"])


def sweep_lab_names(bridges: list[str]) -> list[str]:
    """Delete the lab's own bridges (Open vSwitch's, and its back-end Linux bridges) and
    root-namespace veths if any survived teardown."""
    removed = []
    present = set(existing_bridges()) if system.ovs_running() else set()
    for bridge in bridges:
        if bridge in present:
            system.run(["ovs-vsctl", "--timeout=5", "--if-exists", "del-br", bridge])
            removed.append(bridge)
    for name in existing_links():
        if any(name.startswith(f"{b}-eth") for b in bridges) or (name.startswith(SWITCH_PREFIX) and name in bridges):
            system.run(["ip", "link", "del", name])
            removed.append(name)
    return removed
