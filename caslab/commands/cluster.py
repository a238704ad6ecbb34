"""``caslab run SPEC --cluster tcp://HOST:8786``: the repetitions of a run spread over lab
machines by Dask's distributed scheduler, merged into one result folder.

The runner (caslab.run.runner) owns the folder, the manifest, events.jsonl and the report,
as for a local run; this module only replaces its loop over repetitions
(``runner.run_locally``) with ``ClusterExecutor``: one Dask task per scenario repetition
(``caslab.commands.cluster_worker.run_task``, resource ``lab=1``), each run on a worker by the same
``runner.run_repetition`` a local run calls, with the same seeds (they depend on the
scenario and repetition only). What comes back is merged by ``Merge``: the repetition's
tagged events appended to events.jsonl, its raw folder unpacked into raw/, and a line in
the manifest's ``cluster.runs`` saying which machine ran it. Then events -> metrics ->
report, as ever.

Faults of the cluster itself: a worker that dies or drops off mid-repetition returns
nothing, so nothing of that attempt is merged; Dask's scheduler runs the task again on
another worker (after ``distributed.scheduler.allowed-failures`` deaths it gives up, and
so does the run). A result is merged once per repetition whatever arrives (``Merge``
refuses a second). Ctrl-C cancels every task; each worker's repetition process gets
SIGTERM and tears its lab down, and the runner waits for them to say so.
"""

from __future__ import annotations

import io
import os
import sys
import tarfile
import threading
import time
import uuid
from pathlib import Path, PurePosixPath
from typing import Any, TextIO

from caslab.commands import cluster_facts
from caslab.commands.cluster_facts import ClusterRefused
from caslab.network.netlab import LabError
from caslab.spec.plan_view import duration_text

WAIT_FOR_WORKERS_S = float(os.environ.get("CASLAB_CLUSTER_WAIT_S", "300"))
TEARDOWN_WAIT_S = 150.0


# ---- pure parts: the ETA, the lab machines, unpacking and merging ---------------------------

def cluster_eta_s(per_run_s: float, queued: int, running_elapsed: list[float], parallel: int) -> float:
    """Seconds left: what the running repetitions still need plus the queued ones, shared
    by the machines that can run labs at once (workers of one machine share its lock)."""
    work = sum(max(per_run_s - e, 0.0) for e in running_elapsed) + per_run_s * max(queued, 0)
    return work / max(parallel, 1)


def lab_machines(workers: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Scheduler's workers with a "lab" resource, grouped by machine: {host: [names]}."""
    out: dict[str, list[str]] = {}
    for address, info in workers.items():
        if (info.get("resources") or {}).get("lab", 0) >= 1:
            host = address.split("://")[-1].rsplit(":", 1)[0]
            out.setdefault(host, []).append(str(info.get("name", address)))
    return out


def unpack_raw(tar_bytes: bytes, raw_root: Path, name: str) -> int:
    """Unpack one repetition's raw folder into raw/<name>; refuses any member outside it,
    links and devices (the tar came over the network). Returns the number of files."""
    count = 0
    with tarfile.open(fileobj=io.BytesIO(tar_bytes), mode="r:gz") as tar:
        members = tar.getmembers()
        for member in members:
            path = PurePosixPath(member.name)
            if path.is_absolute() or ".." in path.parts or not path.parts or path.parts[0] != name:
                raise LabError(f"raw files of {name}: member {member.name!r} is outside {name}/")
            if not (member.isfile() or member.isdir()):
                raise LabError(f"raw files of {name}: member {member.name!r} is not a file or folder")
            count += member.isfile()
        raw_root.mkdir(parents=True, exist_ok=True)
        if hasattr(tarfile, "data_filter"):  # Python >= 3.11.4: the standard library checks too
            tar.extractall(raw_root, members=members, filter="data")
        else:
            tar.extractall(raw_root, members=members)
    return count


class Merge:
    """Writes what a worker returned into the result folder, once per repetition."""

    def __init__(self, run_dir: Path, manifest: dict[str, Any], events_out: TextIO):
        self.run_dir, self.manifest, self.events_out = run_dir, manifest, events_out
        self.done: set[tuple[str, int]] = set()

    def accept(self, result: dict[str, Any], attempts: list[str]) -> bool:
        """Merge one repetition's result; False (and nothing written) if it was merged before."""
        key = (result["scenario_id"], result["rep"])
        if key in self.done:
            return False
        name = f"{key[0]}-r{key[1] + 1}"
        unpack_raw(result["raw_tar"], self.run_dir / "raw", name)
        self.events_out.write(result["events"])
        self.events_out.flush()
        self.done.add(key)
        cluster = self.manifest["cluster"]
        cluster["workers"].setdefault(result["worker"], summary_of(result["facts"]))
        cluster["runs"].append({"scenario": key[0], "rep": key[1], "worker": result["worker"],
                                "host": result["host"], "address": result["address"], "attempts": attempts,
                                "seconds": result.get("seconds"), "error": result.get("error"),
                                "differences": result.get("differences", [])})
        return True


def summary_of(facts: dict[str, Any]) -> dict[str, Any]:
    """A worker's facts as the manifest keeps them (packages as compared, tools as found)."""
    return {k: facts.get(k) for k in ("host", "git", "python", "datapath", "versions", "platform", "packages")}


# ---- progress ------------------------------------------------------------------------------

class ClusterProgress:
    """Progress lines as a local run prints them, per repetition and worker, with an ETA
    over the cluster. Fed from Dask events (the client's thread) and from results."""

    def __init__(self, tasks, keys: dict[str, Any], estimate_s: float, stream: TextIO = sys.stderr):
        self.total, self.keys, self.estimate_s, self.stream = len(tasks), keys, estimate_s, stream
        self.started = time.monotonic()
        self.lock = threading.Lock()
        self.attempts: dict[str, list[str]] = {k: [] for k in keys}
        self.running: dict[str, float] = {}
        self.torn_down: set[str] = set()
        self.durations: list[float] = []
        self.done = 0
        self.parallel = 1

    def eta(self) -> float:
        per_run = sum(self.durations) / len(self.durations) if self.durations else self.estimate_s
        now = time.monotonic()
        queued = self.total - self.done - len(self.running)
        return cluster_eta_s(per_run, queued, [now - t for t in self.running.values()], self.parallel)

    def line(self, key: str, worker: str, text: str) -> None:
        task = self.keys[key]
        print(f"{time.monotonic() - self.started:7.1f}s [{task.index}/{self.total}] {task.label} rep {task.rep + 1} "
              f"@{worker} (ETA {duration_text(self.eta())}): {text}", file=self.stream, flush=True)

    def event(self, event: tuple[float, dict[str, Any]]) -> None:
        msg = event[1] if isinstance(event, tuple) else event
        key, worker, kind = msg.get("key"), msg.get("name", "?"), msg.get("kind")
        if key not in self.keys:
            return
        with self.lock:
            if kind == "start":
                earlier = list(self.attempts[key])
                self.attempts[key].append(worker)
                self.running[key] = time.monotonic()
                if earlier:
                    self.line(key, worker, f"re-run (attempt {len(earlier) + 1}; {earlier[-1]} left mid-repetition, "
                                           "nothing of it was merged)")
                else:
                    self.line(key, worker, f"started on {msg.get('host', '?')}")
            elif kind == "lab":
                self.running[key] = time.monotonic()  # the lab lock is ours: the repetition starts now
            elif kind == "step":
                self.line(key, worker, str(msg.get("step", "")))
            elif kind == "torn-down":
                self.torn_down.add(key)
                self.running.pop(key, None)
                self.line(key, worker, "cancelled; its lab was torn down")

    def finished(self, key: str, worker: str, seconds: float | None) -> None:
        with self.lock:
            self.done += 1
            self.running.pop(key, None)
            if seconds:
                self.durations.append(seconds)
            self.line(key, worker, f"done in {seconds or 0:.1f} s ({self.done}/{self.total} merged)")

    def failed(self, key: str, worker: str, error: str) -> None:
        """A repetition that failed on its worker (its events so far are merged, as a
        local run keeps them)."""
        with self.lock:
            self.running.pop(key, None)
            self.line(key, worker, f"FAILED: {error}")

    def say(self, text: str) -> None:
        print(f"{time.monotonic() - self.started:7.1f}s cluster: {text}", file=self.stream, flush=True)


# ---- the executor ----------------------------------------------------------------------------

class ClusterExecutor:
    """``runner.run(..., execute=ClusterExecutor(address, allow_mismatch))``."""

    def __init__(self, address: str, allow_mismatch: bool = False, stream: TextIO = sys.stderr):
        self.address, self.allow_mismatch, self.stream = address, allow_mismatch, stream

    def connect(self):
        from distributed import Client

        try:
            return Client(self.address, timeout=10, name="caslab-runner")
        except (OSError, TimeoutError) as exc:
            raise LabError(f"cannot reach the Dask scheduler at {self.address}: {exc} "
                           "(start one: dask scheduler; then caslab worker --scheduler ADDRESS on each lab machine)") from None

    def __call__(self, tasks, run_dir: Path, manifest: dict[str, Any], events_out: TextIO, progress) -> None:
        client = self.connect()
        try:
            self._run(client, tasks, run_dir, manifest, events_out, progress)
        finally:
            client.close()

    def _lab_workers(self, client) -> dict[str, dict[str, Any]]:
        workers = client.scheduler_info(n_workers=-1)["workers"]
        return {a: w for a, w in workers.items() if (w.get("resources") or {}).get("lab", 0) >= 1}

    def _wait_for_workers(self, client, say) -> dict[str, dict[str, Any]]:
        deadline = time.monotonic() + WAIT_FOR_WORKERS_S
        told = False
        while True:
            workers = self._lab_workers(client)
            if workers:
                return workers
            if time.monotonic() > deadline:
                raise LabError(f"no lab worker joined the scheduler at {self.address} within {WAIT_FOR_WORKERS_S:.0f} s "
                               "(start one per lab machine: caslab worker --scheduler ADDRESS)")
            if not told:
                say(f"waiting up to {WAIT_FOR_WORKERS_S:.0f} s for a worker with a lab resource")
                told = True
            time.sleep(1)

    def _run(self, client, tasks, run_dir, manifest, events_out, progress) -> None:
        token = uuid.uuid4().hex[:8]
        keys = {f"caslab-{run_dir.name}-{token}-{t.raw_name}": t for t in tasks}
        cp = ClusterProgress(tasks, keys, progress.estimate_s, self.stream)
        mine = cluster_facts.facts()
        manifest["cluster"] = {"scheduler": self.address, "dashboard": None, "allow_mismatch": self.allow_mismatch,
                               "runner": {"host": mine["host"], "git": mine["git"], "python": mine["python"],
                                          "datapath": mine["datapath"]},
                               "workers": {}, "runs": [], "lost": []}
        workers = self._wait_for_workers(client, cp.say)
        self._check_workers(client, workers, mine, manifest)
        self._dashboard(client, manifest, cp.say)
        topic = f"caslab-{token}"
        client.subscribe_topic(topic, cp.event)
        from caslab.commands.cluster_worker import run_task

        futures = {}
        for key, task in keys.items():
            payload = {"topic": topic, "runner_facts": mine, "allow_mismatch": self.allow_mismatch,
                       "task": {"index": task.index, "scenario_id": task.scenario_id, "label": task.label,
                                "rep": task.rep, "scenario": task.scenario}}
            futures[key] = client.submit(run_task, payload, key=key, resources={"lab": 1}, pure=False)
        cp.say(f"{len(futures)} repetitions submitted to {self.address}")
        merge = Merge(run_dir, manifest, events_out)
        try:
            self._collect(client, futures, keys, cp, merge, manifest)
        except KeyboardInterrupt:
            self._cancel(client, futures, cp)
            raise
        except BaseException:
            client.cancel(list(futures.values()))
            raise
        finally:
            try:
                client.unsubscribe_topic(topic)
            except Exception:  # noqa: BLE001 - the client may be closing
                pass
        progress.current, progress.estimate_s, progress.done = f"[{len(tasks)}/{len(tasks)}] merged", 0.0, 0

    def _check_workers(self, client, workers, mine, manifest) -> None:
        """Every worker present now, before anything is submitted (late joiners are
        checked by the task itself, before it builds anything)."""
        found = client.run(cluster_facts.facts, workers=list(workers))
        for address, theirs in sorted(found.items()):
            name = str(workers[address].get("name", address))
            cluster_facts.check(mine, theirs, name, self.allow_mismatch)
            manifest["cluster"]["workers"][name] = summary_of(theirs)

    def _dashboard(self, client, manifest, say) -> None:
        def has_bokeh() -> bool:
            import importlib.util

            return importlib.util.find_spec("bokeh") is not None

        try:
            served = client.run_on_scheduler(has_bokeh)
        except Exception:  # noqa: BLE001 - the link is a courtesy
            served = False
        machines = lab_machines(client.scheduler_info(n_workers=-1)["workers"])
        say(f"{sum(len(v) for v in machines.values())} lab worker(s) on {len(machines)} machine(s): "
            + "; ".join(f"{host}: {', '.join(sorted(names))}" for host, names in sorted(machines.items())))
        if served:
            manifest["cluster"]["dashboard"] = client.dashboard_link
            say(f"Dask dashboard: {client.dashboard_link}")
        else:
            say("no Dask dashboard (the scheduler has no bokeh: pip install 'caslab[dashboard]' there)")

    def _collect(self, client, futures, keys, cp: ClusterProgress, merge: Merge, manifest) -> None:
        from distributed import wait

        pending = set(futures.values())
        no_workers_since = None
        while pending:
            try:
                done, pending = wait(pending, timeout=5, return_when="FIRST_COMPLETED")
            except TimeoutError:
                done = set()
            machines = lab_machines(client.scheduler_info(n_workers=-1)["workers"])
            cp.parallel = max(len(machines), 1)
            if not machines and pending:
                no_workers_since = no_workers_since or time.monotonic()
                if time.monotonic() - no_workers_since > WAIT_FOR_WORKERS_S:
                    raise LabError(f"no lab worker left on {self.address} for {WAIT_FOR_WORKERS_S:.0f} s; "
                                   f"{len(pending)} repetitions were not run")
            else:
                no_workers_since = None
            for future in sorted(done, key=lambda f: keys[f.key].index):
                self._take(future, keys[future.key], cp, merge, manifest)

    def _take(self, future, task, cp: ClusterProgress, merge: Merge, manifest) -> None:
        attempts = list(cp.attempts.get(future.key, []))
        if future.status == "error":
            exc = future.exception()
            if isinstance(exc, ClusterRefused):
                raise exc
            text = f"{type(exc).__name__}: {exc}"
            if type(exc).__name__ == "KilledWorker":
                text = (f"the workers that ran it died {len(attempts)} times ({', '.join(attempts)}); "
                        "Dask gave up on it")
            manifest["failures"].append({"scenario": task.scenario_id, "rep": task.rep, "error": text})
            raise LabError(f"{task.label} rep {task.rep + 1}: {text}")
        result = future.result()
        if result.get("cancelled"):
            return
        if not attempts or attempts[-1] != result["worker"]:  # its start event may still be on its way
            attempts.append(result["worker"])
        if not merge.accept(result, attempts):
            cp.say(f"{task.raw_name}: a second result arrived from {result['worker']}; ignored (merged once)")
            return
        if len(attempts) > 1:
            manifest["cluster"]["lost"].append({"scenario": task.scenario_id, "rep": task.rep,
                                                "workers": attempts[:-1]})
        if result.get("error"):
            manifest["failures"].append({"scenario": task.scenario_id, "rep": task.rep, "error": result["error"]})
            cp.failed(future.key, result["worker"], result["error"])
            raise LabError(f"{task.label} rep {task.rep + 1} on {result['worker']}: {result['error']}")
        cp.finished(future.key, result["worker"], result.get("seconds"))

    def _cancel(self, client, futures, cp: ClusterProgress) -> None:
        """Ctrl-C: cancel every task, then wait for the workers that had a repetition
        running to say their lab is down (a second Ctrl-C stops waiting)."""
        with cp.lock:
            started = {k for k, a in cp.attempts.items() if a} - {k for k, f in futures.items() if f.done()}
        cp.say(f"interrupted: cancelling {len(futures)} tasks; waiting for {len(started)} worker lab(s) to tear down")
        client.cancel(list(futures.values()))
        deadline = time.monotonic() + TEARDOWN_WAIT_S
        try:
            while started - cp.torn_down and time.monotonic() < deadline:
                time.sleep(0.2)
        except KeyboardInterrupt:
            pass
        left = sorted(started - cp.torn_down)
        if left:
            cp.say(f"no word of teardown from {', '.join(cp.keys[k].raw_name for k in left)} "
                   "(caslab cleanup on that machine removes what a lost lab left)")
