"""``results/index.html``: every run of a results folder, newest first, each with a link to
its report and its headline table. Rewritten after every run, live lab and ``caslab
report``; it reads each run's ``manifest.json`` and ``summary.json`` and computes nothing
(the columns are ``caslab.results.columns``' terminal columns, the rows summary.json's)."""

from __future__ import annotations

import json
from pathlib import Path
from urllib.parse import quote
from typing import Any

from jinja2 import Environment

from caslab.base import system
from caslab.results.columns import COLUMNS
from caslab.base.safefs import write_file

TEMPLATE = """<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>caslab results</title>
<style>
body { font-family: sans-serif; margin: 2em; max-width: 1200px; }
table { border-collapse: collapse; font-size: 0.85em; margin-bottom: 1.5em; }
th, td { border: 1px solid #bbb; padding: 3px 6px; text-align: right; white-space: nowrap; }
th { background: #eee; } td:first-child, td:nth-child(2) { text-align: left; }
.low { color: #b00; font-weight: bold; } .meta { color: #555; }
</style></head><body>
<h1>caslab results</h1>
<p class="meta">{{ runs | length }} run(s) in {{ folder }}, newest first. Regenerated after every run.</p>
{% for run in runs %}
<h2><a href="{{ run.link }}">{{ run.name }}</a></h2>
<p class="meta">{{ run.experiment }}{% if run.live %} (live lab){% endif %}: {{ run.description }}
{% if not run.complete %}<span class="low">incomplete</span>{% endif %}
{% if run.git %} &middot; commit {{ run.git }}{% endif %}</p>
{% if run.rows %}
<table><tr>{% for c in columns %}<th>{{ c.title }}</th>{% endfor %}</tr>
{% for cells in run.rows %}<tr>{% for cell in cells %}<td>{{ cell }}</td>{% endfor %}</tr>
{% endfor %}</table>
{% else %}<p class="meta">no summary (the run wrote no report)</p>{% endif %}
{% endfor %}
</body></html>
"""


def headline_rows(summary: dict[str, Any]) -> list[dict[str, Any]]:
    """Per scenario, its headline fault's row: the first that affected anyone, else the first."""
    rows = []
    for scenario in summary.get("scenarios", []):
        faults = [f for f in scenario.get("faults") or [] if f.get("sessions")]  # HTTP-only runs: none
        if faults:
            rows.append(next((f for f in faults if f.get("affected")), faults[0]))
    return rows


def _object(path: Path) -> dict[str, Any] | None:
    """A JSON file's object; None when it is missing, not JSON or not an object."""
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return value if isinstance(value, dict) else None


def _get(value: Any, *keys: str) -> Any:
    """value[k1][k2]..., None wherever a level is missing or not an object."""
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value


def run_entry(folder: Path) -> dict[str, Any] | None:
    """One run's line in the index; None for a folder that is no run. A neighbour's files
    may be anything: a field of the wrong type shows as missing, never as an error."""
    manifest = _object(folder / "manifest.json")
    if manifest is None:
        return None
    summary = _object(folder / "summary.json") or {}
    commit, dirty = _get(manifest, "git", "commit"), _get(manifest, "git", "dirty")
    commit = commit if isinstance(commit, str) else None
    # "./" and quoting: a folder's name is a relative path, never a scheme (javascript:)
    link = f"./{quote(folder.name, safe='')}/"
    shown = [c for c in COLUMNS if c.terminal]
    try:
        rows = [[c.text(r) for c in shown] for r in headline_rows(summary)]
    except (AttributeError, TypeError, ValueError, KeyError, IndexError):
        rows = []
    return {"name": folder.name, "link": f"{link}report.html" if (folder / "report.html").exists() else link,
            "experiment": str(_get(manifest, "spec", "experiment", "name") or "?"),
            "description": str(_get(manifest, "spec", "experiment", "description") or ""),
            "complete": manifest.get("complete") is True, "live": manifest.get("live") is True,
            "git": f"{commit[:10]}{' (dirty)' if dirty else ''}" if commit else None,
            "rows": rows, "mtime": (folder / "manifest.json").stat().st_mtime}


def write_index(folder: Path) -> Path:
    folder = Path(folder)
    runs = [e for e in (run_entry(d) for d in folder.iterdir() if d.is_dir()) if e is not None]
    runs.sort(key=lambda r: (-r["mtime"], r["name"]))
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        runs=runs, folder=str(folder), columns=[c for c in COLUMNS if c.terminal])
    path = folder / "index.html"
    write_file(path, html)
    system.give_to_invoking_user(str(path))
    system.give_to_invoking_user(str(folder), recursive=False)
    return path
