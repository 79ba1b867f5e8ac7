"""SIPp-driven capacity of the live proxy (and of Kamailio 5.6, measured the same way).

SIPp UAC -> proxy -> SIPp UAS on 127.0.0.1, scenarios derived from `harness/sipp/` with
`REINVITES` re-INVITEs per call (each re-INVITE's 200 timed by SIPp: `start_rtd`/`rtd`,
every sample dumped with `-trace_rtt`). Each step offers one call rate for `seconds`; a step
passes with every call successful, none failed, and the p99 re-INVITE response time below
the bound. CPU per re-INVITE: the proxy's process CPU between two snapshots around the
load (serve: SIGUSR1 snapshots in its `--report`; Kamailio: /proc of every process, the
kamailio target's `KamailioProcess`), over the re-INVITEs of the calls that succeeded.

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
import csv
import json
import math
import re
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import anyio

import harness
from core.runtime.server import ServerSettings
from harness.targets.kamailio import KamailioProcess, free_udp_port
from harness.targets.live import ServeProcess
from strategies import parse_spec

SIPP = shutil.which("sipp")
SCENARIOS = Path(harness.__file__).parent / "sipp"
REINVITES = 10
P99_BOUND_MS = 50.0
SETTINGS = ServerSettings(children=8, fr_timer=5.0)
DRAIN = 15.0  # seconds after the offered load for the last calls to end
_ABORT = re.compile(
    r"Aborting call on [^:]*: while expecting '[^']*' \(index \d+\), received '[^\r\n]*"
)


# ---------------------------------------------------------------------------- scenarios


def _reinvite_block(uac: str) -> tuple[str, str, str]:
    """(head: INVITE..ACK, one re-INVITE block with CSeq 2, tail: the BYE) of the UAC."""
    parts = uac.split('<pause milliseconds="1"/>')
    return parts[0], parts[1], parts[-1]


def uac_scenario(reinvites: int = REINVITES) -> str:
    """The shipped UAC scenario with `reinvites` re-INVITEs, each timed as rtd 2."""
    head, block, tail = _reinvite_block((SCENARIOS / "reinvite_uac.xml").read_text())
    block = block.replace('<send retrans="500">', '<send retrans="500" start_rtd="2">', 1)
    block = block.replace(
        '<recv response="200"/>', '<recv response="200" rtd="2" repeat_rtd="true"/>', 1
    )
    body = [head]
    for k in range(reinvites):
        cseq = k + 2
        body.append(
            '<pause milliseconds="1"/>'
            + block.replace("CSeq: 2 INVITE", f"CSeq: {cseq} INVITE").replace(
                "CSeq: 2 ACK", f"CSeq: {cseq} ACK"
            )
        )
    body.append(
        '<pause milliseconds="1"/>' + tail.replace("CSeq: 5 BYE", f"CSeq: {reinvites + 2} BYE")
    )
    return "".join(body)


def uas_scenario(reinvites: int = REINVITES) -> str:
    """The shipped UAS scenario answering `reinvites` re-INVITEs."""
    text = (SCENARIOS / "reinvite_uas.xml").read_text()
    first_ack = '<recv request="ACK" crlf="true"/>'
    head, rest = text.split(first_ack, 1)
    block_end = rest.index('<recv request="ACK"/>') + len('<recv request="ACK"/>')
    block = rest[:block_end]
    tail = rest[rest.index('<recv request="BYE"/>') :]
    return head + first_ack + block * reinvites + "\n  " + tail


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
    first_error: str = ""  # SIPp's first "Aborting call ..." line, UAS or UAC side

    @property
    def reinvite_rate(self) -> float:
        return self.rate * REINVITES

    @property
    def ok(self) -> bool:
        return (
            self.failed == 0
            and self.successful == self.calls
            and self.p99_ms is not None
            and self.p99_ms < P99_BOUND_MS
        )


def _stop(process: subprocess.Popen, timeout: float = 5.0) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout)


def _percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    rank = max(0, math.ceil(q * len(sorted_values)) - 1)
    return sorted_values[rank]


async def _load(
    proxy: Any, address: tuple[str, int], rate: float, seconds: float, work: Path
) -> Step:
    """Snapshot, SIPp UAC for `seconds` at `rate` calls/s, snapshot; the step's figures."""
    assert SIPP is not None, "sipp (Debian package sip-tester) is not installed"
    (work / "uac.xml").write_text(uac_scenario())
    (work / "uas.xml").write_text(uas_scenario())
    uas_port = free_udp_port()
    uas = subprocess.Popen(
        [SIPP, "-sf", "uas.xml", "-i", "127.0.0.1", "-p", str(uas_port), "-nostdin",
         "-trace_err"],
        cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    calls = max(1, round(rate * seconds))
    command = [
        SIPP, "-sf", "uac.xml", "-i", "127.0.0.1", "-p", str(free_udp_port()),
        "-rsa", f"{address[0]}:{address[1]}", f"127.0.0.1:{uas_port}",
        "-m", str(calls), "-r", f"{rate:g}", "-nostdin",
        "-trace_stat", "-stf", "stats.csv", "-trace_rtt", "-rtt_freq", "1",
        "-timeout", f"{seconds + DRAIN:g}s", "-timeout_error", "-trace_err",
    ]  # fmt: skip
    try:
        await anyio.sleep(0.2)  # the UAS listens
        await proxy.snapshot()
        t0 = time.monotonic()
        uac = subprocess.Popen(
            command, cwd=work, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        try:
            while uac.poll() is None and time.monotonic() < t0 + seconds + DRAIN + 5:
                await anyio.sleep(0.05)
        finally:
            _stop(uac)
        window = time.monotonic() - t0
        await proxy.snapshot()
    finally:
        _stop(uas)
    rows = list(csv.DictReader((work / "stats.csv").open(), delimiter=";"))
    last = rows[-1] if rows else {}
    rtts: list[float] = []
    for path in work.glob("uac_*_rtt.csv"):
        for row in csv.DictReader(path.open(), delimiter=";"):
            if row.get("rtd_no", "").strip() == "2":  # the re-INVITEs' 200s
                rtts.append(float(row["response_time_ms"]))
    rtts.sort()
    first_error = ""
    for path in sorted(work.glob("ua[cs]_*_errors.log"), reverse=True):  # the UAS first
        match = _ABORT.search(path.read_text(errors="replace"))
        if match:
            first_error = f"{path.name[:3]}: {match.group(0)}"
            break
    successful = int(last.get("SuccessfulCall(C)", 0))
    return Step(
        rate=rate,
        calls=calls,
        successful=successful,
        failed=int(last.get("FailedCall(C)", 0)),
        retransmissions=int(last.get("Retransmissions(C)", 0)),
        p50_ms=_percentile(rtts, 0.50),
        p99_ms=_percentile(rtts, 0.99),
        cpu_s=0.0,
        cpu_per_reinvite_us=None,
        window_s=window,
        first_error=first_error,
    )


def live_step(backend: str, rate: float, seconds: float, strategy: str = "inline") -> Step:
    """One step through `deferbench serve --strategy inline --backend backend`."""
    with tempfile.TemporaryDirectory(prefix="deferbench-sipp-") as tmp:
        work = Path(tmp)
        serve = ServeProcess(
            strategy, backend=backend, settings=SETTINGS, workdir=work, extra=("--interval", "0s")
        )
        try:

            async def main() -> Step:
                address = await serve.wait_ready()
                return await _load(serve, address, rate, seconds, work)

            step = anyio.run(main)
        finally:
            serve.stop()
        marks = [s for s in serve.report()["snapshots"] if str(s["label"]).startswith("usr1-")]
    cpu = marks[1]["process_cpu"] - marks[0]["process_cpu"]
    return _with_cpu(step, cpu)


def kamailio_step(rate: float, seconds: float, strategy: str = "inline") -> Step:
    """One step through Kamailio 5.6 running `strategy`'s generated cfg (no trace lines)."""
    settings = replace(SETTINGS, address=("127.0.0.1", free_udp_port()))
    cfg = parse_spec(strategy).kamailio_config(settings, trace=False)
    with tempfile.TemporaryDirectory(prefix="deferbench-sipp-kam-") as tmp:
        work = Path(tmp)
        kamailio = KamailioProcess(cfg, _subdir(work), address=settings.address)
        try:

            async def main() -> Step:
                address = await kamailio.wait_ready()
                return await _load(kamailio, address, rate, seconds, work)

            step = anyio.run(main)
        finally:
            kamailio.stop()
        window = kamailio.window(0, 1)
    return _with_cpu(step, sum(window.busy.values()))


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
