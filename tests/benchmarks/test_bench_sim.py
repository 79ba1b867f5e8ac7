"""How fast the sim target runs the full call flow, per strategy, and as a ratio to a
yardstick timed in the same test (`sim_speed`: a bare heapq loop of sleep-resumes), so a
regression shows on any machine.

Everything a `deferbench run --target sim` does: the seeded schedule, the UAC and UAS with
their RFC 3261 transactions, the simulated network, the modelled Kamailio (SIP workers,
timers, the strategy's processes) with the proxy core, the ledger and the metrics. Load:
`reinvite:rate=100/s,duration=20s,reinvites=10` (≈ 20,000 re-INVITEs plus the calls'
INVITEs, ACKs and BYEs), on 2 cores with 8 SIP workers, the adopted cost profile. In
`extra_info`: re-INVITE transactions simulated per wall-clock second of the fastest
round's loaded run (`sim_txn_per_wall_s`, as `deferbench run` reports it; the goal is
≥ 5,000/s), the yardstick's transactions per second and the ratio of the two.

Run: python -m pytest tests/benchmarks/test_bench_sim.py --benchmark-only -p no:cacheprovider
Or, printing a table: python -m tests.benchmarks.sim_speed
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent.parent))

import strategies  # noqa: E402
from harness.load.spec import parse_load  # noqa: E402
from harness.targets.sim import simulate  # noqa: E402
from tests.benchmarks.sim_speed import COSTS, LOAD, SEED, SETTINGS, yardstick_rate  # noqa: E402

FULL_FLOW = parse_load(LOAD)


@pytest.mark.parametrize("spec", strategies.names())
def test_sim_full_flow_speed(benchmark, spec: str) -> None:
    stick = yardstick_rate()

    def one_run():
        return simulate(spec, FULL_FLOW, SEED, SETTINGS, COSTS, measure_idle=False)

    runs = []
    benchmark.pedantic(lambda: runs.append(one_run()), rounds=2, iterations=1)
    result = runs[-1].result
    ledger = result["ledger"]
    assert ledger["transactions"] > 15_000
    assert result["counters"]["calls unfinished"] == 0
    speed = max(run.result["sim_txn_per_wall_s"] for run in runs)
    benchmark.extra_info["spec"] = result["strategy"]
    benchmark.extra_info["reinvites"] = ledger["transactions"]
    benchmark.extra_info["kernel_events"] = runs[-1].kernel.events_run
    benchmark.extra_info["sim_txn_per_wall_s"] = round(speed)
    benchmark.extra_info["yardstick_txn_per_wall_s"] = round(stick)
    benchmark.extra_info["ratio_to_yardstick"] = round(speed / stick, 4)
