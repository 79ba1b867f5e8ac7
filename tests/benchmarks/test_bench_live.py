"""Live-target benchmarks (run with `pytest tests/benchmarks/test_bench_live.py
--benchmark-only -s`; skipped by the normal test run, whose addopts hold --benchmark-skip).

- capacity: the highest offered re-INVITE rate (steps) at which the live proxy running
  `inline` keeps a clean ledger and e2e p99 < 50 ms, on trio and asyncio; with the CPU per
  re-INVITE at that rate. Driven by the harness's own UDP UAC/UAS (not SIPp: see the
  module report), each step a separate `deferbench serve` process.
- timer fidelity: lateness of `async-sleep:ms=10` at 200 re-INVITEs/s on trio, p99.
- SIPp capacity (`sipp_capacity`, on `harness.targets.kamailio.sipp`): SIPp UAC
  (10 re-INVITEs per call) ->
  `deferbench serve --strategy inline` -> SIPp UAS at increasing rates, trio and asyncio:
  the highest rate with SIPp's run clean (every call successful on both sides, every
  re-INVITE answered, every ACK arrived) and p99 re-INVITE response time < 50 ms, the proxy's
  CPU per re-INVITE there; then Kamailio 5.6 running the `inline` cfg at that same rate, in
  the same run, for the CPU ratio (the goals: >= 1,000/s, <= 3x Kamailio's CPU).

The figures go to `benchmark.extra_info` and stdout; the machine is shared, so they are
noisy: compare runs on the same machine only.
"""

from __future__ import annotations

import pytest
import sipp_capacity  # tests/benchmarks, on sys.path as the test's own directory

from core.runtime.server import ServerSettings
from harness.load.spec import parse_load
from harness.targets.kamailio.target import kamailio_binary
from harness.targets.live.target import LiveTarget

SETTINGS = ServerSettings(children=8, fr_timer=5.0)
RATES = (100, 200, 400, 600, 800, 1000)  # re-INVITEs per second
E2E_P99_BOUND_MS = 50.0


def _step(backend: str, reinvite_rate: int) -> dict:
    calls = reinvite_rate / 10
    load = parse_load(f"reinvite:rate={calls:g}/s,duration=3s,reinvites=10,gap=1ms")
    return LiveTarget(backend, idle_window=0.2).run("inline", load, 1, SETTINGS)


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
        holder["entry"] = LiveTarget(idle_window=0.2).run("async-sleep:ms=10", load, 1, SETTINGS)

    benchmark.pedantic(run, rounds=1, iterations=1)
    entry = holder["entry"]
    lateness = entry["lateness_ms"]
    print(f"async-sleep:ms=10 at 200/s (trio): lateness {lateness}, early {entry['early_share']}")
    benchmark.extra_info.update(lateness_p99_ms=lateness["p99"], lateness_p50_ms=lateness["p50"])
    assert entry["ledger"]["resumed"] == entry["ledger"]["transactions"]


SIPP_RATES = (400, 600, 800, 1000, 1200, 1500)  # re-INVITEs per second
SIPP_STEP_SECONDS = 4.0
GOAL_RATE = 1000  # re-INVITEs/s
GOAL_CPU_RATIO = 3.0  # live CPU per re-INVITE / Kamailio's


def test_bench_live_sipp_capacity_inline_vs_kamailio(benchmark):
    if sipp_capacity.SIPP is None:
        pytest.skip("sipp (Debian package sip-tester) is not installed")
    holder: dict = {}

    def run() -> None:
        for backend in ("trio", "asyncio"):
            holder[backend] = sipp_capacity.sweep(
                "live", list(SIPP_RATES), SIPP_STEP_SECONDS, backend
            )
        rates = {
            int(holder[b]["best"]["reinvite_rate"])
            for b in ("trio", "asyncio")
            if holder[b]["best"]
        }
        if kamailio_binary() is not None and rates:
            holder["kamailio"] = sipp_capacity.sweep(
                "kamailio", sorted(rates), SIPP_STEP_SECONDS, stop_on_fail=False
            )

    benchmark.pedantic(run, rounds=1, iterations=1)
    kamailio = {
        int(step["reinvite_rate"]): step for step in holder.get("kamailio", {}).get("steps", [])
    }
    for backend in ("trio", "asyncio"):
        best = holder[backend]["best"]
        assert best is not None, f"{backend}: not even {SIPP_RATES[0]}/s carried cleanly"
        rate = int(best["reinvite_rate"])
        info = {
            f"{backend}_rate": rate,
            f"{backend}_p99_ms": best["p99_ms"],
            f"{backend}_cpu_per_reinvite_us": round(best["cpu_per_reinvite_us"]),
        }
        kam = kamailio.get(rate)
        ratio = None
        if kam is not None and kam["cpu_per_reinvite_us"]:
            ratio = best["cpu_per_reinvite_us"] / kam["cpu_per_reinvite_us"]
            info[f"{backend}_kamailio_cpu_per_reinvite_us"] = round(kam["cpu_per_reinvite_us"])
            info[f"{backend}_cpu_ratio_vs_kamailio"] = round(ratio, 2)
        benchmark.extra_info.update(info)
        print(
            f"{backend}: {rate}/s clean "
            f"(goal {GOAL_RATE}: {'met' if rate >= GOAL_RATE else 'NOT met'}), "
            f"p99 {best['p99_ms']} ms, {best['cpu_per_reinvite_us']:.0f} µs CPU per re-INVITE"
            + (
                f", Kamailio {kam['cpu_per_reinvite_us']:.0f} µs at {rate}/s "
                f"(failed calls {kam['failed']}): ratio {ratio:.2f} "
                f"(goal <= {GOAL_CPU_RATIO:g}: {'met' if ratio <= GOAL_CPU_RATIO else 'NOT met'})"
                if ratio is not None
                else ", Kamailio not measured"
            )
        )
