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

_COLORS = plt.get_cmap("tab20").colors
_LINES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "v", "D", "x", "+", "*", "P", "h")


def _style(i: int) -> dict[str, object]:
    """The i-th series' look: colour, line style and marker all vary, so series that
    coincide (async-route and async-sleep often do) stay distinguishable."""
    return {
        "color": _COLORS[(2 * i) % 20 + (i // 10) % 2],
        "linestyle": _LINES[i % len(_LINES)],
        "marker": _MARKERS[i % len(_MARKERS)],
        "markevery": 0.1,
        "markersize": 5,
    }


def _legend_outside(ax: plt.Axes) -> None:
    """The legend right of the data, never over a curve (none when nothing was drawn)."""
    if not ax.get_legend_handles_labels()[0]:
        return
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), borderaxespad=0.0)


_PLAIN = FuncFormatter(lambda v, _: f"{v:g}")
"""Tick labels as plain numbers (a symlog axis otherwise prints −10^0)."""

Spectrum = Sequence[tuple[float, float]]  # (percentile 0..100, value ms)

_TICKS = (0.0, 90.0, 99.0, 99.9, 99.99, 99.999)


def _inverse_tail(percentile: float) -> float:
    """x position of a percentile: 1/(1−p), so each extra nine is one decade."""
    return 1.0 / max(1e-6, 1.0 - percentile / 100.0)


def latency_spectrum(
    series: Mapping[str, Spectrum], path: Path, title: str, ylabel: str = "latency (ms)"
) -> Path:
    """One line per strategy: value against percentile on a log 1/(1−p) axis."""
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for i, (label, points) in enumerate(series.items()):
        if not points:
            continue
        xs = [_inverse_tail(p) for p, _ in points]
        ys = [v for _, v in points]
        ax.plot(xs, ys, label=label, linewidth=1.6, **_style(i))
    ax.set_xscale("log")
    if max((v for pts in series.values() for _, v in pts), default=0) > 20 * max(
        0.001, min((v for pts in series.values() for _, v in pts if v > 0), default=1)
    ):
        ax.set_yscale("log")  # a tail spanning decades: each decade gets the same room
        ax.yaxis.set_major_formatter(_PLAIN)
    ax.xaxis.set_major_locator(FixedLocator([_inverse_tail(p) for p in _TICKS]))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{100 * (1 - 1 / x):g}%"))
    ax.xaxis.set_minor_locator(FixedLocator([]))
    ax.set_xlabel("percentile")
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="major", alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def delay_cdf(
    series: Mapping[str, Sequence[float]],
    requested_ms: Mapping[str, float],
    path: Path,
    title: str,
) -> Path:
    """Empirical CDF of deferral delay per strategy; dotted line at each requested delay."""
    fig, ax = plt.subplots(figsize=(12, 5.5))
    for k, (label, values) in enumerate(series.items()):
        if not values:
            continue
        ordered = sorted(values)
        n = len(ordered)
        ys = [(i + 1) / n for i in range(n)]
        (line,) = ax.step(ordered, ys, where="post", label=label, **_style(k))
        if label in requested_ms and requested_ms[label] > 0:
            ax.axvline(requested_ms[label], color=line.get_color(), linestyle=":", alpha=0.7)
    longest = max((max(v) for v in series.values() if v), default=0.0)
    if longest > 100.0:  # seconds-scale delays next to sub-ms ones: keep both readable
        ax.set_xscale("symlog", linthresh=1.0)
        ax.xaxis.set_major_formatter(_PLAIN)
    ax.set_xlabel("deferral delay (ms); dotted: requested")
    ax.set_ylabel("share of transactions")
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    _legend_outside(ax)
    return _save(fig, path)


def sweep(
    series: Mapping[str, Sequence[tuple[float, float | None, float | None]]],
    path: Path,
    title: str,
) -> Path:
    """Per strategy, (offered re-INVITEs/s, p99 lateness ms, CPU busy share) as two panels."""
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(12, 8), sharex=True)
    for i, (label, rows) in enumerate(series.items()):
        ordered = sorted(rows)
        rates = [r for r, _, _ in ordered]
        style = {**_style(i), "markevery": 1}
        top.plot(rates, [lat for _, lat, _ in ordered], label=label, **style)
        cpu = [100 * c if c is not None else None for _, _, c in ordered]
        bottom.plot(rates, cpu, label=label, **style)
    top.set_yscale("symlog", linthresh=1.0)
    top.yaxis.set_major_formatter(_PLAIN)
    top.set_ylabel("p99 lateness (ms)")
    top.set_title(title)
    bottom.set_ylabel("CPU busy (% of all cores)")
    bottom.set_xlabel("offered re-INVITEs per second")
    for ax in (top, bottom):
        ax.grid(True, alpha=0.3)
    _legend_outside(top)
    return _save(fig, path)


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
