"""Overload/soak benchmark of `deferbench serve`: does memory stay bounded, is work carried?

One `deferbench serve` on 127.0.0.1, driven by SIPp (UAC -> serve -> UAS, `REINVITES`
re-INVITEs per call, the scenarios and the runner of `harness.targets.kamailio.sipp`):

1. clean capacity: SIPp steps of increasing call rate until one is not clean (every call
   played to the end on both sides, every re-INVITE answered 200, every ACK delivered);
   the capacity is the last clean rate (or `--capacity` given);
2. overload: SIPp at each factor x capacity (default 5x for 20 s, then 10x for 30 s); per
   phase the calls completed per second (calls SIPp played to the end / the phase's
   offered seconds) and its share of the clean capacity, serve's RSS before, at its peak
   (sampled from /proc/PID/statm every `RSS_PERIOD` s) and after, and the 503s serve shed;
3. a clean run at the clean capacity on the same server, right after.

Everything is started here and stopped by PID with bounded waits, also on Ctrl-C or
SIGTERM (`run_stoppable` cancels the run, every `finally` stops what it started).

Run: `python -m tests.benchmarks.overload` from the project root (about 4 minutes);
`--short` for a quick look (about 1 minute); `--help` for durations, rates and serve options.

What this module must not do: leave a process or a directory behind, or touch anything
but loopback.
"""

from __future__ import annotations

import argparse
import os
import re
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import anyio

from core.runtime.server import ServerSettings
from harness.targets.children import run_stoppable
from harness.targets.kamailio.sipp import SippFigures, SippPair, SippPlan, drive
from harness.targets.live.target import ServeProcess

REINVITES = 10
GAP_MS = 1
SETTINGS = ServerSettings(children=8, fr_timer=5.0)
RSS_PERIOD = 0.1  # seconds between RSS samples of serve
DRAIN = 10.0  # seconds after the offered load for the calls still running to end
SETTLE = 3.0  # seconds between phases (transactions of the previous one expire)
_PAGE = os.sysconf("SC_PAGE_SIZE")
_SHED = re.compile(r"shed503=(\d+)")


def rss_mb(pid: int) -> float | None:
    """Resident set size of process `pid` in MB (None once it is gone)."""
    try:
        with open(f"/proc/{pid}/statm", encoding="ascii") as statm:
            return int(statm.read().split()[1]) * _PAGE / 1e6
    except (OSError, ValueError, IndexError):
        return None


@dataclass
class Phase:
    """One SIPp run through serve and what it did to serve's memory."""

    name: str
    rate: float  # calls per second offered
    seconds: float  # seconds of offered load
    calls: int = 0
    successful: int = 0
    failed: int = 0
    clean: bool = False
    first_error: str = ""
    rss_before: float = 0.0
    rss_peak: float = 0.0
    rss_after: float = 0.0
    shed: int = 0  # 503s serve sent during the phase

    @property
    def carried(self) -> float:
        """Calls completed per second of offered load."""
        return self.successful / self.seconds

    @property
    def growth(self) -> float:
        return self.rss_peak - self.rss_before


@dataclass
class Bench:
    """A started serve and the options the phases share."""

    serve: ServeProcess
    work: Path
    drain: float = DRAIN
    phases: list[Phase] = field(default_factory=list)

    def shed_so_far(self) -> int:
        """503s serve has counted, from the last summary or snapshot line it logged."""
        found = _SHED.findall(self.serve.log_text())
        return int(found[-1]) if found else 0

    async def run(self, name: str, rate: float, seconds: float) -> Phase:
        """SIPp at `rate` calls/s for `seconds` (+ drain); serve's RSS sampled throughout."""
        phase = Phase(name, rate, seconds)
        pid = self.serve.pid
        phase.rss_before = phase.rss_peak = rss_mb(pid) or 0.0
        await self.serve.snapshot()
        shed_before = self.shed_so_far()
        calls = max(1, round(rate * seconds))
        plan = SippPlan(rate, calls, REINVITES, GAP_MS, seconds + self.drain)
        pair = SippPair(self.work / f"sipp-{len(self.phases)}-{name}", self.serve.address, plan)
        async with anyio.create_task_group() as tasks:

            async def sample() -> None:
                while True:
                    phase.rss_peak = max(phase.rss_peak, rss_mb(pid) or 0.0)
                    await anyio.sleep(RSS_PERIOD)

            tasks.start_soon(sample)
            figures = await drive(pair)
            tasks.cancel_scope.cancel()
        await self.serve.snapshot()
        phase.rss_after = rss_mb(pid) or 0.0
        phase.shed = self.shed_so_far() - shed_before
        _fill(phase, figures)
        self.phases.append(phase)
        print(_line(phase), flush=True)
        return phase


def _fill(phase: Phase, figures: SippFigures) -> None:
    phase.calls = figures.calls
    phase.successful = figures.successful
    phase.failed = figures.failed
    phase.clean = figures.clean
    phase.first_error = figures.first_error


def _line(phase: Phase) -> str:
    return (
        f"{phase.name:>10} {phase.rate:7.0f} calls/s x {phase.seconds:g}s: "
        f"{phase.successful}/{phase.calls} calls completed ({phase.carried:.1f}/s), "
        f"failed {phase.failed}, 503s sent {phase.shed}, "
        f"RSS {phase.rss_before:.0f} -> peak {phase.rss_peak:.0f} -> {phase.rss_after:.0f} MB"
        f"{'' if not phase.first_error else f' (first SIPp error: {phase.first_error[:100]})'}"
        f"{' clean' if phase.clean else ''}"
    )


async def find_capacity(bench: Bench, rates: list[float], seconds: float) -> float:
    """The highest rate of `rates` (ascending) whose SIPp run is clean, stopping at the
    first that is not; 0 if none is."""
    capacity = 0.0
    for rate in rates:
        phase = await bench.run("capacity", rate, seconds)
        if not phase.clean:
            break
        capacity = rate
        await anyio.sleep(1.0)
    return capacity


async def benchmark(args: argparse.Namespace, bench: Bench) -> int:
    """Every phase through one started serve; the summary; exit status 0 if it ran."""
    await bench.serve.wait_ready()
    start_rss = rss_mb(bench.serve.pid) or 0.0
    capacity = args.capacity or await find_capacity(bench, args.rates, args.step_seconds)
    if capacity <= 0:
        print("no clean rate: lower --rates", file=sys.stderr)
        return 1
    overloads = []
    for factor, seconds in args.overload:
        await anyio.sleep(SETTLE)
        overloads.append((factor, await bench.run(f"{factor:g}x", capacity * factor, seconds)))
    await anyio.sleep(SETTLE)
    after = await bench.run("clean", capacity, args.clean_seconds)
    await anyio.sleep(SETTLE)
    _summary(capacity, start_rss, overloads, after, rss_mb(bench.serve.pid) or 0.0)
    return 0


def _summary(
    capacity: float, start: float, overloads: list[tuple[float, Phase]], after: Phase, end: float
) -> None:
    print(f"\nclean capacity: {capacity:g} calls/s ({capacity * REINVITES:g} re-INVITEs/s)")
    for factor, phase in overloads:
        print(
            f"{factor:g}x overload ({phase.rate:g} calls/s, {phase.seconds:g} s): "
            f"{phase.carried:.1f} calls completed/s = {phase.carried / capacity:.0%} of clean "
            f"capacity; RSS {phase.rss_before:.0f} MB before, peak {phase.rss_peak:.0f} MB "
            f"(+{phase.growth:.0f} MB); 503s sent {phase.shed}"
        )
    peak = max([p.rss_peak for _, p in overloads] + [after.rss_peak])
    print(f"RSS: {start:.0f} MB at start, peak {peak:.0f} MB, {end:.0f} MB at the end")
    verdict = "succeeded" if after.clean else f"FAILED ({after.first_error[:120]})"
    print(f"clean run after the overload ({after.rate:g} calls/s): {verdict}")


def _floats(text: str) -> list[float]:
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        values = []
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"positive numbers separated by commas, got {text!r}")
    return values


def _overloads(text: str) -> list[tuple[float, float]]:
    try:
        pairs = [tuple(float(x) for x in item.split(":")) for item in text.split(",")]
    except ValueError:
        pairs = []
    if not pairs or any(len(p) != 2 or min(p) <= 0 for p in pairs):
        raise argparse.ArgumentTypeError(f"FACTOR:SECONDS,... (e.g. 5:20,10:30), got {text!r}")
    return [(p[0], p[1]) for p in pairs]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m tests.benchmarks.overload", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--strategy", default="async-sleep", help="serve's strategy spec")
    parser.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    parser.add_argument(
        "--rates",
        type=_floats,
        default=_floats("100,150,200,250,300,400"),
        help="call rates of the capacity search, ascending (calls/s)",
    )
    parser.add_argument("--step-seconds", type=float, default=5.0, help="per capacity step")
    parser.add_argument(
        "--capacity", type=float, default=0.0, help="clean capacity in calls/s: skip the search"
    )
    parser.add_argument(
        "--overload",
        type=_overloads,
        default=_overloads("5:20,10:30"),
        metavar="FACTOR:SECONDS,...",
        help="overload phases (5:20,10:30)",
    )
    parser.add_argument("--clean-seconds", type=float, default=10.0, help="the run after")
    parser.add_argument("--drain", type=float, default=DRAIN, help="seconds after each load")
    parser.add_argument(
        "--short",
        action="store_true",
        help="quick look: 3 s steps, 5x and 10x for 5 s each, 5 s after",
    )
    parser.add_argument(
        "serve_args",
        nargs="*",
        metavar="-- SERVE_ARG",
        help="passed to deferbench serve (e.g. -- --max-queue 200)",
    )
    args = parser.parse_args(argv)
    if args.short:
        args.step_seconds, args.clean_seconds, args.drain = 3.0, 5.0, 5.0
        args.overload = [(5.0, 5.0), (10.0, 5.0)]
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="deferbench-overload-") as tmp:
        work = Path(tmp)
        serve = ServeProcess(
            args.strategy,
            backend=args.backend,
            settings=SETTINGS,
            workdir=work,
            extra=("--interval", "1s", *args.serve_args),
        )
        try:
            bench = Bench(serve, work, args.drain)
            return run_stoppable(benchmark, args, bench, backend="trio")
        finally:
            serve.stop()


if __name__ == "__main__":
    sys.exit(main())
