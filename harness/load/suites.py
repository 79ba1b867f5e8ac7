"""Benchmark suites: TOML files naming loads × strategies × targets.

A suite is either a shipped name (`default`, `idle`, `overload`, `ci`: the files in
harness/suites/) or a path to a TOML file of the same shape:

    description = "what it answers"
    target = "sim"          # default for every run
    seed = 1                # default for every run
    [[runs]]
    load = "reinvite:rate=20/s,duration=30s"
    strategies = ["inline", "mqueue-rtimer:timers=4"]   # or "all"
    # target = ..., seed = ... may be overridden per run

Everything is validated when the suite is read, so a typo fails before minutes of running,
with one line naming the file, the run and the problem.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import strategies
from harness.load.spec import LoadError, LoadSpec, parse_load
from strategies.spec import SpecError

SUITES_DIR = Path(__file__).with_name("suites")
TARGETS = ("sim", "live", "kamailio")
"""Targets a suite may name (see `deferbench run --target`)."""


class SuiteError(ValueError):
    """A suite that cannot be used; str() is one line naming the file and the problem."""


@dataclass(frozen=True, slots=True)
class SuiteRun:
    target: str
    seed: int
    load: LoadSpec
    strategies: tuple[str, ...]  # canonical specs


@dataclass(frozen=True, slots=True)
class Suite:
    name: str
    description: str
    runs: tuple[SuiteRun, ...]


def shipped_suites() -> list[str]:
    return sorted(p.stem for p in SUITES_DIR.glob("*.toml"))


def load_suite(name_or_path: str) -> Suite:
    """Read and validate a shipped suite by name, or a suite file by path."""
    path = Path(name_or_path)
    if not path.suffix and not path.exists():
        path = SUITES_DIR / f"{name_or_path}.toml"
        if not path.exists():
            raise SuiteError(
                f"unknown suite {name_or_path!r} (shipped: {', '.join(shipped_suites())}; "
                "or give a path to a .toml file)"
            )
    try:
        data = tomllib.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SuiteError(f"{path}: no such suite file") from None
    except OSError as exc:
        raise SuiteError(f"{path}: cannot read suite ({exc.strerror or exc})") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise SuiteError(f"{path}: not valid TOML ({exc})") from None
    return _parse(data, path)


def _parse(data: dict[str, Any], path: Path) -> Suite:
    where = str(path)
    unknown = sorted(set(data) - {"description", "target", "seed", "runs"})
    if unknown:
        raise SuiteError(
            f"{where}: unknown key {', '.join(unknown)} (allowed: description, target, seed, runs)"
        )
    runs = data.get("runs")
    if not isinstance(runs, list) or not runs:
        raise SuiteError(f"{where}: needs at least one [[runs]] table")
    default_target = _target(data.get("target", "sim"), where)
    default_seed = _seed(data.get("seed", 1), where)
    parsed = []
    for i, run in enumerate(runs):
        at = f"{where}: runs[{i}]"
        if not isinstance(run, dict):
            raise SuiteError(f"{at}: must be a table")
        unknown = sorted(set(run) - {"load", "strategies", "target", "seed"})
        if unknown:
            raise SuiteError(
                f"{at}: unknown key {', '.join(unknown)} (allowed: load, strategies, target, seed)"
            )
        if not isinstance(run.get("load"), str):
            raise SuiteError(f"{at}: load must be a load spec string")
        try:
            load = parse_load(run["load"])
        except LoadError as exc:
            raise SuiteError(f"{at}: {exc}") from None
        specs = run.get("strategies", "all")
        if specs == "all":
            specs = strategies.names()
        if not isinstance(specs, list) or not all(isinstance(s, str) for s in specs) or not specs:
            raise SuiteError(f'{at}: strategies must be "all" or a list of strategy specs')
        try:
            canonical = strategies.canonical_specs(specs)
        except SpecError as exc:
            raise SuiteError(f"{at}: {exc}") from None
        parsed.append(
            SuiteRun(
                target=_target(run.get("target", default_target), at),
                seed=_seed(run.get("seed", default_seed), at),
                load=load,
                strategies=tuple(canonical),
            )
        )
    description = data.get("description", "")
    if not isinstance(description, str):
        raise SuiteError(f"{where}: description must be a string")
    return Suite(path.stem, description, tuple(parsed))


def _target(value: Any, where: str) -> str:
    if value not in TARGETS:
        raise SuiteError(
            f"{where}: target {value!r} is not available (available: {', '.join(TARGETS)})"
        )
    return value


def _seed(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise SuiteError(f"{where}: seed must be a non-negative integer, got {value!r}")
    return value
