"""Calibration, the orchestration: `calibrate` runs, fits and judges in order.

Each step is one call into the runs, the fitting or the report module: `calibrate`
measures Kamailio's side, then `refit` does the sim's part from it (also alone, from a
kept side: `calibrate --refit`). The order (and so which runs see which profile) lives
here, the work does not: this module must not measure, fit or format anything itself, and
it changes no adopted profile (`--adopt` in the CLI does).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import Executor
from typing import Any

import strategies
from core.runtime.costs import CostProfile
from core.runtime.server import ServerSettings
from harness.analysis.calibrate.fit import (
    PAUSE_LATE_NOT_FITTED,
    even_mixture,
    fit_from_runs,
    fit_pause_late,
    fit_rates_of,
    pause_late_quantiles,
    pause_lateness,
)
from harness.analysis.calibrate.measured import KamailioSide
from harness.analysis.calibrate.report import (
    Calibration,
    judged_points,
    median_figures,
    point_figures,
)
from harness.analysis.calibrate.runs import (
    Disturbed,
    Lateness,
    Progress,
    Runs,
    capacities,
    capacity_ladder,
    capacity_why,
    kamailio_ladder,
    kamailio_points,
    load_for,
    sim_points,
    undisturbed,
    undisturbed_repeats,
)


def calibrate(
    specs: Sequence[str],
    rates: Sequence[float],
    duration: float,
    seed: int,
    settings: ServerSettings,
    base: CostProfile,
    *,
    fit_rates: Sequence[float] | None = None,
    repeat: int = 1,
    capacity_rates: Sequence[float] = (),
    executor: Executor | None = None,
    progress: Progress | None = None,
    keep: Callable[[KamailioSide], None] | None = None,
    max_steal: float | None = None,
    fit_on: str = "all",
) -> Calibration:
    """Run both sides, fit, re-run the sim with the fit; see the package docstring.

    Kamailio runs every point `repeat` times (the same seeded load: the spread is
    Kamailio's and the machine's); fits use every run at `fit_rates` (default: the lowest
    and highest of `rates`, `fit_rates_of`) and the idle runs, never a run at a held-out
    rate; judged figures are medians, and only the held-out points count in the summary.
    `capacity_rates`: the capacity ladder, SIPp-driven on Kamailio (`capacity_ladder`);
    without it capacity is judged over `rates` alone. `keep` gets Kamailio's side as soon
    as it is measured (to save it before the sim's part runs). A Kamailio run during which
    the host stole more than `max_steal` of the CPU is run again (`least_disturbed`);
    `fit_on="quiet"` fits on the repeats it did not disturb only (`refit`).
    """
    say = progress or (lambda _line: None)
    specs = [strategies.parse_spec(s).spec for s in specs]
    rates = sorted(rates)
    fit_rates_of(rates, fit_rates)  # ValueError before anything runs
    loads = {rate: load_for(rate, duration).spec for rate in rates}
    disturbed: Disturbed = []
    kam, kam_idle, phases, late = kamailio_points(specs, loads, duration, seed, settings,
                                                  repeat, say, max_steal, disturbed)  # fmt: skip
    ladder_rates = sorted(capacity_rates)
    ladder = kamailio_ladder(specs, ladder_rates, duration, seed, settings, say, max_steal,
                             disturbed) if ladder_rates else {}  # fmt: skip
    side = KamailioSide(specs, list(rates), duration, seed, settings, repeat, kam, kam_idle,
                        phases, late, ladder_rates, ladder, max_steal=max_steal,
                        disturbed=disturbed)  # fmt: skip
    if keep is not None:
        keep(side)
    return refit(
        side, base, fit_rates=fit_rates, executor=executor, progress=progress, fit_on=fit_on
    )


def refit(
    side: KamailioSide,
    base: CostProfile,
    *,
    fit_rates: Sequence[float] | None = None,
    executor: Executor | None = None,
    progress: Progress | None = None,
    fit_on: str = "all",
) -> Calibration:
    """Fit `base` to Kamailio's measured `side` and judge the sim against it: the sim's
    part of `calibrate` (the fits, the sim runs with the starting and fitted profiles, the
    verdicts), which needs no Kamailio.

    `fit_on="quiet"`: the fits learn only from Kamailio's repeats the host did not disturb
    (over `side.max_steal`), where a point has any (`undisturbed_repeats`): a model of a
    quiet host, which a busy one's neighbours would otherwise teach their stalls. Judging
    still compares every kept repeat."""
    say = progress or (lambda _line: None)
    specs, rates, duration, seed = side.specs, side.rates, side.duration, side.seed
    settings = side.settings
    fitting = fit_rates_of(rates, fit_rates)
    loads = {rate: load_for(rate, duration).spec for rate in rates}
    kam, kam_idle = side.runs, side.idle
    sim_idle, sim = sim_points(specs, loads, duration, seed, settings, base, "starting",
                               executor, say, side.repeat)  # fmt: skip
    cores = settings.cores
    kam_figs, sim_figs = point_figures(kam, kam_idle, 1), point_figures(sim, sim_idle, cores)
    quiet_figs = {(spec, rate): median_figures(*undisturbed_repeats(e, kam_idle[spec],
                                                                    side.max_steal), 1, rate)
                  for (spec, rate), e in kam.items()}  # fmt: skip
    fit_idle_runs, fit_figs = kam_idle, kam_figs
    if fit_on == "quiet":
        fit_idle_runs = {spec: undisturbed(e, side.max_steal) for spec, e in kam_idle.items()}
        fit_figs = quiet_figs
    fitted, notes, fits = fit_from_runs(specs, fitting, fit_idle_runs, fit_figs, sim_figs, base,
                                        side.phases, cores)  # fmt: skip
    if fit_on == "quiet":
        notes.append(_quiet_note(kam, kam_idle, fit_figs, fit_idle_runs, fitting))
    fitted, note = _with_pause_late(fitted, side.late, fitting)
    notes.append(note)
    fit_idle, fit = sim_points(specs, loads, duration, seed, settings, fitted, "fitted",
                               executor, say, side.repeat)  # fmt: skip

    result = Calibration(specs, list(rates), duration, seed, cores, base, fitted, notes, fits,
                         side.repeat, [f for f, _ in side.phases])  # fmt: skip
    profiles = {"sim": fitted, "sim_starting": base}
    result.ladder, caps, highest, why = _capacities(
        specs, rates, side, {"kamailio": kam, "sim": fit, "sim_starting": sim},
        profiles, executor, say,
    )  # fmt: skip
    figs = {"kamailio": kam_figs, "sim": point_figures(fit, fit_idle, cores),
            "sim_starting": sim_figs}  # fmt: skip
    result.points = judged_points(specs, loads, figs, caps, highest, why,
                                  {"kamailio": kam, "sim": fit}, fitting)  # fmt: skip
    if any(quiet_figs[point]["runs"] < len(kam[point]) for point in kam):
        result.quiet_points = judged_points(specs, loads, {**figs, "kamailio": quiet_figs}, caps,
                                            highest, why, {}, fitting)  # fmt: skip
    result.fit_rates = fitting
    result.idle = {
        "kamailio": kam_idle, "sim": fit_idle, "sim_starting": sim_idle,
    }  # fmt: skip
    return result


def _quiet_note(
    runs: Runs, idle: Mapping[str, Sequence[Any]], figs: Mapping[tuple[str, float], Any],
    quiet_idle: Mapping[str, Sequence[Any]], rates: Sequence[float],
) -> str:  # fmt: skip
    """What `--fit-on quiet` left out, in numbers."""
    points = [point for point in runs if point[1] in rates]
    kept = sum(figs[point]["runs"] for point in points)
    total = sum(len(runs[point]) for point in points)
    idle_kept = sum(len(v) for v in quiet_idle.values())
    return (
        f"fitted on the quiet repeats only: {kept} of Kamailio's {total} at the fit rates "
        f"and {idle_kept} of {sum(len(v) for v in idle.values())} idle runs (a repeat the "
        "host disturbed, over the steal limit, left out where its point has a quiet one)"
    )


def _with_pause_late(
    profile: CostProfile, late: Lateness, rates: Sequence[float]
) -> tuple[CostProfile, str]:
    """`profile` with how late SIPp ends its pauses (`fit_pause_late`), from Kamailio's runs
    at the fit `rates` only, each rate weighing alike, and how; unchanged when too few
    pauses were seen."""
    groups, floor = pause_lateness(late, rates)
    samples = even_mixture(groups)
    fit = fit_pause_late(samples)
    if fit is None or floor is None:
        return profile, PAUSE_LATE_NOT_FITTED
    mean, jitter = fit
    counted = sum(len(g) for g in groups)
    note = (f"driver_pause_late = {mean:.0f} ± {jitter:.0f} µs: how late SIPp's UAC ended "
            f"its pause after an ACK, median ± interquartile range of {counted} pauses, "
            "each fit rate weighing alike (a 200's arrival at SIPp to the next re-INVITE's "
            "send stamp, less the gap, plus how much later than Kamailio's quickest inbound "
            f"path, {floor * 1e6:.0f} µs, the re-INVITE reached its suspend: SIPp stamps "
            "before it sends)")  # fmt: skip
    note += "; the sim draws from its quantiles every 2.5 %"
    return profile.with_values(
        driver_pause_late=mean,
        driver_pause_late_jitter=jitter,
        driver_pause_late_quantiles=pause_late_quantiles(samples),
    ), note


def _capacities(
    specs: Sequence[str], rates: Sequence[float], side: KamailioSide,
    runs: Mapping[str, Runs], profiles: Mapping[str, CostProfile], executor: Executor | None,
    say: Progress,
) -> tuple[dict[str, dict[str, Any]], dict[str, dict[str, float | None]], float,
           dict[str, str]]:  # fmt: skip
    """What capacity is judged by: (the ladder's document, side -> strategy -> capacity,
    the highest rate tested, strategy -> why each side first failed).

    With a capacity ladder measured on Kamailio (`side.ladder`) the sim climbs the same
    rungs with each of `profiles`; without, capacity comes from the calibration `runs`
    over `rates`.
    """
    if not side.capacity_rates:
        caps = {name: capacities(specs, rates, runs[name])
                for name in ("kamailio", "sim", "sim_starting")}  # fmt: skip
        why = {s: capacity_why(s, rates, runs["kamailio"], runs["sim"]) for s in specs}
        return {}, caps, rates[-1], why
    ladder_rates = side.capacity_rates
    ladder = capacity_ladder(specs, ladder_rates, side.ladder, side.duration, side.seed,
                             side.settings, profiles, executor, say)  # fmt: skip
    caps = {name: {spec: ladder[spec][name] for spec in specs}
            for name in ("kamailio", *profiles)}  # fmt: skip
    return ladder, caps, ladder_rates[-1], {spec: ladder[spec]["why"] for spec in specs}
