"""Calibration, the fitting: the costs of a sim profile from what Kamailio measured.

Timer passes and the sleep overshoot ε from the idle timer roles (`fit_timer`) and traced
rtimer phases (`fit_phases`); message costs, t_suspend + t_continue and the wake-up from
usleep() from marginal CPU per re-INVITE (`fit_scale`, `fit_deferral`, `fit_sleep_wake`) at
the idle price, how it falls with the load (`fit_load`); the wake-up tail from delay
excesses (`fit_wakeup_tail`); how late SIPp ends its pauses (`pause_lateness`,
`fit_pause_late`); all of them gathered into one profile (`fitted_profile`, `fit_from_runs`).

Arithmetic on figures and result entries only: it must not run a target (the runs module
does), judge, format or write anything (the report module does), and it imports neither.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import strategies
from core.runtime.costs import CostProfile

MESSAGE_COSTS = ("request", "response", "retransmission", "relay", "reply")
DEFERRAL_COSTS = ("t_suspend", "t_continue")
TIMER_COSTS = {"rtimer": "rtimer_pass", "async-ms-timer": "async_ms_pass",
               "async-timer": "async_s_pass"}  # fmt: skip
OVERSHOOT_ROLES = ("rtimer", "async-ms-timer")  # short periods: ε is resolvable from them


@dataclass(frozen=True, slots=True)
class TimerFit:
    """One timer role at idle: what a pass costs and how late its sleeps return."""

    role: str
    processes: int
    interval_s: float
    wakeups_per_s: float
    busy_core_share: float  # share of ONE core

    @property
    def pass_us(self) -> float:
        return self.busy_core_share * 1e6 / self.wakeups_per_s

    @property
    def period_s(self) -> float:
        return self.processes / self.wakeups_per_s

    @property
    def overshoot_us(self) -> float:
        """ε = period − interval − pass (negative: more wake-ups than passes)."""
        return (self.period_s - self.interval_s) * 1e6 - self.pass_us


def fit_timer(
    role: str, processes: int, interval_s: float, wakeups_per_s: float, busy_core_share: float
) -> TimerFit | None:
    """A `TimerFit`, or None when the role never woke (nothing to fit)."""
    if processes < 1 or wakeups_per_s <= 0 or interval_s <= 0:
        return None
    return TimerFit(role, processes, interval_s, wakeups_per_s, busy_core_share)


@dataclass(frozen=True, slots=True)
class PhaseFit:
    """A timer pool's phases from its processes' traced passes (`timer-pass` lines, about
    1 s after the fork, when startup's contention has passed).

    Kamailio's rtimer phases stay bunched: one fork apart, then drifting slowly. Taken
    mod the period, the phases leave one large empty gap (the rest of the period); the
    other gaps between neighbours are what the forks left (`fork_gap_us`, and their
    coefficient of variation `fork_gap_spread`). Pass-to-pass periods give ε (period =
    interval + ε + pass). How a process's period deviates from the pool's mean in the
    same pass (`relative_steps_us`) is the independent part of ε that makes phases drift:
    modelled uniform on ± jitter, whose interquartile range is exactly `jitter`.
    """

    role: str
    processes: int
    phase_gaps_us: tuple[float, ...]
    periods_us: tuple[float, ...]
    relative_steps_us: tuple[float, ...]

    @property
    def fork_gap_us(self) -> float:
        return statistics.mean(self.phase_gaps_us)

    @property
    def fork_gap_spread(self) -> float:
        """The gaps' coefficient of variation, capped at 1 (1: exponential gaps)."""
        mean = self.fork_gap_us
        return min(1.0, statistics.pstdev(self.phase_gaps_us) / mean) if mean > 0 else 0.0

    @property
    def period_us(self) -> float:
        return statistics.median(self.periods_us)

    @property
    def jitter_us(self) -> float:
        q1, _, q3 = statistics.quantiles(self.relative_steps_us, n=4, method="inclusive")
        return q3 - q1


def fit_phases(role: str, passes: Mapping[int, Sequence[float]]) -> PhaseFit | None:
    """A `PhaseFit` from PID -> pass times (s); None without two processes with two passes."""
    runs = [sorted(times) for times in passes.values() if len(times) >= 2]
    if len(runs) < 2:
        return None
    periods = tuple((b - a) * 1e6 for times in runs for a, b in pairwise(times))
    period = statistics.median(periods)
    start = min(times[0] for times in runs)
    phases = sorted(((times[0] - start) * 1e6) % period for times in runs)
    gaps = sorted([b - a for a, b in pairwise(phases)] + [period - phases[-1] + phases[0]])
    n = min(len(times) for times in runs)
    mean = [statistics.mean(times[k] for times in runs) for k in range(n)]
    steps = tuple(
        ((times[k + 1] - mean[k + 1]) - (times[k] - mean[k])) * 1e6
        for times in runs
        for k in range(n - 1)
    )
    return PhaseFit(role, len(runs), tuple(gaps[:-1]), periods, steps)


def fit_rates_of(rates: Sequence[float], fit_rates: Sequence[float] | None) -> list[float]:
    """The rates whose runs the fits use (the rest of `rates` are held out and judged).

    Default (None): the lowest and the highest of `rates`, so that every held-out rate lies
    between two fitted ones (the sim is judged on interpolating, not extrapolating; with
    50,200,1000 it fits 50 and 1000 and predicts 200). ValueError when a fit rate is not
    one of `rates`.
    """
    if fit_rates is None:
        return sorted({min(rates), max(rates)})
    extra = sorted(set(fit_rates) - set(rates))
    if extra:
        raise ValueError(
            f"--fit-rates {','.join(f'{r:g}' for r in extra)} not in --rates "
            f"{','.join(f'{r:g}' for r in sorted(rates))}: fit rates are some of the rates run"
        )
    return sorted(set(fit_rates))


def marginal_us(per_txn_us: float, idle_core_share: float, reinvite_rate: float) -> float:
    """CPU per re-INVITE above the standing (idle) cost, which the rate spreads over calls."""
    return per_txn_us - idle_core_share * 1e6 / reinvite_rate


def fit_scale(measured: Iterable[float], modelled: Iterable[float]) -> float | None:
    """The median ratio measured / modelled over pairs with a positive model figure."""
    ratios = [m / s for m, s in zip(measured, modelled, strict=True) if s > 0 and m > 0]
    return statistics.median(ratios) if ratios else None


def fit_deferral(
    kamailio_extra_us: Iterable[float], sim_extra_us: Iterable[float], profile: CostProfile
) -> float | None:
    """New t_suspend + t_continue (µs): the unexplained extra CPU per deferral goes to them.

    `*_extra_us`: marginal CPU per re-INVITE of a deferring strategy minus inline's at the
    same rate, pairwise; the sim's with `profile`. Median over pairs; never below 0.
    """
    return _unexplained(kamailio_extra_us, sim_extra_us, profile.t_suspend + profile.t_continue)


def fit_sleep_wake(
    kamailio_extra_us: Iterable[float], sim_extra_us: Iterable[float], profile: CostProfile
) -> float | None:
    """New `sleep_wake` (µs): blocking-sleep's unexplained extra CPU per re-INVITE over
    inline (pairwise at the same rates, as in `fit_deferral`) goes to the worker's wake-up
    from `usleep()`. Median over pairs; never below 0."""
    return _unexplained(kamailio_extra_us, sim_extra_us, profile.sleep_wake)


def _unexplained(kamailio: Iterable[float], sim: Iterable[float], base: float) -> float | None:
    """`base` + the median of Kamailio − sim over pairs, at least 0; None without pairs."""
    gaps = [k - s for k, s in zip(kamailio, sim, strict=True)]
    if not gaps:
        return None
    return max(0.0, base + statistics.median(gaps))


SINGLE_WAKE = ("blocking-sleep", "async-task")
"""Strategies whose deferral is ONE wake-up (a usleep return; a task worker's read): their
delay in excess of the sim's is that wake-up's scheduling latency (`fit_wakeup_tail`)."""


def fit_wakeup_tail(excess_p50_ms: float, excess_p99_ms: float) -> tuple[float, float] | None:
    """(mean tail µs, share) of a wake-up latency X that is 0, or with probability `share`
    exponential, so that X's median and p99 are the excesses (Kamailio − sim) given.

    P(X > x) = share·exp(−x/T): share·exp(−p50/T) = 0.5 and share·exp(−p99/T) = 0.01;
    a median excess ≤ 0 takes share = 0.5; a share above 1 is capped and T fits p99 alone.
    None when the p99 excess is not positive (nothing to add).
    """
    e50, e99 = max(0.0, excess_p50_ms), excess_p99_ms
    if e99 <= e50:
        return None
    tail = (e99 - e50) / math.log(50)
    share = 0.5 * math.exp(e50 / tail)
    if share > 1.0:
        share, tail = 1.0, e99 / math.log(100)
    return tail * 1e3, share


def least_squares(xy: Sequence[tuple[float, float]]) -> tuple[float, float]:
    """(slope, intercept) of the least-squares line through `xy` (two distinct x at least)."""
    mx = statistics.fmean(x for x, _ in xy)
    my = statistics.fmean(y for _, y in xy)
    slope = sum((x - mx) * (y - my) for x, y in xy) / sum((x - mx) ** 2 for x, _ in xy)
    return slope, my - slope * mx


TailPoint = tuple[float, float, float | None]
"""A single-wake-up point's tail: (mean µs, share) as `fit_wakeup_tail` gives them, and
Kamailio's busy share there (`busy_share`; None if not measured)."""


def fit_tail_line(points: Sequence[TailPoint]) -> tuple[float, float]:
    """(mean µs at no load, µs more per unit of busy share): the least-squares line of the
    points' tail means against their loads, rising or flat (a tail that shrank with the
    load is noise: the median, flat); flat too without two distinct loads."""
    loaded = [(load, mean) for mean, _, load in points if load is not None]
    flat = (statistics.median(mean for mean, _, _ in points), 0.0)
    if len({load for load, _ in loaded}) < 2:
        return flat
    slope, intercept = least_squares(loaded)
    if slope <= 0:
        return flat
    if intercept < 0:  # through the origin instead: no negative stall at light load
        slope = sum(x * y for x, y in loaded) / sum(x * x for x, _ in loaded)
        intercept = 0.0
    return intercept, slope


def fitted_profile(
    base: CostProfile,
    timers: Sequence[TimerFit],
    message_scale: float | None,
    deferral_total_us: float | None,
    phases: Sequence[tuple[PhaseFit, float]] = (),
    wakeup_tails: Sequence[TailPoint] = (),
    sleep_wake_us: float | None = None,
) -> tuple[CostProfile, list[str]]:
    """`base` with every cost the measurements determine replaced; and how each was set.

    `wakeup_tails`: the single-wake-up points' tails: their shares' median, and the line
    of their means against the load (`fit_tail_line`).

    `phases`: (phase fit, the timer's interval in s) pairs; when given, ε and its jitter
    come from their traced periods (direct) instead of context switches (a proxy).
    """
    values: dict[str, float] = {}
    notes: list[str] = []
    for role, name in TIMER_COSTS.items():
        fits = [f for f in timers if f.role == role]
        if fits:
            values[name] = statistics.mean(f.pass_us for f in fits)
            notes.append(f"{name} = {values[name]:.1f} µs: idle CPU / wake-ups of {role}")
    if phases:
        passes = {f.role: values.get(TIMER_COSTS[f.role], getattr(base, TIMER_COSTS[f.role]))
                  for f, _ in phases}  # fmt: skip
        eps = [f.period_us - interval * 1e6 - passes[f.role] for f, interval in phases]
        what = "median traced period − interval − pass"
    else:
        eps = [f.overshoot_us for f in timers if f.role in OVERSHOOT_ROLES]
        what = "period − interval − pass (from context switches)"
    if eps:
        raw = statistics.median(eps)
        values["sleep_overshoot"] = max(0.0, raw)
        roles = {f.role for f, _ in phases} or {f.role for f in timers if f.role in OVERSHOOT_ROLES}
        notes.append(
            f"sleep_overshoot = {values['sleep_overshoot']:.1f} µs: {what} of "
            f"{', '.join(sorted(roles))}" + (f" (raw {raw:.1f} µs < 0: clamped)" if raw < 0 else "")
        )
    if phases:
        fits = [f for f, _ in phases]
        values["sleep_overshoot_jitter"] = statistics.median(f.jitter_us for f in fits)
        values["fork_gap"] = statistics.median(f.fork_gap_us for f in fits)
        values["fork_gap_spread"] = statistics.median(f.fork_gap_spread for f in fits)
        notes.append(
            f"sleep_overshoot_jitter = {values['sleep_overshoot_jitter']:.1f} µs: interquartile "
            f"range of a process's period less the pool's; fork_gap = {values['fork_gap']:.1f} "
            f"µs, fork_gap_spread = {values['fork_gap_spread']:.2f}: gaps between the phases "
            f"({sum(len(f.periods_us) for f in fits)} periods, {len(fits)} run(s))"
        )
    if wakeup_tails:
        values["wakeup_tail"], values["wakeup_tail_per_load"] = fit_tail_line(wakeup_tails)
        values["wakeup_tail_share"] = statistics.median(q for _, q, _ in wakeup_tails)
        values["wakeup_tail_ceiling"] = max((u for _, _, u in wakeup_tails if u), default=1.0)
        means = ", ".join(
            f"{mean:.0f}" + ("" if load is None else f" at {load:.1%}")
            for mean, _, load in sorted(wakeup_tails, key=lambda p: p[2] or 0.0)
        )
        notes.append(
            f"wakeup_tail = {values['wakeup_tail']:.0f} µs + "
            f"{values['wakeup_tail_per_load'] / 100:.2f} µs per point of the cores' busy "
            f"share (wakeup_tail_per_load = {values['wakeup_tail_per_load']:.0f}) up to "
            f"{values['wakeup_tail_ceiling']:.1%} (wakeup_tail_ceiling: the busiest point), on "
            f"{values['wakeup_tail_share']:.0%} of wake-ups: the line through the tails of "
            f"{', '.join(SINGLE_WAKE)}'s p50/p99 delay excess over the sim against Kamailio's "
            f"busy share at each fit point (µs: {means})"
        )
    cpu, cpu_notes = _cpu_costs(base, message_scale, deferral_total_us, sleep_wake_us)
    values.update(cpu)
    notes += cpu_notes
    return base.with_values(**values), notes


def _cpu_costs(
    base: CostProfile, message_scale: float | None, deferral_total_us: float | None,
    sleep_wake_us: float | None,
) -> tuple[dict[str, float], list[str]]:  # fmt: skip
    """The CPU costs `fitted_profile` sets from marginal CPU per re-INVITE, and how."""
    values: dict[str, float] = {}
    notes: list[str] = []
    if message_scale is not None:
        for name in MESSAGE_COSTS:
            values[name] = getattr(base, name) * message_scale
        notes.append(
            f"{', '.join(MESSAGE_COSTS)} × {message_scale:.3f}: inline marginal CPU per "
            "re-INVITE, Kamailio / sim"
        )
    if deferral_total_us is not None:
        total = base.t_suspend + base.t_continue
        share = base.t_suspend / total if total else 0.5
        values["t_suspend"] = deferral_total_us * share
        values["t_continue"] = deferral_total_us * (1 - share)
        notes.append(
            f"t_suspend + t_continue = {deferral_total_us:.1f} µs: deferring strategies' "
            "extra CPU per re-INVITE over inline, Kamailio − sim"
        )
    if sleep_wake_us is not None:
        values["sleep_wake"] = sleep_wake_us
        notes.append(
            f"sleep_wake = {sleep_wake_us:.1f} µs: blocking-sleep's extra CPU per re-INVITE "
            "over inline, Kamailio − sim (a worker's wake-up from usleep())"
        )
    return values, notes


def pause_lateness(
    pairs: Mapping[float, Sequence[tuple[float, float]]], rates: Sequence[float]
) -> tuple[list[list[float]], float | None]:
    """How late SIPp ended its pauses at each of `rates` (s, one list per rate with
    pauses), and the inbound floor (s) taken off the lags.

    `pairs`: rate -> (how late SIPp stamped a re-INVITE, its stamp-to-suspend lag), from
    `runs.pause_pairs`. A re-INVITE reached Kamailio's suspend as late as its stamp plus
    its lag less Kamailio's own inbound path, which the sim models; that path is the
    floor: the 5th percentile of every lag at `rates` (at 50/s SIPp rarely sends within a
    millisecond of its stamp, so a run's own quickest lag is mostly SIPp's).
    """
    lags = sorted(lag for r in rates for _, lag in pairs.get(r, []))
    if not lags:
        return [], None
    floor = lags[len(lags) // 20]
    groups = [[late + max(0.0, lag - floor) for late, lag in pairs[r]]
              for r in rates if pairs.get(r)]  # fmt: skip
    return groups, floor


def even_mixture(groups: Sequence[Sequence[float]], points: int = 1000) -> list[float]:
    """`points` values of each group with at least `MIN_PAUSES` (its quantiles at (k + ½) / points),
    pooled: a sample of the mixture in which every group weighs alike (a rate's pauses
    are not worth more for being many)."""
    out: list[float] = []
    for group in groups:
        if len(group) < MIN_PAUSES:
            continue
        xs = sorted(group)
        out.extend(_quantile(xs, (k + 0.5) / points) for k in range(points))
    return out


def _quantile(xs: Sequence[float], p: float) -> float:
    """The `p` quantile of the sorted `xs` (at least two), linear between neighbours."""
    last = len(xs) - 1
    pos = p * last
    k = min(int(pos), last - 1)
    return xs[k] + (xs[k + 1] - xs[k]) * (pos - k)


def fit_pause_late(lateness: Sequence[float]) -> tuple[float, float] | None:
    """(late µs, jitter µs): how late SIPp ended its pauses (s; `even_mixture` of
    `pause_lateness`) as a uniform draw with the same median and interquartile range (a
    uniform's IQR is its half-width, as for ε), robust to the few pairs SIPp served very
    late or early; None without at least `MIN_PAUSES` pauses."""
    if len(lateness) < MIN_PAUSES:
        return None
    q1, median, q3 = statistics.quantiles(lateness, n=4)
    return max(0.0, median) * 1e6, (q3 - q1) * 1e6


MIN_PAUSES = 20  # fewer pauses than this say nothing about how late SIPp ends them
PAUSE_LATE_STEPS = 40  # quantiles every 2.5 %: the modes a millisecond apart stay apart
PAUSE_LATE_ENDS = 0.005  # the 0 and 1 quantiles are taken at 0.5 % and 99.5 %


def pause_late_quantiles(lateness: Sequence[float]) -> tuple[float, ...]:
    """The measured distribution of pause lateness (s) as `PAUSE_LATE_STEPS` + 1 quantiles
    at equal steps of probability (µs, never below 0), for `driver_pause_late_quantiles`.
    Its ends are the 0.5 % and 99.5 % quantiles, so a rare pause SIPp served very late
    does not stretch the tail; empty without at least 20 pauses."""
    if len(lateness) < MIN_PAUSES:
        return ()
    xs = sorted(lateness)
    probs = [k / PAUSE_LATE_STEPS for k in range(PAUSE_LATE_STEPS + 1)]
    probs[0], probs[-1] = PAUSE_LATE_ENDS, 1 - PAUSE_LATE_ENDS
    return tuple(max(0.0, _quantile(xs, p)) * 1e6 for p in probs)


PAUSE_LATE_NOT_FITTED = "driver_pause_late not fitted: fewer than 20 SIPp pauses at the fit rates"


Figures = Mapping[tuple[str, float], Mapping[str, Any]]
"""(strategy spec, re-INVITE rate) -> that point's median figures (the report's
`median_figures`: Kamailio's of one core, the sim's of its `cores`)."""


def fit_from_runs(
    specs: Sequence[str],
    rates: Sequence[float],
    kam_idle: Mapping[str, Sequence[dict[str, Any]]],
    kam: Figures,
    sim: Figures,
    base: CostProfile,
    phases: Sequence[tuple[PhaseFit, float]] = (),
    cores: int = 2,
) -> tuple[CostProfile, list[str], list[TimerFit]]:
    """The fitted profile from Kamailio's idle runs and the figures of Kamailio's points
    and of the sim's with `base` (same loads), on a machine of `cores` cores."""
    fits = timer_fits(specs, kam_idle)
    message_scale = deferral = sleep_wake = None
    load = fit_load(specs, rates, kam, cores)
    if "inline" in specs:
        message_scale, deferral, sleep_wake = _message_and_deferral(specs, rates, kam, sim, base,
                                                                    load, cores)  # fmt: skip
    tails = _wakeup_tails(specs, rates, kam, sim, cores)
    profile, notes = fitted_profile(base, fits, message_scale, deferral, phases, tails,
                                    sleep_wake)  # fmt: skip
    if load is not None:
        profile = profile.with_values(
            load_exponent=load.exponent, load_floor=load.floor, load_ceiling=load.ceiling
        )
        notes.append(load.note())
    if "inline" not in specs:
        notes.append("message and suspend/continue costs not fitted: inline was not run")
    return profile, notes, fits


def timer_fits(
    specs: Sequence[str], kam_idle: Mapping[str, Sequence[dict[str, Any]]]
) -> list[TimerFit]:
    """A `TimerFit` of every timer role in every idle Kamailio run (one per repeat)."""
    fits: list[TimerFit] = []
    for spec in specs:
        strategy = strategies.parse_spec(spec)
        for idle in kam_idle[spec]:
            for role in TIMER_COSTS:
                data = idle["cpu"]["by_role"].get(role)
                processes = idle["counters"].get(f"processes: {role}", 0)
                interval = timer_interval(role, strategy.values)
                if data is None or interval is None:
                    continue
                fit = fit_timer(role, processes, interval, data["wakeups_per_s"],
                                data["busy_share"])  # fmt: skip
                if fit is not None:
                    fits.append(fit)
    return fits


@dataclass(frozen=True, slots=True)
class LoadFit:
    """How Kamailio's CPU per re-INVITE falls with its load (`CostProfile.load_exponent`)."""

    exponent: float
    floor: float  # busy share of the cores: the idle load, below which steps cost their price
    ceiling: float  # the busiest load fitted: no cheaper above it
    slopes: tuple[float, ...]  # each strategy's own exponent

    def factor(self, load: float | None) -> float:
        """What a step costs at `load` (busy share of the cores) per µs it costs at idle."""
        if load is None or load <= self.floor:
            return 1.0
        return (min(load, self.ceiling) / self.floor) ** -self.exponent

    def note(self) -> str:
        low, high = min(self.slopes), max(self.slopes)
        return (
            f"load_exponent = {self.exponent:.3f} from load_floor = {self.floor:.2%} to "
            f"load_ceiling = {self.ceiling:.2%} of the cores: CPU per re-INVITE ∝ "
            f"load^−exponent, median over {len(self.slopes)} "
            f"strategies ({low:.2f}–{high:.2f}) of the slope of Kamailio's marginal CPU per "
            f"re-INVITE against the busy share its load added above idle at the fit rates "
            "(empty timer passes count towards no load); the floor is the lightest such load, "
            "the ceiling the busiest"
        )


def busy_share(figures: Mapping[str, Any], cores: int, above_idle: bool = False) -> float | None:
    """The busy share of the cores under a run's load (None if not measured): everything,
    what a woken process competes with for a core (`fit_tail_line`); or, `above_idle`, what
    the load added to the idle share, what the messages kept busy (the timers' empty
    passes, there at idle too, warm nothing: `fit_load`)."""
    busy = figures.get("load_cpu_pct_core")
    if not busy:
        return None
    if above_idle:
        busy = max(0.0, busy - (figures.get("idle_cpu_pct_core") or 0.0))
    return busy / 100 / cores


def fit_load(specs: Sequence[str], rates: Sequence[float], kam: Figures,
             cores: int) -> LoadFit | None:  # fmt: skip
    """`LoadFit` from Kamailio's points: per strategy, the least-squares slope of log
    marginal CPU per re-INVITE against log `busy_share` above idle over the fit `rates` (at least
    two); the median slope, within [0, 1], between the lightest and the busiest work
    load fitted. None without a strategy to fit."""
    slopes, loads = [], []
    for spec in specs:
        xy = []
        for r in rates:
            f = kam.get((spec, r))
            if f is None:
                continue
            load, marginal = busy_share(f, cores, above_idle=True), f["marginal_us_per_reinvite"]
            if not load or not marginal or marginal <= 0:
                continue
            loads.append(load)
            xy.append((math.log(load), math.log(marginal)))
        if len(xy) < 2 or len({x for x, _ in xy}) < 2:
            continue
        slopes.append(-least_squares(xy)[0])
    if not slopes:
        return None
    exponent = min(1.0, max(0.0, statistics.median(slopes)))
    return LoadFit(exponent, min(loads), max(loads), tuple(slopes))


def _message_and_deferral(
    specs: Sequence[str], rates: Sequence[float], kam: Figures, sim: Figures,
    base: CostProfile, load: LoadFit | None = None, cores: int = 2,
) -> tuple[float | None, float | None, float | None]:  # fmt: skip
    """The message cost scale from inline's points, t_suspend + t_continue from the
    deferring strategies' and `sleep_wake` from blocking-sleep's (`fit_scale`,
    `fit_deferral`, `fit_sleep_wake`); inline must have run. With `load`,
    Kamailio's figures are first brought back to their idle price (the sim's with `base`
    are: it has no load discount)."""

    def marg(figs: Figures, spec: str, rate: float) -> float | None:
        return figs[spec, rate]["marginal_us_per_reinvite"]

    def idle_price(spec: str, rate: float) -> float | None:
        value = marg(kam, spec, rate)
        if value is None or load is None:
            return value
        return value / load.factor(busy_share(kam[spec, rate], cores, above_idle=True))

    pairs = [(idle_price("inline", r), marg(sim, "inline", r)) for r in rates]
    pairs = [(k, s) for k, s in pairs if k is not None and s is not None]
    message_scale = fit_scale([k for k, _ in pairs], [s for _, s in pairs])
    extra: dict[bool, tuple[list[float], list[float]]] = {True: ([], []), False: ([], [])}
    for spec in specs:
        name = strategies.parse_spec(spec).name
        if name == "inline":
            continue
        kx, sx = extra[name == "blocking-sleep"]  # it neither suspends nor continues
        for r in rates:
            values = (idle_price(spec, r), idle_price("inline", r),
                      marg(sim, spec, r), marg(sim, "inline", r))  # fmt: skip
            if None in values:
                continue
            kx.append(values[0] - values[1])
            sx.append(values[2] - values[3])
    return message_scale, fit_deferral(*extra[False], base), fit_sleep_wake(*extra[True], base)


def _wakeup_tails(
    specs: Sequence[str], rates: Sequence[float], kam: Figures, sim: Figures, cores: int
) -> list[TailPoint]:
    """`fit_wakeup_tail` of every point of a single-wake-up strategy with delays on both
    sides, with Kamailio's busy share there."""
    tails = []
    for spec in specs:
        if strategies.parse_spec(spec).name not in SINGLE_WAKE:
            continue
        for r in rates:
            k, m = kam[spec, r], sim[spec, r]
            if None in (k["delay_p50_ms"], k["delay_p99_ms"], m["delay_p50_ms"], m["delay_p99_ms"]):
                continue
            tail = fit_wakeup_tail(k["delay_p50_ms"] - m["delay_p50_ms"],
                                   k["delay_p99_ms"] - m["delay_p99_ms"])  # fmt: skip
            if tail is not None:
                tails.append((*tail, busy_share(k, cores)))
    return tails


def timer_interval(role: str, values: Mapping[str, Any]) -> float | None:
    """A timer role's interval in s under a strategy's parameters (None: not a timer)."""
    if role == "rtimer":
        return values.get("interval")
    if role == "async-ms-timer":
        ms = values.get("ms_timer")
        return None if ms is None else ms / 1000
    if role == "async-timer":
        return 1.0
    return None
