"""Full-flow sim speed per strategy, as a ratio to a yardstick timed in the same run.

A figure like "4,000 re-INVITE transactions per wall second" depends on the machine; the
ratio to a yardstick measured beside it does much less, so a regression shows on any box.
The yardstick is a bare discrete-event loop doing the sim's elementary work with nothing
of the model: a `heapq` of (time, seq, generator) entries, each pop resuming a generator
that yields its next sleep. `YARDSTICK_STEPS` such sleep-resumes make one yardstick
"transaction" (about the kernel events one full-flow re-INVITE takes), so

    ratio = sim transactions per wall s / yardstick transactions per wall s

reads as "a full-flow transaction costs 1/ratio bare sleep-resume transactions".

For each strategy: the full flow of `deferbench run --target sim` (schedule, UAC and UAS
with their RFC 3261 transactions, the sim network, the modelled Kamailio with the proxy
core, ledger and metrics), timed as the result's `sim_txn_per_wall_s` is (the loaded run:
neither the idle run behind `idle_share` nor building the result), the best of `rounds`
runs, with the yardstick timed (best of 3) right before each strategy.

Run: python -m tests.benchmarks.sim_speed [--load SPEC] [--rounds N] [strategy ...]
The pytest-benchmark form is `test_bench_sim.py`.
"""

from __future__ import annotations

import argparse
import heapq
import itertools
import time
from collections.abc import Generator, Sequence
from dataclasses import dataclass

import strategies
from core import compiled
from core.runtime.server import ServerSettings
from harness.load.spec import LoadSpec, parse_load
from harness.profile import sim_profile
from harness.targets.sim import simulate

LOAD = "reinvite:rate=100/s,duration=20s,reinvites=10"
SETTINGS = ServerSettings(cores=2, children=8)
SEED = 1
COSTS = sim_profile(None)[0]  # the cost profile `deferbench run` charges by default
YARDSTICK_STEPS = 32  # sleep-resumes a yardstick transaction takes
YARDSTICK_TRANSACTIONS = 20_000
YARDSTICK_PROCESSES = 64


def _sleeper(steps: int, period: float) -> Generator[float, None, None]:
    for _ in range(steps):
        yield period


def yardstick(transactions: int = YARDSTICK_TRANSACTIONS) -> int:
    """The bare loop: `transactions` × `YARDSTICK_STEPS` sleep-resumes spread over
    `YARDSTICK_PROCESSES` generators on one heap; returns the resumes it made."""
    heap: list[tuple[float, int, Generator[float, None, None]]] = []
    seq = itertools.count()
    steps = transactions * YARDSTICK_STEPS // YARDSTICK_PROCESSES
    for i in range(YARDSTICK_PROCESSES):
        heap.append((i * 1e-4, next(seq), _sleeper(steps, 1e-3 * (1 + i % 7))))
    heapq.heapify(heap)
    resumes = 0
    pop, push = heapq.heappop, heapq.heappush
    while heap:
        now, _, process = pop(heap)
        try:
            sleep = next(process)
        except StopIteration:
            continue
        resumes += 1
        push(heap, (now + sleep, next(seq), process))
    return resumes


def yardstick_rate(rounds: int = 3) -> float:
    """Yardstick transactions per wall second, best of `rounds`."""
    best = float("inf")
    for _ in range(rounds):
        started = time.perf_counter()
        resumes = yardstick()
        best = min(best, time.perf_counter() - started)
    return resumes / YARDSTICK_STEPS / best


@dataclass(frozen=True)
class Speed:
    strategy: str
    transactions: int
    wall: float  # wall seconds of the best loaded run (result building left out)
    yardstick: float  # yardstick transactions per wall second

    @property
    def per_wall_s(self) -> float:
        return self.transactions / self.wall

    @property
    def ratio(self) -> float:
        return self.per_wall_s / self.yardstick


def measure(spec: str, load: LoadSpec, rounds: int = 1) -> Speed:
    """The yardstick, then `spec`'s full flow (best of `rounds`)."""
    stick = yardstick_rate()
    best = 0.0
    transactions = 0
    for _ in range(rounds):
        result = simulate(spec, load, SEED, SETTINGS, COSTS, measure_idle=False).result
        best = max(best, result["sim_txn_per_wall_s"])  # the loaded run, as `run` reports
        transactions = result["ledger"]["transactions"]
    return Speed(strategies.parse_spec(spec).spec, transactions, transactions / best, stick)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.sim_speed")
    parser.add_argument("strategies", nargs="*", help="strategy specs (default: every one)")
    parser.add_argument("--load", default=LOAD, help=f"load spec (default {LOAD})")
    parser.add_argument("--rounds", type=int, default=1, help="runs per strategy (best)")
    args = parser.parse_args(argv)
    load = parse_load(args.load)
    specs = args.strategies or strategies.names()
    print(f"load {load.spec}; seed {SEED}; yardstick: {YARDSTICK_STEPS} heapq sleep-resumes")
    print(f"sim engine: {compiled.ENGINE}")
    print(f"{'strategy':<44} {'re-INV':>7} {'wall s':>7} {'txn/s':>7} {'stick/s':>8} {'ratio':>6}")
    for spec in specs:
        s = measure(spec, load, args.rounds)
        name = s.strategy if len(s.strategy) <= 44 else s.strategy[:41] + "..."
        print(
            f"{name:<44} {s.transactions:>7} {s.wall:>7.2f} {s.per_wall_s:>7.0f} "
            f"{s.yardstick:>8.0f} {s.ratio:>6.3f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
