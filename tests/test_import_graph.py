"""tools/import_graph.py: the figures issue 19 is judged by (cycles, levels) on small
graphs whose answers are known, and on the lab itself."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

_SPEC = importlib.util.spec_from_file_location(
    "import_graph", Path(__file__).resolve().parent.parent / "tools" / "import_graph.py")
import_graph = importlib.util.module_from_spec(_SPEC)
sys.modules["import_graph"] = import_graph
_SPEC.loader.exec_module(import_graph)


def test_cycles_are_found_round_a_loop_and_levels_fold_them():
    out = {"a": {"b"}, "b": {"c"}, "c": {"a", "d"}, "d": set(), "e": {"a"}}
    groups = import_graph.strongly_connected(sorted(out), out)
    assert sorted(map(tuple, groups)) == [("a", "b", "c"), ("d",), ("e",)]
    level = import_graph.levels(sorted(out), out, groups)
    assert level == {"d": 1, "a": 2, "b": 2, "c": 2, "e": 3}


def test_a_chain_has_as_many_levels_as_modules():
    out = {f"m{i}": {f"m{i + 1}"} for i in range(5)} | {"m5": set()}
    groups = import_graph.strongly_connected(sorted(out), out)
    assert all(len(g) == 1 for g in groups)
    assert max(import_graph.levels(sorted(out), out, groups).values()) == 6


def test_the_lab_survey_counts_every_module_and_what_a_spec_import_loads():
    figures = import_graph.survey()
    assert figures["modules"] == sum(p["modules"] for p in figures["packages"].values())
    assert figures["packages"]["labcommon"]["levels"] <= figures["levels"]
    assert "caslab.spec.experiment" in figures["caslab.spec.experiment loads"]
    for cycle in figures["cycles"]:
        assert len(cycle["modules"]) > 1 and 0 <= cycle["local"] <= cycle["imports"]
