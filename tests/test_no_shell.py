"""No value from a spec, a flag or the network ever reaches a shell: the lab starts every
command as an argument list. A static check over the code (it fails as soon as someone
adds a ``node.cmd(...)``, an ``os.system`` or a ``shell=True``), plus the spec-level
guard: a name that is not in the addressing plan never gets as far as a command."""

from __future__ import annotations

import ast

import pytest

from caslab.spec import experiment as spec_mod
from caslab.spec.experiment import SpecError
from tests.conftest import ROOT

PACKAGES = ("caslab", "controllers", "roles", "traffic", "labcommon", "topologies")


def calls():
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            tree = ast.parse(path.read_text(), str(path))
            for node in ast.walk(tree):
                if isinstance(node, ast.Call):
                    yield path.relative_to(ROOT), node


def test_no_shell_anywhere_in_the_lab():
    offenders = []
    for path, call in calls():
        func = call.func
        name = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        shell_kw = any(k.arg == "shell" and not (isinstance(k.value, ast.Constant) and k.value.value is False)
                       for k in call.keywords)
        if name in ("cmd", "cmdPrint", "sendCmd", "system", "popen2") or shell_kw or name == "getoutput":
            offenders.append(f"{path}:{call.lineno} {name}(...)")
    assert not offenders, "commands must be argument lists, never shell strings: " + ", ".join(offenders)


@pytest.mark.parametrize("to", ["x'; touch /tmp/pwned; echo '", "cas1; reboot", "$(id)", "cas1\n", "array:HQ'"])
def test_a_spec_value_meant_for_a_shell_is_refused_before_anything_runs(to):
    with pytest.raises(SpecError, match=r"faults\[0\]\.to"):
        spec_mod.validate({"faults": [{"kind": "rebind", "database": "DB1", "to": to}]}, "evil.toml")


@pytest.mark.parametrize("target", ["cas1; reboot", "$(id)", "../cas1", "cas1 cas2"])
def test_a_target_that_is_not_a_host_is_refused(target):
    with pytest.raises(SpecError, match=r"faults\[0\]\.target"):
        spec_mod.validate({"faults": [{"kind": "poweroff", "target": target}]}, "evil.toml")
