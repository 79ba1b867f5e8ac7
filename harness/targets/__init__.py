"""Targets: the engines one seeded load is driven through (sim, live, kamailio).

Every target is an object with the same small interface, `Target`: run this load through
this strategy, return one strategy entry of the result schema (`harness.measure.results`).
The CLI, sweeps and calibration hold a `Target` and never ask which one it is. Each target
starts and observes its server its own way; percentiles, ledgers and CPU shares are
computed by `harness.measure`, never by a target's own copy.

The target modules are imported lazily (`build`): the sim needs neither sockets nor
subprocesses, and importing it must not pull in the Kamailio or live machinery.
"""

from __future__ import annotations

from harness.targets.base import STEAL_LIMIT, Target, TargetError, TargetOptions

NAMES = ("sim", "live", "kamailio")
"""Targets a command or a suite may name."""


def build(name: str, options: TargetOptions | None = None) -> Target:
    """The target called `name`, configured by `options` (TargetError names what is wrong)."""
    options = options or TargetOptions()
    if name == "sim":
        from harness.targets.sim import SimTarget

        return SimTarget.from_options(options)
    if name == "live":
        from harness.targets.live.target import LiveTarget

        return LiveTarget.from_options(options)
    if name == "kamailio":
        from harness.targets.kamailio.target import KamailioTarget

        return KamailioTarget.from_options(options)
    raise TargetError(f"target {name!r} is not available (available: {', '.join(NAMES)})")


__all__ = ["NAMES", "STEAL_LIMIT", "Target", "TargetError", "TargetOptions", "build"]
