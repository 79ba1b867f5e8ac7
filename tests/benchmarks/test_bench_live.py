"""Live-target benchmarks (run with `pytest tests/benchmarks/test_bench_live.py
--benchmark-enable -s`; skipped by the normal test run).

- capacity: the highest offered re-INVITE rate (steps) at which the live proxy running
  `inline` keeps a clean ledger and e2e p99 < 50 ms, on trio and asyncio; with the CPU per
  re-INVITE at that rate. Driven by the harness's own UDP UAC/UAS (not SIPp: see the
  module report), each step a separate `deferbench serve` process.
- timer fidelity: lateness of `async-sleep:ms=10` at 200 re-INVITEs/s on trio, p99.

The figures go to `benchmark.extra_info` and stdout; the machine is shared, so they are
noisy: compare runs on the same machine only.
"""

from __future__ import annotations

import pytest

from core.runtime.server import ServerSettings
from harness.load import parse_load
from harness.targets.live import run_live

SETTINGS = ServerSettings(children=8, fr_timer=5.0)
RATES = (100, 200, 400, 600, 800, 1000)  # re-INVITEs per second
E2E_P99_BOUND_MS = 50.0


def _step(backend: str, reinvite_rate: int) -> dict:
    calls = reinvite_rate / 10
    load = parse_load(f"reinvite:rate={calls:g}/s,duration=3s,reinvites=10,gap=1ms")
    return run_live("inline", load, 1, SETTINGS, backend, idle_window=0.2)


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_bench_live_capacity_inline(benchmark, backend):
    found: dict = {}

    def sweep() -> None:
        for rate in RATES:
            entry = _step(backend, rate)
            ledger = entry["ledger"]
            p99 = entry["e2e_ms"]["p99"]
            ok = ledger["resumed"] == ledger["transactions"] and p99 is not None
            ok = ok and p99 < E2E_P99_BOUND_MS
            print(
                f"{backend} {rate}/s: clean={ledger['resumed']}/{ledger['transactions']} "
                f"e2e p99={p99} ms cpu={entry['cpu']['busy_share']:.0%} "
                f"per re-INVITE={entry['cpu']['per_txn_us']:.0f} µs"
            )
            if not ok:
                break
            found.update(rate=rate, per_txn_us=entry["cpu"]["per_txn_us"], e2e_p99_ms=p99)

    benchmark.pedantic(sweep, rounds=1, iterations=1)
    benchmark.extra_info.update(found)
    assert found, "the live proxy did not even carry the lowest step cleanly"


def test_bench_live_timer_fidelity_async_sleep(benchmark):
    holder: dict = {}

    def run() -> None:
        load = parse_load("reinvite:rate=20/s,duration=5s,reinvites=10,gap=1ms")
        holder["entry"] = run_live("async-sleep:ms=10", load, 1, SETTINGS, "trio", idle_window=0.2)

    benchmark.pedantic(run, rounds=1, iterations=1)
    entry = holder["entry"]
    lateness = entry["lateness_ms"]
    print(f"async-sleep:ms=10 at 200/s (trio): lateness {lateness}, early {entry['early_share']}")
    benchmark.extra_info.update(lateness_p99_ms=lateness["p99"], lateness_p50_ms=lateness["p50"])
    assert entry["ledger"]["resumed"] == entry["ledger"]["transactions"]
