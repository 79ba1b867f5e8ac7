"""Where the full flow's time goes: the figures behind the README's profile paragraph.

Three views of one sim run (`deferbench run`'s path: `SimTarget.run`, no idle run):

- default: cProfile, then Python calls per transaction and own time by source file. cProfile
  sees no function inside a compiled module, so run it with DEFERBENCH_PURE=1;
- `--plain`: the run alone, for a sampling profiler around it, and `--collapsed FILE` to
  read what it sampled (`py-spy record --native -f raw -o FILE -- python -m
  tests.benchmarks.profile_sim --plain`) as shares by module, compiled ones included;
- `--gc`: the cyclic collector's passes during and right after the run, and their time.

Run: python -m tests.benchmarks.profile_sim [--load SPEC] [--plain | --gc] [strategy]
     python -m tests.benchmarks.profile_sim --collapsed FILE
"""

from __future__ import annotations

import argparse
import cProfile
import gc
import pstats
import re
import time
from collections import Counter
from collections.abc import Sequence
from typing import Any

from core import compiled
from harness.load.spec import parse_load
from harness.targets.sim import SimTarget
from tests.benchmarks.sim_speed import COSTS, SEED, SETTINGS

LOAD = "reinvite:rate=100/s,duration=5s,reinvites=10"
TOP = 16


def _run(strategy: str, load: str) -> dict[str, Any]:
    return SimTarget(COSTS, measure_idle=False).run(strategy, parse_load(load), SEED, SETTINGS)


def _shares(totals: Counter[str], top: int = TOP) -> None:
    whole = sum(totals.values())
    for name, value in totals.most_common(top):
        print(f"{value / whole:6.1%}  {name}")


def _file(path: str) -> str:
    if path == "~":
        return "(builtins)"
    if "/site-packages/" in path:
        return path.split("/site-packages/")[-1]
    root = f"{compiled.ROOT}/"
    return path[len(root) :] if path.startswith(root) else path


def by_file(strategy: str, load: str) -> None:
    profile = cProfile.Profile()
    profile.enable()
    result = _run(strategy, load)
    profile.disable()
    transactions = result["ledger"]["transactions"]
    own: Counter[str] = Counter()
    calls = 0
    for (path, _, _), (_, ncalls, tottime, _, _) in pstats.Stats(profile).stats.items():
        own[_file(path)] += tottime
        calls += ncalls
    print(f"{strategy}, {load}; {compiled.ENGINE}; {transactions} transactions")
    print(f"{calls / transactions:,.0f} Python calls per transaction; own time by file:")
    _shares(own)


def by_module(collapsed: str) -> None:
    """py-spy's raw output (a stack a line, then its sample count) by the innermost frame
    of deferbench code: a compiled function is named CPyDef_<module>___..., a Python one
    by its file; other frames (the interpreter, libraries) count to the nearest such."""
    named = re.compile(r"CPyDef_(\w+?)___|\(((?:core|harness|strategies)/[\w/]+)\.py")
    totals: Counter[str] = Counter()
    with open(collapsed, encoding="utf-8") as f:
        for line in f:
            stack, _, count = line.rstrip("\n").rpartition(" ")
            for frame in reversed(stack.split(";")):
                match = named.search(frame)
                if match:
                    totals[match.group(1) or match.group(2)] += int(count)
                    break
            else:
                totals["(no deferbench frame)"] += int(count)
    _shares(totals)


def collector(strategy: str, load: str) -> None:
    passes: list[tuple[int, int, float]] = []
    started: list[float] = []

    def note(phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            started.append(time.perf_counter())
        else:
            passes.append(
                (info["generation"], info["collected"], time.perf_counter() - started[-1])
            )

    gc.callbacks.append(note)
    begun = time.perf_counter()
    _run(strategy, load)
    wall = time.perf_counter() - begun
    gc.callbacks.remove(note)
    print(f"{strategy}, {load}; {compiled.ENGINE}; the run {wall:.2f} s")
    print(f"{len(passes)} collector passes, {sum(p[2] for p in passes):.3f} s in all")
    for generation, collected, seconds in sorted(passes, key=lambda p: -p[2])[:5]:
        print(f"  generation {generation}: {collected} objects freed in {seconds:.4f} s")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.benchmarks.profile_sim")
    parser.add_argument("strategy", nargs="?", default="mqueue-rtimer")
    parser.add_argument("--load", default=LOAD, help=f"load spec (default {LOAD})")
    view = parser.add_mutually_exclusive_group()
    view.add_argument("--plain", action="store_true", help="the run only (for py-spy)")
    view.add_argument("--gc", action="store_true", help="the collector's passes")
    view.add_argument("--collapsed", metavar="FILE", help="py-spy raw output, by module")
    args = parser.parse_args(argv)
    if args.collapsed:
        by_module(args.collapsed)
    elif args.gc:
        collector(args.strategy, args.load)
    elif args.plain:
        _run(args.strategy, args.load)
    else:
        by_file(args.strategy, args.load)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
