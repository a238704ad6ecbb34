"""The phases figure (issue 16, item 5): milestones in causal order, never sorted by
value; a 24 ms and a 10,000 ms reconnect both readable (each scenario its own panel and
axis); the subset's n stated where the summary gives it. Drawn for real with matplotlib;
the figure is inspected before it is closed."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from caslab.results.metrics import PHASES
from caslab.results.report import plots


def scenario(sid: str, label: str, phases: dict, phases_n=None):
    row = SimpleNamespace(fault_index=0, affected=5, phases_ms=phases)
    if phases_n is not None:
        row.phases_n = phases_n
    return SimpleNamespace(id=sid, label=label, faults=[row])


def draw(monkeypatch, tmp_path, scenarios):
    kept = {}

    def save(fig, path):
        kept["fig"] = fig
        return [path.name]

    monkeypatch.setattr(plots, "save", save)
    name = plots.plot_phases(SimpleNamespace(scenarios=scenarios), {}, tmp_path)
    return name, kept.get("fig")


def segments(ax):
    """(left, right, colour) of each drawn segment, in drawing order."""
    return [(round(p.get_x(), 3), round(p.get_x() + p.get_width(), 3), p.get_facecolor()[:3])
            for p in ax.patches]


SDN = {"lb_noticed": 3.0, "client_saw": 12.0, "connected": 15.5, "logged_on": 21.0, "first_op": 24.0}
HAPROXY = {"lb_noticed": 10736.0, "client_saw": 1002.0, "connected": 1010.0, "logged_on": 1030.0, "first_op": 1036.0}


def test_milestones_are_drawn_in_causal_order_not_by_value(monkeypatch, tmp_path):
    name, fig = draw(monkeypatch, tmp_path, [scenario("s1", "haproxy", HAPROXY)])
    assert name == "phases.png"
    ax = fig.axes[0]
    drawn = segments(ax)
    assert len(drawn) == len(PHASES)
    from matplotlib.colors import to_rgb
    assert [d[2] for d in drawn] == [to_rgb(c) for c in plots.PHASE_SHADES]  # PHASES order
    assert drawn[0][:2] == (0.0, 10736.0) and drawn[1][:2] == (10736.0, 1002.0)  # backwards, not sorted away
    assert [p.get_hatch() for p in ax.patches] == [None, "///", None, None, None]
    assert "before the previous milestone" in ax.get_title(loc="left")


@pytest.mark.parametrize("n", [None, 17])
def test_a_24_ms_and_a_10_s_reconnect_each_get_a_readable_axis(monkeypatch, tmp_path, n):
    _, fig = draw(monkeypatch, tmp_path, [scenario("s1", "sdn-nlb", SDN, n), scenario("s2", "haproxy", HAPROXY, n)])
    sdn, haproxy = fig.axes[:2]
    assert sdn.get_xlim()[1] == pytest.approx(24.0 * 1.15) and haproxy.get_xlim()[1] == pytest.approx(10736 * 1.15)
    assert [s[:2] for s in segments(sdn)] == [(0.0, 3.0), (3.0, 12.0), (12.0, 15.5), (15.5, 21.0), (21.0, 24.0)]
    assert [p.get_hatch() for p in sdn.patches] == [None] * 5 and "before" not in sdn.get_title(loc="left")
    if n is None:
        assert "n =" not in sdn.get_title(loc="left")
    else:
        assert "n = 17 sessions with every milestone" in sdn.get_title(loc="left")


def test_no_phases_no_figure(monkeypatch, tmp_path):
    assert draw(monkeypatch, tmp_path, [scenario("s1", "direct", {p: None for p in PHASES})]) == (None, None)
