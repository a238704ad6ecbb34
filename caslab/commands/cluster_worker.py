"""The lab machine's side of a cluster run: a Dask worker with one "lab" resource.

    caslab worker --scheduler tcp://HOST:8786 [--name NAME] [--host IP]
    # the same, with Dask's own command:
    dask worker tcp://HOST:8786 --nthreads 1 --resources lab=1 --preload caslab.commands.cluster_worker

``caslab worker`` refuses to start on a machine that cannot run a lab (``caslab doctor``'s
required checks); with plain ``dask worker`` the preload (``dask_setup``) makes the same
check, and since Dask only logs a failing preload, it takes the worker's "lab" resource
away: the worker joins, but no repetition is ever sent to it, and the runner counts no
lab machine there. ``run_task`` is what the runner submits, one call
per scenario repetition: it compares this machine with the runner (caslab.commands.cluster_facts)
before building anything, runs the repetition in a process of its own
(``python -m caslab.run.repetition``, under this machine's lab lock: two workers on one
machine take turns), forwards each progress step to the runner as a Dask event, and
returns the tagged events, the raw folder as one tar and the run's metadata. A task that
the runner cancels (Ctrl-C), or whose runner went away, sends that process SIGTERM: it
tears its lab down by pid, as a local run does on Ctrl-C.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from caslab.commands import cluster_facts

RUNNING_STATES = ("executing", "long-running")
TEARDOWN_S = 120.0  # a lab's teardown takes seconds; past this the process is killed
DEFAULT_LOCK_WAIT_S = 24 * 3600.0


def cannot_run_lab() -> str | None:
    """Why this machine cannot run a lab (caslab doctor's required checks), or None."""
    from caslab.network import doctor

    failed = [c for c in doctor.checks() if c.required and not c.ok]
    if not failed:
        return None
    return "this machine cannot run the lab: " + "; ".join(f"{c.name}: {c.detail}" for c in failed)


def dask_setup(worker) -> None:
    """Dask preload: a worker whose machine cannot run the lab gets no "lab" resource."""
    reason = cannot_run_lab()
    if reason is None:
        return
    import logging

    logging.getLogger("distributed.worker").error("caslab: %s; this worker gets no lab resource", reason)
    for resources in (worker.state.total_resources, worker.state.available_resources):
        resources["lab"] = 0


def worker_argv(scheduler: str, name: str | None, host: str | None, nanny: bool, dashboard: bool) -> list[str]:
    """``dask worker`` as ``caslab worker`` runs it: one thread (one lab at a time), one
    "lab" resource, the preload; with --host, every socket (dashboard too) on that address."""
    argv = [sys.executable, "-m", "distributed.cli.dask_worker", scheduler, "--nthreads", "1", "--nworkers", "1",
            "--resources", "lab=1", "--preload", "caslab.commands.cluster_worker", "--nanny" if nanny else "--no-nanny"]
    if name:
        argv += ["--name", name]
    if host:
        argv += ["--host", host, "--dashboard-address", f"{host}:0"]
    argv += ["--dashboard" if dashboard else "--no-dashboard"]
    return argv


def _emit(worker, topic: str, kind: str, key: str, **fields: Any) -> None:
    worker.log_event(topic, {"kind": kind, "key": key, "name": str(worker.name), **fields})


def _still_wanted(worker, key: str) -> bool:
    """False once the scheduler cancelled the task (the runner's Ctrl-C, or its client
    gone): the worker then marks it cancelled while this thread still runs it."""
    try:
        ts = worker.state.tasks.get(key)
    except AttributeError:  # pragma: no cover - a distributed without WorkerState
        return True
    return ts is not None and ts.state in RUNNING_STATES


def _pump(stream, worker, topic: str, key: str, lab_started: list[float]) -> None:
    for line in iter(stream.readline, b""):
        try:
            msg = json.loads(line)
        except ValueError:
            continue
        if msg.get("kind") == "lab":
            lab_started.append(msg["started"])
            _emit(worker, topic, "lab", key)
        elif msg.get("kind") == "step":
            _emit(worker, topic, "step", key, step=str(msg.get("step", "")))


def tar_folder(folder: Path) -> bytes:
    """The raw folder of one repetition as one gzip'd tar (names relative to raw/)."""
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz", compresslevel=3) as tar:
        if folder.exists():
            tar.add(folder, arcname=folder.name)
    return buffer.getvalue()


def run_task(payload: dict[str, Any]) -> dict[str, Any]:
    """One scenario repetition on this worker (see the module docstring)."""
    from distributed import get_worker

    worker = get_worker()
    key, topic = worker.get_current_task(), payload["topic"]
    name = str(worker.name)
    mine = cluster_facts.facts()
    found = cluster_facts.check(payload["runner_facts"], mine, name, payload["allow_mismatch"])
    task = payload["task"]
    _emit(worker, topic, "start", key, host=mine["host"])
    scratch = os.environ.get("CASLAB_SCRATCH") or None
    if scratch:
        Path(scratch).mkdir(parents=True, exist_ok=True)
    workdir = Path(tempfile.mkdtemp(prefix="caslab-task-", dir=scratch))
    started = time.time()
    try:
        lock_wait = float(os.environ.get("CASLAB_LOCK_WAIT_S") or DEFAULT_LOCK_WAIT_S)
        (workdir / "task.json").write_text(json.dumps({**task, "parent": os.getpid(), "lock_wait_s": lock_wait}))
        with open(workdir / "repetition.log", "wb") as log:
            proc = subprocess.Popen([sys.executable, "-m", "caslab.run.repetition", str(workdir)], stdout=subprocess.PIPE,
                                    stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
            lab_started: list[float] = []
            pump = threading.Thread(target=_pump, args=(proc.stdout, worker, topic, key, lab_started), daemon=True)
            pump.start()
            cancelled = _wait(proc, worker, key)
            pump.join(5)
        if cancelled:
            _emit(worker, topic, "torn-down", key, returncode=proc.returncode)
            return {"key": key, "cancelled": True}
        result = _read_json(workdir / "result.json")
        if result is None:
            swept = sweep_after_lost_process()
            result = {"error": f"the repetition's process ended with status {proc.returncode} and no result "
                               f"({_tail(workdir / 'repetition.log')}); {swept}", "interrupted": False}
        events = (workdir / "events.jsonl").read_text() if (workdir / "events.jsonl").exists() else ""
        return {"key": key, "cancelled": False, "scenario_id": task["scenario_id"], "rep": task["rep"],
                "worker": name, "address": worker.address, "host": mine["host"], "facts": mine,
                "differences": found, "started": started, "lab_started": lab_started[0] if lab_started else None,
                "seconds": result.get("seconds"), "error": result.get("error"),
                "interrupted": result.get("interrupted", False), "events": events,
                "raw_tar": tar_folder(workdir / "raw" / f"{task['scenario_id']}-r{task['rep'] + 1}")}
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def _wait(proc: subprocess.Popen, worker, key: str) -> bool:
    """Wait for the repetition; if the task is cancelled meanwhile, SIGTERM it and wait for
    its teardown. Returns whether it was cancelled."""
    while proc.poll() is None:
        if not _still_wanted(worker, key):
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(TEARDOWN_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
            return True
        time.sleep(0.2)
    return False


def sweep_after_lost_process() -> str:
    """A repetition process killed outright (SIGKILL, the OOM killer) could not tear its
    lab down: remove what it left, as ``caslab cleanup`` would, under the lab lock."""
    from caslab.network.cleanup import sweep_dead_labs
    from caslab.network.machine import LabLock
    from caslab.base.waits import LabError

    removed: list[str] = []
    try:
        with LabLock(wait_s=TEARDOWN_S):
            sweep_dead_labs(say=removed.append)
    except (LabError, OSError) as exc:
        return f"its lab's remains were not removed ({exc}): run caslab cleanup on {socket.gethostname()}"
    return (f"what its lab left was removed on {socket.gethostname()} as caslab cleanup would "
            f"({sum(r.startswith('killed') for r in removed)} processes, "
            f"{sum(r.startswith('removed') for r in removed)} bridges and links)")


def _read_json(path: Path) -> dict[str, Any] | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def _tail(path: Path, chars: int = 400) -> str:
    try:
        text = path.read_text(errors="replace").strip()
    except OSError:
        return "no log"
    return text[-chars:] or "empty log"


def main_cli(args) -> int:
    """``caslab worker``: become a Dask worker of the lab (exec, so signals reach Dask)."""
    reason = cannot_run_lab()
    if reason is not None:
        print(f"caslab worker: {reason}", file=sys.stderr)
        return 3
    argv = worker_argv(args.scheduler, args.name, args.host, not args.no_nanny, args.dashboard)
    print("caslab worker: " + " ".join(argv[1:]), file=sys.stderr, flush=True)
    os.execv(argv[0], argv)
    return 0  # pragma: no cover - execv does not return
