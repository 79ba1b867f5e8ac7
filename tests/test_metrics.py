"""Latency summaries: HDR percentiles within 0.1%, exact extremes, lateness, early share."""

from __future__ import annotations

import math

import pytest
from hdrh.histogram import HdrHistogram
from hypothesis import given, settings
from hypothesis import strategies as st

from harness.measure.metrics import (
    SUMMARY_KEYS,
    Distribution,
    early_share,
    lateness_summary,
)


def nearest_rank(values: list[float], percentile: float) -> float:
    """The percentile definition HdrHistogram uses: the value at rank round(p·N), at least 1."""
    ordered = sorted(values)
    rank = max(1, int(percentile / 100 * len(ordered) + 0.5))
    return ordered[rank - 1]


def test_empty_summary_has_every_key_and_no_values():
    summary = Distribution().summary()
    assert tuple(summary) == SUMMARY_KEYS == ("min", "p50", "p90", "p99", "p999", "max", "mean")
    assert all(v is None for v in summary.values())
    assert Distribution().percentile_spectrum() == []


def test_summary_is_in_milliseconds_with_exact_extremes_and_mean():
    d = Distribution()
    d.record_all([0.010, 0.011, 0.012, 0.020])
    s = d.summary()
    assert s["min"] == pytest.approx(10.0)
    assert s["max"] == pytest.approx(20.0)
    assert s["mean"] == pytest.approx(13.25)
    assert s["p50"] == pytest.approx(11.0, rel=1e-3)
    assert s["p99"] == pytest.approx(20.0)
    assert len(d) == 4


def test_identical_values_report_that_value_at_every_percentile():
    d = Distribution()
    d.record_all([0.010] * 1000)
    assert all(v == pytest.approx(10.0, abs=1e-9) for v in d.summary().values())


@settings(max_examples=60, deadline=None)
@given(st.lists(st.floats(min_value=0, max_value=30.0), min_size=1, max_size=300))
def test_percentiles_within_hdr_precision(values):
    d = Distribution()
    d.record_all(values)
    s = d.summary()
    for key, p in (("p50", 50), ("p90", 90), ("p99", 99), ("p999", 99.9)):
        true_ms = nearest_rank(values, p) * 1e3
        # 3 significant digits, values rounded to whole µs.
        assert abs(s[key] - true_ms) <= true_ms * 1e-3 + 1e-3, key
    assert s["min"] == pytest.approx(min(values) * 1e3)
    assert s["max"] == pytest.approx(max(values) * 1e3)
    assert s["min"] <= s["p50"] <= s["p90"] <= s["p99"] <= s["p999"] <= s["max"]


@pytest.mark.parametrize("bad", [-0.001, math.nan, 3601.0])
def test_out_of_range_values_are_refused(bad):
    with pytest.raises(ValueError):
        Distribution().record(bad)


def test_encode_decode_keeps_the_distribution():
    d = Distribution()
    d.record_all([i / 10_000 for i in range(1, 5001)])  # 0.1 ms .. 500 ms
    text = d.encode()
    assert isinstance(text, str) and text.startswith("HISTF")
    back = Distribution.decode(text)
    assert len(back) == 5000
    original, decoded = d.summary(), back.summary()
    for key in SUMMARY_KEYS:
        assert decoded[key] == pytest.approx(original[key], rel=2e-3), key


def test_decoded_distribution_of_one_value():
    d = Distribution()
    d.record(0.25)
    back = Distribution.decode(d.encode())
    assert back.summary()["min"] == pytest.approx(250.0, rel=1e-3)
    assert back.summary()["max"] == pytest.approx(250.0, rel=1e-3)


@pytest.mark.parametrize("garbage", ["", "HISTF", "not base64 at all!", "SElTVEZBQUFBQ=="])
def test_decode_garbage_is_a_value_error(garbage):
    with pytest.raises(ValueError, match="HDR histogram"):
        Distribution.decode(garbage)


def test_merge_equals_recording_everything_in_one():
    a, b, both = Distribution(), Distribution(), Distribution()
    first = [0.001 * i for i in range(1, 200)]
    second = [0.5 + 0.002 * i for i in range(300)]
    a.record_all(first)
    b.record_all(second)
    both.record_all(first + second)
    a.merge(b)
    assert len(a) == len(both) == 499
    assert a.summary() == pytest.approx(both.summary())


def test_merge_with_a_decoded_histogram():
    a, b = Distribution(), Distribution()
    a.record_all([0.010] * 10)
    b.record_all([0.030] * 10)
    a.merge(Distribution.decode(b.encode()))
    s = a.summary()
    assert len(a) == 20
    assert s["min"] == pytest.approx(10.0, rel=1e-3)
    assert s["max"] == pytest.approx(30.0, rel=1e-3)
    assert s["p50"] == pytest.approx(10.0, rel=1e-3)


def test_lateness_is_delay_minus_requested_and_may_be_negative():
    delay = {"min": 8.0, "p50": 10.5, "p90": 12.0, "p99": 19.0, "p999": 19.9, "max": 20.0}
    delay["mean"] = 11.0
    lateness = lateness_summary(delay, 10.0)
    assert lateness == {
        "min": -2.0,
        "p50": 0.5,
        "p90": 2.0,
        "p99": 9.0,
        "p999": pytest.approx(9.9),
        "max": 10.0,
        "mean": 1.0,
    }
    assert all(v is None for v in lateness_summary(Distribution().summary(), 10.0).values())


def test_early_share_counts_raw_values_below_requested():
    requested = 0.010
    delays = [0.010, 0.0099999, 0.011, 0.005, 0.010 - 1e-12]
    # 0.0099999 and 0.005 are early; 1e-12 short is float noise, not early.
    assert early_share(delays, requested) == pytest.approx(2 / 5)
    assert early_share([], requested) is None
    assert early_share([0.02, 0.03], requested) == 0.0


def test_percentile_spectrum_for_a_log_axis():
    d = Distribution()
    d.record_all([0.001 * i for i in range(1, 10_001)])
    spectrum = d.percentile_spectrum()
    percentiles = [p for p, _ in spectrum]
    values = [v for _, v in spectrum]
    assert percentiles[0] == 0.0 and percentiles[-1] == pytest.approx(99.999)
    for level in (50.0, 90.0, 99.0, 99.9, 99.99):
        assert any(p == pytest.approx(level) for p in percentiles)
    assert percentiles == sorted(percentiles) and values == sorted(values)
    assert values[0] == pytest.approx(1.0) and values[-1] == pytest.approx(10_000, rel=1e-3)
    # Evenly spaced on log10(1/(1-p)) above 0.
    logs = [math.log10(1 / (1 - p / 100)) for p in percentiles if p not in (0.0, 50.0, 75.0)]
    steps = {round(b - a, 3) for a, b in zip(logs, logs[1:], strict=False)}
    assert steps == {0.1}


def test_samples_follow_the_distribution():
    d = Distribution()
    d.record_all([0.001] * 900 + [0.100] * 100)
    samples = d.samples_ms(100)
    assert len(samples) == 100
    assert sum(1 for s in samples if s < 2) == 90
    assert samples == sorted(samples)


@settings(max_examples=15, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=10_000_000), min_size=1, max_size=200),
    st.floats(min_value=0.001, max_value=100.0),
)
def test_percentile_lookup_agrees_with_hdrhistogram(values_us, percentile):
    d = Distribution()
    d.record_all(v / 1e6 for v in values_us)
    decoded = Distribution.decode(d.encode())  # bucket-only: no exact extremes to clamp to
    reference = HdrHistogram(1, 3_600_000_000, 3)
    for v in values_us:
        reference.record_value(v)
    expected = reference.get_value_at_percentile(percentile) / 1e3
    assert decoded.value_at_ms(percentile) == pytest.approx(expected)
    assert decoded.summary()["mean"] == pytest.approx(reference.get_mean_value() / 1e3)
