"""The house's floors (pyproject.toml, [tool.importlinter]) checked by import-linter:
the engine on top, the in-host programs beside each other, the common floor below; no
in-host program imports the engine, no client imports the servers' code. The same
contracts are shown to break on a copy of the tree with one import planted upward."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]["root_packages"]
LINT = Path(sys.executable).with_name("lint-imports")


def lint(tree: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(tree)}
    return subprocess.run([str(LINT), "--config", str(tree / "pyproject.toml"), "--no-cache"], cwd=tree, env=env,
                          capture_output=True, text=True, timeout=120)


def lint_with_planted_import(tree: Path, module: str, imported: str) -> subprocess.CompletedProcess:
    """lint-imports on a copy of the lab in ``tree`` whose ``module`` (a path under it) also
    imports ``imported``."""
    for package in PACKAGES:
        shutil.copytree(ROOT / package, tree / package, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(ROOT / "pyproject.toml", tree / "pyproject.toml")
    path = tree / module
    path.write_text(path.read_text() + f"\nimport {imported}  # planted\n")
    done = lint(tree)
    assert done.returncode != 0, done.stdout[-3000:]
    return done


def test_the_lab_keeps_every_import_contract():
    done = lint(ROOT)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "0 broken" in done.stdout


def test_a_client_that_imports_a_server_breaks_the_contracts(tmp_path):
    done = lint_with_planted_import(tmp_path, "traffic/client.py", "roles.cas")
    assert "A client knows the protocol, not the servers' code BROKEN" in done.stdout
    assert "traffic.client -> roles.cas" in done.stdout


def test_a_program_that_imports_the_engine_breaks_the_contracts(tmp_path):
    done = lint_with_planted_import(tmp_path, "labcommon/runtime.py", "caslab.spec.experiment")
    assert "The in-host programs and the controller apps never import the engine BROKEN" in done.stdout
    assert "Floors: the engine, then the programs beside each other, then the common floor BROKEN" in done.stdout


def test_a_room_that_imports_a_room_above_it_breaks_the_contracts(tmp_path):
    """The engine's rooms are layers too: the live network may not reach up into the run."""
    done = lint_with_planted_import(tmp_path, "caslab/network/netlab.py", "caslab.run.scenario")
    assert "The engine's rooms: commands, run, spec and results, the registries, network," in done.stdout
    assert "caslab.network.netlab -> caslab.run.scenario" in done.stdout


def test_the_engine_has_no_import_cycle_and_checking_a_spec_builds_no_network():
    """Counted by tools/import_graph.py (grimp, with each registry's loading of its members
    as imports): no group of modules imports itself round, and validating a spec loads
    neither the live network, its controller channel, Mininet nor the run."""
    loader = importlib.util.spec_from_file_location("import_graph", ROOT / "tools" / "import_graph.py")
    import_graph = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(import_graph)
    survey = import_graph.survey()
    assert survey["cycles"] == [], survey["cycles"]
    code = "import sys, caslab.spec.experiment; print('\\n'.join(sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                            check=True).stdout.split()
    network = {"caslab.network.netlab", "caslab.network.ofchannel", "caslab.network.context", "caslab.network.cleanup",
               "caslab.network.services", "mininet"}
    assert not network & set(loaded), sorted(network & set(loaded))
    above = [m for m in loaded if m.startswith(("caslab.run", "caslab.commands", "caslab.results"))]
    assert not above, above
