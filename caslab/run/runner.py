"""An experiment: every scenario (mode x sweep point) times its repetitions, one result folder.

    results/<experiment>-<timestamp>/
        manifest.json   resolved spec, scenarios, versions, seed, datapath
        events.jsonl    every event of every run, tagged with scenario and repetition
        raw/            per-run process logs and configs (kept even when a run fails)
        summary.json, summary.csv, *.png, report.md, report.html   (caslab report DIR)

Runs are sequential on one machine (one network at a time); ``caslab run --cluster``
spreads the same repetitions over lab machines (caslab.commands.cluster) into the same folder.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
import shutil
from dataclasses import dataclass, field
from typing import Any, Callable, TextIO

from caslab import SOURCE_ROOT
from caslab.results import report

from caslab.run import scenario as scenario_mod

from caslab.spec import experiment as spec_mod

from caslab.base import system
from caslab.network.netlab import LabError
from caslab.spec.plan_view import STARTUP_S, duration_text
from caslab.base.safefs import write_file

RESULTS_DIR = SOURCE_ROOT / "results"


def results_dir() -> Path:
    """Where result folders go: ``CASLAB_RESULTS`` if set (lab.sh sets it off a VM's
    synced folder), else ``results/`` in the checkout."""
    env = os.environ.get("CASLAB_RESULTS")
    return Path(env) if env else RESULTS_DIR


def scenario_id(index: int, label: str) -> str:
    return f"s{index + 1}-" + re.sub(r"[^A-Za-z0-9.-]+", "_", label).strip("_")


def eta_s(now: float, run_started: float, done: int, total: int, elapsed_done: float, estimate_s: float) -> float:
    """Seconds left: the current run's remainder plus the runs after it, each taking the
    mean of the finished runs (the spec's estimate until one has finished)."""
    per_run = elapsed_done / done if done else estimate_s
    current_left = max(per_run - (now - run_started), 0.0)
    return current_left + per_run * max(total - done - 1, 0)


class Progress:
    """Live progress lines on stderr: which run, which step, elapsed time, time left."""

    def __init__(self, total: int, stream: TextIO = sys.stderr, estimate_s: float = 0.0):
        self.total, self.stream, self.started = total, stream, time.monotonic()
        self.estimate_s = estimate_s
        self.current = ""
        self.done, self.elapsed_done, self.run_started = 0, 0.0, self.started

    def run(self, index: int, label: str, rep: int) -> None:
        now = time.monotonic()
        if index > 1:
            self.done, self.elapsed_done = index - 1, now - self.started
        self.run_started = now
        self.current = f"[{index}/{self.total}] {label} rep {rep + 1}"

    def __call__(self, step: str) -> None:
        now = time.monotonic()
        eta = ""
        if self.estimate_s or self.done:
            left = eta_s(now, self.run_started, self.done, self.total, self.elapsed_done, self.estimate_s)
            eta = f" (ETA {duration_text(left)})"
        print(f"{now - self.started:7.1f}s {self.current}{eta}: {step}", file=self.stream, flush=True)


def prepare_folder(out: Path, force: bool) -> None:
    """A result folder starts empty: reusing a run's folder would mix its events and
    mailbox stores with the new run's (message ids repeat, a lost message looks stored)."""
    if out.is_symlink() or (out.exists() and not out.is_dir()):
        raise LabError(f"{out} exists and is not a folder (a symlink is not one either)")
    if out.exists() and os.geteuid() == 0:
        owner, sudo_uid = out.stat().st_uid, os.environ.get("SUDO_UID", "")
        if owner != 0 and str(owner) != sudo_uid:
            raise LabError(f"{out} belongs to uid {owner}: root writes a run only into a new folder, or one "
                           f"of root or of the user who ran sudo (another account could plant links in it)")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise LabError(f"{out} is not empty: choose a new folder, or --force to empty it first")
        if not is_result_folder(out):
            raise LabError(f"{out} is not a caslab result folder (no manifest.json of a run): --force empties "
                           f"only those; choose a new folder")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def result_folder(out: str | Path | None, default_name: str) -> Path:
    """The run's folder as an absolute path: ``--out`` as given (``-x`` too, a folder name
    like any other) or results/NAME. Absolute, so no path handed to a program (mount, a
    role's config) can start with "-" and be read as an option."""
    return (Path(out) if out else results_dir() / default_name).absolute()


def is_result_folder(folder: Path) -> bool:
    """A folder a run wrote: its manifest.json is a JSON object with the run's spec."""
    try:
        manifest = json.loads((folder / "manifest.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
    return isinstance(manifest, dict) and isinstance(manifest.get("spec"), dict) and "run_id" in manifest


def run_experiment(spec: dict[str, Any], spec_path: Path, out: Path | None = None, force: bool = False) -> Path:
    """Run every scenario and write the report; returns the result folder."""
    analysis = run(spec, spec_path, out, force)
    return analysis.run_dir


@dataclass(frozen=True)
class RepTask:
    """One scenario repetition: the unit a local run loops over and a cluster run submits
    as one task. Its seeds come from the scenario and ``rep`` alone (services.py,
    http_services.py), so whichever machine runs it draws the same operations."""

    index: int          # 1-based position in the plan (progress shows [index/total])
    scenario_id: str
    label: str
    rep: int            # 0-based, as events and seeds count it
    scenario: dict[str, Any] = field(repr=False, compare=False)

    @property
    def raw_name(self) -> str:
        """Its folder under raw/ (and its task key on a cluster)."""
        return f"{self.scenario_id}-r{self.rep + 1}"


def task_plan(scenarios: list[dict[str, Any]], metas: list[dict[str, Any]], reps: int,
              order: str = "scenarios") -> list[RepTask]:
    """Every repetition of every scenario, in the order a local run runs them
    (``experiment.order``, see ``run_order``); a cluster submits them in that order."""
    return [RepTask(count, metas[index]["id"], metas[index]["label"], rep, scenarios[index])
            for count, (index, rep) in enumerate(run_order(len(scenarios), reps, order), start=1)]


def run_repetition(task: RepTask, raw_dir: Path, events_out: TextIO, progress: Callable[[str], None]) -> None:
    """The one-repetition path of every run, local or on a cluster worker: run the
    scenario once, then append its raw logs (tagged, time-ordered) to ``events_out``,
    whatever happened."""
    try:
        scenario_mod.run_scenario(task.scenario, task.rep, raw_dir, progress)
    finally:
        scenario_mod.merge_raw(raw_dir, events_out, task.scenario_id, task.rep)


def failure_text(exc: BaseException) -> str:
    return str(exc) if isinstance(exc, LabError) else f"{type(exc).__name__}: {exc}"


def run_locally(tasks: list[RepTask], run_dir: Path, manifest: dict[str, Any], events_out: TextIO,
                progress: Progress) -> None:
    """The repetitions one after another on this machine (one network at a time)."""
    for task in tasks:
        progress.run(task.index, task.label, task.rep)
        try:
            run_repetition(task, run_dir / "raw" / task.raw_name, events_out, progress)
        except Exception as exc:
            error = failure_text(exc)
            manifest["failures"].append({"scenario": task.scenario_id, "rep": task.rep, "error": error})
            progress(f"FAILED: {error}")
            raise


def run(spec: dict[str, Any], spec_path: Path, out: Path | None = None, force: bool = False,
        execute: Callable[..., None] = run_locally):
    """Run every scenario and write the report; returns the analysis the report shows.

    ``execute(tasks, run_dir, manifest, events_out, progress)`` runs the repetitions:
    here one after another, or spread over a cluster (caslab.commands.cluster); the folder, the
    manifest, the merged events and the report are this function's either way."""
    name = spec["experiment"]["name"]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = result_folder(out, f"{name}-{stamp}")
    prepare_folder(run_dir, force)
    scenarios = spec_mod.scenarios(spec)
    metas = scenario_metas(scenarios)
    manifest = new_manifest(run_dir, spec, spec_path, metas)
    write_manifest(run_dir, manifest)
    tasks = task_plan(scenarios, metas, spec["experiment"]["repetitions"], spec["experiment"]["order"])
    timing = spec["timing"]
    progress = Progress(len(tasks), estimate_s=STARTUP_S + timing["warmup_s"] + timing["observe_s"])
    events_path = run_dir / "events.jsonl"
    events_path.write_text("")
    analysis = None
    try:
        with open(events_path, "a", encoding="utf-8") as events_out:
            execute(tasks, run_dir, manifest, events_out, progress)
        manifest["complete"] = True
    finally:
        write_manifest(run_dir, manifest)
        try:
            if events_path.stat().st_size:
                progress("writing report")
                analysis = report.write_report(run_dir)
        finally:
            system.give_to_invoking_user(str(run_dir))
            refresh_index(run_dir)
    return analysis


def run_order(scenarios: int, reps: int, order: str = "scenarios") -> list[tuple[int, int]]:
    """(scenario index, repetition) in the order they run (``experiment.order``):
    ``scenarios`` runs each scenario's repetitions together; ``interleaved`` runs
    repetition by repetition, every scenario in turn, so a comparison's sides alternate."""
    if order == "interleaved":
        return [(i, rep) for rep in range(reps) for i in range(scenarios)]
    return [(i, rep) for i in range(scenarios) for rep in range(reps)]


def refresh_index(run_dir: Path) -> None:
    """Rewrite results/index.html when the run is one of results/ (a run written with
    --out elsewhere leaves that folder's neighbours alone)."""
    from caslab.results.report import index

    folder = results_dir().resolve()
    if Path(run_dir).resolve().parent != folder:
        return
    try:
        index.write_index(folder)
    except (OSError, ValueError, TypeError, AttributeError, KeyError) as exc:  # a neighbour's, not this run's
        print(f"caslab: could not update {folder / 'index.html'}: {exc}", file=sys.stderr)


def scenario_metas(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": scenario_id(i, s["label"]), "label": s["label"], "mode": s["mode"], "params": s["params"]}
            for i, s in enumerate(scenarios)]


def new_manifest(run_dir: Path, spec: dict[str, Any], spec_path: Path, metas: list[dict[str, Any]]) -> dict[str, Any]:
    """What every result folder records about the run and the machine it ran on."""
    return {"run_id": run_dir.name, "spec_file": str(spec_path), "spec": spec, "scenarios": metas,
            "versions": system.versions(), "datapath": system.preferred_datapath(), "complete": False,
            "python": sys.version.split()[0], "platform": system.platform_info(),
            "git": system.git_state(str(SOURCE_ROOT)),
            "packages": system.installed_packages(), "failures": []}


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    write_file(run_dir / "manifest.json", json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
