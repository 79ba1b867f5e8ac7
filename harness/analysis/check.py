"""The regression check: did a change make deferral worse than the baseline result?

Two kinds of figures, two tolerances:

* Deterministic figures (the sim target at a fixed seed: every delay/lateness/e2e
  percentile, early_share, every ledger count, CPU busy/idle share, wake-ups, CPU per
  transaction, queue depth) are compared exactly: counts to the unit, fractional figures to
  `SAME_DIGITS` significant digits (Python 3.12's `sum()` of floats rounds differently
  from 3.11's, in the last bits of a CPU share). Any change in a figure's worse direction
  is a regression; a change in its better direction is reported as improved and asks for
  `--update`, without failing. Directions: latency, CPU, losses, queue depth: higher is
  worse; `resumed` and `transactions`: lower is worse; a delay is worse the farther it is
  from the requested delay (and, equally far, early is worse than late); lateness likewise
  from 0.
* Wall-clock figures (live and kamailio targets; the sim's own speed) vary run to run and
  are compared statistically with `compare_samples`: ratio of medians with a seeded
  bootstrap 95% interval and a two-sided Mann-Whitney U test (normal approximation with
  tie correction, implemented here: no numpy/scipy). A regression needs both p < 0.05
  and the whole interval beyond 1 ± min_effect in the worse direction. For live/kamailio
  the samples are the per-transaction delays and e2e latencies from the histograms, plus
  any per-repeat `samples` the result carries; the ledger must stay clean if it was.

Exit codes: 0 pass, 1 regression, 3 unstable (some figure too noisy to decide; rerun with
more samples). Results that are not comparable (different target, load or seed) raise
`CheckError`, one line. This module reads RunResult objects; it does no I/O.
"""

from __future__ import annotations

import math
import random
import statistics
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from tabulate import tabulate

from harness.measure.ledger import LedgerSummary
from harness.measure.metrics import SUMMARY_KEYS
from harness.measure.results import ResultError, RunResult, StrategyResult

EXIT_PASS = 0
EXIT_REGRESSION = 1
EXIT_UNSTABLE = 3

DETERMINISTIC_TARGETS = frozenset({"sim"})
MIN_SAMPLES = 5
MAX_CI_HALFWIDTH = 0.25
ALPHA = 0.05
HISTOGRAM_SAMPLES = 300  # quantile samples taken from each histogram for live/kamailio

Worse = Literal["higher", "lower"]
Verdict = Literal["pass", "regression", "improved", "unstable"]

UPDATE_HINT = "improved — rerun with --update to accept"


class CheckError(ResultError):
    """Baseline and new run cannot be compared; str() is the one-line explanation."""


# ---------------------------------------------------------------------------------------
# Statistics (pure Python)


def mann_whitney_u(a: Sequence[float], b: Sequence[float]) -> tuple[float, float]:
    """(U of `a`, two-sided p) by the normal approximation with tie and continuity correction.

    Fine from about 5 samples a side; identical samples give p = 1.
    """
    n1, n2 = len(a), len(b)
    if n1 == 0 or n2 == 0:
        return math.nan, math.nan
    pooled = sorted([(v, 0) for v in a] + [(v, 1) for v in b])
    n = n1 + n2
    rank_sum_a = 0.0
    tie_term = 0.0
    i = 0
    while i < n:
        j = i
        while j + 1 < n and pooled[j + 1][0] == pooled[i][0]:
            j += 1
        average_rank = (i + j) / 2 + 1
        group = j - i + 1
        tie_term += group**3 - group
        rank_sum_a += average_rank * sum(1 for k in range(i, j + 1) if pooled[k][1] == 0)
        i = j + 1
    u = rank_sum_a - n1 * (n1 + 1) / 2
    mean = n1 * n2 / 2
    variance = n1 * n2 / 12 * ((n + 1) - tie_term / (n * (n - 1)))
    if variance <= 0:
        return u, 1.0
    z = max(abs(u - mean) - 0.5, 0.0) / math.sqrt(variance)
    return u, math.erfc(z / math.sqrt(2))


def _ratio(new: float, base: float) -> float:
    if base == 0:
        return 1.0 if new == 0 else math.inf
    return new / base


def bootstrap_median(ordered: Sequence[float], rng: random.Random) -> float:
    """The median of one bootstrap resample of `ordered` (sorted), drawn in O(1).

    Resampling n values with replacement picks indices floor(n·U) for n uniforms U, so the
    resample's k-th smallest value is ordered[floor(n·U(k))], where the k-th order statistic
    U(k) ~ Beta(k, n−k+1), and given it the next one is U(k) + (1−U(k))·Beta(1, n−k). Same
    distribution as building the resample and sorting it, without the O(n log n).
    """
    n = len(ordered)

    def at(u: float) -> float:
        return ordered[min(int(u * n), n - 1)]

    if n % 2:
        k = (n + 1) // 2
        return at(rng.betavariate(k, n - k + 1))
    k = n // 2
    u_k = rng.betavariate(k, n - k + 1)
    u_next = u_k + (1.0 - u_k) * rng.betavariate(1, n - k)
    return (at(u_k) + at(u_next)) / 2


def bootstrap_ratio_ci(
    baseline: Sequence[float], new: Sequence[float], *, resamples: int = 2000, seed: int = 0
) -> tuple[float, float]:
    """95% percentile-bootstrap interval of median(new) / median(baseline), seeded."""
    rng = random.Random(seed)
    old_sorted, new_sorted = sorted(baseline), sorted(new)
    ratios = sorted(
        _ratio(bootstrap_median(new_sorted, rng), bootstrap_median(old_sorted, rng))
        for _ in range(resamples)
    )

    def quantile(q: float) -> float:
        return ratios[min(len(ratios) - 1, max(0, round(q * (len(ratios) - 1))))]

    return quantile(0.025), quantile(0.975)


@dataclass(frozen=True, slots=True)
class SampleVerdict:
    """Outcome of comparing two samples of one wall-clock figure."""

    ratio_of_medians: float  # median(new) / median(baseline)
    ci95_low: float
    ci95_high: float
    p_value: float  # two-sided Mann-Whitney U
    verdict: Verdict
    n_baseline: int = 0
    n_new: int = 0


def compare_samples(
    baseline: Sequence[float],
    new: Sequence[float],
    worse: Worse = "higher",
    min_effect: float = 0.05,
    seed: int = 0,
    *,
    resamples: int = 2000,
    max_ci_halfwidth: float = MAX_CI_HALFWIDTH,
) -> SampleVerdict:
    """Compare samples of a non-negative figure (a time, rate or share).

    regression: p < 0.05 and the 95% interval of the ratio of medians lies entirely beyond
    1 + min_effect (worse="higher") or below 1 − min_effect (worse="lower");
    improved: the same in the other direction; unstable: fewer than 5 samples a side, or an
    interval wider than ±max_ci_halfwidth of the ratio; else pass.
    """
    if worse not in ("higher", "lower"):
        raise ValueError(f"worse={worse!r}: expected 'higher' or 'lower'")
    if any(v < 0 or math.isnan(v) for v in (*baseline, *new)):
        raise ValueError("compare_samples takes non-negative figures (times, rates, shares)")
    n1, n2 = len(baseline), len(new)
    if n1 == 0 or n2 == 0:
        return SampleVerdict(math.nan, math.nan, math.nan, math.nan, "unstable", n1, n2)
    ratio = _ratio(statistics.median(new), statistics.median(baseline))
    _, p = mann_whitney_u(baseline, new)
    low, high = bootstrap_ratio_ci(baseline, new, resamples=resamples, seed=seed)
    significant = p < ALPHA
    above = low > 1 + min_effect
    below = high < 1 - min_effect
    wide = not (math.isfinite(high) and math.isfinite(ratio)) or (
        (high - low) / 2 > max_ci_halfwidth * ratio
    )
    verdict: Verdict
    if n1 < MIN_SAMPLES or n2 < MIN_SAMPLES:
        verdict = "unstable"
    elif significant and (above if worse == "higher" else below):
        verdict = "regression"
    elif significant and (below if worse == "higher" else above):
        verdict = "improved"
    elif wide:
        verdict = "unstable"
    else:
        verdict = "pass"
    return SampleVerdict(ratio, low, high, p, verdict, n1, n2)


# ---------------------------------------------------------------------------------------
# The check


Value = float | int | str | None


@dataclass(frozen=True, slots=True)
class Finding:
    """One figure that changed (or could not be decided)."""

    strategy: str
    metric: str
    baseline: Value
    new: Value
    verdict: Verdict
    how: Literal["exact", "statistical"]
    ratio: float | None = None
    detail: str = ""


@dataclass
class CheckReport:
    findings: list[Finding] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    compared: int = 0  # figures compared

    def _with(self, verdict: str) -> list[Finding]:
        return [f for f in self.findings if f.verdict == verdict]

    @property
    def regressions(self) -> list[Finding]:
        return self._with("regression")

    @property
    def improvements(self) -> list[Finding]:
        return self._with("improved")

    @property
    def unstable(self) -> list[Finding]:
        return self._with("unstable")

    @property
    def exit_code(self) -> int:
        if self.regressions:
            return EXIT_REGRESSION
        if self.unstable:
            return EXIT_UNSTABLE
        return EXIT_PASS


# A figure's worse direction: "higher", "lower", or ("away", reference).
Direction = str | tuple[str, float]


def _badness(direction: Direction, x: float) -> tuple[float, int]:
    if direction == "higher":
        return (x, 0)
    if direction == "lower":
        return (-x, 0)
    _, reference = direction
    return (abs(x - reference), 1 if x < reference else 0)


_LOWER_IS_WORSE = frozenset({"transactions", "resumed"})


def exact_figures(s: StrategyResult) -> list[tuple[str, float | None, Direction]]:
    """Every deterministic figure of a strategy with its worse direction."""
    delay_dir: Direction = (
        "higher" if s.requested_delay_ms is None else ("away", s.requested_delay_ms)
    )
    figures: list[tuple[str, float | None, Direction]] = []
    for key in SUMMARY_KEYS:
        figures.append((f"delay_ms.{key}", s.delay_ms[key], delay_dir))
    for key in SUMMARY_KEYS:
        figures.append((f"lateness_ms.{key}", s.lateness_ms[key], ("away", 0.0)))
    for key in SUMMARY_KEYS:
        figures.append((f"e2e_ms.{key}", s.e2e_ms[key], "higher"))
    figures.append(("early_share", s.early_share, "higher"))
    for name in LedgerSummary.field_names():
        direction = "lower" if name in _LOWER_IS_WORSE else "higher"
        figures.append((f"ledger.{name}", getattr(s.ledger, name), direction))
    for name in ("busy_share", "idle_share", "wakeups_per_s", "per_txn_us"):
        figures.append((f"cpu.{name}", getattr(s.cpu, name), "higher"))
    figures.append(("queue_depth.max", s.queue_depth.max, "higher"))
    figures.append(("queue_depth.mean", s.queue_depth.mean, "higher"))
    return figures


def sample_direction(metric: str) -> Worse:
    """Worse direction of a per-repeat sample by name: throughputs lower, the rest higher."""
    if metric.endswith("_per_wall_s") or metric in _LOWER_IS_WORSE:
        return "lower"
    return "higher"


def _comparable(baseline: RunResult, new: RunResult) -> None:
    for what, old, now in (
        ("target", baseline.target, new.target),
        ("load", baseline.load.spec, new.load.spec),
        ("seed", baseline.seed, new.seed),
        ("network", baseline.network, new.network),
    ):
        if old != now:
            raise CheckError(
                f"baseline and new run are not comparable: {what} {old} ≠ {now} "
                "(rerun with the baseline's target, load and seed, or --update)"
            )


SAME_DIGITS = 12
"""Significant digits to which a deterministic fractional figure must agree: far beyond
any model change, and short of the last bits, where the summation order of the Python
version that ran the sim shows."""


def _same(old: float | None, now: float | None) -> bool:
    if old is None or now is None:
        return old is now
    return old == now or math.isclose(old, now, rel_tol=10.0**-SAME_DIGITS)


def _compare_exact(
    strategy: str, b: StrategyResult, n: StrategyResult, report: CheckReport
) -> None:
    new_figures = {name: value for name, value, _ in exact_figures(n)}
    for name, old, direction in exact_figures(b):
        now = new_figures[name]
        report.compared += 1
        if _same(old, now):
            continue
        if old is None or now is None:
            verdict: Verdict = "regression" if now is None else "improved"
            detail = "no longer measured" if now is None else "now measured"
            report.findings.append(
                Finding(strategy, name, old, now, verdict, "exact", None, detail)
            )
            continue
        worse = _badness(direction, now) > _badness(direction, old)
        ratio = _ratio(now, old) if old != 0 else None
        report.findings.append(
            Finding(
                strategy,
                name,
                old,
                now,
                "regression" if worse else "improved",
                "exact",
                ratio,
                _describe(direction),
            )
        )


def _describe(direction: Direction) -> str:
    if isinstance(direction, tuple):
        return f"worse: farther from {direction[1]:g}"
    return f"worse: {direction}"


def _statistical(
    strategy: str,
    metric: str,
    old: Sequence[float],
    now: Sequence[float],
    worse: Worse,
    min_effect: float,
    seed: int,
    report: CheckReport,
) -> None:
    report.compared += 1
    v = compare_samples(old, now, worse=worse, min_effect=min_effect, seed=seed)
    if v.verdict == "pass":
        return
    med_old = statistics.median(old) if old else None
    med_new = statistics.median(now) if now else None
    detail = (
        f"medians; 95% CI ×{v.ci95_low:.3g}..×{v.ci95_high:.3g}, p={v.p_value:.3g}, "
        f"n={v.n_baseline}/{v.n_new}, worse: {worse}"
    )
    ratio = v.ratio_of_medians if math.isfinite(v.ratio_of_medians) else None
    report.findings.append(
        Finding(strategy, metric, med_old, med_new, v.verdict, "statistical", ratio, detail)
    )


def _compare_wall_clock(
    strategy: str,
    b: StrategyResult,
    n: StrategyResult,
    deterministic: bool,
    min_effect: float,
    seed: int,
    report: CheckReport,
) -> None:
    if not deterministic:
        for name, getter in (
            ("delay_ms", StrategyResult.delay_distribution),
            ("e2e_ms", StrategyResult.e2e_distribution),
        ):
            old = getter(b).samples_ms(HISTOGRAM_SAMPLES)
            now = getter(n).samples_ms(HISTOGRAM_SAMPLES)
            if old or now:
                _statistical(strategy, name, old, now, "higher", min_effect, seed, report)
        report.compared += 1
        if b.ledger.clean and not n.ledger.clean:
            bad = {k: v for k, v in n.ledger.outcomes().items() if k != "resumed" and v}
            report.findings.append(
                Finding(
                    strategy,
                    "ledger.clean",
                    "clean",
                    "not clean",
                    "regression",
                    "exact",
                    None,
                    ", ".join(f"{k}={v}" for k, v in bad.items()) or "unaccounted events",
                )
            )
    for name in sorted(set(b.samples) & set(n.samples)):
        _statistical(
            strategy, f"samples.{name}", b.samples[name], n.samples[name],
            sample_direction(name), min_effect, seed, report,
        )  # fmt: skip


def check_results(
    baseline: RunResult, new: RunResult, *, min_effect: float = 0.05, seed: int = 0
) -> CheckReport:
    """Compare a new run with its baseline, strategy by strategy (matched by canonical spec)."""
    _comparable(baseline, new)
    report = CheckReport()
    deterministic = new.target in DETERMINISTIC_TARGETS
    if baseline.server != new.server:
        report.notes.append(
            f"server differs: {_changes(baseline.server, new.server)} (compared anyway)"
        )
    if baseline.backend != new.backend:
        report.notes.append(f"backend differs: {baseline.backend} → {new.backend}")
    if baseline.tool_version != new.tool_version:
        report.notes.append(f"tool version: {baseline.tool_version} → {new.tool_version}")
    for b in baseline.strategies:
        n = new.strategy(b.strategy)
        report.compared += 1
        if n is None:
            report.findings.append(
                Finding(b.strategy, "strategy", "present", "missing", "regression", "exact")
            )
            continue
        for what in ("load", "seed", "target"):
            if getattr(b, what) != getattr(n, what):
                raise CheckError(
                    f"{b.strategy}: {what} {getattr(b, what)} ≠ {getattr(n, what)}: not comparable"
                )
        if deterministic:
            _compare_exact(b.strategy, b, n, report)
        _compare_wall_clock(b.strategy, b, n, deterministic, min_effect, seed, report)
    baseline_specs = {s.strategy for s in baseline.strategies}
    for n in new.strategies:
        if n.strategy not in baseline_specs:
            report.notes.append(f"{n.strategy}: not in the baseline, not compared")
    if deterministic and not any(set(b.samples) for b in baseline.strategies):
        report.notes.append(
            "wall-clock figures (wall_seconds, sim_txn_per_wall_s) are only compared from "
            "per-repeat samples, and the baseline has none"
        )
    return report


def _changes(old: object, new: object) -> str:
    before, after = vars(old), vars(new)
    return ", ".join(f"{k}={before[k]} → {after[k]}" for k in before if before[k] != after[k])


# ---------------------------------------------------------------------------------------
# Rendering


def _fmt(value: Value) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:.6g}"
    return str(value)


def _table(findings: list[Finding]) -> str:
    rows = [
        [
            f.strategy,
            f.metric,
            _fmt(f.baseline),
            _fmt(f.new),
            "-" if f.ratio is None else f"×{f.ratio:.3g}",
            f.detail,
        ]
        for f in findings
    ]
    return tabulate(rows, headers=["strategy", "metric", "baseline", "new", "ratio", "how judged"])


def render(report: CheckReport) -> str:
    """A readable report: headline, then what got worse / is unstable / improved, then notes."""
    status = {EXIT_PASS: "PASS", EXIT_REGRESSION: "REGRESSION", EXIT_UNSTABLE: "UNSTABLE"}[
        report.exit_code
    ]
    lines = [
        f"deferbench check: {status} — {len(report.regressions)} worse, "
        f"{len(report.unstable)} unstable, {len(report.improvements)} improved "
        f"({report.compared} figures compared)"
    ]
    sections = (
        ("worse than the baseline:", report.regressions),
        ("unstable — too noisy to decide, rerun with more samples:", report.unstable),
        (UPDATE_HINT + ":", report.improvements),
    )
    for title, findings in sections:
        if findings:
            lines += ["", title, _table(findings)]
    if report.notes:
        lines += ["", "notes:"] + [f"  - {note}" for note in report.notes]
    return "\n".join(lines)
