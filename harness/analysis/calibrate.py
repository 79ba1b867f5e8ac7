"""Calibration: the same loads on sim and real Kamailio, a cost profile fitted to Kamailio.

`calibrate` runs every (strategy, re-INVITE rate) on the kamailio target, then on the sim
with the starting profile, plus one traffic-free run per strategy on each side (the idle
figures by process role). It fits what the measurements determine simply:

- timer passes from Kamailio's *idle* timer roles: a role of `n` processes with `w`
  wake-ups/s and `b` µs of CPU per second costs `b / w` µs per pass (`fit_timer`).
- the sleep overshoot ε, its jitter and the fork gaps from traced passes of the rtimer
  processes (`mqueue-rtimer`'s cfg logs passes 101-120 of each process with `trace=True`):
  period = interval + ε + pass; the gaps between the bunched phases are fork gaps; the
  spread of each period around the pool's mean is the jitter that drifts them
  (`fit_phases`). Without that trace, ε comes from the idle role's period `n / w` − interval
  − pass, where wake-ups are context switches (a pass that blocks on a lock switches twice).
- request/response/relay/reply/retransmission costs from `inline`: the ratio of Kamailio's
  marginal CPU per re-INVITE (loaded CPU per re-INVITE minus the idle CPU spread over the
  rate's re-INVITEs, `marginal_us`) to the sim's scales those costs (`fit_scale`).
- `t_suspend` + `t_continue` from the deferring strategies: the CPU per re-INVITE Kamailio
  spends above `inline` at the same rate, not yet explained by the sim, is charged to them
  (`fit_deferral`).
- the wake-up tail (stalls of the cores under traffic) from the p50/p99 delay excess of
  the single-wake-up strategies over the sim (`fit_wakeup_tail`), and the share of it
  common to all processes from mqueue-rtimer's p50, whose phases it bunches or not
  (`fit_common_stalls`: that p50 is then fitted, not predicted).
- capacity from a ladder of rates, SIPp driving Kamailio (`capacity_ladder`).

It then re-runs the sim with the fitted profile and judges each figure against the
fidelity bounds (`judge`: delay p50/p99 within max(10 %, 0.5 ms), early share within
5 points, idle wake-ups/s within 10 %, capacity within 15 %). With `repeat` > 1 every
Kamailio point runs that many times: the fits use every run, the judged figures are
medians, the capacity the median of each repeat's. Capacity is saturation (ledger losses,
408s, 5xx, p99 bounds): 491 glare races stay in the ledger but do not count against it.
CPU is compared like with like: µs per re-INVITE, and shares of ONE core (Kamailio's are
of one core; the sim's of `cores`, so × cores).

This module must not change the adopted default profile itself (`--adopt` in the CLI
does, explicitly), and runs Kamailio one job at a time (it measures real CPU); only sim
runs go to the executor.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import asdict, dataclass, field, replace
from itertools import pairwise
from pathlib import Path
from typing import Any

import strategies
from core.runtime.costs import CostProfile
from core.runtime.server import ServerSettings
from harness.analysis.sweep import SweepPoint, capacity
from harness.load.network import Link, parse_link
from harness.load.spec import LoadSpec, parse_load

CALL_SHAPE = "reinvite:rate=1/s,duration=3s,reinvites=10,gap=1ms,arrival=poisson"
LOOPBACK = "latency=50us,jitter=20us,loss=0%"
"""The sim network for calibration: Kamailio runs on 127.0.0.1, so loopback-like links."""
BOUND_MS = 5.0  # capacity: p99 lateness bound (the sweep's default)
E2E_BOUND_MS = 50.0  # capacity: p99 e2e above the requested delay (the sweep's default)
IDLE_WINDOW = 0.3  # Kamailio's pre-load idle window in the loaded runs (not used for figures)

MESSAGE_COSTS = ("request", "response", "retransmission", "relay", "reply")
DEFERRAL_COSTS = ("t_suspend", "t_continue")
TIMER_COSTS = {"rtimer": "rtimer_pass", "async-ms-timer": "async_ms_pass",
               "async-timer": "async_s_pass"}  # fmt: skip
OVERSHOOT_ROLES = ("rtimer", "async-ms-timer")  # short periods: ε is resolvable from them


# ---------------------------------------------------------------------------- fitting


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
    base = profile.t_suspend + profile.t_continue
    gaps = [k - s for k, s in zip(kamailio_extra_us, sim_extra_us, strict=True)]
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


def fitted_profile(
    base: CostProfile,
    timers: Sequence[TimerFit],
    message_scale: float | None,
    deferral_total_us: float | None,
    phases: Sequence[tuple[PhaseFit, float]] = (),
    wakeup_tails: Sequence[tuple[float, float]] = (),
) -> tuple[CostProfile, list[str]]:
    """`base` with every cost the measurements determine replaced; and how each was set.

    `wakeup_tails`: (mean µs, share) fits of single-wake-up points; their medians are used.

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
        values["wakeup_tail"] = statistics.median(t for t, _ in wakeup_tails)
        values["wakeup_tail_share"] = statistics.median(q for _, q in wakeup_tails)
        notes.append(
            f"wakeup_tail = {values['wakeup_tail']:.0f} µs on {values['wakeup_tail_share']:.0%}"
            f" of wake-ups: p50/p99 delay excess over the sim of {', '.join(SINGLE_WAKE)} "
            f"({len(wakeup_tails)} points)"
        )
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
    return base.with_values(**values), notes


def profile_toml(profile: CostProfile, header: Sequence[str]) -> str:
    """The profile as TOML `CostProfile.load` reads (a [costs] table, µs)."""
    lines = [f"# {line}" for line in header]
    lines.append("[costs]")
    lines += [f"{name} = {value:.3f}" for name, value in asdict(profile).items()]
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------------------- figures


def core_share(entry: Mapping[str, Any], cores: int, key: str = "busy_share") -> float | None:
    """A CPU share of the entry as a share of ONE core."""
    value = entry["cpu"].get(key)
    return None if value is None else value * cores


def figures(
    entry: Mapping[str, Any], idle: Mapping[str, Any], cores: int, reinvite_rate: float
) -> dict[str, Any]:
    """The side-by-side figures of one run, normalised so both targets compare alike."""
    delay = entry["delay_ms"]
    idle_share = core_share(idle, cores)
    per_txn = entry["cpu"]["per_txn_us"]
    return {
        "strategy": entry["strategy"].partition(":")[0],
        "delay_p50_ms": delay["p50"],
        "delay_p90_ms": delay["p90"],
        "delay_p99_ms": delay["p99"],
        "early_pct": None if entry["early_share"] is None else entry["early_share"] * 100,
        "idle_wakeups_per_s": idle["cpu"]["wakeups_per_s"],
        "idle_cpu_pct_core": None if idle_share is None else idle_share * 100,
        "cpu_us_per_reinvite": per_txn,
        "cpu_us_per_call": (
            None if per_txn is None else per_txn * parse_load(entry["load"]).reinvites
        ),
        "marginal_us_per_reinvite": (
            None
            if per_txn is None or idle_share is None
            else marginal_us(per_txn, idle_share, reinvite_rate)
        ),
        "load_cpu_pct_core": core_share(entry, cores) * 100,
        "idle_by_role": {
            role: {
                "wakeups_per_s": v["wakeups_per_s"],
                "cpu_pct_core": v["busy_share"] * cores * 100,
            }
            for role, v in idle["cpu"]["by_role"].items()
        },
        "resumed_by": sorted(
            k.removeprefix("resumed by ") for k in entry["counters"] if k.startswith("resumed by ")
        ),
        "ledger": entry["ledger"],
    }


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
            sweep = [SweepPoint(spec, spec, None, None, rate, _for_capacity(runs[spec, rate][n]))
                     for rate in rates]  # fmt: skip
            each.append(capacity(sweep, BOUND_MS, E2E_BOUND_MS)[spec] or 0.0)
        best = statistics.median_low(each)
        out[spec] = best or None
    return out


def _for_capacity(entry: dict[str, Any]) -> dict[str, Any]:
    """The entry as capacity judges it: races not counted; a run that deferred nothing
    (inline) has no lateness, so only the ledger and e2e count."""
    entry = {**entry, "ledger": {**entry["ledger"], "race_491": 0}}
    if entry["lateness_ms"]["p99"] is not None or entry["requested_delay_ms"]:
        return entry
    return {**entry, "lateness_ms": {**entry["lateness_ms"], "p99": 0.0}}


# ---------------------------------------------------------------------------- judging


@dataclass(frozen=True, slots=True)
class Check:
    figure: str
    kamailio: float | None
    sim: float | None
    verdict: str  # PASS | MISS | n/a
    why: str = ""


def _delay_check(name: str, kam: float | None, sim: float | None) -> Check:
    if kam is None or sim is None:
        return Check(name, kam, sim, "n/a", "no delays recorded on one side")
    bound = max(0.1 * abs(kam), 0.5)
    return Check(name, kam, sim, "PASS" if abs(sim - kam) <= bound else "MISS")


def judge(
    kam: Mapping[str, Any],
    sim: Mapping[str, Any],
    kam_capacity: float | None,
    sim_capacity: float | None,
    highest_rate: float,
    capacity_why: str = "",
) -> list[Check]:
    """Each figure with a fidelity bound -> PASS/MISS, with a reason if known.

    `capacity_why`: what failed at the first failing rate on each side (`capacity_failure`).
    """
    checks = [
        _delay_check("delay p50 ms", kam["delay_p50_ms"], sim["delay_p50_ms"]),
        _delay_check("delay p99 ms", kam["delay_p99_ms"], sim["delay_p99_ms"]),
    ]
    reasons = _delay_reasons(kam, sim)
    checks = [replace(c, why=reasons) if c.verdict == "MISS" else c for c in checks]
    ke, se = kam["early_pct"], sim["early_pct"]
    if ke is None or se is None:
        checks.append(Check("early %", ke, se, "n/a", "no delays recorded on one side"))
    else:
        ok = abs(se - ke) <= 5.0
        checks.append(Check("early %", ke, se, "PASS" if ok else "MISS", "" if ok else reasons))
    kw, sw = kam["idle_wakeups_per_s"], sim["idle_wakeups_per_s"]
    ok = abs(sw - kw) <= 0.1 * kw
    why = _wakeup_reasons(kam, sim)
    if ok:  # the total can agree while the roles behind it differ: say so
        why = "" if why == "not diagnosed" else f"total within 10%, but {why}"
    checks.append(Check("idle wake-ups/s", kw, sw, "PASS" if ok else "MISS", why))
    if kam_capacity == sim_capacity:
        why = "both below the lowest tested rate" if kam_capacity is None else ""
        if kam_capacity == highest_rate:
            why = "both reach the highest tested rate: a lower bound only"
        checks.append(Check("capacity re-INV/s", kam_capacity, sim_capacity, "PASS", why))
    elif kam_capacity is None or sim_capacity is None:
        checks.append(
            Check(
                "capacity re-INV/s",
                kam_capacity,
                sim_capacity,
                "MISS",
                capacity_why or "one side fails at the lowest tested rate",
            )  # fmt: skip
        )
    else:
        ok = abs(sim_capacity - kam_capacity) <= 0.15 * kam_capacity
        why = "" if ok else capacity_why or "tested rates too coarse to tell"
        if not ok and sim_capacity > kam_capacity:
            why += (
                "; the sim's cores are the server's alone, Kamailio shares them with the load "
                "generator (SIPp UAC and UAS, whose CPU deferbench does not measure)"
            )
        checks.append(Check("capacity re-INV/s", kam_capacity, sim_capacity,
                            "PASS" if ok else "MISS", why))  # fmt: skip
    return checks


KNOWN_DELAY_CAUSES = {
    "mqueue-rtimer": "the delay follows where the 12 rtimer phases fall, random per run: "
    "Kamailio's from its forks, the sim's from one seeded draw with the fitted fork gaps and "
    "the fitted share of common stalls; near the pool's pop-one capacity (12 / period, the "
    "continuation runs inside the timer) the queue grows, so p50 and p99 follow how close "
    "each side is to it",
}
"""Causes found by inspection, named when a delay figure of that strategy misses."""


def capacity_failure(entry: Mapping[str, Any]) -> str:
    """Which capacity criterion a run fails ("" if none): ledger, p99 lateness, p99 e2e."""
    point = SweepPoint("", "", None, None, 0.0, _for_capacity(dict(entry)))
    return ", ".join(point.failures(BOUND_MS, E2E_BOUND_MS))


def _delay_reasons(kam: Mapping[str, Any], sim: Mapping[str, Any]) -> str:
    why = [KNOWN_DELAY_CAUSES[sim["strategy"]]] if sim.get("strategy") in KNOWN_DELAY_CAUSES else []
    if kam["resumed_by"] != sim["resumed_by"]:
        why.append(f"resumed by {'/'.join(kam['resumed_by'])} in Kamailio, "
                   f"{'/'.join(sim['resumed_by'])} in the sim")  # fmt: skip
    kt, st = _tail(kam), _tail(sim)
    if kt is not None and st is not None and abs(kt - st) > max(0.1 * kt, 0.5):
        why.append(
            f"tail p99 − p50 is {kt:.2f} ms in Kamailio, {st:.2f} ms in the sim: the sim's "
            "wake-up tail is one fit over every rate, "
            + (
                "and Kamailio's grows with the load (the load generator shares its cores)"
                if kt > st
                else "longer than Kamailio's at this rate"
            )  # fmt: skip
        )
    for side, figs in (("Kamailio", kam), ("sim", sim)):
        bad = {k: v for k, v in figs["ledger"].items() if k not in ("transactions", "resumed",
               "retransmissions") and v}  # fmt: skip
        if bad:
            why.append(f"{side} ledger not clean: {bad}")
    return "; ".join(why) or "not diagnosed"


def _tail(figs: Mapping[str, Any]) -> float | None:
    p50, p99 = figs["delay_p50_ms"], figs["delay_p99_ms"]
    return None if p50 is None or p99 is None else p99 - p50


def _wakeup_reasons(kam: Mapping[str, Any], sim: Mapping[str, Any]) -> str:
    kr, sr = kam["idle_by_role"], sim["idle_by_role"]
    missing = {r: v["wakeups_per_s"] for r, v in kr.items() if r not in sr and v["wakeups_per_s"]}
    why = []
    if missing:
        listed = ", ".join(f"{r} {w:.0f}/s" for r, w in sorted(missing.items()))
        why.append(f"roles the sim does not model: {listed}")
    differ = []
    for role in sorted(set(kr) & set(sr)):
        k, s = kr[role]["wakeups_per_s"], sr[role]["wakeups_per_s"]
        if abs(s - k) > max(0.1 * k, 1.0):
            differ.append(f"{role} {k:.0f}/s vs {s:.0f}/s")
    if differ:
        why.append(f"by role, Kamailio vs sim: {', '.join(differ)}")
    if why:
        why.append("Kamailio's wake-ups are context switches")
    return "; ".join(why) or "not diagnosed"


# ---------------------------------------------------------------------------- running


@dataclass
class Calibration:
    """Everything one `calibrate` produced (the JSON document is `to_json`)."""

    strategies: list[str]
    rates: list[float]
    duration: float
    seed: int
    cores: int
    base: CostProfile
    fitted: CostProfile
    notes: list[str]
    timer_fits: list[TimerFit]
    repeat: int = 1
    phase_fits: list[PhaseFit] = field(default_factory=list)
    ladder: dict[str, dict[str, Any]] = field(default_factory=dict)  # capacity_ladder()
    points: list[dict[str, Any]] = field(default_factory=list)  # one per strategy × rate
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)  # target/side -> spec -> entry

    def to_json(self, command: Sequence[str]) -> dict[str, Any]:
        return {
            "schema": "deferbench.calibration/1",
            "command": list(command),
            "strategies": self.strategies,
            "rates": self.rates,
            "duration_s": self.duration,
            "repeat": self.repeat,
            "seed": self.seed,
            "cores": self.cores,
            "base_profile": asdict(self.base),
            "fitted_profile": asdict(self.fitted),
            "notes": self.notes,
            "timer_fits": [
                {
                    "role": f.role,
                    "processes": f.processes,
                    "interval_s": f.interval_s,
                    "wakeups_per_s": f.wakeups_per_s,
                    "busy_core_share": f.busy_core_share,
                    "pass_us": f.pass_us,
                    "overshoot_us": f.overshoot_us,
                }  # fmt: skip
                for f in self.timer_fits
            ],
            "phase_fits": [
                {
                    "role": f.role,
                    "processes": f.processes,
                    "phase_gaps_us": list(f.phase_gaps_us),
                    "fork_gap_us": f.fork_gap_us,
                    "fork_gap_spread": f.fork_gap_spread,
                    "period_us": f.period_us,
                    "jitter_us": f.jitter_us,
                }  # fmt: skip
                for f in self.phase_fits
            ],
            "capacity_ladder": self.ladder,
            "points": self.points,
            "idle": self.idle,
        }


Progress = Callable[[str], None]


def _sim_entry(
    spec: str, load: str | None, duration: float, seed: int, settings: ServerSettings,
    costs: CostProfile, link: Link,
) -> dict[str, Any]:  # fmt: skip
    """One sim run (a top-level function: picklable for a process pool); load None = idle."""
    from harness.targets.sim import SimTarget

    if load is None:
        return SimTarget(costs).idle(spec, duration, seed, settings)
    return SimTarget(costs, network=link).run(spec, parse_load(load), seed, settings)


def _sims(
    jobs: Sequence[tuple[str, str | None]], duration: float, seed: int,
    settings: ServerSettings, costs: CostProfile, executor: Executor | None,
) -> list[dict[str, Any]]:  # fmt: skip
    return _sims_each(jobs, duration, seed, settings, [costs] * len(jobs), executor)


def _sims_each(
    jobs: Sequence[tuple[str, str | None]], duration: float, seed: int,
    settings: ServerSettings, costs: Sequence[CostProfile], executor: Executor | None,
) -> list[dict[str, Any]]:  # fmt: skip
    """Sim runs, job i with profile `costs[i]`, in order (on `executor` if given)."""
    link = parse_link(LOOPBACK)
    args = [(spec, load, duration, seed, settings, c, link)
            for (spec, load), c in zip(jobs, costs, strict=True)]  # fmt: skip
    if executor is None:
        return [_sim_entry(*a) for a in args]
    return list(executor.map(_sim_entry, *zip(*args, strict=True)))


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


def calibrate(
    specs: Sequence[str],
    rates: Sequence[float],
    duration: float,
    seed: int,
    settings: ServerSettings,
    base: CostProfile,
    *,
    repeat: int = 1,
    capacity_rates: Sequence[float] = (),
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> Calibration:
    """Run both sides, fit, re-run the sim with the fit; see the module docstring.

    Kamailio runs every point `repeat` times (the same seeded load: the spread is
    Kamailio's and the machine's); fits use every run, judged figures are medians.
    `capacity_rates`: the capacity ladder, SIPp-driven on Kamailio (`capacity_ladder`);
    without it capacity is judged over `rates` alone.
    """
    say = progress or (lambda _line: None)
    specs = [strategies.parse_spec(s).spec for s in specs]
    rates = sorted(rates)
    loads = {rate: load_for(rate, duration).spec for rate in rates}
    kam, kam_idle, phases = _kamailio_points(specs, loads, duration, seed, settings, repeat, say)

    def sim_side(costs: CostProfile, label: str) -> tuple[dict, dict]:
        say(f"sim ({label} profile): {len(specs)} idle + {len(specs) * len(rates)} loaded runs")
        jobs = [(s, None) for s in specs] + [(s, loads[r]) for s in specs for r in rates]
        entries = _sims(jobs, duration, seed, settings, costs, executor)
        idle = {s: [e] for s, e in zip(specs, entries[: len(specs)], strict=True)}
        loaded = {k: [e] for k, e in zip([(s, r) for s in specs for r in rates],
                                          entries[len(specs):], strict=True)}  # fmt: skip
        return idle, loaded

    sim_idle, sim = sim_side(base, "starting")
    cores = settings.cores
    fitted, notes, fits = fit_from_runs(
        specs, rates, kam, kam_idle, sim, sim_idle, cores, base, phases
    )
    if fitted.wakeup_tail > 0:
        fitted, note = fit_common_stalls(specs, rates, kam, kam_idle, duration, seed, settings,
                                         fitted, executor, say)  # fmt: skip
        notes.append(note)
    fit_idle, fit = sim_side(fitted, "fitted")

    result = Calibration(specs, list(rates), duration, seed, cores, base, fitted, notes, fits,
                         repeat, [f for f, _ in phases])  # fmt: skip
    if capacity_rates:
        profiles = {"sim": fitted, "sim_starting": base}
        ladder = capacity_ladder(specs, sorted(capacity_rates), duration, seed, settings,
                                 profiles, executor, say)  # fmt: skip
        result.ladder = ladder
        caps = {side: {spec: ladder[spec][side] for spec in specs}
                for side in ("kamailio", *profiles)}  # fmt: skip
        tested, why_of = sorted(capacity_rates), lambda spec: ladder[spec]["why"]
    else:
        caps = {
            "kamailio": capacities(specs, rates, kam),
            "sim": capacities(specs, rates, fit),
            "sim_starting": capacities(specs, rates, sim),
        }
        tested, why_of = rates, lambda spec: _capacity_why(spec, rates, kam, fit)
    for spec in specs:
        for rate in rates:
            k = median_figures(kam[spec, rate], kam_idle[spec], 1, rate)
            f = median_figures(fit[spec, rate], fit_idle[spec], cores, rate)
            s0 = median_figures(sim[spec, rate], sim_idle[spec], cores, rate)
            checks = judge(k, f, caps["kamailio"][spec], caps["sim"][spec], tested[-1],
                           why_of(spec))  # fmt: skip
            result.points.append({
                "strategy": spec, "reinvite_rate": rate, "load": loads[rate],
                "kamailio": k, "sim": f, "sim_starting": s0,
                "capacity": {side: caps[side][spec] for side in caps},
                "checks": [_check_json(c) for c in checks],
                "entries": {"kamailio": kam[spec, rate], "sim": fit[spec, rate]},
            })  # fmt: skip
    result.idle = {
        "kamailio": kam_idle, "sim": fit_idle, "sim_starting": sim_idle,
    }  # fmt: skip
    return result


Runs = dict[tuple[str, float], list[dict[str, Any]]]
"""(strategy spec, re-INVITE rate) -> one result entry per repeat."""


def _kamailio_points(
    specs: Sequence[str], loads: Mapping[float, str], duration: float, seed: int,
    settings: ServerSettings, repeat: int, say: Progress,
) -> tuple[Runs, dict[str, list[dict[str, Any]]], list[tuple[PhaseFit, float]]]:  # fmt: skip
    """Kamailio's side, one run at a time (real CPU): per strategy and repeat an idle run
    (with its traced timer phases) and a run at every rate."""
    from harness.targets.kamailio.target import kamailio_run
    from harness.targets.sim import idle_load

    kam: Runs = {}
    kam_idle: dict[str, list[dict[str, Any]]] = {}
    phases: list[tuple[PhaseFit, float]] = []
    for spec in specs:
        interval = _interval("rtimer", strategies.parse_spec(spec).values)
        for n in range(repeat):
            tag = f" (run {n + 1}/{repeat})" if repeat > 1 else ""
            say(f"kamailio {spec}: idle {duration:g}s{tag}")
            run = kamailio_run(spec, idle_load(duration), seed, settings, idle_window=IDLE_WINDOW)
            kam_idle.setdefault(spec, []).append(run.result)
            phase = fit_phases("rtimer", run.trace.timer_passes)
            if phase is not None and interval is not None:
                phases.append((phase, interval))
            for rate, load in loads.items():
                say(f"kamailio {spec}: {rate:g} re-INVITEs/s for {duration:g}s{tag}")
                entry = kamailio_run(spec, parse_load(load), seed, settings,
                                     idle_window=IDLE_WINDOW).result  # fmt: skip
                kam.setdefault((spec, rate), []).append(entry)
    return kam, kam_idle, phases


COMMON_GRID = (0.0, 0.5, 0.75, 0.85, 0.9, 0.95, 1.0)
"""Candidate shares of wake-ups meeting the common stalls (`fit_common_stalls`)."""


def fit_common_stalls(
    specs: Sequence[str],
    rates: Sequence[float],
    kam: Mapping[tuple[str, float], Sequence[dict[str, Any]]],
    kam_idle: Mapping[str, Sequence[dict[str, Any]]],
    duration: float,
    seed: int,
    settings: ServerSettings,
    profile: CostProfile,
    executor: Executor | None,
    say: Progress,
) -> tuple[CostProfile, str]:
    """`wakeup_tail_common`: how much of the wake-up tail is common to all processes.

    Nothing measured on its own tells it, but the rtimer pool shows it: independent tails
    drift the 12 phases apart (the delay until the next pass shrinks), common ones keep
    them bunched. The grid value whose sim gives mqueue-rtimer's delay p50 closest to
    Kamailio's over the rates (sum of absolute differences) is taken: that p50 is then
    fitted, not predicted. Without mqueue-rtimer, 1.0 (all common) is kept.
    """
    spec = next((s for s in specs if strategies.parse_spec(s).name == "mqueue-rtimer"), None)
    if spec is None:
        return profile, "wakeup_tail_common = 1 (not fitted: mqueue-rtimer was not run)"
    loads = [load_for(rate, duration).spec for rate in rates]
    say(f"sim: wakeup_tail_common over {len(COMMON_GRID)} values × {len(rates)} rates")
    jobs = [(spec, load) for _ in COMMON_GRID for load in loads]
    entries = iter(_sims_each(jobs, duration, seed, settings,
                              [profile.with_values(wakeup_tail_common=c)
                               for c in COMMON_GRID for _ in loads], executor))  # fmt: skip
    target = [median_figures(kam[spec, r], kam_idle[spec], 1, r)["delay_p50_ms"] for r in rates]
    best, best_error = 1.0, math.inf
    for common in COMMON_GRID:
        p50s = [next(entries)["delay_ms"]["p50"] for _ in rates]
        error = sum(abs(s - k) for s, k in zip(p50s, target, strict=True)
                    if s is not None and k is not None)  # fmt: skip
        if error < best_error:
            best, best_error = common, error
    note = (
        f"wakeup_tail_common = {best:g}: of {', '.join(f'{c:g}' for c in COMMON_GRID)}, the "
        f"share whose sim gives {spec.partition(':')[0]} delay p50 closest to Kamailio's "
        f"(Σ|Δp50| = {best_error:.2f} ms over {len(rates)} rates): that p50 is fitted"
    )
    return profile.with_values(wakeup_tail_common=best), note


def capacity_ladder(
    specs: Sequence[str],
    rates: Sequence[float],
    duration: float,
    seed: int,
    settings: ServerSettings,
    profiles: Mapping[str, CostProfile],
    executor: Executor | None,
    say: Progress,
) -> dict[str, dict[str, Any]]:
    """Per strategy: the highest clean rate of the ladder on Kamailio (SIPp-driven, the
    Python endpoints cannot offer these rates) and on the sim with each of `profiles`
    (label -> profile; "sim" is the one judged), the same loads.

    Kamailio stops climbing at its first failing rate (nothing above it counts); the sim
    runs every rate. Per strategy: {"kamailio": capacity or None, label: capacity or None,
    "steps": what failed at each rate, "why": the first failure of Kamailio and "sim"}.
    """
    from harness.targets.kamailio.target import KamailioTarget

    kamailio = KamailioTarget(driver="sipp", idle_window=IDLE_WINDOW)
    loads = {rate: capacity_load(rate, duration).spec for rate in rates}
    kam: dict[tuple[str, float], list[dict[str, Any]]] = {}
    for spec in specs:
        for rate in rates:
            say(f"kamailio {spec}: capacity {rate:g} re-INVITEs/s (SIPp) for {duration:g}s")
            entry = kamailio.run(spec, parse_load(loads[rate]), seed, settings)
            kam[spec, rate] = [entry]
            if capacity_failure(entry):
                break
    keys = [(s, r) for s in specs for r in rates]
    sims: dict[str, dict[tuple[str, float], list[dict[str, Any]]]] = {}
    for label, costs in profiles.items():
        say(f"{label.replace('_', ' ')} profile: capacity ladder, {len(keys)} runs")
        entries = _sims([(s, loads[r]) for s, r in keys], duration, seed, settings, costs,
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
            "kamailio": capacities([spec], climbed, kam)[spec],
            **{label: capacities([spec], rates, runs)[spec] for label, runs in sims.items()},
            "steps": steps,
            "why": _capacity_why(spec, rates, kam, sims["sim"]),
        }
    return out


def median_figures(
    entries: Sequence[dict[str, Any]], idles: Sequence[dict[str, Any]], cores: int, rate: float
) -> dict[str, Any]:
    """`figures` of each (run, idle run) pair; numbers are the median over the pairs.

    Non-numeric figures (roles, ledger) come from the first pair; `runs` says how many.
    """
    each = [figures(e, i, cores, rate) for e, i in zip(entries, idles, strict=True)]
    out = dict(each[0])
    for key, value in out.items():
        if isinstance(value, int | float) or value is None:
            values = [f[key] for f in each if f[key] is not None]
            out[key] = statistics.median(values) if values else None
    out["runs"] = len(each)
    return out


def _capacity_why(spec: str, rates: Sequence[float], kam: Mapping, sim: Mapping) -> str:
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
                why.append(f"{side} fails at {rate:g}/s{of}: {failures[0]}")
                break
    return "; ".join(why)


def _check_json(check: Check) -> dict[str, Any]:
    return {"figure": check.figure, "kamailio": check.kamailio, "sim": check.sim,
            "verdict": check.verdict, "why": check.why}  # fmt: skip


def fit_from_runs(
    specs: Sequence[str],
    rates: Sequence[float],
    kam: Mapping[tuple[str, float], Sequence[dict[str, Any]]],
    kam_idle: Mapping[str, Sequence[dict[str, Any]]],
    sim: Mapping[tuple[str, float], Sequence[dict[str, Any]]],
    sim_idle: Mapping[str, Sequence[dict[str, Any]]],
    cores: int,
    base: CostProfile,
    phases: Sequence[tuple[PhaseFit, float]] = (),
) -> tuple[CostProfile, list[str], list[TimerFit]]:
    """The fitted profile from Kamailio's runs and the sim's with `base` (same loads).

    Each point holds one entry per repeat (the idle runs pair with them in order).
    """
    fits: list[TimerFit] = []
    for spec in specs:
        strategy = strategies.parse_spec(spec)
        for idle in kam_idle[spec]:
            for role in TIMER_COSTS:
                data = idle["cpu"]["by_role"].get(role)
                processes = idle["counters"].get(f"processes: {role}", 0)
                interval = _interval(role, strategy.values)
                if data is None or interval is None:
                    continue
                fit = fit_timer(role, processes, interval, data["wakeups_per_s"],
                                data["busy_share"])  # fmt: skip
                if fit is not None:
                    fits.append(fit)

    def marg(entries: Mapping, idles: Mapping, spec: str, rate: float, n: int) -> float | None:
        return median_figures(entries[spec, rate], idles[spec], n, rate)["marginal_us_per_reinvite"]

    message_scale = None
    deferral = None
    if "inline" in specs:
        pairs = [(marg(kam, kam_idle, "inline", r, 1), marg(sim, sim_idle, "inline", r, cores))
                 for r in rates]  # fmt: skip
        pairs = [(k, s) for k, s in pairs if k is not None and s is not None]
        message_scale = fit_scale([k for k, _ in pairs], [s for _, s in pairs])
        kx, sx = [], []
        for spec in specs:
            if strategies.parse_spec(spec).name in ("inline", "blocking-sleep"):
                continue  # blocking-sleep neither suspends nor continues
            for r in rates:
                values = (marg(kam, kam_idle, spec, r, 1), marg(kam, kam_idle, "inline", r, 1),
                          marg(sim, sim_idle, spec, r, cores),
                          marg(sim, sim_idle, "inline", r, cores))  # fmt: skip
                if None in values:
                    continue
                kx.append(values[0] - values[1])
                sx.append(values[2] - values[3])
        deferral = fit_deferral(kx, sx, base)
    tails = []
    for spec in specs:
        if strategies.parse_spec(spec).name not in SINGLE_WAKE:
            continue
        for r in rates:
            k = median_figures(kam[spec, r], kam_idle[spec], 1, r)
            m = median_figures(sim[spec, r], sim_idle[spec], cores, r)
            if None in (k["delay_p50_ms"], k["delay_p99_ms"], m["delay_p50_ms"], m["delay_p99_ms"]):
                continue
            tail = fit_wakeup_tail(k["delay_p50_ms"] - m["delay_p50_ms"],
                                   k["delay_p99_ms"] - m["delay_p99_ms"])  # fmt: skip
            if tail is not None:
                tails.append(tail)
    profile, notes = fitted_profile(base, fits, message_scale, deferral, phases, tails)
    if "inline" not in specs:
        notes.append("message and suspend/continue costs not fitted: inline was not run")
    return profile, notes, fits


def _interval(role: str, values: Mapping[str, Any]) -> float | None:
    if role == "rtimer":
        return values.get("interval")
    if role == "async-ms-timer":
        ms = values.get("ms_timer")
        return None if ms is None else ms / 1000
    if role == "async-timer":
        return 1.0
    return None


# ---------------------------------------------------------------------------- output


def write(calibration: Calibration, directory: Path, command: Sequence[str]) -> Path:
    """profile.toml (loadable by `CostProfile.load`) and calibration.json; the profile path."""
    directory.mkdir(parents=True, exist_ok=True)
    header = [
        "deferbench cost profile fitted to Kamailio by:",
        " ".join(command),
        *calibration.notes,
        "Costs not named above are the starting profile's.",
    ]
    path = directory / "profile.toml"
    path.write_text(profile_toml(calibration.fitted, header), encoding="utf-8")
    (directory / "calibration.json").write_text(
        json.dumps(calibration.to_json(command), indent=1), encoding="utf-8"
    )
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


ROWS = (
    ("delay p50 ms", "delay_p50_ms", 2),
    ("delay p90 ms", "delay_p90_ms", 2),
    ("delay p99 ms", "delay_p99_ms", 2),
    ("early %", "early_pct", 1),
    ("idle wake-ups/s", "idle_wakeups_per_s", 0),
    ("idle CPU % of a core", "idle_cpu_pct_core", 3),
    ("CPU µs per re-INVITE", "cpu_us_per_reinvite", 0),
    ("CPU µs per call", "cpu_us_per_call", 0),
    ("marginal µs per re-INVITE", "marginal_us_per_reinvite", 0),
)


def table(calibration: Calibration) -> str:
    """The side-by-side table: Kamailio, sim (starting profile), sim (fitted), verdict."""
    from tabulate import tabulate

    rows = []
    for point in calibration.points:
        verdicts = {c["figure"]: c for c in point["checks"]}
        label = f"{point['strategy']} @ {point['reinvite_rate']:g}/s"
        for title, key, digits in ROWS:
            check = verdicts.get(title)
            rows.append([
                label, title, _fmt(point["kamailio"][key], digits),
                _fmt(point["sim_starting"][key], digits), _fmt(point["sim"][key], digits),
                check["verdict"] if check else "", check["why"] if check else "",
            ])  # fmt: skip
            label = ""
        cap = verdicts["capacity re-INV/s"]
        caps = point["capacity"]
        rows.append(["", "capacity re-INV/s", _cap(caps["kamailio"]),
                     _cap(caps["sim_starting"]), _cap(caps["sim"]), cap["verdict"],
                     cap["why"]])  # fmt: skip
    return tabulate(
        rows,
        headers=[
            "strategy @ rate",
            "figure",
            "kamailio",
            "sim (starting)",
            "sim (fitted)",
            "fidelity",
            "why",
        ],  # fmt: skip
        disable_numparse=True,
    )


def _cap(value: float | None) -> str:
    return "< lowest" if value is None else f"{value:g}"


def summary(calibration: Calibration) -> str:
    """PASS/MISS counts per figure over every point."""
    counts: dict[str, dict[str, int]] = {}
    for point in calibration.points:
        for check in point["checks"]:
            tally = counts.setdefault(check["figure"], {"PASS": 0, "MISS": 0, "n/a": 0})
            tally[check["verdict"]] += 1
    lines = []
    for figure, c in counts.items():
        na = f", {c['n/a']} n/a" if c["n/a"] else ""
        lines.append(f"  {figure}: {c['PASS']} pass, {c['MISS']} miss{na}")
    return "\n".join(lines)
