"""The one interface every target implements, and the options that configure one.

Targets import this module; it imports no target (`harness.targets.build` picks one by name).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from core.runtime.costs import CostProfile
    from core.runtime.server import ServerSettings
    from harness.load.network import Link
    from harness.load.spec import LoadSpec
    from strategies.base import Strategy


STEAL_LIMIT = 0.02
"""A real target's run during which the machine's hypervisor gave more than this share of
its CPU to other tenants (`cpu.host_steal_share`) is disturbed: the wake-ups it measured
waited for the neighbour, so its delays and CPU say little about the server."""


DISTURBED = "a run the host disturbed"
"""Said of a figure taken from a run during which the host stole more than `STEAL_LIMIT`."""


def steal_of(entry: Mapping[str, Any]) -> float | None:
    """The share of the machine's CPU its hypervisor gave to others during a result entry's
    run (None: not measured, as on the sim)."""
    return entry.get("cpu", {}).get("host_steal_share")


def over_steal_limit(share: float | None, limit: float | None = STEAL_LIMIT) -> bool:
    """Whether a run during which the host stole `share` of the CPU was disturbed (over
    `limit`; None: no limit, nothing is)."""
    return share is not None and limit is not None and share > limit


def most_stolen(entries: Iterable[Mapping[str, Any]]) -> float | None:
    """The most the host stole during any of `entries`' runs, if that disturbed it (more
    than `STEAL_LIMIT`); else None."""
    worst = max((s for e in entries if (s := steal_of(e)) is not None), default=None)
    return worst if over_steal_limit(worst) else None


def host_ticks(stat: str = "/proc/stat") -> tuple[int, int] | None:
    """(stolen, all) CPU ticks of the whole machine since boot, from /proc/stat's `cpu`
    line (steal is its eighth value); None where the kernel gives no steal figure."""
    try:
        with open(stat, encoding="ascii") as f:
            fields = f.readline().split()
        ticks = [int(v) for v in fields[1:]]
    except (OSError, ValueError):
        return None
    if fields[:1] != ["cpu"] or len(ticks) < 8:
        return None
    return ticks[7], sum(ticks)


class TargetError(RuntimeError):
    """A target could not start, observe or drive its server, or cannot play a load (one
    line that names the cause)."""


class Target(Protocol):
    """One engine behind `--target`: picklable, so a process pool can run it."""

    name: str
    real_clock: bool  # measures real CPU: its runs go one at a time, never in parallel

    def run_key(self, strategy: Strategy) -> str | None:
        """What identifies `strategy`'s run among jobs of one load, seed and settings on this
        target: jobs with equal keys share one run. None: every job runs (a real clock
        measures each one)."""
        ...

    def check(self, load: LoadSpec, seed: int) -> None:
        """Raise `TargetError` if this target cannot play `load`, before anything starts."""

    def run(
        self, strategy: str, load: LoadSpec, seed: int, settings: ServerSettings
    ) -> dict[str, Any]:
        """Drive `load` (seeded by `seed`) through `strategy`; one result-schema entry."""
        ...

    def facts(self) -> dict[str, Any]:
        """What a result document records about the engine: backend, network, costs,
        driver."""
        ...


@dataclass(frozen=True, slots=True)
class TargetOptions:
    """The command-line options that configure a target; each target takes its own and
    refuses the others by name (None: not given)."""

    costs: CostProfile | None = None
    costs_source: str | None = None  # where `costs` came from, as results record it
    costs_named: bool = False  # the user asked for a cost profile (--costs)
    network: Link | None = None
    backend: str | None = None
    driver: str | None = None


def refuse(target: str, options: TargetOptions, *allowed: str) -> None:
    """One-line error for an option `target` does not take: the real targets charge no
    modelled costs, only the live proxy has a backend, only Kamailio a load driver (the sim
    models SIPp's timing)."""
    if options.costs_named and "costs" not in allowed:
        raise TargetError(
            f"--costs: the {target} target does real work and charges no modelled costs"
        )
    if options.backend is not None and "backend" not in allowed:
        raise TargetError(f"--backend {options.backend}: the live target only (not {target})")
    if options.driver not in (None, "python") and "driver" not in allowed:
        raise TargetError(
            f"--driver {options.driver}: the kamailio and sim targets only (not {target})"
        )


DRIVER_MAX_REINVITES_PER_S = {"python": 1_500, "sipp": 6_000}
"""The highest re-INVITE rate a load driver is asked to offer on the real targets. The
harness's Python UAC/UAS top out near 1,000 re-INVITEs/s on this 2-vCPU machine (beyond it
they send late, and the figures measure the driver); SIPp offers 3,000/s, where Kamailio
and the two SIPp processes already fill both cores (README: Benchmarks). Twice that is
refused: the load would measure the machine, not the strategy."""

_DRIVER_NOTES = {
    "python": "the harness's Python UAC/UAS top out near 1,000/s here",
    "sipp": "at 3,000/s Kamailio and SIPp already fill both cores here",
}


def check_driver_rate(target: str, driver: str, load: LoadSpec) -> None:
    """TargetError if `load` asks `driver` for more re-INVITEs/s than it can offer."""
    peak = max(load.rate, load.start_rate or 0.0) * load.reinvites
    limit = DRIVER_MAX_REINVITES_PER_S[driver]
    if peak > limit:
        also = " (--driver sipp offers more)" if driver == "python" and target == "kamailio" else ""
        raise TargetError(
            f"{peak:,.0f} re-INVITEs/s is more than the {driver} driver of the {target} "
            f"target offers (limit {limit:,}/s: {_DRIVER_NOTES[driver]}){also}"
        )
