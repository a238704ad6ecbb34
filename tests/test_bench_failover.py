"""``caslab bench failover``'s plan: the two dataplanes alternate repetition by
repetition, every size has at least three repetitions, and the table shows affected
and collateral beside n. Pure: the specs are built and validated, nothing is run."""

from __future__ import annotations

import pytest

from caslab import bench_failover, runner, spec as spec_mod


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
