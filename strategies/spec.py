"""Strategy specs: `NAME[:key=value,...]`, typed parameters with explicit units.

A spec is user input, so every problem becomes one `SpecError` line that names what was
wrong and what is allowed; nothing here raises anything else on bad text.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, Literal

ParamKind = Literal["int", "duration", "choice", "bool"]

_DURATION = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(us|µs|ms|s)\s*$")
_UNIT_SECONDS = {"us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0}


class SpecError(ValueError):
    """A strategy spec that cannot be used; str() is the one-line explanation."""


def parse_duration(text: str) -> float:
    """'10ms' -> 0.01. A unit is required: a bare number is ambiguous."""
    match = _DURATION.match(text)
    if not match:
        raise SpecError(f"{text!r} is not a duration: write a number with a unit (us, ms, s)")
    return float(match.group(1)) * _UNIT_SECONDS[match.group(2)]


def format_duration(seconds: float) -> str:
    """0.01 -> '10ms', 1.0 -> '1s', 0.0005 -> '500us' (round-trips through parse_duration)."""
    for unit, scale in (("s", 1.0), ("ms", 1e-3), ("us", 1e-6)):
        value = seconds / scale
        if value >= 1 or unit == "us":
            text = f"{value:.6f}".rstrip("0").rstrip(".")
            return f"{text}{unit}"
    raise AssertionError("unreachable")


@dataclass(frozen=True, slots=True)
class Param:
    """One strategy parameter: name, type, default, bounds and what it means in Kamailio."""

    name: str
    kind: ParamKind
    default: Any
    help: str
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[str, ...] = ()

    def parse(self, text: str) -> Any:
        if self.kind == "int":
            try:
                value: Any = int(text.strip())
            except ValueError:
                raise SpecError(
                    f"{self.name}={text!r}: expected an integer ({self.allowed()})"
                ) from None
        elif self.kind == "duration":
            try:
                value = parse_duration(text)
            except SpecError as exc:
                raise SpecError(f"{self.name}: {exc}") from None
        elif self.kind == "bool":
            lowered = text.strip().lower()
            if lowered not in ("0", "1", "true", "false", "yes", "no"):
                raise SpecError(f"{self.name}={text!r}: expected 0 or 1")
            value = lowered in ("1", "true", "yes")
        else:
            value = text.strip()
            if value not in self.choices:
                raise SpecError(f"{self.name}={text!r}: expected one of {', '.join(self.choices)}")
        self.check(value)
        return value

    def check(self, value: Any) -> None:
        if self.kind in ("int", "duration") and value is not None:
            if self.minimum is not None and value < self.minimum:
                raise SpecError(f"{self.name}={self.format(value)} is below {self.allowed()}")
            if self.maximum is not None and value > self.maximum:
                raise SpecError(f"{self.name}={self.format(value)} is above {self.allowed()}")

    def format(self, value: Any) -> str:
        if value is None:
            return "unset"
        if self.kind == "duration":
            return format_duration(value)
        if self.kind == "bool":
            return "1" if value else "0"
        return str(value)

    def allowed(self) -> str:
        if self.kind == "choice":
            return "one of " + "|".join(self.choices)
        if self.kind == "bool":
            return "0 or 1"
        low = "" if self.minimum is None else self.format(self.minimum)
        high = "" if self.maximum is None else self.format(self.maximum)
        unit = " (with a unit: us, ms, s)" if self.kind == "duration" else ""
        return f"range {low}..{high}{unit}"


def split_spec(text: str) -> tuple[str, dict[str, str]]:
    """'name:k=v,k2=v2' -> ('name', {'k': 'v', 'k2': 'v2'}); syntax errors only."""
    if not isinstance(text, str) or not text.strip():
        raise SpecError("empty strategy spec: write NAME[:key=value,...]")
    name, _, rest = text.strip().partition(":")
    name = name.strip()
    pairs: dict[str, str] = {}
    if rest.strip():
        for item in rest.split(","):
            key, sep, value = item.partition("=")
            key = key.strip()
            if not sep or not key or not value.strip():
                raise SpecError(f"{text!r}: {item.strip()!r} is not key=value")
            if key in pairs:
                raise SpecError(f"{text!r}: {key} given twice")
            pairs[key] = value
    return name, pairs
