"""Human-readable reports of result documents: the comparison table, side-by-side compares,
and the plots and files written next to a result.

Nothing here measures; every figure comes from a `RunResult`, and every table ends with the
command that reproduces it.
"""

from __future__ import annotations

import shlex
import textwrap
from pathlib import Path

from tabulate import tabulate

import strategies
from harness.analysis import page
from harness.measure.results import RunResult
from harness.targets.base import STEAL_LIMIT, over_steal_limit


def _ms(value: float | None, digits: int = 2) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def _pct(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{100 * value:.{digits}f}"


def _num(value: float | None) -> str:
    return "-" if value is None else f"{value:,.0f}"


WIDTH = 100
"""Columns the default table and headline fit in; `--wide` shows every column."""


def headline(result: RunResult) -> str:
    load = result.load
    text = (
        f"{result.target} target, load {load.spec}: {load.call_rate:g} calls/s, "
        f"{load.reinvite_rate:g} re-INVITEs/s offered; seed {result.seed}; "
        f"{result.server.children} SIP workers, {result.server.cores} cores, "
        f"fr_timer {result.server.fr_timer_ms / 1000:g}s"
        + (f"; network {result.network}" if result.network else "")
        + (f"; costs {result.costs}" if result.costs else "")
    )
    return "\n".join(textwrap.wrap(text, WIDTH, subsequent_indent="  "))


def comparison_table(result: RunResult, wide: bool = False) -> str:
    """One row per strategy: races, delay, early share, losses and CPU side by side. The
    default fits `WIDTH` columns (strategies named by their non-default parameters, every
    bad outcome in one column); `wide` shows each figure on its own."""
    if wide:
        return "\n".join([_wide_table(result), *disturbed_runs(result)])
    rows = []
    for s in result.strategies:
        ledger = s.ledger
        faults = (ledger.lost + ledger.timeout_408 + ledger.error_5xx + ledger.other
                  + ledger.duplicated + ledger.stale + ledger.reordered)  # fmt: skip
        rows.append([
            _clip(strategies.parse_spec(s.strategy).short_spec, NAME_WIDTH),
            ledger.race_491,
            f"{_ms(s.delay_ms['p50'], 1)}/{_ms(s.delay_ms['p99'], 1)}",
            _pct(s.early_share),
            faults,
            _pct(s.cpu.busy_share, 2),
            _pct(s.cpu.idle_share, 2),
            _num(s.cpu.per_txn_us),
        ])  # fmt: skip
    headers = ["strategy (non-default params)", "491", "delay ms p50/p99", "early%",
               "faults", "CPU%", "idle%", "µs/txn"]  # fmt: skip
    note = ("faults = lost + 408 + 5xx + other + duplicated + stale + reordered; "
            "CPU% of all cores; --wide")  # fmt: skip
    return "\n".join([_columns(headers, rows), note, *disturbed_runs(result)])


def disturbed_runs(result: RunResult) -> list[str]:
    """A line for each strategy whose run the machine's hypervisor disturbed: figures that
    say more about a neighbour than about the server must not pass unremarked."""
    notes = (disturbed(s.cpu.host_steal_share, strategies.parse_spec(s.strategy).short_spec)
             for s in result.strategies)  # fmt: skip
    return [note for note in notes if note]


def disturbed(steal_share: float | None, strategy: str) -> str:
    """What to say of a run of `strategy` during which the host stole `steal_share` of the
    CPU: a warning above `STEAL_LIMIT`, else nothing."""
    if not over_steal_limit(steal_share):
        return ""
    return (f"disturbed: the host stole {steal_share:.1%} of the CPU during {strategy}'s run "
            f"(over {STEAL_LIMIT:.0%}): its delays and CPU are unreliable; run it again on a "
            "quieter machine")  # fmt: skip


NAME_WIDTH = 32
"""The strategy column of the default table: longer specs are clipped (`--wide` has them)."""


def _clip(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 1] + "…"


def _columns(headers: list[str], rows: list[list[object]]) -> str:
    """A plain table: two spaces between columns, text left, figures right."""
    cells = [headers, *[[str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    lines = []
    for n, row in enumerate(cells):
        parts = [row[0].ljust(widths[0])] + [
            c.rjust(w) for c, w in zip(row[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(parts).rstrip())
        if n == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _wide_table(result: RunResult) -> str:
    rows = []
    for s in result.strategies:
        ledger = s.ledger
        rows.append(
            [
                s.strategy,
                ledger.transactions,
                ledger.race_491,
                _ms(s.requested_delay_ms, 1),
                f"{_ms(s.delay_ms['p50'])}/{_ms(s.delay_ms['p99'])}/{_ms(s.delay_ms['max'])}",
                _pct(s.early_share),
                _ms(s.lateness_ms["p99"]),
                _ms(s.e2e_ms["p99"]),
                ledger.lost,
                ledger.timeout_408,
                ledger.error_5xx + ledger.other,
                ledger.duplicated + ledger.stale + ledger.reordered,
                _pct(s.cpu.busy_share, 2),
                _pct(s.cpu.idle_share, 2),
                _num(s.cpu.wakeups_per_s),
                _num(s.cpu.per_txn_us),
            ]
        )
    headers = [
        "strategy",
        "re-INV",
        "491 race",
        "asked ms",
        "delay p50/p99/max ms",
        "early %",
        "late p99",
        "e2e p99",
        "lost",
        "408",
        "5xx/oth",
        "dup/stale/reord",
        "CPU %",
        "idle %",
        "wakes/s",
        "µs/txn",
    ]
    return tabulate(rows, headers=headers, disable_numparse=True)


def reproduce_line(result: RunResult) -> str:
    return "reproduce: " + shlex.join(result.command)


def compare_table(a: RunResult, b: RunResult, name_a: str, name_b: str) -> str:
    """Strategies present in both, headline figures side by side with the ratio b/a."""
    figures = [
        ("delay p50 ms", lambda s: s.delay_ms["p50"]),
        ("delay p99 ms", lambda s: s.delay_ms["p99"]),
        ("lateness p99 ms", lambda s: s.lateness_ms["p99"]),
        ("early share", lambda s: s.early_share),
        ("e2e p99 ms", lambda s: s.e2e_ms["p99"]),
        ("491 races", lambda s: s.ledger.race_491),
        ("lost", lambda s: s.ledger.lost),
        ("408", lambda s: s.ledger.timeout_408),
        ("CPU busy share", lambda s: s.cpu.busy_share),
        ("idle share", lambda s: s.cpu.idle_share),
        ("wake-ups/s", lambda s: s.cpu.wakeups_per_s),
        ("CPU µs/txn", lambda s: s.cpu.per_txn_us),
        ("sim txn/wall s", lambda s: s.sim_txn_per_wall_s),
    ]
    rows = []
    for left in a.strategies:
        right = b.strategy(left.strategy)
        if right is None:
            rows.append([left.strategy, "(only in " + name_a + ")", "", "", ""])
            continue
        for label, get in figures:
            x, y = get(left), get(right)
            rows.append([left.strategy, label, _fmt(x), _fmt(y), _ratio(x, y)])
    for right in b.strategies:
        if a.strategy(right.strategy) is None:
            rows.append([right.strategy, "(only in " + name_b + ")", "", "", ""])
    return tabulate(rows, headers=["strategy", "figure", name_a, name_b, "ratio"],
                    disable_numparse=True)  # fmt: skip


def _fmt(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def _ratio(x: float | None, y: float | None) -> str:
    if x is None or y is None:
        return "-"
    if x == 0:
        return "=" if y == 0 else "new"
    return f"{y / x:.3g}×"


def write_plots(result: RunResult, directory: Path) -> list[Path]:
    """The latency spectrum and delay CDF of every strategy, next to the result."""
    from harness.analysis import plots  # matplotlib: loaded only when a plot is drawn

    rate = f"{result.load.call_rate:g} calls/s = {result.load.reinvite_rate:g} re-INVITEs/s"
    spectra = {}
    e2e = {}
    delays = {}
    requested = {}
    for s in result.strategies:
        label = strategies.parse_spec(s.strategy).short_spec
        spectra[label] = s.delay_distribution().percentile_spectrum()
        e2e[label] = s.e2e_distribution().percentile_spectrum()
        delays[label] = s.delay_distribution().samples_ms()
        if s.requested_delay_ms:
            requested[label] = s.requested_delay_ms
    return [
        plots.latency_spectrum(
            e2e, directory / "e2e_spectrum.png", f"re-INVITE end-to-end latency, {rate}"
        ),
        plots.latency_spectrum(
            spectra,
            directory / "delay_spectrum.png",
            f"deferral delay, {rate}",
            ylabel="deferral delay (ms)",
        ),
        plots.delay_cdf(delays, requested, directory / "delay_cdf.png", f"deferral delay, {rate}"),
    ]


def write_page(result: RunResult, directory: Path, images: list[Path]) -> tuple[Path, Path]:
    """report.html (self-contained) and report.md beside the result: the headline, both
    tables, the plots, the command, machine facts and the cost profile."""
    sections = [
        page.Section("what ran", headline(result)),
        page.Section("comparison", comparison_table(result)),
        page.Section("every figure", comparison_table(result, wide=True)),
        page.Section("plots", "", tuple(images)),
    ]
    title = f"deferbench run: {result.target} target, {result.load.reinvite_rate:g} re-INVITEs/s"
    return page.write(directory, "report", title, sections, result.command, result.costs)
