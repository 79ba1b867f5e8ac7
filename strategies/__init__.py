"""Deferral strategies, picked by name: `parse_spec("mqueue-rtimer:timers=12")`.

The registry maps each name to a module imported lazily (the anyio way); the module exposes
its class as `STRATEGY`. Adding a strategy is adding one module and one line here.
"""

from __future__ import annotations

import importlib

import core  # noqa: F401  # first: it picks compiled modules or their sources
from strategies.base import Strategy
from strategies.spec import SpecError, split_spec

_MODULES: dict[str, str] = {
    "inline": "strategies.inline",
    "blocking-sleep": "strategies.blocking_sleep",
    "mqueue-rtimer": "strategies.mqueue_rtimer",
    "async-route": "strategies.async_route",
    "async-sleep": "strategies.async_sleep",
    "async-task": "strategies.async_task",
}


def names() -> list[str]:
    return list(_MODULES)


def strategy_class(name: str) -> type[Strategy]:
    try:
        module = _MODULES[name]
    except KeyError:
        raise SpecError(f"unknown strategy {name!r} (known: {', '.join(_MODULES)})") from None
    return importlib.import_module(module).STRATEGY


def parse_spec(text: str) -> Strategy:
    """Build a strategy from `NAME[:key=value,...]`; SpecError (one line) on any problem."""
    name, raw = split_spec(text)
    cls = strategy_class(name)
    by_name = {p.name: p for p in cls.params}
    unknown = sorted(set(raw) - set(by_name))
    if unknown:
        raise SpecError(
            f"{name}: unknown parameter {', '.join(unknown)} (allowed: {cls.allowed_params()})"
        )
    values = {key: by_name[key].parse(value) for key, value in raw.items()}
    return cls(**values)


def canonical_specs(texts: list[str] | tuple[str, ...]) -> list[str]:
    """Each spec's canonical form, in order, once: `inline` and `inline` (or two spellings
    of one parameter set) are one strategy, run and reported once."""
    return list(dict.fromkeys(parse_spec(text).spec for text in texts))


__all__ = ["SpecError", "Strategy", "canonical_specs", "names", "parse_spec", "strategy_class"]
