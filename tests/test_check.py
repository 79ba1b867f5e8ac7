"""The regression check: exact for the sim, statistical for wall-clock figures."""

from __future__ import annotations

import dataclasses
import math
import random
import statistics
from collections import Counter

import pytest

from harness.analysis.check import (
    EXIT_PASS,
    EXIT_REGRESSION,
    EXIT_UNSTABLE,
    CheckError,
    bootstrap_median,
    check_results,
    compare_samples,
    mann_whitney_u,
    render,
)
from harness.measure.ledger import LedgerSummary
from harness.measure.results import read_result, write_result
from tests.test_results import make_run, make_strategy

MQ = "mqueue-rtimer:timers=12,interval=10ms"


def noisy(n: int, centre: float, spread: float, seed: int) -> list[float]:
    rng = random.Random(seed)
    return [max(0.0, rng.gauss(centre, spread)) for _ in range(n)]


# --- statistics --------------------------------------------------------------------------


def test_mann_whitney_matches_the_textbook_normal_approximation():
    u, p = mann_whitney_u([1, 2, 3, 4, 5], [6, 7, 8, 9, 10])
    assert u == 0
    z = (12.5 - 0.5) / math.sqrt(5 * 5 * 11 / 12)
    assert p == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert p == pytest.approx(0.01219, abs=1e-4)


def test_mann_whitney_ties_and_symmetry():
    a, b = [1, 1, 2, 2, 3, 3], [2, 3, 3, 4, 4, 4]
    u_ab, p_ab = mann_whitney_u(a, b)
    u_ba, p_ba = mann_whitney_u(b, a)
    assert u_ab + u_ba == len(a) * len(b)
    assert p_ab == pytest.approx(p_ba)
    # Tie correction: ties shrink the variance, so p is below the uncorrected one.
    n = 12
    ties = sum(t**3 - t for t in (2, 3, 4, 3))  # values 1,2,3,4 occur 2,3,4,3 times
    var = 36 / 12 * ((n + 1) - ties / (n * (n - 1)))
    z = (abs(u_ab - 18) - 0.5) / math.sqrt(var)
    assert p_ab == pytest.approx(math.erfc(z / math.sqrt(2)))
    assert mann_whitney_u([5, 5, 5], [5, 5, 5])[1] == 1.0


def test_identical_samples_pass():
    sample = noisy(30, 10.0, 0.5, seed=1)
    verdict = compare_samples(sample, list(sample))
    assert verdict.verdict == "pass"
    assert verdict.ratio_of_medians == 1.0
    assert verdict.ci95_low <= 1.0 <= verdict.ci95_high
    assert verdict.p_value == pytest.approx(1.0)


def test_same_distribution_other_draw_passes():
    verdict = compare_samples(noisy(40, 10.0, 0.5, seed=1), noisy(40, 10.0, 0.5, seed=2))
    assert verdict.verdict == "pass"


def test_a_clear_two_fold_shift_is_a_regression():
    base = noisy(30, 10.0, 1.0, seed=1)
    verdict = compare_samples(base, noisy(30, 20.0, 2.0, seed=2))
    assert verdict.verdict == "regression"
    assert verdict.ratio_of_medians == pytest.approx(2.0, rel=0.15)
    assert verdict.ci95_low > 1.05
    assert verdict.p_value < 0.05


def test_direction_matters():
    base = noisy(30, 10.0, 1.0, seed=1)
    faster = noisy(30, 5.0, 0.5, seed=2)
    assert compare_samples(base, faster, worse="higher").verdict == "improved"
    assert compare_samples(base, faster, worse="lower").verdict == "regression"


def test_a_shift_below_the_minimum_effect_is_not_a_regression():
    base = noisy(200, 10.0, 0.1, seed=1)
    slightly = noisy(200, 10.2, 0.1, seed=2)  # 2%: significant, but under 5%
    verdict = compare_samples(base, slightly)
    assert verdict.p_value < 0.05
    assert verdict.verdict == "pass"
    assert compare_samples(base, slightly, min_effect=0.01).verdict == "regression"


def test_tiny_samples_are_unstable():
    assert compare_samples([10, 11, 9], [20, 22, 18]).verdict == "unstable"
    assert compare_samples([], [1.0] * 10).verdict == "unstable"


def test_noisy_samples_are_unstable():
    base = [1.0, 30.0, 5.0, 0.2, 12.0, 7.0]
    new = [2.0, 0.5, 40.0, 9.0, 3.0, 15.0]
    verdict = compare_samples(base, new)
    assert verdict.verdict == "unstable"
    assert verdict.ci95_high - verdict.ci95_low > 0.5


def test_bootstrap_is_seeded():
    base, new = noisy(20, 10, 2, seed=1), noisy(20, 11, 2, seed=2)
    assert compare_samples(base, new, seed=4) == compare_samples(base, new, seed=4)
    assert (
        compare_samples(base, new, seed=4).ci95_low != compare_samples(base, new, seed=5).ci95_low
    )


def test_negative_figures_are_refused():
    with pytest.raises(ValueError):
        compare_samples([-1.0] * 5, [1.0] * 5)


# --- exact comparison of sim results -----------------------------------------------------


def with_strategy(run, index, **changes):
    strategies = list(run.strategies)
    strategies[index] = dataclasses.replace(strategies[index], **changes)
    return dataclasses.replace(run, strategies=strategies)


def test_identical_sim_runs_pass(tmp_path):
    run = make_run()
    again = read_result(write_result(make_run(), tmp_path))  # through JSON: still exact
    report = check_results(run, again)
    assert report.exit_code == EXIT_PASS
    assert report.findings == []
    assert report.compared > 80
    assert "PASS" in render(report)


def test_higher_p99_delay_is_a_regression_naming_metric_and_direction():
    base = make_run()
    delay = dict(base.strategies[0].delay_ms, p99=base.strategies[0].delay_ms["p99"] + 1.0)
    report = check_results(base, with_strategy(base, 0, delay_ms=delay))
    assert report.exit_code == EXIT_REGRESSION
    [finding] = report.regressions
    assert (finding.strategy, finding.metric) == (MQ, "delay_ms.p99")
    assert finding.new - finding.baseline == pytest.approx(1.0)
    text = render(report)
    assert "REGRESSION" in text and "delay_ms.p99" in text and MQ in text


def test_delay_closer_to_requested_is_an_improvement_not_a_failure():
    base = make_run()
    delay = dict(base.strategies[0].delay_ms, max=base.strategies[0].delay_ms["max"] - 2.0)
    report = check_results(base, with_strategy(base, 0, delay_ms=delay))
    assert report.exit_code == EXIT_PASS
    [finding] = report.improvements
    assert finding.metric == "delay_ms.max"
    assert "--update" in render(report)


def test_an_early_minimum_is_worse_even_if_no_farther():
    base = make_run()  # min delay is exactly the requested 10 ms
    assert base.strategies[0].delay_ms["min"] == pytest.approx(10.0)
    early = dict(base.strategies[0].delay_ms, min=9.5)
    report = check_results(base, with_strategy(base, 0, delay_ms=early))
    assert [f.metric for f in report.regressions] == ["delay_ms.min"]


def test_negative_lateness_moving_away_from_zero_is_worse():
    base = with_strategy(
        make_run(), 0, lateness_ms=dict(make_run().strategies[0].lateness_ms, min=-0.5)
    )
    new = with_strategy(base, 0, lateness_ms=dict(base.strategies[0].lateness_ms, min=-2.0))
    assert [f.metric for f in check_results(base, new).regressions] == ["lateness_ms.min"]
    assert [f.metric for f in check_results(new, base).improvements] == ["lateness_ms.min"]


@pytest.mark.parametrize(
    "field, delta, verdict",
    [
        ("lost", 1, "regression"),
        ("duplicated", 1, "regression"),
        ("timeout_408", 2, "regression"),
        ("retransmissions", 3, "regression"),
        ("resumed", -1, "regression"),
        ("resumed", 1, "improved"),
        ("lost", -1, "improved"),
    ],
)
def test_every_ledger_count_is_compared_with_its_direction(field, delta, verdict):
    base = make_run()
    ledger = base.strategies[0].ledger
    if delta < 0 and getattr(ledger, field) == 0:
        ledger = dataclasses.replace(ledger, **{field: 1})
        base = with_strategy(base, 0, ledger=ledger)
    changed = dataclasses.replace(ledger, **{field: getattr(ledger, field) + delta})
    report = check_results(base, with_strategy(base, 0, ledger=changed))
    assert [(f.metric, f.verdict) for f in report.findings] == [(f"ledger.{field}", verdict)]


def test_cpu_figures_are_compared_exactly():
    base = make_run()
    cpu = dataclasses.replace(base.strategies[1].cpu, wakeups_per_s=1200.5)
    report = check_results(base, with_strategy(base, 1, cpu=cpu))
    [finding] = report.regressions
    assert (finding.strategy, finding.metric) == ("inline", "cpu.wakeups_per_s")
    assert finding.ratio == pytest.approx(1200.5 / 1200.0)


def test_a_cpu_share_that_differs_in_its_last_bits_is_the_same_figure():
    """Python 3.12's `sum()` of floats rounds differently from 3.11's: the same model gives
    a busy share a few units in the last place apart, which is no change; one part in
    10^11 is."""
    base = make_run()
    share = base.strategies[0].cpu.busy_share
    for nudged, verdicts in (
        (math.nextafter(math.nextafter(share, 1.0), 1.0), []),
        (share * (1 + 1e-11), ["regression"]),
        (share * (1 - 1e-11), ["improved"]),
    ):
        cpu = dataclasses.replace(base.strategies[0].cpu, busy_share=nudged)
        report = check_results(base, with_strategy(base, 0, cpu=cpu))
        assert [f.verdict for f in report.findings] == verdicts


def test_a_figure_no_longer_measured_is_a_regression():
    base = make_run()
    report = check_results(base, with_strategy(base, 0, early_share=None))
    assert [(f.metric, f.detail) for f in report.regressions] == [
        ("early_share", "no longer measured")
    ]


def test_missing_strategy_is_a_regression_and_an_extra_one_is_noted():
    base = make_run()
    new = dataclasses.replace(
        base, strategies=[base.strategies[1], make_strategy("async-task:async_workers=4")]
    )
    report = check_results(base, new)
    assert report.exit_code == EXIT_REGRESSION
    assert [(f.strategy, f.metric, f.new) for f in report.regressions] == [
        (MQ, "strategy", "missing")
    ]
    assert any("async-task" in note for note in report.notes)


@pytest.mark.parametrize(
    "change",
    [
        {"seed": 2},
        {"target": "live"},
        {"load": dataclasses.replace(make_run().load, spec="reinvite:rate=40/s")},
    ],
)
def test_incomparable_runs_are_an_error(change):
    base = make_run()
    with pytest.raises(CheckError) as info:
        check_results(base, dataclasses.replace(base, **change))
    assert "not comparable" in str(info.value) and "\n" not in str(info.value)


def test_server_change_is_noted_not_fatal():
    base = make_run()
    new = dataclasses.replace(base, server=dataclasses.replace(base.server, children=4))
    report = check_results(base, new)
    assert report.exit_code == EXIT_PASS
    assert any("children=8 → 4" in n for n in report.notes)


def test_sim_speed_samples_are_compared_statistically():
    base = with_strategy(make_run(), 0, samples={"sim_txn_per_wall_s": noisy(10, 1000, 20, 1)})
    slower = with_strategy(base, 0, samples={"sim_txn_per_wall_s": noisy(10, 500, 10, 2)})
    report = check_results(base, slower)
    [finding] = report.regressions
    assert finding.metric == "samples.sim_txn_per_wall_s" and finding.how == "statistical"
    assert finding.ratio == pytest.approx(0.5, rel=0.1)


# --- statistical comparison of wall-clock targets ----------------------------------------


def live_run(delay_centre: float, seed: int, **strategy_changes):
    delays = noisy(400, delay_centre, delay_centre / 20, seed)
    strategy = make_strategy(delays=delays, target="live", **strategy_changes)
    return make_run([strategy], target="live", backend="asyncio")


def test_live_runs_from_the_same_distribution_pass():
    report = check_results(live_run(0.012, 1), live_run(0.012, 2))
    assert report.exit_code == EXIT_PASS, render(report)


def test_live_delay_doubling_is_a_statistical_regression():
    report = check_results(live_run(0.012, 1), live_run(0.024, 2))
    assert report.exit_code == EXIT_REGRESSION
    metrics = {f.metric: f for f in report.regressions}
    assert set(metrics) == {"delay_ms", "e2e_ms"}
    assert metrics["delay_ms"].how == "statistical"
    assert metrics["delay_ms"].ratio == pytest.approx(2.0, rel=0.05)


def test_live_figures_are_not_compared_exactly():
    base = live_run(0.012, 1)
    busier = with_strategy(base, 0, cpu=dataclasses.replace(base.strategies[0].cpu, busy_share=0.5))
    assert check_results(base, busier).exit_code == EXIT_PASS


def test_live_ledger_that_stops_being_clean_is_a_regression():
    base = live_run(0.012, 1)
    assert base.strategies[0].ledger.clean
    ledger = dataclasses.replace(base.strategies[0].ledger, resumed=399, lost=1)
    report = check_results(base, with_strategy(base, 0, ledger=ledger))
    [finding] = report.regressions
    assert finding.metric == "ledger.clean" and "lost=1" in finding.detail


def test_too_few_repeats_are_unstable():
    base = with_strategy(live_run(0.012, 1), 0, samples={"busy_share": [0.1, 0.2, 0.1]})
    new = with_strategy(base, 0, samples={"busy_share": [0.1, 0.15, 0.3]})
    report = check_results(base, new)
    assert report.exit_code == EXIT_UNSTABLE
    assert [f.metric for f in report.unstable] == ["samples.busy_share"]
    assert "UNSTABLE" in render(report)


def test_ledger_summary_fields_are_all_checked():
    checked = {
        f.metric
        for f in check_results(
            make_run(),
            with_strategy(
                make_run(),
                0,
                ledger=LedgerSummary(**{n: 7 for n in LedgerSummary.field_names()}),
            ),
        ).findings
    }
    assert {f"ledger.{n}" for n in LedgerSummary.field_names()} <= checked


def test_fast_bootstrap_median_has_the_resampling_distribution():
    """bootstrap_median draws from the same distribution as resample-then-median."""
    for data in ([3.0, 1.0, 4.0, 1.5, 9.0, 2.6, 5.0], [3.0, 1.0, 4.0, 1.5, 9.0, 2.6]):
        ordered = sorted(data)
        rng_fast, rng_slow = random.Random(1), random.Random(2)
        draws = 40_000
        fast = Counter(bootstrap_median(ordered, rng_fast) for _ in range(draws))
        slow = Counter(statistics.median(rng_slow.choices(data, k=len(data))) for _ in range(draws))
        possible = {(a + b) / 2 for a in data for b in data}
        assert set(fast) <= possible
        for value in set(fast) | set(slow):
            assert fast[value] / draws == pytest.approx(slow[value] / draws, abs=0.01), value
