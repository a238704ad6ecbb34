"""The results table, declared once: every column's key, header, unit and format.

``summary.csv``, the report's tables (Markdown and HTML) and the terminal table all
iterate ``COLUMNS`` over the same rows (``FaultSummary``: one row per scenario and fault);
none of them picks fields of its own. ``terminal`` marks the columns the terminal shows.
What only one HA mode measures is declared in that mode's file (its ``columns``) and
joins the table before the CPU and trust columns.
"""

from __future__ import annotations

from typing import Any

from caslab.base.table import Column, path
from caslab.modes import MODES


COLUMNS: list[Column] = [
    Column("label", "scenario", terminal=30, doc="mode and sweep point"),
    Column("fault", "fault", terminal=22, doc="the fault this row is about"),
    Column("mode", "mode", doc="HA mode"),
    Column("repetitions", "reps"),
    Column("sessions", "sessions", terminal=6, doc="client sessions, all repetitions"),
    Column("affected", "affected", terminal=5, doc="on an element the fault failed at its instant (faults that only "
                                                   "may disrupt: owns an outage of the session); METRICS.md 6"),
    Column("recovered", "recovered", terminal=5, doc="affected, its outages belong to this fault and each ended with "
                                                     "a success before the measurement's end: always equals n"),
    Column("undisturbed", "undisturbed", doc="affected, yet no outage of it belongs to this fault and it was served "
                                             "after the fault (a drained session that finished its work)"),
    Column("unrecovered", "unrecovered", terminal=6, doc="affected, neither recovered nor undisturbed: not served again "
                                                         "before the measurement's end (silence is never recovery)"),
    Column("collateral", "collateral", terminal=5, doc="not affected, yet an outage no fault explains began in the "
                                                       "fault's window, or an operation was late there"),
    Column("stalled", "stalled", terminal=5, doc="of the outages counted, those that began by a stall: no success "
                                                 "for longer than the stall threshold, no drop logged"),
    Column("reauth", "re-auth", doc="affected sessions' logons that needed credentials"),
    Column("prompts", "prompts", terminal=7, doc="of them, user-visible credential prompts (NTLM)"),
    Column("silent_reauth", "silent re-auth", doc="of them, silent re-authentications (Kerberos)"),
    Column("reconnect_n", "n", "", "d", 4, "reconnect_ms.n", "recovered sessions (each has a reconnect time: the "
                                                              "end of its first outage minus the fault instant)"),
    Column("reconnect_p50_ms", "reconnect p50", "ms", ".1f", 9, "reconnect_ms.p50"),
    Column("reconnect_p95_ms", "p95", "ms", ".1f", 0, "reconnect_ms.p95",
           "empty when n < 20: with fewer values the nearest-rank p95 is just the maximum"),
    Column("reconnect_p99_ms", "p99", "ms", ".1f", 9, "reconnect_ms.p99",
           "empty when n < 100: with fewer values the nearest-rank p99 is just the maximum"),
    Column("reconnect_max_ms", "max", "ms", ".1f", 9, "reconnect_ms.max"),
    Column("mean_of_repetitions_ms", "mean of reps", "ms", ".1f", 0, "reconnect_ms.mean_of_repetitions",
           "the mean of the per-repetition mean reconnect times"),
    Column("ci95_mean_ms", "mean 95 % CI", "ms", ".1f", 0, "reconnect_ms.ci95_of_repetition_means",
           "Student's t interval of the per-repetition means (>= 2 repetitions)"),
    Column("detection_p50_ms", "LB noticed", "ms", ".1f", 0, "detection_ms.p50",
           "first load-balancer reaction to a failed element inside the fault's window (median over repetitions)"),
    Column("phases_n", "phases n", doc="recovered sessions with every reconnect milestone in causal order: the "
                                       "subset the phase split is taken over"),
    Column("messages_acked", "msgs acked", source="messages.acked"),
    Column("messages_lost", "lost", terminal=4, source="messages.lost", doc="acked but missing from the active copy"),
    Column("messages_unreplicated", "single copy", source="messages.unreplicated",
           doc="acked while a passive copy had not confirmed them (synchronous replication): held by one copy"),
    Column("messages_recovered", "dumpster recovered", source="messages.recovered",
           doc="messages the transport dumpster resubmitted that the mounted copy lacked"),
    Column("db_unmounted_ms", "DB unmounted", "ms", ".1f", doc="longest a failed database stayed unmounted "
                                                              "(of those a copy mounted again)"),
    Column("dbs_dismounted", "DBs dismounted", doc="failed databases no copy mounted before the window closed "
                                                   "(AutoDatabaseMountDial refused, or no copy answered)"),
    Column("copy_missing", "copy queue lost", doc="messages the mounted copies knew they lacked at mount "
                                                  "(the copy queue the mount dial allowed)"),
    Column("probe_gap_ms", "SYN probe gap", "ms", ".1f", doc="longest run of failed SYN probes"),
    Column("app_probe_gap_ms", "app probe gap", "ms", ".1f", doc="longest run of failed application probes"),
    Column("capture_status", "capture check", source="capture_check.status",
           doc="the packet-capture cross-check of the first fault: ok, error (a capture could not be read or "
               "matched: summary.json says why), not_captured (probe.capture off), no_fault, no_sessions (no "
               "Outlook session)"),
    Column("capture_n", "capture n", "", "d", 0, "capture_check.n",
           "sessions whose reconnect time both the client-link capture and the client events give"),
    Column("capture_median_diff_ms", "capture vs events median", "ms", ".3f", 0,
           "capture_check.median_abs_diff_ms", "median |wire - events| reconnect time over those sessions"),
    Column("capture_max_diff_ms", "capture vs events", "ms", ".3f", 0, "capture_check.max_abs_diff_ms",
           "largest |wire - events| reconnect time over those sessions"),
    Column("capture_one_sided", "capture one-sided", "", "d", 0, "capture_check.one_sided",
           "disagreements: affected sessions that reconnected on one side only (events or wire; which is in "
           "summary.json), and sessions neither affected nor disrupted that the wire saw reconnect"),
    Column("goodput_dip_unaffected", "goodput dip", "", ".2f", 0, "goodput_dip_unaffected",
           "lowest post-fault second of unaffected sessions' goodput / pre-fault level"),
    Column("never_served", "never served", doc="sessions without one successful operation in the measurement "
                                               "window (cut off from the start)"),
] + [column for mode in MODES.values() for column in mode.columns] + [  # what only one mode measures
    Column("cpu_idle_pct", "CPU idle", "%", ".1f", 6),
    Column("cpu_ms_per_op", "lab CPU per op", "ms", ".2f", doc="CPU of every lab process that ran in the window "
                                                                "(up to its death, from its start), OVS and the runner, "
                                                                "per successful operation in the window"),
    Column("fidelity_ok", "fidelity", doc="every repetition had CPU samples in its window and their mean idle was "
                                          "at least the threshold (empty: a repetition had no sample: unknown)"),
    Column("trustworthy", "trusted", terminal=7, doc="at least one repetition, fidelity passed, every repetition "
                                                     "completed, no lab process died"),
]


HTTP_COLUMNS: list[Column] = [
    Column("label", "scenario", terminal=30, doc="mode and sweep point"),
    Column("fault", "fault", terminal=18, doc="the fault this row is about ('no fault': the whole window)"),
    Column("protocol", "protocol", terminal=5, doc="owa (Outlook Web App), eas (ActiveSync), oa (Outlook Anywhere)"),
    Column("clients", "clients", terminal=8, doc="internal (an AD site: the site's autodiscover) or Internet "
                                                 "(autodiscover through DNS)"),
    Column("mode", "mode", doc="HA mode"),
    Column("repetitions", "reps"),
    Column("sessions", "sessions", terminal=5, doc="HTTP sessions of this protocol, all repetitions"),
    Column("configured", "found server", terminal=6, doc="sessions autodiscover gave a URL"),
    Column("requests", "requests", terminal=6, doc="requests in the window"),
    Column("failed", "failed", terminal=6, doc="requests that failed in the window"),
    Column("affected", "affected", terminal=5, doc="last served by the failed element before the fault"),
    Column("recovered", "recovered", terminal=5, doc="affected, dropped in the window, and a request succeeded "
                                                     "after the drop before the measurement's end"),
    Column("undisturbed", "undisturbed", doc="affected, never dropped in the window, served after the fault"),
    Column("unrecovered", "unrecovered", terminal=6, doc="affected, neither recovered nor undisturbed"),
    Column("relogins", "re-logins", terminal=6, doc="logons a CAS forced in the window (OWA 440: a login form)"),
    Column("pings_lost", "pings lost", terminal=6, doc="ActiveSync long-polls that ended without their answer"),
    Column("pings_reestablished", "re-established", terminal=6,
           doc="ActiveSync devices whose long-poll a later answered Ping re-established"),
    Column("disconnects", "disconnects", terminal=6, doc="broken long-lived exchanges: Outlook Anywhere channel "
                                                         "pairs, ActiveSync Pings"),
    Column("reconnect_n", "n", "", "d", 4, "reconnect_ms.n", "recovered sessions: the n behind the percentiles"),
    Column("reconnect_p50_ms", "reconnect p50", "ms", ".1f", 9, "reconnect_ms.p50",
           "fault to the first success after the drop, recovered sessions"),
    Column("reconnect_p99_ms", "p99", "ms", ".1f", 9, "reconnect_ms.p99",
           "empty when n < 100: with fewer values the nearest-rank p99 is just the maximum"),
    Column("reconnect_max_ms", "max", "ms", ".1f", 9, "reconnect_ms.max"),
    Column("reestablish_p50_ms", "Ping re-established p50", "ms", ".1f", 0, "reestablish_ms.p50",
           "fault to the start of the first answered Ping after a lost one"),
    Column("reestablish_p99_ms", "Ping re-established p99", "ms", ".1f", 0, "reestablish_ms.p99"),
    Column("latency_p50_ms", "latency p50", "ms", ".1f", 0, "latency_ms.p50", "successful requests in the window"),
    Column("latency_p99_ms", "latency p99", "ms", ".1f", 0, "latency_ms.p99"),
    Column("trustworthy", "trusted", terminal=7, doc="as the scenario's main row"),
]


def with_sessions(rows: list[Any]) -> list[Any]:
    """The rows a person should see: those with sessions. A run of HTTP clients only has a
    row per fault with no Outlook session, which says nothing; a table of such rows is
    not shown (the CSV keeps them)."""
    sessions = path("sessions")
    return [row for row in rows if sessions(row)]


def terminal_table(rows: list[Any], columns: list[Column] | None = None) -> str:
    shown = [c for c in (columns or COLUMNS) if c.terminal]
    widths = {c.key: max(c.terminal, len(c.header)) for c in shown}
    for row in rows:
        for c in shown[:2]:
            widths[c.key] = max(widths[c.key], len(c.text(row)))
    lines = [" ".join(c.header.ljust(widths[c.key]) if i < 2 else c.header.rjust(widths[c.key])
                      for i, c in enumerate(shown))]
    for row in rows:
        lines.append(" ".join(c.text(row).ljust(widths[c.key]) if i < 2 else c.text(row).rjust(widths[c.key])
                              for i, c in enumerate(shown)))
    return "\n".join(lines)


ADDRESS_COLUMNS: list[Column] = [
    Column("label", "scenario", doc="mode and sweep point"), Column("db", "database"),
    Column("address", "name resolved to", doc="the first address of the session's DNS answer: the one it used"),
    Column("host", "host", doc="whose address it is"), Column("site", "site"),
    Column("sessions", "sessions", doc="all repetitions"),
    Column("served", "served", doc="sessions with at least one successful mailbox operation in the window"),
    Column("success_pct", "mailbox ops ok", "%", ".1f", doc="successful mailbox operations / (those + failed "
                                                            "ones + dropped connections)"),
    Column("mailbox_ok", "ops ok"), Column("failures", "failures", doc="failed mailbox operations and drops"),
]


def shows_addresses(scenarios: list[Any]) -> bool:
    """The by-address table matters where users of one database resolved to different addresses."""
    for s in scenarios:
        seen: dict[str, set] = {}
        for row in s.by_address:
            seen.setdefault(row["db"], set()).add(row["address"])
        if any(len(v) > 1 for v in seen.values()):
            return True
    return False


def plain_table(columns: list[Column], rows: list[Any]) -> str:
    """Every column, aligned: the terminal's rendering of a secondary table."""
    cells = [[c.header for c in columns]] + [[c.text(r) for c in columns] for r in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    return "\n".join(" ".join(v.ljust(w) if i < 2 else v.rjust(w) for i, (v, w) in enumerate(zip(line, widths)))
                     for line in cells)


SESSION_COLUMNS: list[Column] = [
    Column("scenario", "scenario id"), Column("label", "scenario"), Column("mode", "mode"),
    Column("repetition", "repetition", doc="0-based"), Column("fault_index", "fault index"),
    Column("fault", "fault"), Column("session", "session"), Column("host", "client host"),
    Column("address", "client address"), Column("db", "database"),
    Column("cas_at_fault", "CAS before", doc="the CAS of its last success before the fault"),
    Column("cas_after", "CAS after", doc="the CAS of its first success after the drop"),
    Column("affected", "affected"), Column("dropped_ms", "drop", "ms", ".3f", doc="first drop after the fault"),
    Column("reconnect_ms", "reconnect", "ms", ".3f"), Column("recovered", "recovered"),
    Column("stalled", "stalled"), Column("longest_gap_ms", "longest gap", "ms", ".3f"),
    Column("collateral", "collateral"), Column("reauth", "re-auth"), Column("prompts", "prompts"),
    Column("silent_reauth", "silent re-auth"),
]
