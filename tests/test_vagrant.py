"""The Vagrantfile parses, for the single lab VM and for a cluster of one scheduler and
one or several lab VMs (``CASLAB_WORKERS=N vagrant up``). No VM can boot here, but
Debian's vagrant package can validate the file (``vagrant validate``); ./lab.sh test
installs it where the distribution has it."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from tests.conftest import ROOT

pytestmark = pytest.mark.skipif(
    shutil.which("vagrant") is None,
    reason="needs vagrant (Debian's vagrant package: ./lab.sh test installs it where apt offers it; "
           "this distribution's archive has no vagrant package)")


def validate(tmp_path, workers: str | None) -> subprocess.CompletedProcess:
    box = tmp_path / "box"
    box.mkdir(exist_ok=True)
    shutil.copy(ROOT / "Vagrantfile", box / "Vagrantfile")
    env = {k: v for k, v in os.environ.items() if not k.startswith("VAGRANT_") and k != "CASLAB_WORKERS"}
    env.update(VAGRANT_HOME=str(tmp_path / "vagrant.d"), VAGRANT_CHECKPOINT_DISABLE="1")
    if workers is not None:
        env["CASLAB_WORKERS"] = workers
    return subprocess.run(["vagrant", "validate", "--ignore-provider"], cwd=box, env=env, capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize("workers, machines", [
    (None, ["default"]),
    ("1", ["scheduler", "lab1"]),
    ("3", ["scheduler", "lab1", "lab2", "lab3"]),
])
def test_vagrantfile_validates(tmp_path, workers, machines):
    res = validate(tmp_path, workers)
    assert res.returncode == 0, res.stdout + res.stderr
    assert "validated successfully" in res.stdout
    named = [line.split(":")[0].removeprefix("==> ") for line in res.stdout.splitlines() if line.startswith("==> ")]
    assert named == machines, res.stdout


@pytest.mark.parametrize("workers", ["x", "-1", "41"])
def test_a_bad_worker_count_is_refused_by_name(tmp_path, workers):
    res = validate(tmp_path, workers)
    assert res.returncode != 0
    assert "CASLAB_WORKERS must be a whole number from 0" in res.stdout + res.stderr, res.stdout + res.stderr
