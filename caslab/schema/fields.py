"""The vocabulary of spec validation: ``Field`` (a key's type, default and check) and
``SpecError`` (file, key, what was expected). Kept apart from ``caslab.spec.experiment`` so that the
mode and fault registries can declare their own spec keys with it."""

from __future__ import annotations

import difflib
import math
import re
from dataclasses import dataclass
from typing import Any, Callable

NUM = (int, float)


class SpecError(ValueError):
    """A spec is wrong; the message names the file, the key and what was expected."""

    def __init__(self, source: str, key: str, expected: str, got: Any = None):
        self.source, self.key, self.expected = source, key, expected
        got_text = "" if got is None else f", got {got!r}"
        super().__init__(f"{source}: {key}: expected {expected}{got_text}")


@dataclass(frozen=True)
class Field:
    kind: type | tuple[type, ...]
    default: Any
    check: Callable[[Any], bool] | None = None
    expected: str = ""
    doc: str = ""
    options: tuple[str, ...] = ()  # the names a value must be among: "did you mean" draws on them

    def validate(self, source: str, key: str, value: Any) -> Any:
        """The value, checked (and a number made a float); SpecError when it is wrong."""
        kinds = self.kind if isinstance(self.kind, tuple) else (self.kind,)
        if isinstance(value, bool) and bool not in kinds:
            raise SpecError(source, key, self.expected or kind_name(kinds), value)
        if not isinstance(value, kinds):
            raise SpecError(source, key, self.expected or kind_name(kinds), value)
        if isinstance(value, float) and not math.isfinite(value):
            raise SpecError(source, key, (self.expected or kind_name(kinds)) + " (a finite number)", value)
        if self.check is not None and not self.check(value):
            raise SpecError(source, key, (self.expected or kind_name(kinds)) + did_you_mean(value, self.options), value)
        return float(value) if kinds == NUM else value


def did_you_mean(value: Any, options: tuple[str, ...]) -> str:
    """' (did you mean 'x'?)' for the first unknown name in a value (a name or a list), or ''."""
    names = [value] if isinstance(value, str) else [v for v in value if isinstance(v, str)] \
        if isinstance(value, list) else []
    for name in names:
        if name not in options:
            close = difflib.get_close_matches(name, list(options), n=1)
            return f" (did you mean '{close[0]}'?)" if close else ""
    return ""


def kind_name(kinds: tuple[type, ...]) -> str:
    names = {int: "an integer", float: "a number", str: "a string", bool: "true or false",
             list: "a list", dict: "a table"}
    return " or ".join(names.get(k, k.__name__) for k in kinds)


def positive(v) -> bool:
    return v > 0


def non_negative(v) -> bool:
    return v >= 0


def one_of(options) -> Callable[[Any], bool]:
    return lambda v: v in options


def list_of(kind, pred=None) -> Callable[[Any], bool]:
    return lambda v: all(isinstance(x, kind) and not isinstance(x, bool) and (pred is None or pred(x)) for x in v)


def int_range(default: int, low: int, high: int, doc: str = "") -> Field:
    return Field(int, default, lambda v: low <= v <= high, f"an integer from {low} to {high}", doc)


def num_range(default: float, low: float, high: float, unit: str = "", doc: str = "") -> Field:
    unit_text = f" {unit}" if unit else ""
    return Field(NUM, default, lambda v: low <= v <= high, f"a number from {low:g} to {high:g}{unit_text}", doc)


def choice(default: str, options: tuple[str, ...], doc: str = "") -> Field:
    return Field(str, default, one_of(options), f"one of {list(options)}", doc, tuple(options))


def pattern(default: str, regex: str, expected: str, doc: str = "") -> Field:
    compiled = re.compile(regex)
    return Field(str, default, lambda v: bool(compiled.fullmatch(v)), expected, doc)
