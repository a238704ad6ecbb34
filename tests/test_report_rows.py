"""What a person reads shows only what is there (issue 16, item 7): a run of HTTP clients
only prints no Outlook table (terminal, report.md, report.html), draws no empty timeline
(whose empty axis made matplotlib warn), and says its verdict from the HTTP rows. Built
from hand-made events, no network."""

from __future__ import annotations

import json
import warnings

from caslab.commands import cli

from caslab.results import report

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from tests.test_http_unit import MS, events_of_a_failover


def http_only_run(run_dir):
    spec = spec_mod.validate({"experiment": {"name": "http-only", "modes": ["sdn-nlb"]},
                              "topology": {"internet_client_hosts": 1}, "http": {"owa_users_per_host": 2},
                              "clients": {"sessions_per_host": 0}, "timing": {"observe_s": 4.0},
                              "faults": [{"kind": "poweroff", "target": "cas1", "at_s": 1.0}]}, "t")
    scenario = spec_mod.scenarios(spec)[0]
    meta = {"id": runner.scenario_id(0, scenario["label"]), "label": scenario["label"], "mode": "sdn-nlb",
            "params": {}}
    run_dir.mkdir()
    runner.write_manifest(run_dir, {"run_id": run_dir.name, "spec_file": "t.toml", "spec": spec, "scenarios": [meta],
                                    "versions": {}, "datapath": "userspace", "complete": True, "failures": []})
    runner_events = [
        {"ts": 10 * MS, "src": "runner", "ev": "measure_start", "observe_s": 4.0},
        {"ts": 1000 * MS, "src": "runner", "ev": "fault", "kind": "poweroff", "targets": ["cas1"],
         "elements": ["cas1"], "label": "poweroff cas1", "index": 0, "affects": "on_elements"},
        *({"ts": t * MS, "src": "runner", "ev": "cpu", "idle_pct": 60.0} for t in range(0, 4000, 1000)),
        {"ts": 4000 * MS, "src": "runner", "ev": "measure_end"},
        {"ts": 4010 * MS, "src": "runner", "ev": "scenario_end", "ok": True}]
    events = sorted(events_of_a_failover() + runner_events, key=lambda e: e["ts"])
    with open(run_dir / "events.jsonl", "w") as out:
        for e in events:
            out.write(json.dumps({**e, "scenario": meta["id"], "rep": 0}) + "\n")


def test_an_http_only_run_shows_no_empty_outlook_table_and_warns_about_nothing(tmp_path, capsys):
    run_dir = tmp_path / "http-only-20260101-000000"
    http_only_run(run_dir)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        analysis = report.write_report(run_dir)
        cli.print_table(analysis)
    assert [str(w.message) for w in caught] == []
    assert analysis.rows and not any(r.sessions for r in analysis.rows)  # the rows exist: the CSV keeps them
    printed = capsys.readouterr().out
    assert "HTTP protocols" in printed and "reconnect p50" in printed
    assert printed.index("HTTP protocols") < 5, "nothing above the HTTP table"
    md = (run_dir / "report.md").read_text()
    assert "## Results" not in md and "## HTTP protocols" in md
    html = (run_dir / "report.html").read_text()
    assert "<h2>Results</h2>" not in html and "<h2>HTTP protocols</h2>" in html
    assert not list(run_dir.glob("timeline-*.png")) and not (run_dir / "goodput.png").exists()
    assert "**sdn-nlb**: poweroff cas1: eas (Internet): 1 of 1 affected served again, median 1300 ms" in md
    assert "owa (Internet): 1 of 1 affected served again, median 700 ms" in md
    assert "Packet capture" not in md, "no Outlook session: nothing for the capture to check"
    assert "affected no session" not in md
    assert (run_dir / "summary.csv").read_text().count("\n") == 2  # header and the one (empty) row
