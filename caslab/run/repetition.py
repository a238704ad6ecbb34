"""One scenario repetition in a process of its own: how a cluster worker runs a task.

    python -m caslab.run.repetition WORKDIR      (WORKDIR/task.json, written by caslab.commands.cluster_worker)

Why a process and not the worker's thread: the lab tears down on KeyboardInterrupt in
the main thread (Ctrl-C, SIGTERM: caslab.base.interrupts), which a Dask worker's task thread
never gets. Here the worker cancels a task by sending SIGTERM, and if the worker itself
dies the kernel sends it (PR_SET_PDEATHSIG): either way the lab comes down by its pids,
as a local run's does. Like a local run, the process registers its lab under /run/caslab,
so ``caslab cleanup`` on the machine works after a SIGKILL.

It holds the machine's lab lock for the whole repetition (workers on one machine share
it, so they take turns), runs ``runner.run_repetition`` (the local run's own path) into
WORKDIR/raw and WORKDIR/events.jsonl, prints each progress step as a JSON line on stdout
and writes WORKDIR/result.json. Exit status: 0 done, 1 failed, 130 interrupted. A
process whose worker died removes WORKDIR itself once its lab is down.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
from pathlib import Path

PR_SET_PDEATHSIG = 1


def die_with_parent(parent: int) -> None:
    """SIGTERM when the worker that started us dies; and if it already did, stop now."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM, 0, 0, 0)
    except (OSError, AttributeError):
        return
    if os.getppid() != parent:
        raise SystemExit(130)


def say(kind: str, **fields) -> None:
    print(json.dumps({"kind": kind, **fields}), flush=True)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    workdir = Path(argv[0])
    task_spec = json.loads((workdir / "task.json").read_text())
    from caslab.base import interrupts

    interrupts.install()
    die_with_parent(task_spec["parent"])
    from caslab.run import runner
    from caslab.network.machine import LabLock

    task = runner.RepTask(task_spec["index"], task_spec["scenario_id"], task_spec["label"], task_spec["rep"],
                          task_spec["scenario"])
    result = {"error": None, "interrupted": False}
    code = 0
    try:
        say("step", step="waiting for this machine's lab lock")
        with LabLock(wait_s=task_spec["lock_wait_s"]):
            started = time.time()
            say("lab", started=started)
            with open(workdir / "events.jsonl", "w", encoding="utf-8") as events_out:
                runner.run_repetition(task, workdir / "raw" / task.raw_name, events_out,
                                      lambda step: say("step", step=step))
        result["seconds"] = round(time.time() - started, 3)
    except KeyboardInterrupt:
        result.update(error="interrupted (the lab was torn down)", interrupted=True)
        code = 130
    except Exception as exc:  # noqa: BLE001 - reported to the runner as the local run reports it
        result["error"] = runner.failure_text(exc)
        code = 1
    if os.getppid() != task_spec["parent"]:  # the worker died: nobody will read or remove our folder
        import shutil

        shutil.rmtree(workdir, ignore_errors=True)
        return code
    (workdir / "result.json").write_text(json.dumps(result))
    return code


if __name__ == "__main__":
    sys.exit(main())
