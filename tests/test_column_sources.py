"""Every column of the results tables reads something that exists: its source (a dotted
path) is walked through the row's declared fields, and where the path enters a dict, through
the keys the dict's real producer writes. A typo in a source would otherwise render "-"
in every report, silently (``Column.value`` gives None for what it cannot find)."""

from __future__ import annotations

import dataclasses
import types
import typing

import pytest

from caslab.results.columns import COLUMNS, HTTP_COLUMNS, Column
from caslab.results.metrics.outcomes import FaultSummary, ProtocolSummary
from caslab.results.metrics.runs import message_integrity
from caslab.results.metrics.summary import merge_capture_checks

# What the dict-valued fields hold, as their producers write them.
DICT_SAMPLES = {
    (FaultSummary, "messages"): message_integrity([], None),
    (FaultSummary, "capture_check"): merge_capture_checks([{"status": "not_captured"}]),
}


def without_none(hint):
    """X from ``X | None`` (or Optional[X])."""
    args = [a for a in typing.get_args(hint) if a is not type(None)]
    if typing.get_origin(hint) in (typing.Union, types.UnionType) and len(args) == 1:
        return args[0]
    return hint


def resolve(row_type: type, dotted: str) -> None:
    """Walk ``dotted`` through ``row_type``; AssertionError naming the first part that is missing."""
    current, sample = row_type, None
    for part in dotted.split("."):
        if sample is not None:
            assert part in sample, f"{dotted!r}: {part!r} is not a key its producer writes ({sorted(sample)})"
            sample = sample[part] if isinstance(sample[part], dict) else None
            current = None
            continue
        assert current is not None and dataclasses.is_dataclass(current), f"{dotted!r}: cannot look into {part!r}"
        fields = {f.name for f in dataclasses.fields(current)}
        attribute = getattr(current, part, None)
        assert part in fields or isinstance(attribute, property), f"{dotted!r}: {current.__name__} has no {part!r}"
        hint = typing.get_type_hints(current)[part] if part in fields else \
            typing.get_type_hints(attribute.fget).get("return")
        hint = without_none(hint)
        if typing.get_origin(hint) is dict or hint is dict:
            sample = DICT_SAMPLES.get((current, part))
            assert sample is not None, f"{dotted!r}: no producer sample for the dict {current.__name__}.{part}"
        current = hint if isinstance(hint, type) else None


@pytest.mark.parametrize("row_type, column", [(FaultSummary, c) for c in COLUMNS] +
                         [(ProtocolSummary, c) for c in HTTP_COLUMNS], ids=lambda v: getattr(v, "key", None))
def test_every_columns_source_resolves(row_type: type, column: Column):
    resolve(row_type, column.source or column.key)


@pytest.mark.parametrize("source", ["reconnect_ms.p5O", "mesages.lost", "messages.lsot", "capture_check.median_ms",
                                    "reconnect_p50"])
def test_a_typo_in_a_source_is_caught(source: str):
    with pytest.raises(AssertionError):
        resolve(FaultSummary, source)


def test_every_tables_keys_are_unique():
    """A mode's own column may not shadow a common one (a CSV header appears once)."""
    from caslab.results.columns import ADDRESS_COLUMNS, SESSION_COLUMNS
    for table in (COLUMNS, HTTP_COLUMNS, ADDRESS_COLUMNS, SESSION_COLUMNS):
        keys = [c.key for c in table]
        assert len(keys) == len(set(keys)), sorted(k for k in keys if keys.count(k) > 1)


def test_a_modes_own_columns_join_the_results_table_from_its_file():
    from caslab.modes import MODES
    own = [c for mode in MODES.values() for c in mode.columns]
    assert [c.key for c in MODES["wnlb"].columns][:1] == ["convergence_ms"]
    assert all(c in COLUMNS for c in own)
    assert COLUMNS.index(own[0]) < [c.key for c in COLUMNS].index("cpu_idle_pct")
    common = {c.key for c in COLUMNS} - {c.key for c in own}
    assert not any(k.startswith(("convergence", "buckets", "flood", "heartbeat", "conns_")) for k in common)


def test_a_rows_declared_aggregates_are_what_summary_computes():
    """Every FaultSummary field made with ``aggregate`` is computed by fault_row from the
    row's sessions and runs; none is left at its default."""
    from caslab.results.metrics.outcomes import aggregates
    declared = {f.name for f in dataclasses.fields(FaultSummary) if "aggregate" in f.metadata}
    assert {"affected", "recovered", "reconnect_ms", "buckets_moved", "db_unmounted_ms"} <= declared
    assert set(aggregates([], [])) == declared
