"""Reproducible or refused: what a lab machine must share with the runner of a cluster run.

A repetition run on another machine counts in the same table only if that machine ran
the same code the same way: the project's git commit, whether its tree had uncommitted
changes (and which: a hash of the diff), the Python version, the version of every
package the lab imports (caslab's dependencies, followed transitively, not test or
dashboard extras) and the Open vSwitch datapath. ``facts()`` reads them on a machine;
``differences()`` compares two machines' facts (pure); a worker that differs is refused
unless the run was started with ``--allow-mismatch``, and then every difference is
recorded in the manifest beside the repetition it concerns. Tool and kernel versions are
recorded per worker but not compared: they differ between honest machines.
"""

from __future__ import annotations

import hashlib
import re
import socket
import sys
from pathlib import Path
from typing import Any

from caslab import SOURCE_ROOT
from caslab.base import system

ROOT = SOURCE_ROOT
COMPARED = ("git", "python", "packages", "datapath")


class ClusterRefused(Exception):
    """A worker differs from the runner and the run did not allow it."""


def git_facts(repo: Path = ROOT) -> dict[str, Any]:
    """Commit and dirty flag as the manifest records them, plus a hash of the uncommitted
    diff of tracked files: two dirty trees at one commit are equal only if it matches."""
    state = dict(system.git_state(str(repo)))
    state["diff_sha256"] = None
    if state.get("dirty"):
        diff = system.run(["git", "-C", str(repo), "diff", "HEAD", "--binary"], timeout=30)
        state["diff_sha256"] = hashlib.sha256(diff.stdout.encode()).hexdigest()
    return state


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def lab_packages(root: str = "caslab") -> dict[str, str]:
    """caslab and every distribution it depends on, transitively (markers that need an
    extra are skipped: extras are not what the lab runs with), with their versions."""
    from importlib.metadata import PackageNotFoundError, distribution

    from packaging.requirements import Requirement

    out: dict[str, str] = {}
    todo = [root]
    while todo:
        name = _canonical(todo.pop())
        if name in out:
            continue
        try:
            dist = distribution(name)
        except PackageNotFoundError:
            out[name] = "missing"
            continue
        out[name] = dist.version
        for text in dist.requires or []:
            req = Requirement(text)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return out


def facts() -> dict[str, Any]:
    """This machine, as a cluster run compares and records it."""
    return {"host": socket.gethostname(), "git": git_facts(), "python": sys.version.split()[0],
            "packages": lab_packages(), "datapath": system.preferred_datapath(),
            "versions": system.versions(), "platform": system.platform_info()}


def differences(runner: dict[str, Any], worker: dict[str, Any]) -> list[str]:
    """Each way the worker's facts differ from the runner's, as one readable line."""
    out = []
    rg, wg = runner.get("git") or {}, worker.get("git") or {}
    if rg.get("commit") != wg.get("commit"):
        out.append(f"git commit: runner {rg.get('commit')}, worker {wg.get('commit')}")
    elif rg.get("dirty") != wg.get("dirty") or rg.get("diff_sha256") != wg.get("diff_sha256"):
        def tree(g):
            return "clean" if not g.get("dirty") else f"uncommitted changes (diff {str(g.get('diff_sha256'))[:12]})"
        out.append(f"git tree at {str(rg.get('commit'))[:12]}: runner {tree(rg)}, worker {tree(wg)}")
    if runner.get("python") != worker.get("python"):
        out.append(f"python: runner {runner.get('python')}, worker {worker.get('python')}")
    rp, wp = runner.get("packages") or {}, worker.get("packages") or {}
    for name in sorted(set(rp) | set(wp)):
        if rp.get(name) != wp.get(name):
            out.append(f"package {name}: runner {rp.get(name, 'absent')}, worker {wp.get(name, 'absent')}")
    if runner.get("datapath") != worker.get("datapath"):
        out.append(f"datapath: runner {runner.get('datapath')}, worker {worker.get('datapath')}")
    return out


def check(runner: dict[str, Any], worker: dict[str, Any], worker_name: str, allow: bool) -> list[str]:
    """The differences, if allowed; else ClusterRefused naming the worker and each one."""
    found = differences(runner, worker)
    if found and not allow:
        raise ClusterRefused(
            f"worker {worker_name} ({worker.get('host')}) differs from this machine, so its repetitions would not be "
            "reproducible here: " + "; ".join(found)
            + " (bring it to the same commit and venv, e.g. ./lab.sh setup from the same checkout; or run with "
              "--allow-mismatch to go on and record each difference in the manifest)")
    return found
