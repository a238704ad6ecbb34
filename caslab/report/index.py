"""``results/index.html``: every run of a results folder, newest first, each with a link to
its report and its headline table. Rewritten after every run, live lab and ``caslab
report``; it reads each run's ``manifest.json`` and ``summary.json`` and computes nothing
(the columns are ``caslab.columns``' terminal columns, the rows summary.json's)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from jinja2 import Environment

from caslab import system
from caslab.columns import COLUMNS

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
{% for row in run.rows %}<tr>{% for c in columns %}<td>{{ c.text(row) }}</td>{% endfor %}</tr>
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


def run_entry(folder: Path) -> dict[str, Any] | None:
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (OSError, ValueError):
        return None
    try:
        summary = json.loads((folder / "summary.json").read_text())
    except (OSError, ValueError):
        summary = {}
    spec = manifest.get("spec", {}).get("experiment", {})
    commit = (manifest.get("git") or {}).get("commit")
    dirty = (manifest.get("git") or {}).get("dirty")
    return {"name": folder.name, "link": f"{folder.name}/report.html" if (folder / "report.html").exists()
            else f"{folder.name}/", "experiment": spec.get("name", "?"), "description": spec.get("description", ""),
            "complete": manifest.get("complete", False), "live": manifest.get("live", False),
            "git": f"{commit[:10]}{' (dirty)' if dirty else ''}" if commit else None,
            "rows": headline_rows(summary), "mtime": (folder / "manifest.json").stat().st_mtime}


def write_index(folder: Path) -> Path:
    folder = Path(folder)
    runs = [e for e in (run_entry(d) for d in folder.iterdir() if d.is_dir()) if e is not None]
    runs.sort(key=lambda r: (-r["mtime"], r["name"]))
    html = Environment(autoescape=True).from_string(TEMPLATE).render(
        runs=runs, folder=str(folder), columns=[c for c in COLUMNS if c.terminal])
    path = folder / "index.html"
    path.write_text(html)
    system.give_to_invoking_user(str(path))
    system.give_to_invoking_user(str(folder), recursive=False)
    return path
