"""The event catalogue (labcommon/catalogue.py) is the one list of events: every event
the code emits is declared there with its fields, every event a consumer reads is
produced somewhere, and docs/EVENTS.md says the same as the code."""

from __future__ import annotations

import ast

import pytest

from labcommon import catalogue
from labcommon.events import EventLog, EventSchemaError, NullLog
from tests.conftest import ROOT

PACKAGES = ("caslab", "controllers", "roles", "traffic", "labcommon", "topologies")
CONSUMERS = ("caslab/results/metrics", "caslab/results/analysis.py", "caslab/results/capture.py", "caslab/results/report", "caslab/run/scenario.py")


def sources() -> dict[str, ast.Module]:
    out = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            out[str(path.relative_to(ROOT))] = ast.parse(path.read_text(), str(path))
    return out


def catalogue_name(node: ast.AST) -> str | None:
    """The catalogue constant an expression names (OP, catalogue.OP), if any."""
    name = node.attr if isinstance(node, ast.Attribute) else node.id if isinstance(node, ast.Name) else None
    event = getattr(catalogue, name, None) if name else None
    return str(event) if isinstance(event, catalogue.EventType) else None


def emitted() -> dict[str, set[str]]:
    """Event -> files that emit it, from every ``.emit(EVENT, ...)`` call in the code."""
    out: dict[str, set[str]] = {}
    for path, tree in sources().items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "emit" \
                    and node.args:
                name = catalogue_name(node.args[0])
                if name is None and path != "traffic/client.py":  # Session.emit forwards its argument
                    pytest.fail(f"{path}:{node.lineno}: emit() must name an event of labcommon.catalogue")
                if name:
                    out.setdefault(name, set()).add(path)
    return out


def consumed() -> dict[str, set[str]]:
    """Event -> consumer files that read it (catalogue constants used outside an emit)."""
    out: dict[str, set[str]] = {}
    for path, tree in sources().items():
        if not path.startswith(CONSUMERS):
            continue
        emit_args = {id(n.args[0]) for n in ast.walk(tree) if isinstance(n, ast.Call) and n.args
                     and isinstance(n.func, ast.Attribute) and n.func.attr == "emit"}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Name, ast.Attribute)) and id(node) not in emit_args:
                name = catalogue_name(node)
                if name:
                    out.setdefault(name, set()).add(path)
    return out


def test_docs_events_md_is_generated_from_the_catalogue():
    assert (ROOT / "docs" / "EVENTS.md").read_text() == catalogue.markdown(), \
        "run: python -m labcommon.catalogue > docs/EVENTS.md"


def test_every_consumed_event_is_produced():
    produced = emitted()
    # The HAProxy log, turned into events by caslab/modes/haproxy.py, and the client's
    # Session.emit(EVENT) calls count as producers too (they are .emit calls as well).
    missing = {ev: files for ev, files in consumed().items() if ev not in produced}
    assert not missing, f"consumed but never produced: {missing}"


def test_every_declared_event_is_produced():
    produced = emitted()
    assert set(catalogue.CATALOGUE) <= set(produced), set(catalogue.CATALOGUE) - set(produced)


def test_consumers_never_spell_an_event_name_as_a_string():
    names = set(catalogue.CATALOGUE)
    for path, tree in sources().items():
        if not path.startswith(CONSUMERS):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Compare):
                for side in [node.left, *node.comparators]:
                    if isinstance(side, ast.Constant) and side.value in names:
                        pytest.fail(f"{path}:{node.lineno}: compare with catalogue.{side.value.upper()}, "
                                    f"not the string {side.value!r}")


def test_strict_mode_refuses_a_record_its_declaration_does_not_describe(tmp_path, monkeypatch):
    monkeypatch.setenv("CASLAB_STRICT_EVENTS", "1")
    log = EventLog(tmp_path / "x.jsonl", "cl1")
    log.emit(catalogue.DOWN, session="cl1-s0", reason="reset")
    with pytest.raises(EventSchemaError, match="missing field 'reason'"):
        log.emit(catalogue.DOWN, session="cl1-s0")
    with pytest.raises(EventSchemaError, match="undocumented field 'colour'"):
        log.emit(catalogue.DOWN, session="cl1-s0", reason="reset", colour="red")
    with pytest.raises(EventSchemaError, match="expected int"):
        log.emit(catalogue.OP, session="s", op="read", ok=True, lat_us="fast", cas=None)
    with pytest.raises(TypeError, match="labcommon.catalogue"):
        NullLog().emit("down", session="s", reason="r")
    log.close()
    assert len((tmp_path / "x.jsonl").read_text().splitlines()) == 1


def test_problems_checks_any_record():
    assert catalogue.problems({"ts": 1, "src": "runner", "ev": "measure_end"}) == []
    assert catalogue.problems({"ts": 1, "src": "x", "ev": "nonsense"}) == ["undocumented event 'nonsense'"]
    assert catalogue.problems({"ts": 1, "src": "x", "ev": "cpu", "idle_pct": True})


def test_results_doc_is_up_to_date():
    from caslab.results import results_doc

    assert (ROOT / "docs" / "RESULTS.md").read_text() == results_doc.markdown(), \
        "run: python -m caslab.results.results_doc > docs/RESULTS.md"


def test_every_mode_has_its_own_colour_in_every_plot():
    from caslab.modes import MODES
    from caslab.results.report.style import mode_style

    colours = [mode_style(name)[0] for name in MODES]
    assert len(set(colours)) == len(colours), dict(zip(MODES, colours))
    assert all(MODES[name].colour == mode_style(name)[0] for name in MODES), "each mode declares its colour"
    assert mode_style("a-mode-from-elsewhere") == mode_style("a-mode-from-elsewhere")  # unknown: a fixed pick


def test_each_run_gets_its_own_mode_instance():
    """What a mode learns in a run is that run's: two runs of one mode share nothing."""
    from caslab.modes import mode_for

    first, second = mode_for("wnlb"), mode_for("wnlb")
    first.agents["cas1"] = {"control": "/x", "site": "HQ"}
    assert first is not second and second.agents == {}
    assert mode_for("sdn-nlb").admin_api and not mode_for("haproxy").admin_api
