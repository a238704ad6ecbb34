"""Every registered fault and HA mode validates, labels itself and runs for real.

The registries (caslab/faults, caslab/modes) are the single source the spec, the runner
and the metrics read: a new fault or mode file is picked up here without touching this
test, and must pass it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from caslab.run import runner

from caslab.spec import experiment as spec_mod
from caslab.faults import FAULTS, fault_for
from caslab.modes import MODES
from caslab.schema.fields import Field, SpecError
from labcommon.catalogue import problems
from labcommon.events import read_events

PREFERRED_MODES = ["sdn-nlb", "haproxy", "wnlb", "dns-rr", "direct"]


def mode_for_fault(kind: str) -> str:
    needs = FAULTS[kind].requires
    virtual = bool(FAULTS[kind].example_topology.get("hypervisors"))
    return next(m for m in PREFERRED_MODES + sorted(MODES)
                if needs <= MODES[m].capabilities and (MODES[m].multi_switch or not virtual))


def small_spec(mode: str, faults: list[dict], observe_s: float = 3.0) -> dict:
    topology = {"cas": 3, "mailboxes": 2, "client_hosts": 1}
    for fault in faults:
        topology.update(FAULTS[fault["kind"]].example_topology)
    return {"experiment": {"name": "registry", "modes": [mode]},
            "topology": topology,
            "clients": {"sessions_per_host": 4, "distinct_source_ips": True},
            "timing": {"warmup_s": 0.5, "observe_s": observe_s},
            "probe": {"capture": False, "rate_hz": 5, "app_rate_hz": 2}, "faults": faults}


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_declares_itself_and_validates(kind):
    cls = FAULTS[kind]
    assert cls.summary and cls.kind == kind
    assert cls.affects in ("on_elements", "disrupted")
    assert all(isinstance(f, Field) for f in cls.fields.values())
    spec = spec_mod.validate(small_spec(mode_for_fault(kind), [{"kind": kind, "at_s": 0.5, **cls.example}]), "t")
    fault = fault_for(spec["faults"][0])
    assert fault.label().startswith(kind.split("-")[0]) and "\n" not in fault.label()
    assert spec["faults"][0]["target"] == ([cls.example["target"]] if "target" in cls.example else [])


@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_refuses_an_unknown_key(kind):
    with pytest.raises(SpecError, match=r"faults\[0\]\.colour"):
        spec_mod.validate(small_spec(mode_for_fault(kind), [{"kind": kind, "colour": "red", **FAULTS[kind].example}]),
                          "t")


@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_declares_itself_and_validates(name):
    mode = MODES[name]
    assert mode.description and mode.name == name
    spec = spec_mod.validate(small_spec(name, []), "t")
    if mode.section:
        assert set(spec[mode.section]) == set(mode.settings)
    assert spec_mod.scenarios(spec)[0]["label"] == name


def run_small(tmp_path: Path, raw: dict) -> tuple[dict, list[dict]]:
    spec = spec_mod.validate(raw, "t")
    run_dir = runner.run_experiment(spec, Path("t.toml"), tmp_path / "out")
    summary = json.loads((run_dir / "summary.json").read_text())
    return summary, list(read_events(run_dir / "events.jsonl"))


@pytest.mark.require_root
@pytest.mark.parametrize("kind", sorted(FAULTS))
def test_every_fault_runs_for_real(tmp_path, no_residue, kind):
    cls = FAULTS[kind]
    raw = small_spec(mode_for_fault(kind), [{"kind": kind, "at_s": 0.5, **cls.example}])
    summary, events = run_small(tmp_path, raw)
    label = fault_for(spec_mod.validate(raw, "t")["faults"][0]).label()
    logged = [e for e in events if e["ev"] == "fault"]
    assert [(e["kind"], e["label"]) for e in logged] == [(kind, label)]
    assert any(e["ev"] == "fault_done" and e["kind"] == kind for e in events), "the injection finished"
    if raw["faults"][0].get("duration_s"):
        assert any(e["ev"] == "fault_undone" and e["kind"] == kind for e in events), "and was undone"
    scenario = summary["scenarios"][0]
    assert summary["complete"] and [row["fault"] for row in scenario["faults"]] == [label]
    assert not [p for e in events for p in problems(e)], "every event matches the catalogue"


@pytest.mark.require_root
@pytest.mark.parametrize("name", sorted(MODES))
def test_every_mode_runs_for_real(tmp_path, no_residue, name):
    summary, events = run_small(tmp_path, small_spec(name, [], observe_s=1.5))
    assert summary["complete"]
    served = {e["session"] for e in events if e["ev"] == "op" and e["ok"]}
    assert len(served) == 4, "every session was served"
    assert any(e["ev"] == "app_probe" and e["ok"] for e in events), "a new client can be served end to end"
