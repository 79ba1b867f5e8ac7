"""PNG plots a person would rather look at than read.

- latency percentile spectrum per strategy on a log 1/(1−p) axis (HDR style), so p50 … p99.9
  each get the same room and tails are visible;
- deferral-delay CDFs per strategy, with the requested delay marked, so early resumes show;
- for sweeps, p99 lateness and CPU busy share against offered re-INVITE rate.

Inputs are plain series; nothing here computes a metric (that is harness.measure.metrics' job).
Uses matplotlib's Agg backend: no display needed.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import FixedLocator, FuncFormatter  # noqa: E402

Spectrum = Sequence[tuple[float, float]]  # (percentile 0..100, value ms)

_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _inverse_tail(percentile: float) -> float:
    """x position of a percentile: 1/(1−p), so each extra nine is one decade."""
    return 1.0 / max(1e-6, 1.0 - percentile / 100.0)


def latency_spectrum(
    series: Mapping[str, Spectrum], path: Path, title: str, ylabel: str = "latency (ms)"
) -> Path:
    """One line per strategy: value against percentile on a log 1/(1−p) axis."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, points in series.items():
        if not points:
            continue
        xs = [_inverse_tail(p) for p, _ in points]
        ys = [v for _, v in points]
        ax.plot(xs, ys, label=label, linewidth=1.6)
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator([_inverse_tail(p) for p in _TICKS]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * (1 - 1 / x):g}%"))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("percentile")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def delay_cdf(
    series: Mapping[str, Sequence[float]],
    requested_ms: Mapping[str, float],
    path: Path,
    title: str,
) -> Path:
    """Empirical CDF of deferral delay per strategy; dotted line at each requested delay."""
    fig, ax = plt.subplots(figsize=(9, 5.5))
    for label, values in series.items():
        if not values:
            continue
        ordered = sorted(values)
        n = len(ordered)
        (line,) = ax.step(ordered, [(i + 1) / n for i in range(n)], where="post", label=label)
        if label in requested_ms and requested_ms[label] > 0:
            ax.axvline(requested_ms[label], color=line.get_color(), linestyle=":", alpha=0.7)
    longest = max((max(v) for v in series.values() if v), default=0.0)
    if longest > 100.0:  # seconds-scale delays next to sub-ms ones: keep both readable
        ax.set_xscale("symlog", linthresh=1.0)
    ax.set_xlabel("deferral delay (ms); dotted: requested")
    ax.set_ylabel("share of transactions")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def sweep(
    series: Mapping[str, Sequence[tuple[float, float | None, float | None]]],
    path: Path,
    title: str,
) -> Path:
    """Per strategy, (offered re-INVITEs/s, p99 lateness ms, CPU busy share) as two panels."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(9, 8), sharex=True)
    for label, rows in series.items():
        ordered = sorted(rows)
        rates = [r for r, _, _ in ordered]
        top.plot(rates, [lat for _, lat, _ in ordered], marker="o", label=label)
        bottom.plot(
            rates,
            [100 * cpu if cpu is not None else None for _, _, cpu in ordered],
            marker="o",
            label=label,
        )
    top.set_yscale("symlog", linthresh=1.0)
    top.set_ylabel("p99 lateness (ms)")
    top.set_title(title)
    bottom.set_ylabel("CPU busy (% of all cores)")
    bottom.set_xlabel("offered re-INVITEs per second")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    top.legend(fontsize=8)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
