"""The main job's wall time: `deferbench run` as a new user runs it, against the yardstick.

The goal is the default comparison in under 10 s on the project's 2-core box. That box is
shared and runs at different speeds from hour to hour, so each round times the whole
command (a fresh process: startup, the sims on every core, the result files, the plots)
right after the yardstick of `sim_speed` (a bare heapq loop of sleep-resumes, one
process), and prints the wall time also as yardstick transactions: wall s × yardstick/s.
That product moves much less than either, and divided by a day's yardstick rate it says
what the run would take that day (the fastest seen: ≈ 126,000/s).

Run: python -m tests.benchmarks.default_run [--rounds N] [-- extra run arguments]
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from core import compiled
from tests.benchmarks.sim_speed import yardstick_rate

FAST_DAY = 126_000  # yardstick transactions per second on the fastest day seen


def time_default_run(extra: Sequence[str] = ()) -> float:
    """Wall seconds of one `deferbench run --quiet` in a fresh process."""
    with tempfile.TemporaryDirectory() as out:
        command = [sys.executable, "-m", "harness.cli", "run", "--quiet", "--out", out, *extra]
        started = time.perf_counter()
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL,
                       cwd=Path(__file__).resolve().parents[2])  # fmt: skip
        return time.perf_counter() - started


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.default_run")
    parser.add_argument("--rounds", type=int, default=3, help="timed runs (default 3)")
    parser.add_argument("extra", nargs="*", help="more `deferbench run` arguments")
    args = parser.parse_args(argv)
    print(f"sim engine: {compiled.ENGINE} (the command's own: the same install and environment)")
    print(f"{'round':>5} {'wall s':>7} {'stick/s':>8} {'wall×stick':>11} {'at 126k/s':>10}")
    for i in range(1, args.rounds + 1):
        stick = yardstick_rate()
        wall = time_default_run(args.extra)
        print(f"{i:>5} {wall:>7.2f} {stick:>8.0f} {wall * stick:>11.0f} "
              f"{wall * stick / FAST_DAY:>9.2f}s")  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
