"""Metrics computed from the event log alone (definitions: docs/METRICS.md).

``analyze_run`` turns one run's events into a typed ``RunOutcome``; ``summarize_scenario``
aggregates a scenario's runs into a ``ScenarioSummary`` with one ``FaultSummary`` row per
fault. Report, CSV and terminal table only read these objects. The same events give the
same outcome, byte for byte once serialised.
"""

from caslab.results.metrics.outcomes import (
    PHASE_LABELS, PHASES, FaultRun, FaultSummary, Goodput, RunOutcome, ScenarioSummary, SessionFault, to_dict,
)
from caslab.results.metrics.runs import RunParams, analyze_run, message_integrity
from caslab.results.metrics.stats import Distribution, confidence_interval, percentile
from caslab.results.metrics.summary import summarize_scenario
from caslab.results.metrics.trace import Trace, session_trace

__all__ = ["PHASES", "PHASE_LABELS", "Distribution", "FaultRun", "FaultSummary", "Goodput", "RunOutcome",
           "RunParams", "ScenarioSummary", "SessionFault", "Trace", "analyze_run", "confidence_interval",
           "message_integrity", "percentile", "session_trace", "summarize_scenario", "to_dict"]
