"""The CLI as a user meets it (no root, no network): list, inspect, --version, a closed
pipe, "did you mean", the ETA, results/index.html and caslab compare's numbers."""

from __future__ import annotations

import io
import json
import re
import subprocess
import sys

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from caslab.results.metrics import analyze_run, summarize_scenario
from caslab.results.metrics.compare import compare
from caslab.results.report import index
from tests.conftest import ROOT
from tests.test_metrics import MS, PARAMS, fault, frame, steady


def caslab(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "caslab.commands.cli", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=120)


def test_version_and_list():
    assert caslab("--version").stdout.startswith("caslab ")
    listed = caslab("list").stdout.splitlines()
    assert [line.split()[0] for line in listed] == spec_mod.spec_names()
    assert any(line.startswith("default ") and "powered off" in line for line in listed)


def test_every_command_prints_its_help():
    """argparse formats each help text with %: a bare '%' in one broke ``caslab --help``."""
    commands = [None] + re.findall(r"\{(.+?)\}", caslab("--help").stdout)[0].split(",")
    assert "run" in commands and "compare" in commands
    for command in commands:
        done = caslab(*([command] if command else []), "--help")
        assert done.returncode == 0 and "usage: caslab" in done.stdout, (command, done.stderr[-500:])


def test_inspect_prints_the_plan_without_building_anything():
    result = caslab("inspect", "cross-site")
    assert result.returncode == 0, result.stderr
    for text in ("cas1", "10.2.0.100", "RpcClientAccessServer outlook.branch.lab.test", "poweroff cas1", "router r1"):
        assert text in result.stdout, text
    assert "did you mean 'default'" in caslab("inspect", "defualt").stderr


def test_a_closed_pipe_is_not_an_error():
    result = subprocess.run(f"'{sys.executable}' -m caslab.commands.cli run default --check | head -1", shell=True, cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.stdout == "{\n" and "Traceback" not in result.stderr and "Error" not in result.stderr


def test_eta_counts_the_spec_estimate_then_the_runs_done():
    assert runner.eta_s(now=5, run_started=0, done=0, total=3, elapsed_done=0, estimate_s=20) == 15 + 40
    assert runner.eta_s(now=130, run_started=100, done=2, total=3, elapsed_done=100, estimate_s=20) == 20
    stream = io.StringIO()
    progress = runner.Progress(2, stream, estimate_s=30)
    progress.run(1, "sdn-nlb RpcClientAccessServer: DB2 -> array:Branch", 0)
    progress("building network")
    assert "(ETA 1m00s)" in stream.getvalue() and "DB2 -> array:Branch" in stream.getvalue(), "full label, an ETA"


def outcome(reconnect_ms: int, rep: int):
    """One session on cas1 reconnecting ``reconnect_ms`` after a poweroff at 100 ms."""
    events = frame(steady("cl1-s0", "cas1", 0, 100), fault(100, ["cas1"]),
                   {"ts": 110 * MS, "src": "cl1", "ev": "down", "session": "cl1-s0", "reason": "reset"},
                   steady("cl1-s0", "cas2", 100 + reconnect_ms, 2000), steady("cl1-s1", "cas2", 0, 2000),
                   sessions=("cl1-s0", "cl1-s1"))
    return analyze_run(events, PARAMS, "s1-sdn-nlb", rep)


class Runs:
    """What caslab.results.metrics.compare reads of an analysis: scenarios and their runs."""

    def __init__(self, reconnects: list[int], label: str = "sdn-nlb"):
        self.runs = [outcome(r, i) for i, r in enumerate(reconnects)]
        self.scenarios = [summarize_scenario({"id": "s1-sdn-nlb", "label": label, "mode": "sdn-nlb"}, self.runs, 35,
                                             [])]

    def runs_of(self, _sid):
        return self.runs


def test_compare_takes_the_difference_of_repetition_means_with_welch():
    a, b = Runs([300, 320, 310]), Runs([50, 60, 55])
    [c] = compare(a, b)
    assert c.a.rep_means == [300.0, 320.0, 310.0] and c.a.mean_ms == 310.0 and c.b.mean_ms == 55.0
    d = c.difference  # variances 100 and 25 over 3 repetitions: Welch-Satterthwaite dof 2.94
    assert d.diff == -255.0 and d.ci95 == [-275.8, -234.2] and d.dof == 2.94 and d.p < 0.001
    [only_a, only_b] = compare(a, Runs([50], label="haproxy"))
    assert only_a.b is None and only_b.a is None and only_a.difference is None
    [one_rep] = compare(Runs([300]), Runs([50]))
    assert one_rep.difference.diff == -250.0 and one_rep.difference.ci95 is None


def test_an_index_link_is_never_a_javascript_url(tmp_path):
    # Old behaviour: the link was the folder's name as it was: a folder named
    # "javascript:alert(1)%2F%2F" made a link that ran script in results/index.html.
    for name in ("javascript:alert(1)%2F%2F", "data:text,x", "a b#?c"):
        run = tmp_path / name
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps({"spec": {"experiment": {"name": "x"}}, "complete": True}))
    html = index.write_index(tmp_path).read_text()
    links = sorted(re.findall(r'href="([^"]*)"', html))
    assert links == ["./a%20b%23%3Fc/", "./data%3Atext%2Cx/", "./javascript%3Aalert%281%29%252F%252F/"], links


@pytest.mark.parametrize("manifest,summary", [("[]", "{}"), ('{"spec": "x", "git": 1}', "[1]"),
                                              ('{"spec": {"experiment": []}}', '{"scenarios": 5}'),
                                              ('{"spec": {"experiment": {}}, "git": {"commit": 7}}',
                                               '{"scenarios": [{"faults": [1]}]}')],
                         ids=["list", "wrong_types", "experiment_list", "odd_values"])
def test_a_malformed_neighbour_does_not_break_the_index(tmp_path, manifest, summary):
    # Old behaviour: one neighbour's manifest that was JSON but not the expected shape
    # raised AttributeError in write_index: a run that had completed exited 1.
    good = tmp_path / "good-run"
    good.mkdir()
    (good / "manifest.json").write_text(json.dumps({"spec": {"experiment": {"name": "good"}}, "complete": True}))
    bad = tmp_path / "bad-run"
    bad.mkdir()
    (bad / "manifest.json").write_text(manifest)
    (bad / "summary.json").write_text(summary)
    html = index.write_index(tmp_path).read_text()
    assert 'href="./good-run/"' in html


def test_index_links_every_run_with_its_headline_row(tmp_path):
    for name, affected in (("default-20260101-000000", 3), ("live-sdn-nlb-20260102-000000", 0)):
        run = tmp_path / name
        run.mkdir()
        (run / "manifest.json").write_text(json.dumps({"spec": {"experiment": {"name": name.split("-2")[0],
                                                                               "description": "d <b>x</b>"}},
                                                       "complete": True, "live": name.startswith("live"),
                                                       "git": {"commit": "abcdef1234567", "dirty": True}}))
        faults = [{"label": "sdn-nlb", "fault": "poweroff cas1", "sessions": 8, "affected": affected, "recovered": 2,
                   "unrecovered": 1, "reconnect_ms": {"n": 2, "p50": 35.0, "p99": None, "max": 53.0},
                   "trustworthy": True}]
        (run / "summary.json").write_text(json.dumps({"scenarios": [{"faults": faults}]}))
    (tmp_path / "default-20260101-000000" / "report.html").write_text("<html></html>")
    html = index.write_index(tmp_path).read_text()
    assert 'href="./default-20260101-000000/report.html"' in html and 'href="./live-sdn-nlb-20260102-000000/"' in html
    assert "(live lab)" in html and "abcdef1234 (dirty)" in html and "d &lt;b&gt;x&lt;/b&gt;" in html
    assert "<td>35.0</td>" in html and "<td>53.0</td>" in html and "<td>-</td>" in html
