"""SIPp-driven capacity of the live proxy (and of Kamailio 5.6, measured the same way).

SIPp UAC -> proxy -> SIPp UAS on 127.0.0.1 with `REINVITES` re-INVITEs per call; the
scenarios, the run and the parsing are `harness.targets.kamailio.sipp`'s (each re-INVITE
timed by the UAC
scenario's own log lines, in microseconds). Each step offers one call rate for `seconds`;
a step passes when SIPp's run is clean (every call played to the end on both sides, every
re-INVITE answered 200, every ACK arrived: the UAS tolerates an ACK overtaken by the next
request, as Kamailio's parallel workers deliver them) and the p99 re-INVITE response time
is below the bound. CPU per re-INVITE: the proxy's process CPU between two snapshots
around the load (serve: SIGUSR1 snapshots in its `--report`; Kamailio: /proc of every
process, the kamailio target's `KamailioProcess`), over the re-INVITEs of the calls that
succeeded.

SIPp is the load generator so the load is not the bottleneck: it is C, the Python UAC is
not. Every process is started here and stopped by PID with bounded waits.

Run: `python -m tests.benchmarks.sipp_capacity [--target live|kamailio] [--backend trio]
[--rates 200,400,...] [--seconds 4]` from the project root; the benchmark test calls
`sweep`.

What this module must not do: leave a process or a directory behind, or touch anything
but loopback.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anyio

from core.runtime.server import ServerSettings
from harness.targets.kamailio.sipp import SippFigures, SippPair, SippPlan, drive, sipp_binary
from harness.targets.kamailio.target import SIPP_SHM_MB, KamailioProcess, free_udp_port
from harness.targets.live.target import ServeProcess
from strategies import parse_spec

SIPP = sipp_binary()
REINVITES = 10
GAP_MS = 1
P99_BOUND_MS = 50.0
SETTINGS = ServerSettings(children=8, fr_timer=5.0)
DRAIN = 15.0  # seconds after the offered load for the last calls to end


# ---------------------------------------------------------------------------- one step


@dataclass
class Step:
    rate: float  # calls per second offered
    calls: int
    successful: int
    failed: int
    retransmissions: int
    p50_ms: float | None
    p99_ms: float | None
    cpu_s: float
    cpu_per_reinvite_us: float | None
    window_s: float
    first_error: str = ""  # SIPp's first error line, UAC side first
    clean: bool = False  # every call and re-INVITE answered, every ACK arrived (SIPp)
    acks_overtaken: int = 0  # requests the proxy delivered before the ACK sent ahead of them

    @property
    def reinvite_rate(self) -> float:
        return self.rate * REINVITES

    @property
    def ok(self) -> bool:
        return self.clean and self.p99_ms is not None and self.p99_ms < P99_BOUND_MS


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


async def _load(
    proxy: Any, address: tuple[str, int], rate: float, seconds: float, work: Path
) -> Step:
    """Snapshot, SIPp UAC for `seconds` at `rate` calls/s until done, snapshot; the step."""
    assert SIPP is not None, "sipp (Debian package sip-tester) is not installed"
    calls = max(1, round(rate * seconds))
    plan = SippPlan(rate, calls, REINVITES, GAP_MS, seconds + DRAIN)
    started: list[float] = []

    async def load_starts() -> None:
        await proxy.snapshot()
        started.append(time.monotonic())

    figures = await drive(
        SippPair(work / "sipp", address, plan), load_starts=load_starts,
        window_ends=proxy.snapshot,
    )  # fmt: skip
    return _step(figures, rate, time.monotonic() - started[0])


def _step(figures: SippFigures, rate: float, window: float) -> Step:
    times = sorted(round(t * 1e6) / 1e3 for t in figures.response_times)  # exact µs
    return Step(
        rate=rate,
        calls=figures.calls,
        successful=figures.successful,
        failed=figures.failed,
        retransmissions=figures.retransmissions,
        p50_ms=_percentile(times, 0.50),
        p99_ms=_percentile(times, 0.99),
        cpu_s=0.0,
        cpu_per_reinvite_us=None,
        window_s=window,
        first_error=figures.first_error,
        clean=figures.clean,
        acks_overtaken=figures.acks_overtaken,
    )


def live_step(backend: str, rate: float, seconds: float, strategy: str = "inline") -> Step:
    """One step through `deferbench serve --strategy inline --backend backend`."""
    with tempfile.TemporaryDirectory(prefix="deferbench-sipp-") as tmp:
        work = Path(tmp)
        serve = ServeProcess(
            strategy, backend=backend, settings=SETTINGS, workdir=work, extra=("--interval", "0s")
        )
        step = _step_through(serve, rate, seconds, work)
        marks = [s for s in serve.report()["snapshots"] if str(s["label"]).startswith("usr1-")]
    cpu = marks[1]["process_cpu"] - marks[0]["process_cpu"]
    return _with_cpu(step, cpu)


def kamailio_step(rate: float, seconds: float, strategy: str = "inline") -> Step:
    """One step through Kamailio 5.6 running `strategy`'s generated cfg (no trace lines)."""
    settings = replace(SETTINGS, address=("127.0.0.1", free_udp_port()))
    cfg = parse_spec(strategy).kamailio_config(settings, trace=False)
    with tempfile.TemporaryDirectory(prefix="deferbench-sipp-kam-") as tmp:
        work = Path(tmp)
        kamailio = KamailioProcess(cfg, _subdir(work), address=settings.address, shm_mb=SIPP_SHM_MB)
        step = _step_through(kamailio, rate, seconds, work)
        window = kamailio.window(0, 1)
    return _with_cpu(step, sum(window.busy.values()))


def _step_through(proxy: Any, rate: float, seconds: float, work: Path) -> Step:
    """Once `proxy` (started) answers, one SIPp step through it; `proxy` stopped after."""

    async def main() -> Step:
        address = await proxy.wait_ready()
        return await _load(proxy, address, rate, seconds, work)

    try:
        return anyio.run(main)
    finally:
        proxy.stop()


def _subdir(work: Path) -> Path:
    path = work / "kamailio"
    path.mkdir()
    return path


def _with_cpu(step: Step, cpu: float) -> Step:
    reinvites = step.successful * REINVITES
    per = cpu / reinvites * 1e6 if reinvites else None
    return replace(step, cpu_s=cpu, cpu_per_reinvite_us=per)


# ---------------------------------------------------------------------------- the sweep


def sweep(
    target: str,
    rates: list[float],
    seconds: float,
    backend: str = "trio",
    *,
    stop_on_fail: bool = True,
) -> dict[str, Any]:
    """Steps of increasing re-INVITE rate until one fails (or every rate, without
    `stop_on_fail`); the best passing step and every step run."""
    steps: list[dict[str, Any]] = []
    best: dict[str, Any] | None = None
    for reinvite_rate in rates:
        rate = reinvite_rate / REINVITES
        if target == "kamailio":
            step = kamailio_step(rate, seconds)
        else:
            step = live_step(backend, rate, seconds)
        row = {**asdict(step), "reinvite_rate": step.reinvite_rate, "ok": step.ok}
        steps.append(row)
        print(
            f"{target}{'/' + backend if target == 'live' else ''} "
            f"{step.reinvite_rate:g} re-INVITE/s: "
            f"calls {step.successful}/{step.calls} failed {step.failed} retrans "
            f"{step.retransmissions} p50 {step.p50_ms} ms p99 {step.p99_ms} ms cpu "
            f"{step.cpu_s:.2f}s/{step.window_s:.1f}s per re-INVITE "
            f"{step.cpu_per_reinvite_us and round(step.cpu_per_reinvite_us)} µs "
            f"(requests before their ACK: {step.acks_overtaken}) "
            f"{'ok' if step.ok else 'FAIL'}",
            flush=True,
        )
        if step.first_error:
            print(f"  first SIPp error: {step.first_error}", flush=True)
        if not step.ok:
            if stop_on_fail:
                break
            continue
        best = row
    return {"target": target, "backend": backend, "best": best, "steps": steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", choices=["live", "kamailio"], default="live")
    parser.add_argument("--backend", choices=["trio", "asyncio"], default="trio")
    parser.add_argument("--rates", default="200,400,600,800,1000,1200,1500")
    parser.add_argument("--seconds", type=float, default=4.0)
    parser.add_argument("--json", type=Path)
    parser.add_argument("--all", action="store_true", help="run every rate, failed or not")
    args = parser.parse_args()
    rates = [float(r) for r in re.split(r"[ ,]+", args.rates.strip())]
    out = sweep(args.target, rates, args.seconds, args.backend, stop_on_fail=not args.all)
    if args.json:
        args.json.write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
