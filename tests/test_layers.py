"""The house's floors (pyproject.toml, [tool.importlinter]) checked by import-linter:
the engine on top, the in-host programs beside each other, the common floor below; no
in-host program imports the engine, no client imports the servers' code. The same
contracts are shown to break on a copy of the tree with one import planted upward."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("caslab", "roles", "traffic", "controllers", "labcommon", "topologies")
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def copy_tree(to: Path) -> Path:
    for package in PACKAGES:
        shutil.copytree(ROOT / package, to / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", to / "pyproject.toml")
    return to


def test_the_lab_keeps_every_import_contract():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_client_that_imports_a_server_breaks_the_contracts(tmp_path):
    tree = copy_tree(tmp_path)
    client = tree / "traffic" / "client.py"
    client.write_text(client.read_text() + "\nimport roles.cas  # planted\n")
    done = lint(tree)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "A client knows the protocol, not the servers' code BROKEN" in done.stdout
    assert "traffic.client -> roles.cas" in done.stdout


def test_a_program_that_imports_the_engine_breaks_the_contracts(tmp_path):
    tree = copy_tree(tmp_path)
    runtime = tree / "labcommon" / "runtime.py"
    runtime.write_text(runtime.read_text() + "\nimport caslab.spec  # planted\n")
    done = lint(tree)
    assert done.returncode != 0, done.stdout[-3000:]
    assert "The in-host programs and the controller apps never import the engine BROKEN" in done.stdout
    assert "Floors: the engine, then the programs beside each other, then the common floor BROKEN" in done.stdout
