"""Calibration, the runs: the same seeded loads on Kamailio and on the sim.

Kamailio's side (`kamailio_points`: idle and loaded runs, with traced rtimer phases and
how late SIPp ended its pauses), the sim's with a given profile (`sim_points`; the sim
stands in for SIPp too: `--driver sipp`), and the capacity ladder (Kamailio's rungs
`kamailio_ladder`, then both sides' `capacity_ladder`, `capacities`, `capacity_failure`).

It runs Kamailio one job at a time (it measures real CPU); only sim runs go to the
executor. It must not fit costs (beyond reading traced phases with `fit_phases`) nor judge
or report figures: it imports the fitting module only, never the report.
"""

from __future__ import annotations

import statistics
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import replace
from functools import partial
from itertools import pairwise
from typing import TYPE_CHECKING, Any, TypeVar

import strategies
from core.runtime.costs import CostProfile
from core.runtime.server import ServerSettings
from harness.analysis.calibrate.fit import PhaseFit, fit_phases, timer_interval
from harness.analysis.sweep import SweepPoint, capacity
from harness.load.network import Link, parse_link
from harness.load.spec import LoadSpec, parse_load
from harness.targets.base import DISTURBED, most_stolen, over_steal_limit, steal_of

if TYPE_CHECKING:
    from harness.targets.kamailio.sipp import SippReinvite

CALL_SHAPE = "reinvite:rate=1/s,duration=3s,reinvites=10,gap=20ms,arrival=constant"
"""The calibration points' call shape: 10 re-INVITEs per call, each 20 ms after the previous
ACK. SIPp drives every Kamailio run (the Python endpoints share the cores with Kamailio and
top out near 1,000/s), so constant arrivals and whole-ms gaps; the sim gets the same load."""
LOOPBACK = "latency=50us,jitter=20us,loss=0%"
"""The sim network for calibration: Kamailio runs on 127.0.0.1, so loopback-like links."""
BOUND_MS = 5.0  # capacity: p99 lateness bound (the sweep's default)
E2E_BOUND_MS = 50.0  # capacity: p99 e2e above the requested delay (the sweep's default)
IDLE_WINDOW = 0.3  # Kamailio's pre-load idle window in the loaded runs (not used for figures)

Progress = Callable[[str], None]

Runs = dict[tuple[str, float], list[dict[str, Any]]]
"""(strategy spec, re-INVITE rate) -> one result entry per repeat."""
Lateness = dict[float, list[tuple[float, float]]]
"""re-INVITE rate -> per pause SIPp ended in Kamailio's runs there: (how late SIPp stamped
the next re-INVITE, the lag from that stamp to Kamailio's suspend), s (`pause_pairs`)."""


STEAL_TRIES = 3
"""Runs of one Kamailio point in all while the host steals more than the limit."""
Disturbed = list[dict[str, Any]]
"""Kamailio runs set aside for a disturbed host: {"run": what, "host_steal_share": share}."""
T = TypeVar("T")


def least_disturbed(
    run: Callable[[], T], entry: Callable[[T], Mapping[str, Any]], max_steal: float | None,
    what: str, say: Progress, disturbed: Disturbed,
) -> T:  # fmt: skip
    """`run()` (announced as `what`) again while the host stole more than `max_steal` of
    the CPU during it, up to `STEAL_TRIES` runs; the first quiet one, else the least
    disturbed. The ones set aside go to `disturbed`.

    Why: on a shared virtual machine a neighbour's burst takes the CPU from Kamailio's
    processes mid-run; their wake-ups then wait for it (a delay tail of milliseconds) and
    the run says more about the neighbour than about Kamailio. No limit (None), or a
    machine without a steal figure, keeps every first run."""
    say(what)
    tried: list[tuple[float, T]] = []
    for _ in range(STEAL_TRIES):
        result = run()
        share = steal_of(entry(result))
        if max_steal is None or share is None or share <= max_steal:
            break
        tried.append((share, result))
        said = f"{what}: the host stole {share:.1%} of the CPU (limit {max_steal:.1%})"
        say(f"{said}: run again" if len(tried) < STEAL_TRIES else said)
    else:
        share, result = min(tried, key=lambda t: t[0])
        say(f"{what}: kept the least disturbed of {STEAL_TRIES} runs ({share:.1%} stolen)")
    disturbed.extend({"run": what, "host_steal_share": s} for s, r in tried if r is not result)
    return result


def undisturbed(entries: Sequence[dict[str, Any]], max_steal: float | None) -> list[dict[str, Any]]:
    """`entries` (one strategy's idle runs) the host stole no more than `max_steal` from,
    or all of them where it disturbed every one."""
    quiet = [e for e in entries if not over_steal_limit(steal_of(e), max_steal)]
    return quiet or list(entries)


def undisturbed_repeats(
    entries: Sequence[dict[str, Any]], idles: Sequence[dict[str, Any]], max_steal: float | None
) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One point's repeats, (loaded run, its round's idle run) pairs, of which the host
    disturbed neither; all of them where it disturbed every pair."""
    pairs = [
        (e, i)
        for e, i in zip(entries, idles, strict=True)
        if not any(over_steal_limit(steal_of(run), max_steal) for run in (e, i))
    ]
    if not pairs:
        return list(entries), list(idles)
    return [e for e, _ in pairs], [i for _, i in pairs]


CAPACITY_SHAPE = "reinvite:rate=1/s,duration=3s,reinvites=10,gap=1ms,arrival=constant"
"""The capacity ladder's call shape: SIPp drives Kamailio, so constant arrivals and whole-ms
gaps; the sim gets the same seeded load."""


def capacity_load(rate: float, duration: float) -> LoadSpec:
    """The capacity ladder's load at `rate` re-INVITEs/s for `duration` seconds."""
    shape = parse_load(CAPACITY_SHAPE)
    return replace(shape, rate=rate / shape.reinvites, duration=duration)


def load_for(rate: float, duration: float) -> LoadSpec:
    """The calibration call shape at `rate` re-INVITEs/s for `duration` seconds."""
    shape = parse_load(CALL_SHAPE)
    return replace(shape, rate=rate / shape.reinvites, duration=duration)


def kamailio_points(
    specs: Sequence[str], loads: Mapping[float, str], duration: float, seed: int,
    settings: ServerSettings, repeat: int, say: Progress, max_steal: float | None = None,
    disturbed: Disturbed | None = None,
) -> tuple[Runs, dict[str, list[dict[str, Any]]], list[tuple[PhaseFit, float]],
           Lateness]:  # fmt: skip
    """Kamailio's side, one run at a time (real CPU), SIPp driving every run (the idle ones
    start no call): per strategy and repeat an idle run (with its traced timer phases) and
    a run at every rate (with how late SIPp ended each pause, `pause_pairs`).

    The repeats run in rounds (`round_order`), each round every strategy once, so each
    strategy's repeats span the whole calibration: Kamailio's cost per message drifts
    within minutes on a shared box, and back-to-back repeats would hide that drift in the
    spread and put it between the strategies instead. A run the host disturbed more than
    `max_steal` is run again (`least_disturbed`; set aside in `disturbed`)."""
    from harness.targets.kamailio.target import kamailio_run
    from harness.targets.sim import idle_load

    aside: Disturbed = [] if disturbed is None else disturbed

    def measure(spec: str, load: LoadSpec, what: str) -> Any:
        return least_disturbed(
            lambda: kamailio_run(spec, load, seed, settings, idle_window=IDLE_WINDOW,
                                 driver="sipp"),
            lambda run: run.result, max_steal, what, say, aside,
        )  # fmt: skip

    kam: Runs = {}
    kam_idle: dict[str, list[dict[str, Any]]] = {}
    phases: list[tuple[PhaseFit, float]] = []
    late: Lateness = {}
    for n in range(repeat):
        tag = f" (run {n + 1}/{repeat})" if repeat > 1 else ""
        for spec in round_order(specs, n):
            interval = timer_interval("rtimer", strategies.parse_spec(spec).values)
            run = measure(spec, idle_load(duration), f"kamailio {spec}: idle {duration:g}s{tag}")
            kam_idle.setdefault(spec, []).append(run.result)
            phase = fit_phases("rtimer", run.trace.timer_passes)
            if phase is not None and interval is not None:
                phases.append((phase, interval))
            for rate, load in loads.items():
                spec_load = parse_load(load)
                run = measure(
                    spec,
                    spec_load,
                    f"kamailio {spec}: {rate:g} re-INVITEs/s for {duration:g}s{tag}",
                )
                kam.setdefault((spec, rate), []).append(run.result)
                if run.sipp is not None:
                    suspended = run.trace.suspended_us()
                    late.setdefault(rate, []).extend(
                        pause_pairs(run.sipp.reinvites, spec_load.gap, suspended)
                    )
    return kam, kam_idle, phases, late


def round_order(specs: Sequence[str], n: int) -> list[str]:
    """The strategies in the order round `n` runs them: as given, reversed every other
    round, so a drift that is steady over the calibration weighs on each strategy alike
    (the first strategy of one round is the last of the next)."""
    return list(specs) if n % 2 == 0 else list(reversed(specs))


def pause_pairs(
    reinvites: Sequence[SippReinvite],
    gap: float,
    suspended_us: Mapping[tuple[str, int], int],
) -> list[tuple[float, float]]:
    """Per call, for each re-INVITE whose 200 came and whose next re-INVITE Kamailio
    suspended: (how late SIPp stamped that next re-INVITE after the 200, less `gap`; the
    lag from the stamp to Kamailio's suspend), s. Unanswered re-INVITEs start no pair.

    SIPp stamps a re-INVITE just before its `<send>` (a stamp after it makes SIPp 3.6 drop
    the 200), and it often leaves a millisecond after that stamp: the lag holds that and
    Kamailio's own inbound path (the wire, a worker's wake-up, parsing, the script up to
    the suspend), which the sim models itself; `fit.pause_lateness` tells them apart.
    """
    by_call: dict[str, list[SippReinvite]] = {}
    for reinvite in reinvites:
        by_call.setdefault(reinvite.call_id, []).append(reinvite)
    pairs = []
    for sent in by_call.values():
        sent.sort(key=lambda r: r.cseq)
        for a, b in pairwise(sent):
            if a.status != 200 or a.final_us is None:
                continue
            suspended = suspended_us.get((b.call_id, b.cseq))
            if suspended is None:
                continue
            pairs.append(((b.sent_us - a.final_us) / 1e6 - gap, (suspended - b.sent_us) / 1e6))
    return pairs


def sim_points(
    specs: Sequence[str], loads: Mapping[float, str], duration: float, seed: int,
    settings: ServerSettings, costs: CostProfile, label: str, executor: Executor | None,
    say: Progress, repeat: int = 1,
) -> tuple[dict[str, list[dict[str, Any]]], Runs]:  # fmt: skip
    """The sim's side with profile `costs` (named `label` in the progress): per strategy an
    idle run and a run at every rate of `loads`; (idle by strategy, loaded points).

    Each loaded point runs `repeat` times, with seeds `seed`, `seed` + 1, ...: as each of
    Kamailio's starts forks its timers at new phases and meets new SIPp pauses, each seed
    draws new ones, so the median of as many runs is judged against Kamailio's median. The
    idle run (timer phases do not change what an idle process costs) serves every repeat.
    """
    rates = list(loads)
    points = [(s, r) for s in specs for r in rates]
    say(f"sim ({label} profile): {len(specs)} idle + {len(points) * repeat} loaded runs")
    jobs = [(s, None, seed) for s in specs]
    jobs += [(s, loads[r], seed + n) for s, r in points for n in range(repeat)]
    entries = _sims(jobs, duration, settings, costs, executor)
    idle = {s: [e] * repeat for s, e in zip(specs, entries[: len(specs)], strict=True)}
    loaded = entries[len(specs) :]
    return idle, {k: loaded[i * repeat : (i + 1) * repeat] for i, k in enumerate(points)}


def _sim_entry(
    spec: str, load: str | None, duration: float, seed: int, settings: ServerSettings,
    costs: CostProfile, link: Link,
) -> dict[str, Any]:  # fmt: skip
    """One sim run (a top-level function: picklable for a process pool); load None = idle."""
    from harness.targets.sim import SimTarget

    if load is None:
        return SimTarget(costs).idle(spec, duration, seed, settings)
    target = SimTarget(costs, network=link, driver="sipp")  # SIPp drives Kamailio's run
    return target.run(spec, parse_load(load), seed, settings)


def _sims(
    jobs: Sequence[tuple[str, str | None, int]], duration: float, settings: ServerSettings,
    costs: CostProfile, executor: Executor | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Sim runs (spec, load or None for idle, seed) with profile `costs`, in order (on
    `executor` if given)."""
    link = parse_link(LOOPBACK)
    args = [(spec, load, duration, seed, settings, costs, link) for spec, load, seed in jobs]
    if executor is None:
        return [_sim_entry(*a) for a in args]
    return list(executor.map(_sim_entry, *zip(*args, strict=True)))


def kamailio_ladder(
    specs: Sequence[str], rates: Sequence[float], duration: float, seed: int,
    settings: ServerSettings, say: Progress, max_steal: float | None = None,
    disturbed: Disturbed | None = None,
) -> Runs:  # fmt: skip
    """The capacity ladder on Kamailio, SIPp-driven (the Python endpoints cannot offer these
    rates): per strategy it climbs `rates` and stops at its first failing rate (nothing
    above it counts); (spec, rate) -> [entry] for the rungs it ran. A rung the host
    disturbed is run again as in `kamailio_points`."""
    from harness.targets.kamailio.target import KamailioTarget

    kamailio = KamailioTarget(driver="sipp", idle_window=IDLE_WINDOW)
    aside: Disturbed = [] if disturbed is None else disturbed
    kam: Runs = {}
    for spec in specs:
        for rate in rates:
            what = f"kamailio {spec}: capacity {rate:g} re-INVITEs/s (SIPp) for {duration:g}s"
            load = parse_load(capacity_load(rate, duration).spec)
            entry = least_disturbed(partial(kamailio.run, spec, load, seed, settings),
                                    lambda e: e, max_steal, what, say, aside)  # fmt: skip
            kam[spec, rate] = [entry]
            if capacity_failure(entry):
                break
    return kam


def capacity_ladder(
    specs: Sequence[str],
    rates: Sequence[float],
    kam: Runs,
    duration: float,
    seed: int,
    settings: ServerSettings,
    profiles: Mapping[str, CostProfile],
    executor: Executor | None,
    say: Progress,
) -> dict[str, dict[str, Any]]:
    """Per strategy: the highest clean rate of the ladder on Kamailio (its rungs `kam`,
    `kamailio_ladder`) and on the sim with each of `profiles` (label -> profile; "sim" is
    the one judged), the same loads; the sim runs every rate.

    Per strategy: {"kamailio": capacity or None, label: capacity or None,
    "steps": what failed at each rate, "why": the first failure of Kamailio and "sim"}.
    """
    loads = {rate: capacity_load(rate, duration).spec for rate in rates}
    keys = [(s, r) for s in specs for r in rates]
    sims: dict[str, dict[tuple[str, float], list[dict[str, Any]]]] = {}
    for label, costs in profiles.items():
        say(f"{label.replace('_', ' ')} profile: capacity ladder, {len(keys)} runs")
        entries = _sims([(s, loads[r], seed) for s, r in keys], duration, settings, costs,
                        executor)  # fmt: skip
        sims[label] = {key: [e] for key, e in zip(keys, entries, strict=True)}
    out: dict[str, dict[str, Any]] = {}
    for spec in specs:
        climbed = [r for r in rates if (spec, r) in kam]
        steps = [
            {"reinvite_rate": r, "load": loads[r],
             "kamailio": capacity_failure(kam[spec, r][0]) if (spec, r) in kam else None,
             **{label: capacity_failure(runs[spec, r][0]) for label, runs in sims.items()}}
            for r in rates
        ]  # fmt: skip
        out[spec] = {
            "kamailio": capacities([spec], climbed, kam)[spec] if climbed else None,
            **{label: capacities([spec], rates, runs)[spec] for label, runs in sims.items()},
            "steps": steps,
            "why": capacity_why(spec, rates, kam, sims["sim"]),
        }
    return out


def capacities(
    specs: Sequence[str],
    rates: Sequence[float],
    runs: Mapping[tuple[str, float], Sequence[dict[str, Any]]],
) -> dict[str, float | None]:
    """Per strategy: the sweep's capacity over the tested rates (None: below the lowest).

    With repeated runs, each repeat gives a capacity and the median (None as 0) is taken.
    Capacity is saturation: 491 glare races are counted in the ledger, not against it
    (on loopback Kamailio's workers reorder an ACK and the next re-INVITE at any rate).
    """
    out: dict[str, float | None] = {}
    for spec in specs:
        repeats = min(len(runs[spec, rate]) for rate in rates)
        each = []
        for n in range(repeats):
            sweep = [SweepPoint(spec, spec, None, None, rate, runs[spec, rate][n])
                     for rate in rates]  # fmt: skip
            each.append(capacity(sweep, BOUND_MS, E2E_BOUND_MS)[spec] or 0.0)
        best = statistics.median_low(each)
        out[spec] = best or None
    return out


def capacity_failure(entry: Mapping[str, Any]) -> str:
    """Which capacity criterion a run fails ("" if none): ledger, p99 lateness, p99 e2e."""
    point = SweepPoint("", "", None, None, 0.0, dict(entry))
    return ", ".join(point.failures(BOUND_MS, E2E_BOUND_MS))


def capacity_why(spec: str, rates: Sequence[float], kam: Mapping, sim: Mapping) -> str:
    """The first failing rate on each side and what failed there (a side's runs stop at
    the first rate it has no run of)."""
    why = []
    for side, runs in (("Kamailio", kam), ("sim", sim)):
        for rate in rates:
            if (spec, rate) not in runs:
                break
            failures = [f for f in map(capacity_failure, runs[spec, rate]) if f]
            if failures:
                of = f" ({len(failures)} of {len(runs[spec, rate])} runs)" if len(
                    runs[spec, rate]) > 1 else ""  # fmt: skip
                stolen = most_stolen(runs[spec, rate])
                host = "" if stolen is None else f" ({DISTURBED}: {stolen:.1%} stolen)"
                why.append(f"{side} fails at {rate:g}/s{of}: {failures[0]}{host}")
                break
    return "; ".join(why)
