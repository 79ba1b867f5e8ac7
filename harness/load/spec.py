"""Load specs and their seeded call schedules.

A load spec says what traffic to offer, in one line with explicit units:

    reinvite:rate=20/s,duration=60s,reinvites=10,gap=1ms,arrival=poisson

`rate` is new calls per second; each call sends `reinvites` in-dialog re-INVITEs spaced by
`gap` after the previous transaction completes, so the re-INVITE rate is rate × reinvites.
`race_code` is the final status that counts as a lost glare race in the ledger (491).

Arrivals (the intended start time of each call, an open-loop schedule):
  constant  evenly spaced, 1/rate apart, the first at 0
  poisson   exponential inter-arrival times with mean 1/rate (seeded)
  burst     groups of `burst` calls at one instant, groups burst/rate apart
  ramp      rate rising (or falling) linearly from `start_rate` to `rate` over the duration
  step      `steps` equal-length steps at rate/steps, 2·rate/steps, … rate
ramp and step are paced, not random: call i starts when the cumulative offered rate
reaches i, so they show the shape of the load without adding noise to it.

A schedule depends only on the spec and the seed (its own random.Random, never the global
one), so every strategy is driven by the identical load. `call_plans` draws it lazily, one
call at a time, so a run holds only the calls it has started, not the whole schedule;
`schedule` is the same calls as a list. This module does no I/O.
"""

from __future__ import annotations

import bisect
import dataclasses
import math
import random
import re
from collections.abc import Iterator
from typing import Any, Literal

from core import compiled

Arrival = Literal["constant", "poisson", "burst", "ramp", "step"]
ARRIVALS: tuple[str, ...] = ("constant", "poisson", "burst", "ramp", "step")
SCENARIOS: tuple[str, ...] = ("reinvite", "idle")

MAX_CALLS = 10_000_000
MAX_DURATION_US = 86_400 * 1_000_000

# Plausibility, from what the sim measured on this 2-vCPU machine (`deferbench run --jobs 1
# --strategy inline --load ...`, /usr/bin/time): 1,000/s × 10 s × 10 = 100,000 re-INVITEs at
# 10,000/s, far beyond capacity, took 23.7 s and 931 MB with the compiled build (4,200 per
# wall second, ≈ 7.5 KB per re-INVITE stuck in the backlog); from the sources
# (`core.compiled`) 37 s the same hour (2,700 per wall second), 62 s on a slower day (1,600,
# the figure kept). Kamailio and the sim carry at most ≈ 3,000 re-INVITEs/s here (README:
# capacity).
SIM_REINVITES_PER_WALL_S = 4_200 if compiled.ACTIVE else 1_600  # the overloaded figures
MAX_REINVITES = 5_000_000  # per strategy: ≈ 20 min of sim at 4,200/s, 52 min at 1,600/s
CARRIED_REINVITES_PER_S = 3_000  # what any target here carries at most
BACKLOG_KB_PER_REINVITE = 7.5
MAX_BACKLOG_GB = 4.0  # per strategy (one pool worker each)

_RATE = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*/\s*s\s*$")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*(us|µs|ms|s)\s*$")
_US_PER_UNIT = {"us": 1, "µs": 1, "ms": 1_000, "s": 1_000_000}
_KEYS = ("rate", "duration", "reinvites", "gap", "arrival", "race_code", "burst", "start_rate")
_KEYS += ("steps",)

DEFAULT_BURST = 10
DEFAULT_STEPS = 5


class LoadError(ValueError):
    """A load spec that cannot be used; str() is the one-line explanation."""


def _parse_rate(key: str, text: str) -> float:
    match = _RATE.match(text)
    if not match:
        raise LoadError(f"{key}={text!r}: write calls per second with the unit, e.g. {key}=20/s")
    return float(match.group(1))


def _parse_duration_us(key: str, text: str) -> int:
    match = _DURATION.match(text)
    if not match:
        raise LoadError(f"{key}={text!r}: write a number with a unit (us, ms, s), e.g. 10ms")
    return round(float(match.group(1)) * _US_PER_UNIT[match.group(2)])


def _parse_int(key: str, text: str, low: int, high: int) -> int:
    try:
        value = int(text.strip())
    except ValueError:
        raise LoadError(f"{key}={text!r}: expected an integer in {low}..{high}") from None
    if not low <= value <= high:
        raise LoadError(f"{key}={value} is outside {low}..{high}")
    return value


def format_rate(rate: float) -> str:
    """20.0 -> '20/s', 0.5 -> '0.5/s' (repr, so it parses back to the same float)."""
    text = repr(float(rate))
    return (text[:-2] if text.endswith(".0") else text) + "/s"


def format_duration(seconds: float) -> str:
    """Whole microseconds in the largest unit that keeps them exact: '60s', '1ms', '1500us'."""
    us = round(seconds * 1e6)
    for unit, scale in (("s", 1_000_000), ("ms", 1_000)):
        if us % scale == 0 and us != 0:
            return f"{us // scale}{unit}"
    return f"{us}us"


@dataclasses.dataclass(frozen=True, slots=True)
class CallPlan:
    """One call of the schedule: its index and intended start time (s from the run start)."""

    index: int
    start: float


@dataclasses.dataclass(frozen=True, slots=True)
class LoadSpec:
    """A validated load. Durations are seconds (whole microseconds), rates calls/s."""

    scenario: str = "reinvite"
    rate: float = 20.0
    duration: float = 10.0
    reinvites: int = 10
    gap: float = 0.001
    arrival: Arrival = "poisson"
    race_code: int = 491
    burst: int | None = None  # only for arrival=burst
    start_rate: float | None = None  # only for arrival=ramp
    steps: int | None = None  # only for arrival=step

    @property
    def idle(self) -> bool:
        """No calls at all: the server alone (idle CPU and wake-ups)."""
        return self.rate == 0 and not self.start_rate

    @property
    def spec(self) -> str:
        """The canonical spec string; parse_load(spec.spec) == spec."""
        if self.scenario == "idle":
            return f"idle:duration={format_duration(self.duration)}"
        parts = [
            f"rate={format_rate(self.rate)}",
            f"duration={format_duration(self.duration)}",
            f"reinvites={self.reinvites}",
            f"gap={format_duration(self.gap)}",
            f"arrival={self.arrival}",
            f"race_code={self.race_code}",
        ]
        if self.burst is not None:
            parts.append(f"burst={self.burst}")
        if self.start_rate is not None:
            parts.append(f"start_rate={format_rate(self.start_rate)}")
        if self.steps is not None:
            parts.append(f"steps={self.steps}")
        return f"{self.scenario}:" + ",".join(parts)

    @property
    def call_rate(self) -> float:
        """New calls per second (the final rate for ramp and step)."""
        return self.rate

    @property
    def reinvite_rate(self) -> float:
        """Deferred re-INVITEs offered per second: rate × reinvites."""
        return self.rate * self.reinvites

    def fields(self) -> dict[str, Any]:
        """Parsed fields with units in their names, for the result file."""
        fields: dict[str, Any] = {
            "scenario": self.scenario,
            "rate_per_s": self.rate,
            "duration_s": self.duration,
            "reinvites": self.reinvites,
            "gap_s": self.gap,
            "arrival": self.arrival,
            "race_code": self.race_code,
        }
        if self.burst is not None:
            fields["burst"] = self.burst
        if self.start_rate is not None:
            fields["start_rate_per_s"] = self.start_rate
        if self.steps is not None:
            fields["steps"] = self.steps
        return fields


def parse_load(text: str) -> LoadSpec:
    """'reinvite:rate=20/s,...' -> LoadSpec; anything wrong raises one LoadError line.

    The scenario may be left out ('rate=50/s,arrival=constant'); unset keys take the
    defaults rate=20/s, duration=10s, reinvites=10, gap=1ms, arrival=poisson, race_code=491.
    """
    if not isinstance(text, str) or not text.strip():
        raise LoadError("empty load spec: write reinvite:rate=20/s,duration=10s,...")
    text = text.strip()
    head, sep, rest = text.partition(":")
    if not sep and "=" in head:
        head, rest = "reinvite", text
    scenario = head.strip()
    if scenario not in SCENARIOS:
        raise LoadError(f"unknown load scenario {scenario!r}: allowed {', '.join(SCENARIOS)}")
    keys = ("duration",) if scenario == "idle" else _KEYS
    pairs: dict[str, str] = {}
    for item in rest.split(",") if rest.strip() else []:
        key, eq, value = item.partition("=")
        key = key.strip()
        if not eq or not key or not value.strip():
            raise LoadError(f"load spec: {item.strip()!r} is not key=value")
        if key not in keys:
            raise LoadError(f"unknown {scenario} load key {key!r}: allowed {', '.join(keys)}")
        if key in pairs:
            raise LoadError(f"load key {key} given twice")
        pairs[key] = value

    values: dict[str, Any] = {"scenario": scenario}
    if scenario == "idle":
        values.update(rate=0.0, arrival="constant")
    if "rate" in pairs:
        values["rate"] = _parse_rate("rate", pairs["rate"])
    if "start_rate" in pairs:
        values["start_rate"] = _parse_rate("start_rate", pairs["start_rate"])
    if "duration" in pairs:
        values["duration"] = _parse_duration_us("duration", pairs["duration"]) / 1e6
    if "gap" in pairs:
        values["gap"] = _parse_duration_us("gap", pairs["gap"]) / 1e6
    if "reinvites" in pairs:
        values["reinvites"] = _parse_int("reinvites", pairs["reinvites"], 1, 100_000)
    if "race_code" in pairs:
        values["race_code"] = _parse_int("race_code", pairs["race_code"], 400, 699)
    if "burst" in pairs:
        values["burst"] = _parse_int("burst", pairs["burst"], 1, 1_000_000)
    if "steps" in pairs:
        values["steps"] = _parse_int("steps", pairs["steps"], 1, 10_000)
    if "arrival" in pairs:
        arrival = pairs["arrival"].strip()
        if arrival not in ARRIVALS:
            raise LoadError(f"arrival={arrival!r}: allowed {', '.join(ARRIVALS)}")
        values["arrival"] = arrival
    return validate(LoadSpec(**values))


def validate(spec: LoadSpec) -> LoadSpec:
    """Check cross-field rules and fill the arrival's own default; returns the spec to use."""
    if spec.scenario not in SCENARIOS:
        raise LoadError(f"unknown load scenario {spec.scenario!r}: allowed {', '.join(SCENARIOS)}")
    if spec.arrival not in ARRIVALS:
        raise LoadError(f"arrival={spec.arrival!r}: allowed {', '.join(ARRIVALS)}")
    if spec.scenario == "idle" and not (spec.rate == 0 and spec.arrival == "constant"):
        raise LoadError("an idle load has no calls: idle:duration=DURATION")
    if not spec.rate >= 0 or not math.isfinite(spec.rate):
        raise LoadError(f"rate={format_rate(spec.rate)}: must be a positive number of calls/s")
    if spec.scenario != "idle" and spec.rate == 0 and not spec.start_rate:
        raise LoadError(
            "rate=0/s offers no calls: for the idle figures (idle CPU, wake-ups/s) write "
            f"idle:duration={format_duration(spec.duration)}"
        )
    duration_us = round(spec.duration * 1e6)
    if not 0 < duration_us <= MAX_DURATION_US:
        raise LoadError(f"duration={format_duration(spec.duration)}: allowed 1us..86400s")
    if spec.gap < 0:
        raise LoadError("gap: must not be negative")
    own = {"burst": "burst", "start_rate": "ramp", "steps": "step"}
    for key, arrival in own.items():
        if getattr(spec, key) is not None and spec.arrival != arrival:
            raise LoadError(f"{key} applies only to arrival={arrival} (not {spec.arrival})")
    changes: dict[str, Any] = {}
    if spec.arrival == "burst" and spec.burst is None:
        changes["burst"] = DEFAULT_BURST
    if spec.arrival == "ramp" and spec.start_rate is None:
        changes["start_rate"] = 0.0
    if spec.arrival == "step" and spec.steps is None:
        changes["steps"] = DEFAULT_STEPS
    if changes:
        spec = dataclasses.replace(spec, **changes)
    peak = max(spec.rate, spec.start_rate or 0.0)
    if peak * spec.duration > MAX_CALLS:
        raise LoadError(
            f"rate × duration offers over {MAX_CALLS:,} calls: lower the rate or the duration"
        )
    return spec


def offered_reinvites(spec: LoadSpec) -> float:
    """Re-INVITEs the schedule offers in all (ramp: the mean of its two rates)."""
    mean_rate = (spec.rate + spec.start_rate) / 2 if spec.arrival == "ramp" else spec.rate
    return mean_rate * spec.duration * spec.reinvites


def check_plausible(spec: LoadSpec) -> None:
    """Refuse (LoadError) a load no target here runs in about an hour or in memory (the
    figures above); commands call it before anything runs."""
    total = offered_reinvites(spec)
    if total > MAX_REINVITES:
        raise LoadError(
            f"{spec.spec} offers {total:,.0f} re-INVITEs per strategy, over the "
            f"{MAX_REINVITES:,} limit: the sim runs ≈{SIM_REINVITES_PER_WALL_S:,} per wall "
            f"second here (≈ {MAX_REINVITES / SIM_REINVITES_PER_WALL_S / 60:.0f} min for the "
            "limit); lower rate, duration or reinvites"
        )
    peak = max(spec.rate, spec.start_rate or 0.0) * spec.reinvites
    backlog = max(0.0, peak - CARRIED_REINVITES_PER_S) * spec.duration
    gigabytes = backlog * BACKLOG_KB_PER_REINVITE / 1e6
    if gigabytes > MAX_BACKLOG_GB:
        raise LoadError(
            f"{spec.spec}: {peak:,.0f} re-INVITEs/s is beyond the ≈{CARRIED_REINVITES_PER_S:,}/s "
            f"a target here carries; its backlog of {backlog:,.0f} re-INVITEs would take "
            f"≈{gigabytes:,.1f} GB ({BACKLOG_KB_PER_REINVITE} KB each, measured; limit "
            f"{MAX_BACKLOG_GB:g} GB): lower the rate or the duration"
        )


def schedule(spec: LoadSpec, seed: int) -> list[CallPlan]:
    """The intended start time of every call, sorted, all in [0, duration).

    Deterministic for (spec, seed); constant, burst, ramp and step do not use the seed.
    """
    return list(call_plans(spec, seed))


def call_plans(spec: LoadSpec, seed: int) -> Iterator[CallPlan]:
    """`schedule(spec, seed)` drawn one call at a time (the same calls, from the same
    draws in the same order): a run keeps the next call, not all of them."""
    if spec.idle:
        return  # the idle load: the server alone, for idle CPU and wake-ups
    starts = _STARTS[spec.arrival](spec, random.Random(seed))
    for i, t in enumerate(starts):
        yield CallPlan(i, t)


def _constant(spec: LoadSpec, rng: random.Random) -> Iterator[float]:
    return _paced(lambda i: i / spec.rate, spec.duration)


def _poisson(spec: LoadSpec, rng: random.Random) -> Iterator[float]:
    t = rng.expovariate(spec.rate)
    while t < spec.duration:
        yield t
        t += rng.expovariate(spec.rate)


def _burst(spec: LoadSpec, rng: random.Random) -> Iterator[float]:
    size = spec.burst or DEFAULT_BURST
    spacing = size / spec.rate
    for t in _paced(lambda g: g * spacing, spec.duration):
        for _ in range(size):
            yield t


def _ramp(spec: LoadSpec, rng: random.Random) -> Iterator[float]:
    r0 = spec.start_rate or 0.0
    slope = (spec.rate - r0) / spec.duration

    def at(i: int) -> float:
        # Solve r0·t + slope·t²/2 = i in the form that is stable for any sign of slope.
        if i == 0:
            return 0.0
        disc = r0 * r0 + 2.0 * slope * i
        if disc < 0:
            return math.inf
        return 2.0 * i / (r0 + math.sqrt(disc))

    return _paced(at, spec.duration)


def _step(spec: LoadSpec, rng: random.Random) -> Iterator[float]:
    steps = spec.steps or DEFAULT_STEPS
    length = spec.duration / steps
    # Cumulative calls offered by the start of step k (k = 0..steps-1), step k at rate (k+1)/n.
    step_rate = [spec.rate * (k + 1) / steps for k in range(steps)]
    offered = [0.0]
    for rate in step_rate:
        offered.append(offered[-1] + rate * length)

    def at(i: int) -> float:
        k = min(bisect.bisect_right(offered, i) - 1, steps - 1)
        return k * length + (i - offered[k]) / step_rate[k]

    return _paced(at, spec.duration)


def _paced(at: Any, duration: float) -> Iterator[float]:
    """at(0), at(1), … while below duration: arrivals at fixed points of a cumulative rate."""
    i = 0
    while (t := at(i)) < duration:
        yield t
        i += 1


_STARTS = {
    "constant": _constant,
    "poisson": _poisson,
    "burst": _burst,
    "ramp": _ramp,
    "step": _step,
}
