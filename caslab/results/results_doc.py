"""docs/RESULTS.md: what every file of a result folder holds, generated from the code
(``python -m caslab.results.results_doc > docs/RESULTS.md``; a test keeps the two equal)."""

from __future__ import annotations

import sys

from caslab.results.columns import ADDRESS_COLUMNS, COLUMNS, HTTP_COLUMNS, SESSION_COLUMNS, Column

FILES = [
    ("manifest.json", "The run as it was asked for and where it ran: `spec` (fully resolved, defaults filled "
                      "in), `scenarios` (id, label, mode, sweep `params`), `spec_file`, `run_id`, `datapath`, "
                      "`versions` (caslab, mininet, os-ken, scapy, matplotlib, dnspython, Open vSwitch, kernel, "
                      "HAProxy, dnsmasq), `packages` (every installed Python distribution and its version), "
                      "`python`, `platform` (OS: name, version, kernel, machine), `git` (commit, dirty), "
                      "`complete`, `failures`; `live: true` for a live lab (`caslab up`), whose "
                      "`spec.timing.observe_s` is then the time it was up. A cluster run (`caslab run "
                      "--cluster`) records the runner's machine there and adds `cluster`: `scheduler`, "
                      "`dashboard`, `allow_mismatch`, `runner` (host, git, python, datapath), `workers` (per "
                      "worker name: host, git, python, datapath, versions, platform, the compared `packages`), "
                      "`runs` (per repetition: scenario, rep, worker, host, address, `attempts` (every worker "
                      "that started it, in order), seconds, error, `differences` from the runner, empty "
                      "unless `--allow-mismatch`), `lost` (repetitions re-run after their worker left)."),
    ("events.jsonl", "Every event of every process of every run, one JSON object per line, each run's sorted "
                     "by `ts` (CLOCK_MONOTONIC ns of the machine that ran it), tagged with `scenario` and `rep`, "
                     "runs in the order they ended: the single source of truth. "
                     "Schema: docs/EVENTS.md."),
    ("summary.json", "Per scenario (`scenarios[]`): id, label, mode, params, repetitions, sessions, goodput "
                     "(per second, aligned on the first fault), CPU idle, `fidelity_ok`, `trustworthy` with "
                     "`untrustworthy_reasons`, notices, messages, probe gaps, process exits, "
                     "`capture_check` (the client-link captures against the events, first fault: `status` ok / "
                     "error with `errors` / not_captured / no_fault / no_sessions, `n` compared, `median_abs_diff_ms`, "
                     "`max_abs_diff_ms`, `one_sided` with the sessions in `only_events` / `only_wire`), "
                     "and `faults[]`: one row per fault with the columns below (reconnect and detection as "
                     "distributions: n, p50, p95, p99, max, mean_pooled, ci95_of_repetition_means, mean_of_repetitions; "
                     "phases_ms with phases_n; definitions: docs/METRICS.md)."),
    ("summary.csv", "The same rows as the report's table: one per scenario and fault (columns below)."),
    ("sessions.csv", "One row per session, fault and repetition (columns below): ready for pandas."),
    ("addresses.csv", "Per scenario, database and the address the users' server name resolved to: sessions, "
                      "served, mailbox operations ok (columns below); the report shows it where users of one "
                      "database resolved to different addresses."),
    ("http.csv", "Only with HTTP clients ([http]): one row per scenario, fault and protocol (OWA, ActiveSync, "
                 "Outlook Anywhere; columns below); also `http` in each scenario of summary.json, and the "
                 "report's \"HTTP protocols\" table."),
    ("report.md, report.html", "The report: the verdict first, untrustworthy banners, the table, the figures. "
                               "report.html is self-contained (figures embedded)."),
    ("*.png, *.svg", "The figures, each as PNG and SVG: verdict, reconnect-cdf, reconnect-means, phases, "
                     "goodput, probes, timeline-<scenario>."),
    ("raw/<scenario>-r<rep>/", "Each run's own files: `<process>.jsonl` (its events before merging), "
                               "`logs/` (each process's output), `config/` (each process's config), "
                               "`<client>.pcap` (client-link captures), `store/` (the mailbox copies' SQLite "
                               "databases, kept in a local scratch folder while the lab runs and checkpointed "
                               "into one file each at teardown), `dns-records.json`."),
    ("../index.html", "`results/index.html`: every run of the results folder, newest first, linking its "
                      "report, with its headline table (the terminal table's columns); rewritten after every "
                      "run, live lab and `caslab report`."),
]


def table(columns: list[Column]) -> list[str]:
    lines = ["| column | meaning | unit |", "|---|---|---|"]
    for c in columns:
        lines.append(f"| `{c.key}` | {c.header}{': ' + c.doc if c.doc else ''} | {c.unit} |")
    return lines


def markdown() -> str:
    lines = ["# A result folder", "",
             "Generated by `python -m caslab.results.results_doc > docs/RESULTS.md` from the code that writes the files.",
             "", "`results/<experiment>-<timestamp>/` (or `--out DIR`) holds:", ""]
    lines += [f"* **{name}**: {text}" for name, text in FILES]
    lines += ["", "## summary.csv (and every results table)", ""] + table(COLUMNS)
    lines += ["", "## sessions.csv", ""] + table(SESSION_COLUMNS)
    lines += ["", "## addresses.csv", ""] + table(ADDRESS_COLUMNS)
    lines += ["", "## http.csv (the HTTP protocols table)", ""] + table(HTTP_COLUMNS)
    lines += ["", "Times are ms after the fault unless the column says otherwise; empty cells are values that "
                  "do not exist (a session that never reconnected has no reconnect time)."]
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.stdout.write(markdown())
