"""Latency distributions: HDR histograms, the percentile summary every report uses, lateness.

Every target (sim, live, kamailio) records its delays here, so a percentile is computed one
way only. Values go in as seconds and come out as milliseconds. The histogram counts whole
microseconds from 0 to one hour with 3 significant digits, so a percentile is within 0.1% of
the true value: it is reported as the highest value of its HDR bucket, clamped into the exact
[min, max] seen, so a run where every delay is exactly 10 ms reports p99 = 10.0, not 10.007.

Lateness (delay − requested) can be negative, which an HDR histogram cannot hold; since it is
the delay shifted by a constant, its percentiles are derived exactly from the delay's
(`lateness_summary`). The share of early resumes is computed from the raw values
(`early_share`), never from buckets, because "a few µs early" hides inside one bucket.

This module does no I/O and knows nothing about SIP.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Iterable
from dataclasses import dataclass

from hdrh.histogram import HdrHistogram

LOWEST_US = 1
HIGHEST_US = 3_600_000_000  # one hour
SIGNIFICANT_DIGITS = 3

SUMMARY_KEYS = ("min", "p50", "p90", "p99", "p999", "max", "mean")
_PERCENTILES = {"p50": 50.0, "p90": 90.0, "p99": 99.0, "p999": 99.9}

# What a summary holds: the SUMMARY_KEYS in milliseconds, every value None when nothing
# was recorded (an empty distribution has no minimum, not a minimum of 0).
Summary = dict[str, float | None]

EARLY_EPSILON_S = 1e-9


def empty_summary() -> Summary:
    return dict.fromkeys(SUMMARY_KEYS)


def _new_histogram() -> HdrHistogram:
    return HdrHistogram(LOWEST_US, HIGHEST_US, SIGNIFICANT_DIGITS)


@dataclass(frozen=True, slots=True)
class _Buckets:
    """The non-empty buckets of a histogram, in order, with running counts (µs)."""

    highest_us: list[int]
    cumulative: list[int]
    lowest_us: int
    mean_us: float


class Distribution:
    """A latency distribution recorded in seconds, summarised in milliseconds.

    While values are recorded directly, count, min, max and mean are kept exactly; a
    distribution decoded from a result file (or merged with one) only has the histogram,
    and then those come from the buckets.
    """

    def __init__(self) -> None:
        self._histogram = _new_histogram()
        self._exact = True
        self._count = 0
        self._sum_s = 0.0
        self._min_s = math.inf
        self._max_s = -math.inf
        self._buckets: _Buckets | None = None

    def __len__(self) -> int:
        return self._count

    def record(self, seconds: float) -> None:
        """Add one value; negative, NaN or over an hour is a caller bug and raises ValueError."""
        if not (0.0 <= seconds <= HIGHEST_US / 1e6):
            raise ValueError(f"latency {seconds!r} s is outside 0..3600 s")
        self._histogram.record_value(round(seconds * 1e6))
        self._count += 1
        self._sum_s += seconds
        self._min_s = min(self._min_s, seconds)
        self._max_s = max(self._max_s, seconds)
        self._buckets = None

    def record_all(self, values: Iterable[float]) -> None:
        for value in values:
            self.record(value)

    def merge(self, other: Distribution) -> None:
        """Add every value of `other` (e.g. several runs or processes) into this one."""
        self._histogram.add(other._histogram)
        self._exact = self._exact and other._exact
        self._count += other._count
        self._sum_s += other._sum_s
        self._min_s = min(self._min_s, other._min_s)
        self._max_s = max(self._max_s, other._max_s)
        self._buckets = None

    def _scan(self) -> _Buckets:
        """One pass over the counts (hdrh's own percentile lookup walks them on every call)."""
        if self._buckets is None:
            h = self._histogram
            highest: list[int] = []
            cumulative: list[int] = []
            total = 0
            weighted = 0
            lowest_first = 0
            for index, count in enumerate(h.counts):
                if count:
                    value = h.get_value_from_index(index)
                    low = h.get_lowest_equivalent_value(value)
                    high = h.get_highest_equivalent_value(value)
                    if not highest:
                        lowest_first = low
                    total += count
                    weighted += count * (low + (high - low + 1) // 2)
                    highest.append(high)
                    cumulative.append(total)
            self._buckets = _Buckets(highest, cumulative, lowest_first, weighted / max(total, 1))
        return self._buckets

    def _bounds_ms(self) -> tuple[float, float, float]:
        """(min, max, mean) in ms: exact while recorded directly, else from the buckets."""
        if self._exact:
            return self._min_s * 1e3, self._max_s * 1e3, self._sum_s / self._count * 1e3
        b = self._scan()
        return b.lowest_us / 1e3, b.highest_us[-1] / 1e3, b.mean_us / 1e3

    def value_at_ms(self, percentile: float) -> float | None:
        """The value at `percentile` (0..100) in ms, or None when empty.

        HdrHistogram's rule: the highest value of the bucket holding the value of rank
        round(p/100 · N) (at least 1), clamped into [min, max].
        """
        if self._count == 0:
            return None
        low, high, _ = self._bounds_ms()
        if percentile <= 0:
            return low
        b = self._scan()
        rank = max(1, int(min(percentile, 100.0) * b.cumulative[-1] / 100 + 0.5))
        value = b.highest_us[bisect.bisect_left(b.cumulative, rank)] / 1e3
        return min(max(value, low), high)

    def summary(self) -> Summary:
        """{min, p50, p90, p99, p999, max, mean} in ms; all None when nothing was recorded."""
        if self._count == 0:
            return empty_summary()
        low, high, mean = self._bounds_ms()
        result: Summary = {"min": low}
        for key, percentile in _PERCENTILES.items():
            result[key] = self.value_at_ms(percentile)
        result["max"] = high
        result["mean"] = mean
        return {key: result[key] for key in SUMMARY_KEYS}

    def percentile_spectrum(self) -> list[tuple[float, float]]:
        """(percentile, value_ms) pairs from 0 to 99.999, evenly spaced on a log 1/(1−p) axis.

        Ten points per decade of 1/(1−p) (90, 99, 99.9 … fall on the grid), plus 50 and 75,
        for plotting a latency spectrum. Empty distribution: [].
        """
        if self._count == 0:
            return []
        levels = {0.0, 50.0, 75.0}
        levels.update(round(100.0 * (1.0 - 10.0 ** (-k / 10.0)), 6) for k in range(1, 51))
        spectrum = []
        for p in sorted(levels):
            value = self.value_at_ms(p)
            assert value is not None
            spectrum.append((p, value))
        return spectrum

    def samples_ms(self, limit: int = 500) -> list[float]:
        """Up to `limit` values (ms) that follow this distribution: its evenly spaced quantiles.

        Deterministic; used where a statistical test needs samples and only the histogram
        was kept (the regression check of wall-clock targets).
        """
        if self._count == 0 or limit <= 0:
            return []
        n = min(limit, self._count)
        values = [self.value_at_ms(100.0 * (i + 0.5) / n) for i in range(n)]
        return [v for v in values if v is not None]

    def encode(self) -> str:
        """The raw histogram in the standard HdrHistogram base64 form, for the result file."""
        return self._histogram.encode().decode("ascii")

    @classmethod
    def decode(cls, text: str) -> Distribution:
        """Inverse of encode(); a corrupt histogram raises ValueError (one line)."""
        try:
            raw = text.encode("ascii") if isinstance(text, str) else text
            histogram = HdrHistogram.decode(raw)
            dist = cls()
            dist._histogram.add(histogram)
        except Exception as exc:  # hdrh raises several unrelated types on bad input
            raise ValueError(f"not an HDR histogram ({type(exc).__name__}: {exc})") from None
        dist._exact = False
        dist._count = dist._scan().cumulative[-1] if dist._scan().cumulative else 0
        return dist


def lateness_summary(delay_summary: Summary, requested_ms: float) -> Summary:
    """Delay percentiles minus the requested delay: exact, because lateness = delay − constant."""
    return {
        key: None if delay_summary.get(key) is None else delay_summary[key] - requested_ms
        for key in SUMMARY_KEYS
    }


def early_share(delays: Iterable[float], requested: float) -> float | None:
    """Share of delays (s) shorter than requested (s) by more than 1 ns; None when empty.

    Computed from the raw values: this is the "delay not honoured" figure.
    """
    n = early = 0
    threshold = requested - EARLY_EPSILON_S
    for delay in delays:
        n += 1
        if delay < threshold:
            early += 1
    return None if n == 0 else early / n
