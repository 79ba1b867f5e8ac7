"""The live target: one seeded load through the live proxy, over UDP on 127.0.0.1.

The proxy is `deferbench serve` in a subprocess (so its CPU is its own: the harness's UAC
and UAS do not count against it), on the requested anyio backend, listening on a free port
it reports on its first log line. The harness runs the same sans-IO `Uac` and `Uas` as the
sim target, each on its own UDP socket (free ports), driven by a real-clock `Kernel`.

Sequence: start serve, wait until it listens (bounded); SIGUSR1 (idle window opens); wait
`idle_window` seconds with no traffic; SIGUSR1 (load window opens) and start the calls at
their seeded schedule (intended times = load start + plan.start); at `duration` SIGUSR1
(load window closes); wait until every call has ended or duration + fr_timer + grace;
SIGTERM; serve writes its report (snapshots, deferral records, counters) and exits. The
serve process is stopped by PID in every case (bounded waits, SIGKILL as the last resort)
and the harness's sockets closed, also when the run is interrupted.

Figures (computed by `harness.measure.entry`, as for every target):
- delay: resume − suspend of each deferral, on the proxy's clock;
- e2e: intended send time of each re-INVITE -> its first final response, on the UAC's clock
  (coordinated omission avoided: a late UAC does not hide the wait);
- CPU over the load window: the proxy's process CPU / window (a share of ONE core: the live
  proxy is one Python thread; `--cores` has no effect on it), and per role the thread CPU
  of its process steps; CPU outside any step is role `unattributed`. `idle_share` from the
  idle window before the load. per_txn_us: process CPU per re-INVITE sent in the window;
- queue depth: datagrams in the OS receive buffer and the proxy's UDP queue plus the
  strategy's backlog as each arriving datagram finds it (no sampling timer, which would
  cost the idle proxy CPU);
- load shed by serve's admission control: its `shed: 503 ...` counters (by cause), the
  calls whose INVITE the UAC saw refused 503 (`harness: uac: calls refused 503`) and the
  re-INVITEs answered 503 (the ledger's `error_5xx`).
`sim_txn_per_wall_s` is null (not a simulation).

What this module must not do: compute a percentile, an outcome or a CPU share itself, or
leave a process or a socket behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import anyio

from core.events import Address, Send
from core.runtime.kernel import Kernel
from core.runtime.server import ServerSettings
from core.sip import SipParseError, parse_message
from harness import PROJECT_ROOT
from harness.load.endpoints import Uac, Uas
from harness.load.network import Endpoint, EndpointHost
from harness.load.spec import CallPlan, LoadSpec, call_plans
from harness.measure.entry import CpuWindow, DeferralRecord, strategy_entry
from harness.measure.ledger import Ledger
from harness.targets.base import TargetError, TargetOptions, check_driver_rate, refuse
from harness.targets.children import run_stoppable, spawn, terminate
from harness.targets.live.udp import UdpSocket
from strategies import parse_spec
from strategies.base import Strategy

TARGET = "live"
READY_TIMEOUT = 30.0  # seconds for serve to start listening (imports on a loaded machine)
STOP_TIMEOUT = 10.0  # seconds for serve to exit after SIGTERM before SIGKILL
IDLE_WINDOW = 1.0  # seconds of no traffic before the load: the idle CPU figure
DRAIN_GRACE = 5.0  # seconds after duration + fr_timer before the run is cut off
_POLL = 0.02
_READY = re.compile(r"listening on (\S+):(\d+)")


class LiveTargetError(TargetError):
    """The live proxy could not be started or did not report (one line, names the cause)."""


# ---------------------------------------------------------------------------- the proxy


class ServeProcess:
    """`deferbench serve` as a child process: started, signalled and stopped by PID."""

    def __init__(
        self,
        strategy: str,
        *,
        backend: str = "trio",
        settings: ServerSettings | None = None,
        workdir: Path,
        extra: tuple[str, ...] = (),
    ) -> None:
        settings = settings or ServerSettings()
        self.report_path = workdir / "serve-report.json"
        self.log_path = workdir / "serve.log"
        command = [
            sys.executable, "-m", "harness.cli", "serve",
            "--strategy", strategy,
            "--listen", "127.0.0.1:0",
            "--backend", backend,
            "--report", str(self.report_path),
            "--children", str(settings.children),
            "--fr-timer", f"{settings.fr_timer * 1000:g}ms",
            *extra,
        ]  # fmt: skip
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            p for p in (str(PROJECT_ROOT), env.get("PYTHONPATH", "")) if p
        )
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        self.process = spawn(
            command,
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(PROJECT_ROOT),
        )
        self.pid = self.process.pid
        self.address: Address | None = None
        self._snapshots = 0

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> Address:
        """The address serve listens on, once its first log line says so."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            match = _READY.search(self.log_text())
            if match:
                self.address = (match.group(1), int(match.group(2)))
                return self.address
            if self.process.poll() is not None:
                raise LiveTargetError(
                    f"deferbench serve exited with status {self.process.returncode}: "
                    f"{self.log_text().strip().splitlines()[-1:] or 'no output'}"
                )
            await anyio.sleep(_POLL)
        raise LiveTargetError(f"deferbench serve did not listen within {timeout:g}s")

    async def snapshot(self, timeout: float = 10.0) -> None:
        """Ask serve for a CPU snapshot (SIGUSR1) and wait until it logs it: two signals
        of one kind sent close together may merge, so they are never left in flight."""
        if self.process.poll() is not None:
            raise LiveTargetError(f"deferbench serve exited ({self.process.returncode})")
        self._snapshots += 1
        os.kill(self.pid, signal.SIGUSR1)
        deadline = time.monotonic() + timeout
        while self.log_text().count("deferbench serve: snapshot usr1-") < self._snapshots:
            if time.monotonic() > deadline or self.process.poll() is not None:
                raise LiveTargetError("deferbench serve did not take its CPU snapshot")
            await anyio.sleep(0.002)

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM, bounded wait, SIGKILL if need be; the exit status (None: it outlived all)."""
        try:
            terminate(self.process, timeout)
        finally:
            self._log.close()
        return self.process.returncode

    def report(self) -> dict[str, Any]:
        import json

        try:
            return json.loads(self.report_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            tail = self.log_text().strip().splitlines()[-3:]
            raise LiveTargetError(f"deferbench serve left no report ({exc}); log: {tail}") from None


# ---------------------------------------------------------------------------- endpoints


class UdpHost(EndpointHost):
    """A sans-IO endpoint on a UDP socket and a real-clock kernel (the live `SimHost`)."""

    __slots__ = ("socket", "counters")

    def __init__(self, kernel: Kernel, socket: UdpSocket, endpoint: Endpoint) -> None:
        super().__init__(kernel, endpoint)
        self.socket = socket
        self.counters: Counter[str] = Counter()

    def datagram(self, data: bytes, source: Address) -> None:
        """Socket task: hand the datagram to the kernel (which owns the endpoint)."""
        self.kernel.submit(self._receive, data, source)

    def _receive(self, data: bytes, source: Address) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            self.counters["unparseable datagrams"] += 1
            return
        self.emit(self.endpoint.receive(message, source, self.kernel.now))

    def _send_all(self, sends: list[Send]) -> None:
        for out in sends:
            self.socket.send(bytes(out.message), out.destination)


# ---------------------------------------------------------------------------- the run


@dataclass
class LiveRun:
    """One live run: the result entry plus what produced it (for tests)."""

    result: dict[str, Any]
    ledger: Ledger
    uac: Uac
    uas: Uas
    report: dict[str, Any]
    calls_planned: int
    load_start: float = 0.0
    log: str = ""
    counters: dict[str, int] = field(default_factory=dict)
    serve_pid: int = 0


@dataclass(frozen=True, slots=True)
class LiveTarget:
    """The live proxy as a `harness.targets.Target`, on one anyio backend."""

    backend: str = "trio"
    idle_window: float = IDLE_WINDOW
    name: ClassVar[str] = "live"
    real_clock: ClassVar[bool] = True

    def run_key(self, strategy: Strategy) -> None:
        """Never shared: each run measures the real thing."""
        return None

    @classmethod
    def from_options(cls, options: TargetOptions) -> LiveTarget:
        refuse("live", options, "backend")
        return cls(options.backend or "trio")

    def check(self, load: LoadSpec, seed: int) -> None:
        """The Python endpoints play any load they can offer in time."""
        check_driver_rate("live", "python", load)

    def run(
        self, strategy: str, load: LoadSpec, seed: int, settings: ServerSettings | None = None
    ) -> dict[str, Any]:
        """Drive `load` through the live proxy running `strategy`; a result-schema entry."""
        return live_run(strategy, load, seed, settings, self.backend,
                        idle_window=self.idle_window).result  # fmt: skip

    def facts(self) -> dict[str, Any]:
        return {"backend": self.backend, "network": None, "costs": None, "driver": "python"}


def live_run(
    strategy_spec: str,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings | None = None,
    backend: str = "trio",
    *,
    idle_window: float = IDLE_WINDOW,
    serve_args: tuple[str, ...] = (),
) -> LiveRun:
    """`LiveTarget.run`, keeping the ledger, endpoints and serve's report for inspection."""
    strategy = parse_spec(strategy_spec)  # SpecError (one line) before anything starts
    settings = settings or ServerSettings()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deferbench-live-") as tmp:
        serve = ServeProcess(
            strategy.spec, backend=backend, settings=settings, workdir=Path(tmp), extra=serve_args
        )
        holder: list[LiveRun] = []
        try:
            run_stoppable(drive, serve, strategy, load, seed, settings, idle_window, holder,
                      backend=backend)  # fmt: skip
        finally:
            serve.stop()
        run = holder[0]
        run.serve_pid = serve.pid
        run.report = serve.report()
        run.log = serve.log_text()
    wall = time.perf_counter() - started
    run.result = _result(run, strategy, load, seed, wall)
    return run


async def drive(
    serve: ServeProcess,
    strategy: Any,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    idle_window: float,
    holder: list[LiveRun],
) -> None:
    """Drive `load` from the harness's UAC/UAS through a started server (`serve`: this
    target's `ServeProcess` or the kamailio target's `KamailioProcess`, anything with
    `wait_ready()` and `snapshot()`): idle window, load, drain; the run into `holder`."""
    proxy = await serve.wait_ready()
    plans = call_plans(load, seed) if load.rate > 0 else iter(())
    kernel = Kernel(live=True)
    with contextlib.ExitStack() as sockets:
        uac_socket = UdpSocket()
        sockets.callback(uac_socket.close)
        uas_socket = UdpSocket()
        sockets.callback(uas_socket.close)
        ledger = Ledger(race_code=load.race_code)
        uac = Uac(
            uac_socket.address,
            uas_socket.address,
            reinvites=load.reinvites,
            gap=load.gap,
            outbound_proxy=proxy,
            observer=ledger,
        )
        uas = Uas(uas_socket.address, race_code=load.race_code, observer=ledger)
        uac_host = UdpHost(kernel, uac_socket, uac)
        uas_host = UdpHost(kernel, uas_socket, uas)
        run = LiveRun({}, ledger, uac, uas, {}, 0)
        holder.append(run)
        drawn = [False]  # every call of the schedule has been drawn

        def start_call(plan: CallPlan, origin: float) -> None:
            uac_host.emit(uac.start_call(plan.index, kernel.now, origin + plan.start))
            run.calls_planned += 1
            following = next(plans, None)
            if following is None:
                drawn[0] = True
            else:
                kernel.call_at(origin + following.start, start_call, following, origin)

        def begin() -> None:
            run.load_start = kernel.now
            first = next(plans, None)
            if first is None:
                drawn[0] = True
            else:
                kernel.call_at(run.load_start + first.start, start_call, first, run.load_start)

        async with anyio.create_task_group() as tasks:
            tasks.start_soon(kernel.run)
            tasks.start_soon(uac_socket.receive_loop, uac_host.datagram)
            tasks.start_soon(uas_socket.receive_loop, uas_host.datagram)
            await serve.snapshot()  # idle window opens
            await anyio.sleep(idle_window)
            await serve.snapshot()  # load window opens
            kernel.submit(begin)
            await anyio.sleep(load.duration)
            await serve.snapshot()  # load window closes
            hard_end = anyio.current_time() + settings.fr_timer + DRAIN_GRACE
            while anyio.current_time() < hard_end and not (uac.active == 0 and drawn[0]):
                await anyio.sleep(_POLL * 5)
            tasks.cancel_scope.cancel()
        run.calls_planned += sum(1 for _ in plans)  # calls the run ended before starting
        run.counters = {
            **{f"uac socket: {k}": v for k, v in uac_socket.counters.items()},
            **{f"uas socket: {k}": v for k, v in uas_socket.counters.items()},
            **{f"uac host: {k}": v for k, v in uac_host.counters.items()},
            **{f"uas host: {k}": v for k, v in uas_host.counters.items()},
            "uac: calls refused 503": uac.invite_statuses[503],
        }


# ---------------------------------------------------------------------------- the result


def _windows(report: dict[str, Any]) -> tuple[CpuWindow, CpuWindow, dict[str, Any]]:
    """The idle and load windows between serve's three SIGUSR1 snapshots."""
    marks = [s for s in report["snapshots"] if str(s["label"]).startswith("usr1-")]
    if len(marks) < 3:
        raise LiveTargetError(f"deferbench serve took {len(marks)} of 3 snapshots (signals lost)")
    idle_start, load_start, load_end = marks[:3]
    return _window(idle_start, load_start), _window(load_start, load_end), load_end


def _window(first: dict[str, Any], last: dict[str, Any]) -> CpuWindow:
    seconds = max(last["t"] - first["t"], 1e-9)
    busy: dict[str, float] = {}
    for role, value in last["cpu_by_role"].items():
        busy[role] = max(0.0, value - first["cpu_by_role"].get(role, 0.0))
    wakeups = {
        role: value - first["wakeups_by_role"].get(role, 0)
        for role, value in last["wakeups_by_role"].items()
    }
    process_cpu = last["process_cpu"] - first["process_cpu"]
    busy["unattributed"] = max(0.0, process_cpu - sum(busy.values()))
    host = None
    if first.get("host_ticks") and last.get("host_ticks"):
        (stolen_a, all_a), (stolen_b, all_b) = first["host_ticks"], last["host_ticks"]
        host = (stolen_b - stolen_a, all_b - all_a)
    return CpuWindow(seconds, 1, busy, wakeups, host)


def _result(run: LiveRun, strategy: Any, load: LoadSpec, seed: int, wall: float) -> dict[str, Any]:
    report = run.report
    idle, window, load_end = _windows(report)
    entry = strategy_entry(
        strategy=strategy,
        target=TARGET,
        load=load,
        seed=seed,
        records=[DeferralRecord.from_json(r) for r in report["deferrals"]],
        ledger=run.ledger,
        uac=run.uac,
        uas=run.uas,
        window=window,
        idle=idle,
        counters=report["counters"],
        sources=(
            ("proxy", report["proxy"]),
            ("uac", run.uac.counters),
            ("uas", run.uas.counters),
            ("harness", run.counters),
        ),
        calls_planned=run.calls_planned,
        samples=[],
        wall=wall,
        speed_wall=None,
        load_start=run.load_start,
    )
    entry["queue_depth"] = {
        "max": load_end.get("queue_depth_max"),
        "mean": load_end.get("queue_depth_mean"),
    }
    return entry
