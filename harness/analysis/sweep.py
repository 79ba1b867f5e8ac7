"""Sweeps: offered rates × strategies (× parameter values), capacity, and tuning answers.

Capacity of a strategy is the highest offered re-INVITE rate it carries: at which
- the ledger is clean of saturation (no loss, no 408/5xx, nothing duplicated, stale or
  reordered). 491 races are not counted: they come from the load and the network as much as
  from the strategy (an undelayed `inline` shows them at any rate), so counting them made
  capacity jump with no trend; whether a strategy honours its delay is its early share and
  race count, shown beside capacity, and `recommend` judges them;
- p99 lateness (delay − requested) is within `bound` (a strategy that defers nothing has
  no lateness to bound), and
- p99 end-to-end latency is within requested delay + `e2e_bound` (queueing *before* the
  suspension, e.g. a blocking sleep's backlog in the socket, shows only there).
The tuning question — "how many timers / workers for N re-INVITEs/s?" — is answered by the
smallest parameter value whose capacity reaches N.

Points run through any `concurrent.futures.Executor` (local process pool, or a Dask
cluster's executor with `--scheduler`): the same jobs, the same code path.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import strategies
from core.runtime.server import ServerSettings
from harness.load.spec import LoadSpec
from harness.runner import Job, Progress, execute
from harness.targets import Target
from strategies.spec import SpecError

_RANGE = re.compile(r"^\s*(\d+)\s*\.\.\s*(\d+)\s*$")


class SweepError(ValueError):
    """A sweep definition that cannot be run; one line naming the problem."""


@dataclass(frozen=True, slots=True)
class SweepPoint:
    strategy: str  # canonical spec of the variant
    base: str  # the strategy spec as given, before the parameter was varied
    param: str | None
    value: Any
    reinvite_rate: float
    entry: dict[str, Any]

    @property
    def lateness_p99(self) -> float | None:
        return self.entry["lateness_ms"]["p99"]

    @property
    def e2e_p99(self) -> float | None:
        return self.entry["e2e_ms"]["p99"]

    @property
    def busy_share(self) -> float | None:
        return self.entry["cpu"]["busy_share"]

    @property
    def races(self) -> int:
        return self.entry["ledger"].get("race_491", 0)

    def clean(self) -> bool:
        return not self._ledger_failures()

    def _ledger_failures(self) -> list[str]:
        ledger = self.entry["ledger"]
        if not ledger["transactions"]:
            return ["no transactions"]
        return [f"{k}={ledger[k]}" for k in BAD_OUTCOMES if ledger.get(k, 0)]

    def failures(self, bound_ms: float, e2e_bound_ms: float) -> list[str]:
        """Which capacity criteria the point fails, named ([] = within bounds)."""
        why = self._ledger_failures()
        late, e2e = self.lateness_p99, self.e2e_p99
        defers = late is not None or bool(self.entry["requested_delay_ms"])
        if defers and (late is None or late > bound_ms):
            why.append(f"p99 lateness {_ms(late, 2)} ms > {bound_ms:g}")
        limit = (self.entry["requested_delay_ms"] or 0.0) + e2e_bound_ms
        if e2e is None or e2e > limit:
            why.append(f"p99 e2e {_ms(e2e, 1)} ms > {limit:g}")
        return why

    def within(self, bound_ms: float, e2e_bound_ms: float) -> bool:
        return not self.failures(bound_ms, e2e_bound_ms)


BAD_OUTCOMES = ("lost", "duplicated", "stale", "reordered", "timeout_408", "error_5xx",
                "other", "unknown_events", "duplicate_open")  # fmt: skip
"""Ledger counts any of which puts a point out of capacity (in report order)."""


def _ms(value: float | None, digits: int) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


def parse_values(text: str) -> tuple[str, list[str]]:
    """'timers=1..4' -> ('timers', ['1','2','3','4']); 'take=one,all' -> ('take', ['one','all'])."""
    name, sep, values = text.partition("=")
    name = name.strip()
    if not sep or not name or not values.strip():
        raise SweepError(f"--param {text!r}: write NAME=A,B,C or NAME=LOW..HIGH")
    match = _RANGE.match(values)
    if match:
        low, high = int(match.group(1)), int(match.group(2))
        if high < low or high - low > 256:
            raise SweepError(f"--param {text!r}: range must be LOW..HIGH with at most 257 values")
        return name, [str(v) for v in range(low, high + 1)]
    return name, [v.strip() for v in values.split(",") if v.strip()]


def variants(specs: Sequence[str], param: str | None) -> list[tuple[str, str, str | None, Any]]:
    """(canonical variant spec, base spec, param name, value) for each strategy × value."""
    out = []
    name, values = parse_values(param) if param else (None, [None])
    for base in specs:
        base_strategy = strategies.parse_spec(base)
        for value in values:
            if name is None:
                out.append((base_strategy.spec, base, None, None))
                continue
            params = {p.name: p for p in base_strategy.params}
            if name not in params:
                raise SweepError(
                    f"--param {name}: {base_strategy.name} has no parameter {name} "
                    f"(allowed: {base_strategy.allowed_params()})"
                )
            try:
                values = {**base_strategy.values, name: params[name].parse(value)}
                variant = type(base_strategy)(**values)
            except SpecError as exc:
                raise SweepError(str(exc)) from None
            out.append((variant.spec, base, name, variant.values[name]))
    return out


def run_sweep(
    specs: Sequence[str],
    rates: Sequence[float],
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    target: Target,
    *,
    param: str | None = None,
    records: Path | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> list[SweepPoint]:
    """Every variant at every offered re-INVITE rate; `load` gives the call shape.
    `records`: a directory where each point streams its raw records, one folder per rate
    (the sim target's `records`)."""
    if not rates or any(r <= 0 for r in rates):
        raise SweepError("--rates needs positive re-INVITE rates, e.g. 100,200,400")
    plan = []
    for spec, base, name, value in variants(specs, param):
        for rate in sorted(rates):
            point_load = replace(load, rate=rate / load.reinvites)
            at = target if records is None else replace(target, records=str(records / f"{rate:g}"))
            job = Job(spec, point_load.spec, seed, settings, at)
            plan.append((spec, base, name, value, rate, job))
    entries = execute([p[-1] for p in plan], executor, progress)
    return [
        SweepPoint(spec, base, name, value, rate, entry)
        for (spec, base, name, value, rate, _), entry in zip(plan, entries, strict=True)
    ]


def capacity(points: Sequence[SweepPoint], bound_ms: float, e2e_bound_ms: float) -> dict[str, Any]:
    """Per variant: the highest rate within bounds below the first rate that is not.

    Rates above a failing rate do not count (a lucky point past a cliff is not capacity).
    None when even the lowest rate fails.
    """
    by_variant: dict[str, list[SweepPoint]] = {}
    for point in points:
        by_variant.setdefault(point.strategy, []).append(point)
    result: dict[str, Any] = {}
    for variant, pts in by_variant.items():
        best = None
        for point in sorted(pts, key=lambda p: p.reinvite_rate):
            if not point.within(bound_ms, e2e_bound_ms):
                break
            best = point.reinvite_rate
        result[variant] = best
    return result


def tuning_answer(
    points: Sequence[SweepPoint], caps: dict[str, Any], target_rate: float
) -> dict[str, Any]:
    """Per base strategy: (the smallest swept parameter value whose capacity ≥ target_rate,
    that variant's spec), or None."""
    answer: dict[str, Any] = {}
    seen: dict[str, list[tuple[Any, str]]] = {}
    for point in points:
        if point.param is None:
            continue
        seen.setdefault(point.base, [])
        if (point.value, point.strategy) not in seen[point.base]:
            seen[point.base].append((point.value, point.strategy))
    for base, options in seen.items():
        enough = [(v, s) for v, s in options if (caps.get(s) or 0) >= target_rate]
        answer[base] = min(enough, key=lambda vs: vs[0]) if enough else None
    return answer
