"""How every plot looks: one colour-blind-safe colour and one line style per mode (each
mode declares its own), the same in every plot and every run (Okabe & Ito's palette), and deterministic files (PNG and SVG
carry no dates, so ``caslab report`` rebuilds them byte for byte)."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

from caslab.modes import MODES  # noqa: E402
from caslab.base.safefs import write_file  # noqa: E402

OKABE_ITO = ["#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000"]
MARKERS = ["o", "s", "^", "D", "v", "P", "X", "*"]
STATUS_COLOURS = {"ok": "#009E73", "failed": "#D55E00", "down": "#000000"}

plt.rcParams.update({"svg.hashsalt": "caslab", "font.size": 9, "axes.titlesize": 10})


def mode_style(mode: str) -> tuple[str, object]:
    """(colour, line style) of a mode, as the mode declares them (caslab/modes); a mode
    that declares none, or that this lab does not know (an old result), gets a fixed pick
    by name."""
    known = MODES.get(mode)
    if known is not None and known.colour:
        return known.colour, known.line
    pick = int(hashlib.sha256(mode.encode()).hexdigest(), 16)
    return OKABE_ITO[pick % len(OKABE_ITO)], ["-", "--", "-.", ":"][pick // 8 % 4]


def scenario_styles(scenarios) -> dict[str, dict]:
    """Per scenario id: colour and line style of its mode, and a marker telling apart the
    sweep points of one mode."""
    seen: dict[str, int] = {}
    out = {}
    for s in scenarios:
        colour, line = mode_style(s.mode)
        n = seen.get(s.mode, 0)
        seen[s.mode] = n + 1
        out[s.id] = {"color": colour, "linestyle": line, "marker": MARKERS[n % len(MARKERS)]}
    return out


def save(fig, path: Path) -> list[str]:
    """PNG and SVG beside it, without timestamps; returns the file names."""
    png, svg_data = io.BytesIO(), io.BytesIO()
    fig.savefig(png, format="png", dpi=100, metadata={"Software": None})
    svg = path.with_suffix(".svg")
    fig.savefig(svg_data, format="svg", metadata={"Date": None, "Creator": None})
    write_file(path, png.getvalue())
    write_file(svg, svg_data.getvalue())
    plt.close(fig)
    return [path.name, svg.name]
