"""Where a run records what it started, the moment it starts it, for ``caslab cleanup``.

A run that is killed hard (SIGKILL, power loss) cannot tear down. So each live lab has
a folder under ``/run/caslab/labs/`` (``CASLAB_RUN_DIR`` overrides ``/run/caslab``),
wherever its results go:

    lab.json          the runner's pid and start time, its result folder, bridge names;
                      a live lab (``caslab up``) adds ``live``: its control socket
    control.sock      a live lab's control socket (mode 0600), for ``caslab fault`` etc.
    procs/<pid>.json  one file per process the lab started (written atomically when it
                      starts: name, host, pid, the process's start time)

A pid is only ever signalled when ``/proc/<pid>/stat`` still shows the start time that
was recorded, so a recycled pid is never hit. ``cleanup`` refuses to touch a lab whose
runner is still alive.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RUN_ROOT = Path(os.environ.get("CASLAB_RUN_DIR", "/run/caslab"))


def labs_dir() -> Path:
    return RUN_ROOT / "labs"


def start_time(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (None if it is gone)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2:].split()[19])


def same_process(pid: int, started: int | None) -> bool:
    return started is not None and start_time(pid) == started


def write_atomic(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".tmp-")
    try:
        with os.fdopen(fd, "w") as handle:
            json.dump(data, handle)
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@dataclass
class LabRecord:
    """The registry entry of one live lab network."""

    folder: Path

    @classmethod
    def create(cls, run_dir: Path, bridges: list[str], datapath: str) -> "LabRecord":
        me = os.getpid()
        folder = labs_dir() / f"{me}-{start_time(me)}"
        record = cls(folder)
        write_atomic(folder / "lab.json", {"runner_pid": me, "runner_start": start_time(me),
                                           "run_dir": str(Path(run_dir).resolve()), "bridges": bridges,
                                           "datapath": datapath})
        return record

    def update(self, **fields: Any) -> None:
        """Add to lab.json (a live lab adds its control socket and result folder)."""
        path = self.folder / "lab.json"
        write_atomic(path, {**json.loads(path.read_text()), **fields})

    def process(self, name: str, pid: int, host: str | None) -> None:
        write_atomic(self.folder / "procs" / f"{pid}.json",
                     {"name": name, "pid": pid, "host": host, "start": start_time(pid)})

    def remove(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)


def running_live_lab() -> tuple[Path, dict[str, Any]] | None:
    """The live lab (``caslab up``) running on this machine, if any: (folder, lab.json)."""
    for folder, lab, _ in live_labs():
        if lab.get("live") and same_process(lab.get("runner_pid", -1), lab.get("runner_start")):
            return folder, lab
    return None


def live_labs() -> list[tuple[Path, dict[str, Any], list[dict[str, Any]]]]:
    """Every registered lab: (its folder, lab.json, its processes)."""
    out = []
    for folder in sorted(labs_dir().glob("*")) if labs_dir().is_dir() else []:
        try:
            lab = json.loads((folder / "lab.json").read_text())
        except (OSError, ValueError):
            lab = {}
        procs = []
        for path in sorted((folder / "procs").glob("*.json")):
            try:
                procs.append(json.loads(path.read_text()))
            except (OSError, ValueError):
                continue
        out.append((folder, lab, procs))
    return out
