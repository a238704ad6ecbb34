"""From a run folder to what people read: the analysis (events and captures -> typed
outcomes), the metrics (pure: defined once, docs/METRICS.md), the columns every table
shows, and the report. Metrics decide; the report only renders.
"""
