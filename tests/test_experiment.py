"""Whole experiment runs for real: a CAS is powered off behind the SDN NLB; and whatever
way a run ends (pass, failure, Ctrl-C) nothing of the lab is left behind."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from caslab.network.netlab import LabError
from tests.conftest import ROOT, lab_residue

pytestmark = pytest.mark.require_root

SMALL = """
[experiment]
name = "{name}"
description = '<script>alert("x")</script> & <b>{{name}}</b>'
repetitions = 1
modes = ["sdn-nlb"]
[topology]
cas = 3
mailboxes = 2
client_hosts = 2
[clients]
sessions_per_host = 6
[timing]
warmup_s = 1.0
observe_s = 4.0
{extra}
[[faults]]
kind = "poweroff"
target = "@busiest"
at_s = 0.5
"""


def write_spec(tmp_path: Path, name: str = "t", extra: str = "") -> Path:
    path = tmp_path / f"{name}.toml"
    path.write_text(SMALL.format(name=name, extra=extra))
    return path


def test_poweroff_recovers_every_affected_session(tmp_path, no_residue):
    spec, path = spec_mod.load(str(write_spec(tmp_path)))
    run_dir = runner.run_experiment(spec, path, tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    scenario = {**summary["scenarios"][0], **summary["scenarios"][0]["faults"][0]}
    assert scenario["mode"] == "sdn-nlb" and scenario["fault"] in ("poweroff cas1", "poweroff cas2", "poweroff cas3")
    assert scenario["sessions"] == 12
    assert scenario["affected"] > 0
    assert scenario["recovered"] == scenario["affected"]
    assert scenario["unrecovered"] == 0
    assert scenario["collateral"] == 0
    assert scenario["reconnect_ms"]["n"] == scenario["affected"]
    assert scenario["reauth"] == scenario["affected"], "a session moved to a CAS that does not know it logs on again"
    assert scenario["messages"]["lost"] == 0 and scenario["messages"]["acked"] > 0
    # The lab's cost counts the powered-off CAS up to its death (issue 16 item 10), and
    # every process the lab started has a kind of its own.
    events = [json.loads(line) for line in (run_dir / "events.jsonl").read_text().splitlines()]
    cpu = {e["name"]: e for e in events if e["ev"] == "process_cpu"}
    victim = scenario["fault"].split()[1]
    assert victim in cpu, f"the powered-off {victim} is missing from the cost: {sorted(cpu)}"
    assert cpu[victim]["ended_in_window"] and not cpu[victim]["started_in_window"]
    assert cpu[victim]["cpu_ms"] > 0 and cpu[victim]["kind"] == "cas"
    assert {"ovs-vswitchd", "runner", "controller"} <= set(cpu)
    assert [e["name"] for e in cpu.values() if e["kind"] == "other"] == []
    for name in ("events.jsonl", "manifest.json", "summary.csv", "report.html", "report.md",
                 "timeline-s1-sdn-nlb.png"):
        assert (run_dir / name).stat().st_size > 0, name
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["spec"]["experiment"]["seed"] == 1 and manifest["versions"]["os-ken"]
    page = (run_dir / "report.html").read_text()  # the spec's words are text in the page, never markup
    assert "<script>alert" not in page and "<b>{name}" not in page
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; &amp; &lt;b&gt;{name}&lt;/b&gt;" in page
    assert not lab_residue(str(tmp_path))
    # `caslab report DIR` rebuilds everything from the events, byte for byte.
    generated = sorted(p.name for p in run_dir.iterdir() if p.suffix in (".json", ".csv", ".png", ".svg", ".md", ".html")
                       and p.name != "manifest.json")
    before = {name: (run_dir / name).read_bytes() for name in generated}
    for name in generated:
        (run_dir / name).unlink()
    result = subprocess.run([sys.executable, "-m", "caslab.commands.cli", "report", str(run_dir)], cwd=ROOT,
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert {name: (run_dir / name).read_bytes() for name in generated} == before


def test_failed_run_tears_down_and_keeps_events(tmp_path, no_residue):
    # Sessions cannot all be up within 0.05 s... and ready_timeout_s must be >= 1, so make the
    # wait impossible instead: 500 sessions per host on a 1 s deadline.
    path = write_spec(tmp_path, "fails", "")
    raw = spec_mod.tomllib.loads(path.read_text())
    raw["clients"]["sessions_per_host"] = 500
    raw["timing"]["ready_timeout_s"] = 1
    spec = spec_mod.validate(raw, str(path))
    with pytest.raises(LabError, match="timed out"):
        runner.run_experiment(spec, path, tmp_path / "out")
    assert (tmp_path / "out" / "events.jsonl").stat().st_size > 0
    manifest = json.loads((tmp_path / "out" / "manifest.json").read_text())
    assert manifest["complete"] is False and manifest["failures"]
    assert not lab_residue(str(tmp_path))


def test_interrupted_run_tears_down_and_keeps_events(tmp_path, no_residue):
    path = write_spec(tmp_path, "interrupted")
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "caslab.commands.cli", "run", str(path), "--out", str(out)],
                            cwd=ROOT, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    seen = ""
    while time.monotonic() < deadline:
        line = proc.stderr.readline()
        seen += line
        if "warming up" in line:
            break
    assert "warming up" in seen, seen
    proc.send_signal(signal.SIGINT)
    rest = proc.communicate(timeout=60)[1]
    assert proc.returncode == 130, seen + rest
    assert "interrupted" in rest
    assert (out / "events.jsonl").stat().st_size > 0
    assert not lab_residue(str(tmp_path))
