"""Result folders written and handed over by root (issue 18 item 8): root never writes or
chowns through a path inside a result folder that another account controls.

The "other account" is a real one (uid 65534, nobody): it owns the folder and plants the
symlinks itself, from a child process that dropped root.
"""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

from caslab.base import system

OTHER = 65534  # nobody
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root: it hands files to another uid")


def as_other(action) -> None:
    """Run ``action()`` in a child process that is uid OTHER (a user planting files)."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups([])
            os.setgid(OTHER)
            os.setuid(OTHER)
            action()
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the other account's action failed"


@pytest.fixture
def base(tmp_path):
    """A folder every account can traverse (pytest's own are root's, mode 0700)."""
    path = Path(tempfile.mkdtemp(prefix="caslab-test-", dir="/tmp"))
    os.chmod(path, 0o755)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


@pytest.fixture
def victim(base):
    """A root-owned file outside every result folder."""
    path = base / "outside" / "precious"
    path.parent.mkdir()
    path.write_text("root's own")
    os.chmod(path.parent, 0o755)
    return path


@pytest.fixture
def folder(base, monkeypatch):
    """A result folder the other account can write in (it was handed to it), sudo-style."""
    run = base / "run"
    run.mkdir()
    (run / "figures").mkdir()
    (run / "figures" / "a.png").write_bytes(b"png")
    for path in (run, run / "figures", run / "figures" / "a.png"):
        os.chown(path, OTHER, OTHER)
    monkeypatch.setenv("SUDO_UID", str(OTHER))
    monkeypatch.setenv("SUDO_GID", str(OTHER))
    return run


def test_handing_over_never_chowns_what_a_planted_symlink_points_to(folder, victim):
    as_other(lambda: os.symlink(victim, folder / "link-to-file"))
    as_other(lambda: os.symlink(victim.parent, folder / "link-to-dir"))
    system.give_to_invoking_user(str(folder))
    assert os.stat(victim).st_uid == 0 and os.stat(victim.parent).st_uid == 0
    assert os.lstat(folder / "link-to-file").st_uid == OTHER


def test_a_folder_swapped_for_a_symlink_during_the_hand_over_does_not_redirect_it(folder, victim, monkeypatch):
    # Old behaviour: os.walk checked that figures/ was no symlink, then listed it by name:
    # swapped for a symlink in between, the listing and each lchown("run/figures/NAME")
    # went outside the folder. The swap is done at that instant (the other account's race).
    (victim.parent / "a.png").write_text("root's too")
    swapped = []

    def swap() -> None:
        if not swapped:
            swapped.append(True)
            os.rename(folder / "figures", folder / "moved")
            os.symlink(victim.parent, folder / "figures")

    real_scandir, real_open = os.scandir, os.open

    def scandir(path=".", *args, **kwargs):
        if isinstance(path, (str, os.PathLike)) and os.path.basename(os.fspath(path)) == "figures":
            swap()
        return real_scandir(path, *args, **kwargs)

    def open_(path, *args, **kwargs):
        if path == "figures" and kwargs.get("dir_fd") is not None:
            swap()
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(os, "scandir", scandir)
    monkeypatch.setattr(os, "open", open_)
    system.give_to_invoking_user(str(folder))
    monkeypatch.undo()
    assert swapped, "precondition: the swap happened during the hand-over"
    assert os.stat(victim.parent / "a.png").st_uid == 0, "a file outside the folder was handed over"
    assert os.stat(victim.parent).st_uid == 0
    assert os.stat(folder / "moved" / "a.png").st_uid == OTHER


def test_root_writes_a_report_file_without_following_a_planted_symlink(folder, victim):
    from caslab.base.safefs import write_file
    as_other(lambda: os.symlink(victim, folder / "report.html"))
    as_other(lambda: os.symlink(victim.parent, folder / "plots"))
    write_file(folder / "report.html", "<html>new</html>")
    assert victim.read_text() == "root's own"
    assert stat.S_ISREG(os.lstat(folder / "report.html").st_mode)
    assert (folder / "report.html").read_text() == "<html>new</html>"
    with pytest.raises(OSError):
        write_file(folder / "plots" / "x.png", b"png")
    assert not (victim.parent / "x.png").exists()


def test_a_run_refuses_an_existing_folder_another_account_owns(base, monkeypatch):
    # Old behaviour: an empty folder of another account was used as it was: that account
    # could plant symlinks in it while root wrote the run (raw/, configs, event logs).
    from caslab.network.netlab import LabError
    from caslab.run.runner import prepare_folder
    monkeypatch.delenv("SUDO_UID", raising=False)
    theirs = base / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER, OTHER)
    with pytest.raises(LabError, match="belongs to uid 65534"):
        prepare_folder(theirs, force=False)
    mine = base / "mine"
    prepare_folder(mine, force=False)
    assert os.stat(mine).st_uid == 0


def test_the_results_index_is_not_written_through_a_planted_symlink(folder, victim):
    # Old behaviour: write_index wrote results/index.html by name: a symlink planted there
    # by the account that owns results/ had root overwrite the file it pointed to.
    from caslab.results.report import index
    as_other(lambda: os.symlink(victim, folder / "index.html"))
    index.write_index(folder)
    assert victim.read_text() == "root's own" and os.stat(victim).st_uid == 0
    assert stat.S_ISREG(os.lstat(folder / "index.html").st_mode)
