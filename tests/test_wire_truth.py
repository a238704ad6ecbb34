"""Wire truth on a real run: the client-link captures and the client events agree on
every affected session's reconnect time (issue 16, item 5, at a test's size; the
n >= 100 measurement is ``caslab run wire-truth``)."""

from __future__ import annotations

import json

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from tests.conftest import lab_residue

pytestmark = pytest.mark.require_root

SMALL = ["experiment.repetitions=1", "clients.sessions_per_host=15", "timing.warmup_s=2.0",
         "timing.observe_s=5.0"]


def test_capture_agrees_with_events_within_2_ms_and_none_one_sided(tmp_path, no_residue):
    spec, path = spec_mod.load("wire-truth", SMALL)
    run_dir = runner.run_experiment(spec, path, tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    scenario = summary["scenarios"][0]
    row, check = scenario["faults"][0], scenario["capture_check"]
    assert row["affected"] >= 5 and row["recovered"] == row["affected"]
    assert check["status"] == "ok", check
    assert check["n"] == row["reconnect_ms"]["n"] == row["affected"]
    assert check["one_sided"] == 0, (check["only_events"], check["only_wire"])
    assert check["max_abs_diff_ms"] <= 2.0
    report = (run_dir / "report.md").read_text()
    assert f"{check['n']} sessions compared" in report and "0 one-sided" in report
    assert not lab_residue(str(tmp_path))
