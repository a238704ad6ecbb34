"""The typed results of the metrics: what report, CSV and terminal table read.

One ``SessionFault`` per session and fault, one ``FaultRun`` per fault and run, one
``RunOutcome`` per run (scenario repetition); ``FaultSummary`` aggregates a fault over a
scenario's repetitions (one row of every table) and ``ScenarioSummary`` holds a scenario's
rows plus what belongs to the whole run (goodput, CPU, probes, messages). Definitions:
docs/METRICS.md.
"""

from __future__ import annotations

import statistics
from dataclasses import asdict, dataclass, field, fields
from typing import Any, Callable

from caslab.results.metrics.load import RecoveryLoad, summarize as summarize_loads
from caslab.results.metrics.nlb import Convergence
from caslab.results.metrics.stats import Distribution, median

PHASES = ("lb_noticed", "client_saw", "connected", "logged_on", "first_op")
PHASE_LABELS = {"lb_noticed": "load balancer noticed", "client_saw": "client saw reset / timeout",
                "connected": "connected", "logged_on": "logged on", "first_op": "first successful operation"}


@dataclass
class SessionFault:
    """One client session under one fault (times in ms after the fault instant)."""

    session: str
    host: str
    address: str | None           # the client address the session used
    cas_at_fault: str | None
    db: str | None
    affected: bool
    dropped_ms: float | None      # first drop (reset, timeout, failed operation) in the fault's window
    stalled: bool                 # no successful operation for longer than the stall threshold
    longest_gap_ms: float
    late: bool                    # an operation slower than the late threshold in the window
    disrupted: bool               # owns an outage (affected), or an outage no fault explains began in the window
    recovered: bool               # affected, owns an outage, and every owned outage ended
    reconnect_ms: float | None    # the first owned outage's end minus the fault instant (recovered only)
    cas_after: str | None         # the CAS of that success
    reauth: int                   # logons that needed credentials again, in the window
    prompts: int                  # of them, user-visible credential prompts (NTLM)
    phases: dict[str, float | None] | None = None
    silent_reauth: int = 0        # of them, silent re-authentications (Kerberos)
    undisturbed: bool = False     # affected, owns no outage, and served after the fault
    collateral: bool = False      # not affected, yet an outage no fault explains, or late, in the window

    @property
    def unrecovered(self) -> bool:
        """Affected, and neither served again after its outage nor undisturbed."""
        return self.affected and not self.recovered and not self.undisturbed


@dataclass
class HttpSessionFault:
    """One HTTP client session under one fault (or the whole window of a run without)."""

    session: str
    protocol: str                 # owa / eas / oa
    external: bool
    configured: bool              # autodiscover gave it a URL
    cas_at_fault: str | None
    affected: bool
    dropped_ms: float | None
    disrupted: bool
    recovered: bool               # affected, dropped, and served after the drop
    reconnect_ms: float | None
    relogins: int                 # logons a CAS forced (OWA 440, RPC auth_required)
    prompts: int                  # of them, seen by the user
    pings_lost: int               # ActiveSync long-polls that ended without their answer
    pings_reestablished: int      # 1 if a later Ping was answered after the first loss
    reestablish_ms: float | None  # that Ping's start after the fault
    disconnects: int              # broken long-lived exchanges (http_down)
    requests: int
    failed: int
    latencies_ms: list[float] = field(default_factory=list)  # successful requests in the window
    undisturbed: bool = False     # affected, not dropped, served after the fault


@dataclass
class HttpFaultRun:
    index: int                    # the fault's index; -1: a run without faults (its whole window)
    label: str
    t_ns: int
    window_end_ns: int
    sessions: list[HttpSessionFault]


@dataclass
class FaultRun:
    """One fault of one run."""

    index: int
    kind: str
    label: str
    t_ns: int
    elements: list[str]
    affects: str
    window_end_ns: int
    detection_ms: float | None
    sessions: list[SessionFault]
    convergence: Convergence = field(default_factory=Convergence)
    databases: dict[str, dict[str, Any]] = field(default_factory=dict)  # db -> unmounted_ms, missing, dismounted
    load: RecoveryLoad = field(default_factory=RecoveryLoad)  # the cores during the recovery (metrics.load)

    def count(self, attr: str) -> int:
        return sum(1 for s in self.sessions if getattr(s, attr))

    @property
    def reconnect_ms(self) -> list[float]:
        return [s.reconnect_ms for s in self.sessions if s.affected and s.reconnect_ms is not None]


@dataclass
class Goodput:
    """Successful operations per second around the first fault (bins of 1 s, k=0 starts at it)."""

    first_bin: int = 0                          # index of bins[0] relative to the fault
    all_sessions: list[int] = field(default_factory=list)
    unaffected: list[int] = field(default_factory=list)
    pre_fault: float | None = None              # mean ops/s of all sessions before the fault
    pre_fault_unaffected: float | None = None
    dip: float | None = None                    # lowest post-fault second / pre-fault level (all sessions)
    dip_unaffected: float | None = None


@dataclass
class RunOutcome:
    scenario: str
    rep: int
    complete: bool
    t0_ns: int                                 # first fault (or window start): the plots' zero
    sessions: list[str]
    faults: list[FaultRun]
    goodput: Goodput
    cpu_idle: dict[str, float | None]          # mean, min, pre_fault, samples over the window
    cpu_series: list[float]
    probe_gap_ms: float | None
    app_probe_gap_ms: float | None
    messages: dict[str, int]
    process_exits: list[dict[str, Any]]
    probe_availability: dict[str, list[tuple[float, float]]] = field(default_factory=dict)  # kind -> (s, % answered)
    cost: dict[str, Any] = field(default_factory=dict)  # CPU ms per kind of process, and per successful operation
    capture_check: dict[str, Any] | None = None
    never_served: int = 0                      # sessions without one successful operation in the window
    flood: dict[str, Any] = field(default_factory=dict)  # Windows NLB: bytes flooded to non-member hosts
    by_address: list[dict[str, Any]] = field(default_factory=list)  # served users per (db, resolved address)
    http: list[HttpFaultRun] = field(default_factory=list)


# ---- a row's aggregates, declared with their field ---------------------------------------------
# A field of FaultSummary made with one of these is computed by ``summary.fault_row`` from
# the row's sessions and the fault's runs (all repetitions): a metric's aggregation is
# written once, where its field is.

Aggregate = Callable[[list[SessionFault], list[FaultRun]], Any]


def aggregate(of: Aggregate, default: Any = None, factory: Callable[[], Any] | None = None) -> Any:
    if factory is not None:
        return field(default_factory=factory, metadata={"aggregate": of})
    return field(default=default, metadata={"aggregate": of})


def sessions_with(attr: str, affected_only: bool = False) -> Any:
    """The sum of a session's ``attr`` (a flag counts 1) over the row's sessions (of the
    affected ones only)."""
    return aggregate(lambda sessions, faults: sum(getattr(s, attr) for s in sessions
                                                  if s.affected or not affected_only), 0)


def over_faults(of: Callable[[list[FaultRun]], Any], default: Any = None,
                factory: Callable[[], Any] | None = None) -> Any:
    """A value of the fault's runs (one per repetition)."""
    return aggregate(lambda sessions, faults: of(faults), default, factory)


def most(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return max(known) if known else None


def total(values: list[int | None]) -> int | None:
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def reconnects(faults: list[FaultRun]) -> Distribution:
    """Every recovered session's reconnect time, with the mean of each repetition's."""
    return Distribution.of([v for f in faults for v in f.reconnect_ms],
                           [statistics.fmean(f.reconnect_ms) for f in faults if f.reconnect_ms])


def detections(faults: list[FaultRun]) -> Distribution:
    values = [f.detection_ms for f in faults if f.detection_ms is not None]
    return Distribution.of(values, rep_means=values)  # one detection per repetition


def failed_databases(faults: list[FaultRun]) -> list[dict[str, Any]]:
    return [d for f in faults for d in f.databases.values()]


def longest_unmounted(faults: list[FaultRun]) -> float | None:
    mounted = [d["unmounted_ms"] for d in failed_databases(faults) if d["unmounted_ms"] is not None]
    return max(mounted) if mounted else None


def copy_queue_lost(faults: list[FaultRun]) -> int | None:
    missing = [d["missing"] for d in failed_databases(faults) if isinstance(d.get("missing"), int)]
    return sum(missing) if missing else None


def converged(faults: list[FaultRun]) -> Distribution:
    return Distribution.of([f.convergence.converged_ms for f in faults if f.convergence.converged_ms is not None])


def aggregates(sessions: list[SessionFault], faults: list[FaultRun]) -> dict[str, Any]:
    """Every declared aggregate of a FaultSummary row."""
    return {f.name: f.metadata["aggregate"](sessions, faults) for f in fields(FaultSummary)
            if "aggregate" in f.metadata}


@dataclass(kw_only=True)
class FaultSummary:
    """One fault of one scenario over all its repetitions: one row of every results table.
    Fields made with ``sessions_with`` / ``over_faults`` / ``aggregate`` declare how they
    are computed; the rest are set by ``summary.fault_row`` (the scenario's own figures,
    copied to each of its rows)."""

    scenario: str
    label: str
    mode: str
    fault_index: int
    fault: str
    kind: str
    repetitions: int = over_faults(len, 0)
    sessions: int = aggregate(lambda sessions, faults: len(sessions), 0)
    affected: int = sessions_with("affected")
    recovered: int = sessions_with("recovered")
    unrecovered: int = sessions_with("unrecovered")
    collateral: int = sessions_with("collateral")
    disrupted: int = sessions_with("disrupted")
    stalled: int = sessions_with("stalled")
    reauth: int = sessions_with("reauth", affected_only=True)
    prompts: int = sessions_with("prompts", affected_only=True)
    reconnect_ms: Distribution = over_faults(reconnects, factory=Distribution)
    detection_ms: Distribution = over_faults(detections, factory=Distribution)
    phases_ms: dict[str, float | None]
    messages: dict[str, int]
    probe_gap_ms: float | None
    app_probe_gap_ms: float | None
    capture_check: dict[str, Any] | None
    cpu_idle_pct: float | None
    fidelity_ok: bool | None      # None: some repetition had no CPU sample (unknown)
    trustworthy: bool
    goodput_dip_unaffected: float | None
    client_deaths: int
    cpu_ms_per_op: float | None = None
    never_served: int = 0
    convergence_ms: Distribution = over_faults(converged, factory=Distribution)
    convergence_took_ms: float | None = over_faults(lambda faults: median(
        [f.convergence.took_ms for f in faults if f.convergence.took_ms is not None]))
    convergence_restarts: int | None = over_faults(lambda faults: most([f.convergence.restarts for f in faults]))
    buckets_moved: int | None = over_faults(lambda faults: most([f.convergence.buckets_moved for f in faults]))
    conns_broken: int | None = over_faults(lambda faults: total([f.convergence.conns_broken for f in faults]))
    conns_departed: int | None = over_faults(lambda faults: total([f.convergence.conns_departed for f in faults]))
    flooded_bytes: int | None = None
    flood_kbit_s: float | None = None
    heartbeat_bytes: int | None = None
    silent_reauth: int = sessions_with("silent_reauth", affected_only=True)
    # the longest time a failed database stayed unmounted (of those a copy mounted again)
    db_unmounted_ms: float | None = over_faults(longest_unmounted)
    # failed databases no copy mounted before the window closed
    dbs_dismounted: int = over_faults(lambda faults: sum(d["dismounted"] for d in failed_databases(faults)), 0)
    # rows the mounted copies knew they lacked (the copy queue)
    copy_missing: int | None = over_faults(copy_queue_lost)
    undisturbed: int = sessions_with("undisturbed")  # affected, owned no outage, and were served
    phases_n: int = 0                     # recovered sessions with every milestone in causal order
    # the cores during the recovery span, median over repetitions (caslab.results.metrics.load)
    recovery_load: dict[str, Any] = over_faults(lambda faults: summarize_loads([f.load for f in faults]), factory=dict)


@dataclass
class ProtocolSummary:
    """One HTTP protocol under one fault of one scenario, over its repetitions: one row of
    the HTTP table (``caslab.results.columns.HTTP_COLUMNS``)."""

    scenario: str
    label: str
    mode: str
    fault_index: int
    fault: str
    protocol: str
    clients: str                  # internal (an AD site) / Internet
    repetitions: int
    sessions: int
    configured: int
    requests: int
    failed: int
    affected: int
    disrupted: int
    recovered: int
    unrecovered: int
    relogins: int
    prompts: int
    pings_lost: int
    pings_reestablished: int
    disconnects: int
    reconnect_ms: Distribution
    reestablish_ms: Distribution
    latency_ms: Distribution
    trustworthy: bool = True
    undisturbed: int = 0


@dataclass
class ScenarioSummary:
    id: str
    label: str
    mode: str
    params: dict[str, Any]
    repetitions: int
    sessions: int
    faults: list[FaultSummary]
    goodput: dict[str, Any]
    cpu_idle_pct: float | None
    cpu_idle_min_pct: float | None
    fidelity_ok: bool | None
    trustworthy: bool
    untrustworthy_reasons: list[str]
    notices: list[str]
    messages: dict[str, int]
    probe_gap_ms: float | None
    app_probe_gap_ms: float | None
    capture_check: dict[str, Any] | None
    process_exits: list[dict[str, Any]]
    cost: dict[str, Any] = field(default_factory=dict)
    never_served: int = 0
    flood: dict[str, Any] = field(default_factory=dict)
    by_address: list[dict[str, Any]] = field(default_factory=list)  # caslab.results.metrics.addresses, all repetitions
    http: list[ProtocolSummary] = field(default_factory=list)
    cpu_idle_by_repetition: list[float | None] = field(default_factory=list)


def to_dict(obj: Any) -> Any:
    return asdict(obj)
