"""A table's column, declared once: its key (the CSV header), header, unit, format and
doc, and how a row's value is found (a dotted path through objects or dicts) and shown.
Generic: the lab's tables are declared with it in ``caslab.results.columns`` and, for what
only one HA mode measures, in that mode's own file."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable


def path(dotted: str) -> Callable[[Any], Any]:
    """Getter for a dotted path through objects or dicts ('reconnect_ms.p50')."""
    parts = dotted.split(".")

    def get(row: Any) -> Any:
        value = row
        for part in parts:
            if value is None:
                return None
            value = value.get(part) if isinstance(value, dict) else getattr(value, part, None)
        return value
    return get


@dataclass(frozen=True)
class Column:
    key: str                    # the CSV header and the name in docs/RESULTS.md
    header: str                 # what people read
    unit: str = ""
    fmt: str = ""               # format spec for numbers ('.1f'); '' = as is
    terminal: int = 0           # width in the terminal table (0: not shown there)
    source: str = ""            # dotted path into a row (default: key)
    doc: str = ""

    def value(self, row: Any) -> Any:
        return path(self.source or self.key)(row)

    def text(self, row: Any, missing: str = "-") -> str:
        value = self.value(row)
        if value is None:
            return missing
        if isinstance(value, bool):
            return "yes" if value else "no"
        if isinstance(value, list):
            return "[" + ", ".join(f"{v:{self.fmt}}" if self.fmt and isinstance(v, (int, float)) else str(v)
                                   for v in value) + "]"
        if self.fmt and isinstance(value, (int, float)):
            return f"{value:{self.fmt}}"
        return str(value)

    @property
    def title(self) -> str:
        return f"{self.header} ({self.unit})" if self.unit else self.header
