"""An experiment: every scenario (mode x sweep point) times its repetitions, one result folder.

    results/<experiment>-<timestamp>/
        manifest.json   resolved spec, scenarios, versions, seed, datapath
        events.jsonl    every event of every run, tagged with scenario and repetition
        raw/            per-run process logs and configs (kept even when a run fails)
        summary.json, summary.csv, *.png, report.md, report.html   (caslab report DIR)

Runs are sequential: one network at a time on a 2-core machine.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import shutil

from caslab import report, scenario as scenario_mod, spec as spec_mod, system
from caslab.netlab import LabError
from caslab.plan_view import STARTUP_S, duration_text

RESULTS_DIR = Path(__file__).resolve().parent.parent / "results"


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
    if out.exists() and not out.is_dir():
        raise LabError(f"{out} exists and is not a folder")
    if out.exists() and any(out.iterdir()):
        if not force:
            raise LabError(f"{out} is not empty: choose a new folder, or --force to empty it first")
        shutil.rmtree(out)
    out.mkdir(parents=True, exist_ok=True)


def run_experiment(spec: dict[str, Any], spec_path: Path, out: Path | None = None, force: bool = False) -> Path:
    """Run every scenario and write the report; returns the result folder."""
    analysis = run(spec, spec_path, out, force)
    return analysis.run_dir


def run(spec: dict[str, Any], spec_path: Path, out: Path | None = None, force: bool = False):
    """Run every scenario and write the report; returns the analysis the report shows."""
    name = spec["experiment"]["name"]
    stamp = dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    run_dir = Path(out) if out else results_dir() / f"{name}-{stamp}"
    prepare_folder(run_dir, force)
    scenarios = spec_mod.scenarios(spec)
    metas = scenario_metas(scenarios)
    manifest = new_manifest(run_dir, spec, spec_path, metas)
    write_manifest(run_dir, manifest)
    reps = spec["experiment"]["repetitions"]
    timing = spec["timing"]
    progress = Progress(len(scenarios) * reps, estimate_s=STARTUP_S + timing["warmup_s"] + timing["observe_s"])
    events_path = run_dir / "events.jsonl"
    events_path.write_text("")
    count = 0
    analysis = None
    try:
        with open(events_path, "a", encoding="utf-8") as events_out:
            for index, rep in run_order(len(scenarios), reps, spec["experiment"]["order"]):
                scenario, meta = scenarios[index], metas[index]
                count += 1
                progress.run(count, meta["label"], rep)
                raw_dir = run_dir / "raw" / f"{meta['id']}-r{rep + 1}"
                try:
                    scenario_mod.run_scenario(scenario, rep, raw_dir, progress)
                except Exception as exc:
                    error = str(exc) if isinstance(exc, LabError) else f"{type(exc).__name__}: {exc}"
                    manifest["failures"].append({"scenario": meta["id"], "rep": rep, "error": error})
                    progress(f"FAILED: {error}")
                    raise
                finally:
                    scenario_mod.merge_raw(raw_dir, events_out, meta["id"], rep)
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
    from caslab.report import index

    folder = results_dir().resolve()
    if Path(run_dir).resolve().parent != folder:
        return
    try:
        index.write_index(folder)
    except OSError as exc:
        print(f"caslab: could not update {folder / 'index.html'}: {exc}", file=sys.stderr)


def scenario_metas(scenarios: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"id": scenario_id(i, s["label"]), "label": s["label"], "mode": s["mode"], "params": s["params"]}
            for i, s in enumerate(scenarios)]


def new_manifest(run_dir: Path, spec: dict[str, Any], spec_path: Path, metas: list[dict[str, Any]]) -> dict[str, Any]:
    """What every result folder records about the run and the machine it ran on."""
    return {"run_id": run_dir.name, "spec_file": str(spec_path), "spec": spec, "scenarios": metas,
            "versions": system.versions(), "datapath": system.preferred_datapath(), "complete": False,
            "python": sys.version.split()[0], "platform": system.platform_info(),
            "git": system.git_state(str(Path(__file__).resolve().parent.parent)),
            "packages": system.installed_packages(), "failures": []}


def write_manifest(run_dir: Path, manifest: dict[str, Any]) -> None:
    (run_dir / "manifest.json").write_text(json.dumps(manifest, indent=2, sort_keys=True, default=str) + "\n")
