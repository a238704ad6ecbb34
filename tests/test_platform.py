"""What makes the README's two commands work on every platform it names, checked without
booting one: lab.sh needs root but never calls sudo (a minimal root machine has none),
reads only its own keys from /etc/caslab.env (how the Vagrant VM keeps the venv off the
synced folder), and every module the project imports is declared in pyproject.toml."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys

from tests.conftest import ROOT

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

LOCAL = {"caslab", "labcommon", "topologies", "controllers", "traffic", "roles", "tests"}
IMPORT_TO_DIST = {"dns": "dnspython", "os_ken": "os-ken", "yaml": "pyyaml"}
RYU_VENV_ONLY = {"ryu", "eventlet"}  # imported by controllers/compat.py only under upstream Ryu (its own venv)


def paths(env: dict[str, str]) -> dict[str, str]:
    out = subprocess.run(["bash", str(ROOT / "lab.sh"), "paths"], capture_output=True, text=True, check=True,
                         env={"PATH": os.environ["PATH"], **env}).stdout
    return dict(line.split("=", 1) for line in out.splitlines())


def test_lab_sh_never_calls_sudo():
    code = [line for line in (ROOT / "lab.sh").read_text().splitlines() if not line.lstrip().startswith("#")]
    calls = [line for line in code if re.search(r"(^|[;&|(]\s*|\s)sudo\s", line.split("say ")[0])]
    assert not calls, calls


def test_readme_commands_need_no_sudo():
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Two commands", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    commands = [line.split("#")[0].strip() for line in block.splitlines() if line.strip()]
    assert commands and all(c.startswith("./lab.sh ") for c in commands), commands


def test_machine_defaults_come_from_the_env_file_and_the_environment_wins(tmp_path):
    env_file = tmp_path / "caslab.env"
    env_file.write_text("CASLAB_VENV=/var/lib/caslab/venv\nPATH=/nowhere\nCASLAB_SCRATCH=/var/lib/caslab/scratch\n")
    got = paths({"CASLAB_ENV_FILE": str(env_file)})
    assert got["venv"] == "/var/lib/caslab/venv" and got["ryu_venv"] == "/var/lib/caslab/venv-ryu"
    assert got["scratch"] == "/var/lib/caslab/scratch", "and PATH from the file was ignored (bash still ran)"
    mine = paths({"CASLAB_ENV_FILE": str(env_file), "CASLAB_VENV": str(tmp_path / "v")})
    assert mine["venv"] == str(tmp_path / "v")
    plain = paths({"CASLAB_ENV_FILE": str(tmp_path / "absent")})
    assert plain["venv"] == str(ROOT / ".venv") and plain["results"] == str(ROOT / "results")


def test_vagrantfile_pins_one_box_version_and_keeps_the_venv_local():
    text = (ROOT / "Vagrantfile").read_text()
    assert re.search(r'^BOX_VERSION = "\d{6}\.\d+\.\d+"$', text, re.M) and "vm.box_version = BOX_VERSION" in text
    assert "CASLAB_VENV=/var/lib/caslab/venv" in text and "/etc/caslab.env" in text and "./lab.sh setup" in text


def declared() -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    specs = project["dependencies"] + [d for extra in project["optional-dependencies"].values() for d in extra]
    return {re.split(r"[\s<>=!~;\[]", spec, maxsplit=1)[0].lower() for spec in specs}


def imported() -> dict[str, set[str]]:
    found: dict[str, set[str]] = {}
    for folder in LOCAL:
        for path in (ROOT / folder).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                    [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
                for name in names:
                    top = name.split(".")[0]
                    if top not in sys.stdlib_module_names and top not in LOCAL:
                        found.setdefault(top, set()).add(str(path.relative_to(ROOT)))
    return found


def test_every_imported_package_is_declared():
    have = declared()
    missing = {name: sorted(files) for name, files in imported().items()
               if IMPORT_TO_DIST.get(name, name).lower().replace("_", "-") not in have and name not in RYU_VENV_ONLY}
    assert not missing, f"imported but not declared in pyproject.toml: {missing}"


# ---- Open vSwitch is running only when ovs-vswitchd itself answers (issue 18) ---------------------------


def fake_ovs(tmp_path, vsctl_rc: int, appctl_rc: int) -> str:
    """A PATH whose ovs-vsctl (the database server) and ovs-appctl (the daemon) exit as told."""
    folder = tmp_path / "bin"
    folder.mkdir(exist_ok=True)
    for name, rc in (("ovs-vsctl", vsctl_rc), ("ovs-appctl", appctl_rc)):
        (folder / name).write_text(f"#!/bin/sh\nexit {rc}\n")
        (folder / name).chmod(0o755)
    return f"{folder}{os.pathsep}{os.environ['PATH']}"


def lab_sh_function(name: str) -> str:
    text = (ROOT / "lab.sh").read_text()
    match = re.search(rf"^{name}\(\) \{{\n.*?^\}}\n", text, re.S | re.M)
    assert match, f"lab.sh has no function {name}"
    return match.group(0)


def test_lab_sh_starts_open_vswitch_until_ovs_vswitchd_answers(tmp_path):
    check = lab_sh_function("ovs_answers")
    for vsctl, appctl, answers in ((0, 0, True), (0, 1, False), (1, 0, False)):
        rc = subprocess.run(["bash", "-c", f"{check}\novs_answers"], env={"PATH": fake_ovs(tmp_path, vsctl, appctl)}).returncode
        assert (rc == 0) is answers, (vsctl, appctl, rc)
    start = lab_sh_function("start_ovs")
    assert start.count("ovs_answers") == 2 and "ovs-vsctl" not in start, start  # before starting and while waiting


def test_doctor_fails_when_only_the_database_server_answers(tmp_path, monkeypatch):
    from caslab.network import doctor

    monkeypatch.setenv("PATH", fake_ovs(tmp_path, 0, 1))
    [check] = [c for c in doctor.checks() if c.name == "openvswitch"]
    assert not check.ok and check.required and "ovs-vswitchd" in check.detail and "not" in check.detail
    monkeypatch.setenv("PATH", fake_ovs(tmp_path, 0, 0))
    [check] = [c for c in doctor.checks() if c.name == "openvswitch"]
    assert check.ok


# ---- upstream Ryu's venv has what the NLB app imports -------------------------------------------------


def third_party_imports(*modules: str) -> set[str]:
    """The packages outside the project and the standard library that ``modules`` import,
    following the project's own modules they import (at any depth, in functions too)."""
    seen, todo, found = set(), list(modules), set()
    while todo:
        module = todo.pop()
        path = ROOT / (module.replace(".", "/") + ".py")
        if module in seen or not path.exists():
            continue
        seen.add(module)
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module] if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module else []
            for name in names:
                top = name.split(".")[0]
                if top in LOCAL:
                    todo.append(name)
                elif top not in sys.stdlib_module_names:
                    found.add(top)
    return found


def test_ryus_venv_gets_every_package_the_nlb_app_imports_pinned_as_the_project_pins_it():
    """lab.sh installs the project into Ryu 4.34's venv without its dependencies (they would
    replace Ryu's eventlet): what the app imports besides the framework comes from
    RYU_APP_DEPS, pinned as pyproject.toml pins it."""
    needed = third_party_imports("controllers.launcher", "controllers.sdn_nlb") - RYU_VENV_ONLY - {"os_ken"}
    [line] = [x for x in (ROOT / "lab.sh").read_text().splitlines() if x.startswith("RYU_APP_DEPS=")]
    given = re.findall(r'"([^"]+)"', line)
    pins = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert needed and sorted(given) == sorted(p for p in pins if re.split(r"[\s<>=!~;\[]", p)[0] in needed)
