"""Results of a run folder: summary.json, summary.csv, sessions.csv, figures, report.md and
report.html, all rendered from the analysis (caslab/results/analysis.py).

``caslab report DIR`` calls ``write_report`` on a finished run's folder and regenerates
everything byte-identically from ``events.jsonl`` and ``manifest.json`` (and the
captures): the event log is the only input, so a report can always be rebuilt and
checked. Nothing here computes a metric; tables iterate ``caslab.results.columns``.
"""

from __future__ import annotations

import base64
import csv
import io
import json
from pathlib import Path
from typing import Any

from jinja2 import Environment, FileSystemLoader

from caslab.results import metrics
from caslab.results.analysis import Analysis, analyze
from caslab.results.columns import (
    ADDRESS_COLUMNS, COLUMNS, HTTP_COLUMNS, SESSION_COLUMNS, Column, shows_addresses, with_sessions,
)
from caslab.results.report import plots
from caslab.base.safefs import write_file

TEMPLATES = Path(__file__).parent / "templates"
CAPTIONS = {
    "verdict.png": "The answer: per design, the share of affected sessions served again over time since the fault "
                   "(log axis). A curve that stops below 100 % at the window's end left users cut off.",
    "reconnect-cdf.png": "Distribution of reconnect times of the affected sessions, all repetitions; it levels off "
                         "at the recovered fraction, and a marker at the window's end shows the never-recovered.",
    "reconnect-means.png": "Mean of the repetitions' mean reconnect times with its 95 % confidence interval "
                           "(Student's t); triangles at the window's end count sessions that never recovered.",
    "phases.png": "Median milestones of a reconnect in causal order, from the fault: load balancer noticed, client "
                  "saw its reset or timeout, connected, logged on, first successful operation; one panel per "
                  "scenario, each on its own time axis, naming the sessions the medians were taken over.",
    "goodput.png": "Successful operations per second around the fault (mean over repetitions; thin: unaffected "
                   "sessions only), and CPU idle with the fidelity threshold.",
    "probes.png": "Share of SYN probes (a new connection's handshake) and application probes (resolve, connect, "
                  "logon, one operation through the array name) answered, per 0.25 s.",
    "timeline": "Each client session around the fault (first repetition): successful operations, failures and "
                "drops, the fault and the load balancer's detection; the inset zooms into the first second.",
}


def caption(name: str) -> str:
    return CAPTIONS["timeline"] if name.startswith("timeline-") else CAPTIONS.get(name, name)


def csv_value(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, list):
        return " ".join(str(v) for v in value)
    return str(value)


def write_csv(path: Path, columns: list[Column], rows: list[Any]) -> None:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow([c.key for c in columns])
    for row in rows:
        writer.writerow([csv_value(c.value(row)) for c in columns])
    write_file(path, buffer.getvalue())


def session_rows(analysis: Analysis) -> list[dict[str, Any]]:
    """One row per session, fault and repetition (sessions.csv)."""
    meta = {s.id: s for s in analysis.scenarios}
    rows = []
    for (sid, rep), run in sorted(analysis.runs.items()):
        for fault in run.faults:
            for s in fault.sessions:
                rows.append({"scenario": sid, "label": meta[sid].label, "mode": meta[sid].mode, "repetition": rep,
                             "fault_index": fault.index, "fault": fault.label, **metrics.to_dict(s),
                             "collateral": s.collateral})
    return rows


def verdicts(analysis: Analysis) -> list[dict[str, Any]]:
    """One sentence per scenario, from its headline fault's numbers."""
    out = []
    window = analysis.manifest["spec"]["timing"]["observe_s"]
    for s in analysis.scenarios:
        index = plots.headline_fault(s)
        row = next((r for r in s.faults if r.fault_index == index), None)
        if not s.repetitions:
            out.append({"label": s.label, "text": "no repetition ran: there is nothing to report.",
                        "trustworthy": False})
            continue
        if row is None:
            out.append({"label": s.label, "text": "no fault was injected." + served_text(s),
                        "trustworthy": s.trustworthy})
            continue
        r = row.reconnect_ms
        http = [h for h in s.http if h.fault_index == index and h.sessions]
        if not row.sessions and http:  # HTTP clients only: the verdict is theirs
            out.append({"label": s.label, "text": http_verdict(row.fault, http), "trustworthy": s.trustworthy})
            continue
        if not row.affected:
            text = f"{row.fault} affected no session; {row.collateral} saw collateral damage."
        elif row.recovered == 0 and row.undisturbed == 0:
            text = (f"{row.fault}: none of the {row.affected} affected sessions was served again within the "
                    f"{window:g} s window.")
        else:
            timing = f", median reconnect {r.p50:g} ms" if r.p50 is not None else ""
            worst = f", slowest {r.max:g} ms" if r.max is not None else ""
            calm = f"; {row.undisturbed} never cut off" if row.undisturbed else ""
            never = f"; {row.unrecovered} never recovered" if row.unrecovered else ""
            text = (f"{row.fault}: {row.recovered} of {row.affected} affected sessions served again after an outage"
                    f"{timing}{worst}{calm}{never}.")
        if row.prompts:
            text += f" {row.prompts} credential prompt(s)."
        if row.collateral:
            text += f" {row.collateral} unaffected session(s) hurt."
        out.append({"label": s.label, "text": text, "trustworthy": s.trustworthy})
    return out


def http_verdict(fault: str, rows: list[Any]) -> str:
    """One sentence for a fault over HTTP protocol rows (a scenario without Outlook sessions)."""
    parts = []
    for h in rows:
        who = f"{h.protocol} ({h.clients})"
        if not h.affected:
            parts.append(f"{who}: none of {h.sessions} sessions affected")
            continue
        median = f", median {h.reconnect_ms.p50:g} ms" if h.reconnect_ms.p50 is not None else ""
        never = f", {h.unrecovered} never" if h.unrecovered else ""
        parts.append(f"{who}: {h.recovered} of {h.affected} affected served again{median}{never}")
    return f"{fault}: " + "; ".join(parts) + "."


def served_text(s) -> str:
    """Who was served, per address the users' server name resolved to (where that matters)."""
    if not s.by_address:
        return ""
    served, total = sum(r["served"] for r in s.by_address), sum(r["sessions"] for r in s.by_address)
    parts = [f"{r['served']} of {r['sessions']} whose name resolved to {r['host'] or r['address']}"
             + (f" ({r['site']})" if r["site"] else "") for r in s.by_address]
    return f" {served} of {total} sessions were served: " + "; ".join(parts) + "."


MD_SPECIAL = "\\`*_{}[]()#+-.!|~"


def md_text(value: Any) -> str:
    """Text (a spec's description) in Markdown as text: no HTML, link, heading or emphasis
    of its own (HTML's &, <, > as entities, Markdown's punctuation escaped)."""
    text = str(value).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
    return "".join(f"\\{ch}" if ch in MD_SPECIAL else ch for ch in text)


def capture_lines(analysis: Analysis) -> list[dict[str, Any]]:
    """One sentence per scenario on the packet-capture cross-check (what was compared, and
    every disagreement), or why there is none; nothing for scenarios without captures."""
    out = []
    for s in analysis.scenarios:
        c = s.capture_check
        if not c or c.get("status") in ("not_captured", "no_fault", "no_sessions"):
            continue
        parts = []
        if c.get("n"):
            parts.append(f"{c['n']} sessions compared, |wire - events| reconnect median "
                         f"{c['median_abs_diff_ms']:g} ms, max {c['max_abs_diff_ms']:g} ms")
        elif c.get("status") == "ok":
            parts.append("no session reconnected on both sides")
        sides = [f"{len(c.get(k, []))} only in the {name}" for k, name in (("only_events", "events"),
                                                                            ("only_wire", "capture")) if c.get(k)]
        parts.append(f"{c.get('one_sided', 0)} one-sided" + (f" ({', '.join(sides)})" if sides else ""))
        parts += [f"not checked: {e}" for e in c.get("errors", [])]
        out.append({"label": s.label, "text": "; ".join(parts) + ".", "ok": c.get("status") == "ok"
                    and not c.get("one_sided")})
    return out


def _md(value: Any) -> str:
    """A table cell for Markdown: no pipe or newline can break the table."""
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_report(run_dir: Path) -> Analysis:
    run_dir = Path(run_dir)
    analysis = analyze(run_dir)
    write_file(run_dir / "summary.json", json.dumps(analysis.summary(), indent=2, sort_keys=True) + "\n")
    write_csv(run_dir / "summary.csv", COLUMNS, analysis.rows)
    write_csv(run_dir / "sessions.csv", SESSION_COLUMNS, session_rows(analysis))
    address_rows = [row for s in analysis.scenarios for row in s.by_address]
    write_csv(run_dir / "addresses.csv", ADDRESS_COLUMNS, address_rows)
    if analysis.http_rows:
        write_csv(run_dir / "http.csv", HTTP_COLUMNS, analysis.http_rows)
    figures = plots.make_all(analysis, run_dir)
    context = {"analysis": analysis, "manifest": analysis.manifest, "rows": with_sessions(analysis.rows),
               "columns": COLUMNS, "http_rows": with_sessions(analysis.http_rows), "http_columns": HTTP_COLUMNS,
               "scenarios": analysis.scenarios, "figures": figures, "verdicts": verdicts(analysis),
               "complete": analysis.complete, "address_columns": ADDRESS_COLUMNS,
               "capture_lines": capture_lines(analysis),
               "address_rows": address_rows if shows_addresses(analysis.scenarios) else []}
    md = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=False, trim_blocks=True, lstrip_blocks=True)
    md.filters.update(caption=caption, md=_md, md_text=md_text)
    write_file(run_dir / "report.md", md.get_template("report.md.j2").render(**context))
    html = Environment(loader=FileSystemLoader(TEMPLATES), autoescape=True, trim_blocks=True, lstrip_blocks=True)
    html.filters.update(caption=caption)
    embedded = {name: base64.b64encode((run_dir / name).read_bytes()).decode() for name in figures}
    write_file(run_dir / "report.html", html.get_template("report.html.j2").render(embedded=embedded, **context))
    return analysis
