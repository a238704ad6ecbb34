"""``caslab bench failover``'s plan: the two dataplanes alternate repetition by
repetition, every size has at least three repetitions, and the table shows affected
and collateral beside n. Pure: the specs are built and validated, nothing is run."""

from __future__ import annotations

import pytest

from caslab.commands import bench_failover

from caslab.run import runner

from caslab.spec import experiment as spec_mod


def test_run_order_interleaves_repetitions_or_keeps_scenarios_together():
    assert runner.run_order(2, 3, "interleaved") == [(0, 0), (1, 0), (0, 1), (1, 1), (0, 2), (1, 2)]
    assert runner.run_order(2, 3, "scenarios") == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]
    assert runner.run_order(3, 1, "interleaved") == runner.run_order(3, 1) == [(0, 0), (1, 0), (2, 0)]


def test_order_is_a_validated_spec_key():
    assert spec_mod.validate({}, "x.toml")["experiment"]["order"] == "scenarios"
    with pytest.raises(spec_mod.SpecError, match="experiment.order"):
        spec_mod.validate({"experiment": {"order": "random"}}, "x.toml")


@pytest.mark.parametrize("reps", [None, 3, 4])
def test_every_size_alternates_the_dataplanes_with_at_least_three_repetitions(reps):
    plans = bench_failover.specs(["48", "1000"], reps)
    assert [size for size, _, _ in plans] == ["48", "1000"]
    for size, spec, _ in plans:
        assert spec["experiment"]["repetitions"] >= bench_failover.MIN_REPS
        if reps:
            assert spec["experiment"]["repetitions"] == reps
        scenarios = spec_mod.scenarios(spec)
        planes = [s["params"]["nlb.dataplane"] for s in scenarios]
        assert sorted(planes) == ["controller", "switch"]
        runs = runner.run_order(len(scenarios), spec["experiment"]["repetitions"], spec["experiment"]["order"])
        sequence = [planes[i] for i, _ in runs]
        assert all(a != b for a, b in zip(sequence, sequence[1:])), sequence  # never twice in a row
        assert len(runs) == 2 * spec["experiment"]["repetitions"]


def test_fewer_than_three_repetitions_is_refused_before_anything_runs(capsys):
    with pytest.raises(bench_failover.BenchError, match="at least 3"):
        bench_failover.specs(["48"], 2)
    assert bench_failover.main_cli(["1000"], 1, None) == 2
    assert "at least 3 repetitions" in capsys.readouterr().err


def test_table_shows_affected_and_collateral_beside_n():
    row = {"size": "48", "dataplane": "switch", "repetitions": 3, "affected": 41, "collateral": 2, "n": 39,
           "p50": 70.5, "p99": None, "ci95": [60.0, 80.0], "mean": 70.0, "unrecovered": 2,
           "dip_unaffected": 0.98, "cpu_idle": 50.0, "trusted": True,
           "phases": {p: 1.0 for p in bench_failover.PHASES}}
    head, line = bench_failover.show([row]).splitlines()
    columns = dict(zip(head.split()[:7], line.split()[:7]))
    assert columns == {"sessions": "48", "dataplane": "switch", "reps": "3", "affected": "41", "collat": "2",
                       "n": "39", "p50": "70.5"}


def test_load_table_shows_the_recovery_span_and_what_the_cores_did():
    row = {"size": "1000", "dataplane": "switch",
           "load": {"span_ms": 240.5, "busy_before_pct": 48.0, "busy_pct": 97.5, "pressure_before_pct": 20.0,
                    "pressure_pct": 88.0, "extra_cpu_ms": 230.0, "extra_cpu_ms_per_reconnect": 2.9,
                    "cpu_bound_ms": 221.2, "repetitions": 3}}
    lines = bench_failover.show_load([row]).splitlines()
    assert lines[-1].split() == ["1000", "switch", "240.5", "48", ">", "97.5", "20", ">", "88", "230", "2.9", "221.2"]


TINY = """
[experiment]
name = "interleaved"
repetitions = 2
order = "interleaved"
modes = ["sdn-nlb"]
[topology]
cas = 2
mailboxes = 1
client_hosts = 1
databases = 1
[clients]
sessions_per_host = 4
[probe]
capture = false
[timing]
warmup_s = 1.0
observe_s = 2.0
[sweep]
"nlb.dataplane" = ["switch", "controller"]
[[faults]]
kind = "poweroff"
target = "cas1"
at_s = 0.5
"""


@pytest.mark.require_root
def test_a_real_run_alternates_its_scenarios_repetition_by_repetition(tmp_path, no_residue):
    import json

    from tests.conftest import lab_residue

    path = tmp_path / "interleaved.toml"
    path.write_text(TINY)
    spec, path = spec_mod.load(str(path))
    run_dir = runner.run_experiment(spec, path, tmp_path / "out")
    first: dict[tuple[str, int], int] = {}
    loads: dict[tuple[str, int], list[int]] = {}
    with open(run_dir / "events.jsonl") as events:
        for line in events:
            e = json.loads(line)
            first.setdefault((e["scenario"], e["rep"]), e["ts"])
            if e["ev"] == "load":
                loads.setdefault((e["scenario"], e["rep"]), []).append(e["ts"])
    started = [key for key, _ in sorted(first.items(), key=lambda kv: kv[1])]
    ids = [m["id"] for m in json.loads((run_dir / "manifest.json").read_text())["scenarios"]]
    assert started == [(ids[0], 0), (ids[1], 0), (ids[0], 1), (ids[1], 1)]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert [s["repetitions"] for s in summary["scenarios"]] == [2, 2]
    # the CPU counters are read every 25 ms, and each row says what the cores did while its sessions reconnected
    for stamps in loads.values():
        gaps = sorted(b - a for a, b in zip(stamps, stamps[1:]))
        assert 20e6 <= gaps[len(gaps) // 2] <= 60e6
    assert len(loads) == 4
    for scenario in summary["scenarios"]:
        row = scenario["faults"][0]
        load = row["recovery_load"]
        assert row["recovered"] and load["repetitions"] >= 1, load
        assert 0 < load["span_ms"] <= row["reconnect_ms"]["max"]
        assert 0 <= load["busy_before_pct"] <= 100 and 0 <= load["busy_pct"] <= 100
        assert load["cpu_bound_ms"] is not None and load["cpu_bound_ms"] >= 0
    assert not lab_residue(str(tmp_path))


# ---- the floor ------------------------------------------------------------------------------------------


def test_the_floor_is_one_session_whose_own_cas_dies_under_both_dataplanes_alternating():
    spec, _ = bench_failover.floor_spec(None)
    assert (spec["topology"]["cas"], spec["topology"]["client_hosts"], spec["clients"]["sessions_per_host"]) == (2, 1, 1)
    assert [(f["kind"], f["target"]) for f in spec["faults"]] == [("poweroff", ["@busiest"])]
    assert spec["experiment"]["repetitions"] == bench_failover.FLOOR_REPS
    scenarios = spec_mod.scenarios(spec)
    planes = [s["params"]["nlb.dataplane"] for s in scenarios]
    runs = runner.run_order(len(scenarios), spec["experiment"]["repetitions"], spec["experiment"]["order"])
    sequence = [planes[i] for i, _ in runs]
    assert sorted(set(planes)) == ["controller", "switch"] and all(a != b for a, b in zip(sequence, sequence[1:]))
    assert bench_failover.floor_spec(4)[0]["experiment"]["repetitions"] == 4
    with pytest.raises(bench_failover.BenchError, match="at least 3"):
        bench_failover.floor_spec(2)


def test_a_sizes_p99_is_shown_as_a_multiple_of_its_own_dataplanes_floor():
    floor = {"switch": {"p50": 10.0}, "controller": {"p50": 20.0}}
    assert bench_failover.times_floor({"dataplane": "switch", "p99": 25.0}, floor) == 2.5
    assert bench_failover.times_floor({"dataplane": "controller", "p99": 25.0}, floor) == 1.2
    assert bench_failover.times_floor({"dataplane": "switch", "p99": None}, floor) is None  # n < 100: no p99
    assert bench_failover.times_floor({"dataplane": "switch", "p99": 5.0}, {"switch": {"p50": None}}) is None


def test_steady_figures_are_medians_of_successes_before_the_first_fault():
    from caslab.results.metrics.floor import idle_floor

    ms = 1_000_000
    run = [{"ev": "probe", "ts": 0, "ok": True, "rtt_us": 900},                       # before the window
           {"ev": "measure_start", "ts": 1 * ms, "observe_s": 1.0},
           {"ev": "probe", "ts": 2 * ms, "ok": True, "rtt_us": 100},
           {"ev": "probe", "ts": 3 * ms, "ok": True, "rtt_us": 300},
           {"ev": "probe", "ts": 4 * ms, "ok": False, "result": "timeout"},
           {"ev": "op", "ts": 5 * ms, "ok": True, "lat_us": 2000},
           {"ev": "op", "ts": 6 * ms, "ok": False, "lat_us": 1},
           {"ev": "fault", "ts": 7 * ms},
           {"ev": "probe", "ts": 8 * ms, "ok": True, "rtt_us": 50_000},                # after the fault
           {"ev": "app_probe", "ts": 9 * ms, "ok": True, "lat_us": 7000}]
    other = [{"ev": "measure_start", "ts": 0, "observe_s": 1.0}, {"ev": "probe", "ts": 1, "ok": True, "rtt_us": 200}]
    floor = idle_floor([run, other])
    assert floor["datapath_rtt_ms"] == {"median": 0.2, "n": 3}
    assert floor["op_ms"] == {"median": 2.0, "n": 1}
    assert floor["app_probe_ms"] == {"median": None, "n": 0}


@pytest.mark.require_root
def test_bench_floor_runs_one_session_per_dataplane_and_prints_its_floor(tmp_path, no_residue, capsys):
    from tests.conftest import lab_residue

    assert bench_failover.main_cli([], 3, str(tmp_path / "bench"), floor_only=True) == 0
    printed = capsys.readouterr().out
    table = (tmp_path / "bench" / "bench.txt").read_text()
    print(table)
    assert table.strip() in printed
    floor = bench_failover.floor_rows(__import__("caslab.results.analysis", fromlist=["analyze"]).analyze(
        tmp_path / "bench" / "floor", with_captures=False))
    assert sorted(floor) == ["controller", "switch"]
    for plane, row in floor.items():
        # the one session, on the CAS that died, each repetition: affected and back
        assert (row["affected"], row["n"], row["unrecovered"]) == (3, 3, 0), (plane, row)
        assert row["p50"] > 0 and row["phases"]["client_saw"] is not None
        assert all(row["idle"][k]["n"] > 0 and row["idle"][k]["median"] > 0 for k in row["idle"]), row["idle"]
        assert plane in table
    assert not lab_residue(str(tmp_path))


def test_a_size_that_never_becomes_ready_is_reported_and_the_bench_goes_on(tmp_path, monkeypatch, capsys):
    """A lab that never became ready (5,000 sessions on two cores) ends that size with its
    reason in the table; the sizes after it still run, and the exit status says one failed."""
    from caslab.network.netlab import LabError

    ran: list[str] = []

    def fake_run(spec, path, out, *args, **kwargs):
        ran.append(out.name)
        if out.name == "48-sessions":
            raise LabError("timed out after 240 s waiting for all 48 client sessions to complete an operation")
        raise LabError(f"{out.name}: a second failure")

    monkeypatch.setattr(runner, "run", fake_run)
    assert bench_failover.main_cli(["48", "1000"], None, str(tmp_path / "bench")) == 1
    assert ran == ["floor", "48-sessions", "1000-sessions"]
    table = (tmp_path / "bench" / "bench.txt").read_text()
    assert "48 sessions: did not complete: timed out after 240 s" in table
    assert "1000 sessions: did not complete: 1000-sessions: a second failure" in table
    assert "floor: did not complete" in table
    assert table.strip() in capsys.readouterr().out
