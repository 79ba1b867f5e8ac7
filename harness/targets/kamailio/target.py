"""The kamailio target: real Kamailio 5.6 running the strategy's generated kamailio.cfg.

The harness writes `strategy.kamailio_config(settings, trace=True)` (listening on a free
127.0.0.1 UDP port, `children` and `fr_timer` from the settings) into a fresh temporary
directory, starts Kamailio in the foreground on it and waits until it answers
(`harness.targets.kamailio.process`: the command line, readiness, the process roles from
`core.psx`, CPU and wake-ups from /proc, stopping by PID), drives the load, stops
Kamailio, and reads the delays, the resuming roles and the timer phases back from its log
(`harness.targets.kamailio.trace`). Every name of those two modules that callers used from
here is re-exported.

- **e2e and the ledger** come from the load driver, and `harness.measure.entry` turns
  everything into the result entry. Two drivers (`driver=`), the same Kamailio start and
  stop, idle window, three CPU snapshots (idle start, load start, load end) and trace:
  - `python` (on request): the harness's own UAC and UAS, exactly as for the live target
    (the driving loop is the live target's public `drive`, with `KamailioProcess` in the
    place of the serve process). Any arrival; the strict UAS answers a re-INVITE that
    overtook the previous ACK with 491. Tops out near 1,000 re-INVITEs/s on two cores and
    competes with Kamailio for them: Kamailio's own delay p99 at 1,000/s was 514 ms with
    it, ~15 ms with SIPp.
  - `sipp` (`KamailioTarget`'s default; `kamailio_run` takes `driver=` explicitly): one
    SIPp UAC and one SIPp UAS (`harness.targets.kamailio.sipp`), for 2,000+
    re-INVITEs/s. The load maps to `-r rate` calls/s, `-m` = the calls of the constant
    schedule within `duration`, `reinvites` re-INVITE blocks, `gap` = the pause after each
    ACK (whole ms). Only `arrival=constant`: anything SIPp cannot honour is a one-line error
    before Kamailio starts. Kamailio gets `-m 1024` MB of shared memory with this driver (at
    2,000/s the default 64 MB runs out: tm keeps each answered INVITE transaction for its
    5 s wait timer). The ledger has one transaction per re-INVITE the UAC sent (Call-ID,
    CSeq): resumed when its 200 came back; for a call SIPp aborted, the unanswered
    re-INVITE's outcome follows SIPp's error log for that call (the final status it aborted
    on: 408 -> timeout_408, 491 -> race_491, 5xx -> error_5xx, else other; a UDP
    retransmission timeout -> timeout_408, as the harness UAC counts Timer B); no final
    status for it in the log (a 1xx or a request was the unexpected message, or the run
    ended with it unanswered) -> lost. Kamailio's resume lines are reported as for the
    python driver (two or more: duplicated). `reordered` is never reported: SIPp does not
    tell the ledger what reached its UAS. The SIPp UAS does NOT play the strict-491 glare of
    the Python `Uas`: it is reorder-tolerant (Kamailio relays an ACK and the re-INVITE sent
    1 ms after it in different workers) and answers every re-INVITE 200; requests that
    overtook an ACK and ACKs that never came are counted (`sipp uas: ...`). e2e is SIPp's
    response time of each re-INVITE: its send to its final response, gettimeofday
    microseconds logged by the scenario (SIPp's own rtd figures count whole milliseconds),
    from the actual send, not an intended one. The entry's counters say which driver ran
    (`driver: python|sipp` = 1).

Kamailio is stopped (`KamailioProcess.stop`) whatever happens to the run, also when it is
interrupted; the temporary directory goes with it.

What this module must not do: talk to anything but 127.0.0.1; compute a percentile, an
outcome or a CPU share itself; leave a Kamailio process, socket or directory behind (every
process is stopped by PID, with bounded waits). It imports `process` and `trace`; they
never import it.
"""

from __future__ import annotations

import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import anyio

from core.runtime.server import ServerSettings
from harness.load.spec import LoadSpec
from harness.measure.entry import UacFigures, strategy_entry
from harness.measure.ledger import Ledger
from harness.targets.base import TargetOptions, check_driver_rate, refuse
from harness.targets.children import run_stoppable
from harness.targets.kamailio import sipp
from harness.targets.kamailio.process import (
    READY_TIMEOUT,
    STOP_TIMEOUT,
    KamailioProcess,
    KamailioTargetError,
    ProcSample,
    Snapshot,
    children_of,
    free_udp_port,
    kamailio_binary,
    kamcmd_binary,
    parse_psx,
    role_of,
    sample_process,
)
from harness.targets.kamailio.process import _start_time as _start_time
from harness.targets.kamailio.trace import Trace, parse_timer_passes, parse_trace
from harness.targets.live.target import DRAIN_GRACE, LiveRun, drive
from strategies import parse_spec
from strategies.base import Strategy

__all__ = [
    "DRIVERS",
    "IDLE_WINDOW",
    "READY_TIMEOUT",
    "SIPP_SHM_MB",
    "STOP_TIMEOUT",
    "TARGET",
    "KamailioProcess",
    "KamailioRun",
    "KamailioTarget",
    "KamailioTargetError",
    "ProcSample",
    "Snapshot",
    "Trace",
    "children_of",
    "free_udp_port",
    "kamailio_binary",
    "kamailio_run",
    "kamcmd_binary",
    "parse_psx",
    "parse_timer_passes",
    "parse_trace",
    "role_of",
    "sample_process",
]

TARGET = "kamailio"
IDLE_WINDOW = 1.0  # seconds of no traffic before the load: the idle CPU figure
DRIVERS = ("python", "sipp")  # who plays the UAC and UAS of the load
SIPP_SHM_MB = 1024  # Kamailio's shared memory with the sipp driver (default 64 MB)


@dataclass
class KamailioRun:
    """One run: the result entry plus what produced it (for tests)."""

    result: dict[str, Any]
    ledger: Ledger
    trace: Trace
    log: str
    cfg: str
    cfg_path: str  # where it was written (its directory is gone after the run)
    main_pid: int
    pids: dict[int, str] = field(default_factory=dict)  # PID -> core.psx description
    calls_planned: int = 0
    driver: str = "python"
    sipp: sipp.SippFigures | None = None  # what SIPp measured (sipp driver)


@dataclass(frozen=True, slots=True)
class KamailioTarget:
    """Real Kamailio as a `harness.targets.Target`, with the load played by `driver`:
    "sipp" (the default: SIPp as UAC and UAS, arrival=constant and whole-ms gaps only) or
    "python" (the harness's UAC/UAS, on request; it tops out near 1,000 re-INVITEs/s and
    shares the cores with Kamailio; see the module docstring)."""

    driver: str = "sipp"
    idle_window: float = IDLE_WINDOW
    name: ClassVar[str] = "kamailio"
    real_clock: ClassVar[bool] = True

    def run_key(self, strategy: Strategy) -> None:
        """Never shared: each run measures the real thing."""
        return None

    @classmethod
    def from_options(cls, options: TargetOptions) -> KamailioTarget:
        refuse("kamailio", options, "driver")
        driver = options.driver or "sipp"
        if driver not in DRIVERS:
            raise KamailioTargetError(f"driver {driver!r}: use one of {', '.join(DRIVERS)}")
        return cls(driver)

    def check(self, load: LoadSpec, seed: int) -> None:
        """The driver able to offer `load`; SIPp installed and able to play it."""
        check_driver_rate("kamailio", self.driver, load)
        if self.driver != "sipp":
            return
        if sipp.sipp_binary() is None:
            raise KamailioTargetError(
                "--driver sipp: sipp not found: install the Debian package sip-tester "
                "(or set DEFERBENCH_SIPP)"
            )
        try:
            sipp.plan_for(load, seed, drain=0.0)
        except sipp.SippError as exc:
            raise KamailioTargetError(f"--driver sipp: {exc}") from None

    def run(
        self, strategy: str, load: LoadSpec, seed: int, settings: ServerSettings | None = None
    ) -> dict[str, Any]:
        """Drive `load` through Kamailio running `strategy`'s cfg; a result-schema entry."""
        return kamailio_run(strategy, load, seed, settings, idle_window=self.idle_window,
                            driver=self.driver).result  # fmt: skip

    def facts(self) -> dict[str, Any]:
        return {"backend": None, "network": None, "costs": None, "driver": self.driver}


def kamailio_run(
    strategy_spec: str,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings | None = None,
    *,
    idle_window: float = IDLE_WINDOW,
    driver: str = "python",
) -> KamailioRun:
    """`KamailioTarget.run`, keeping the ledger, the trace, the log and the PIDs for inspection."""
    strategy = parse_spec(strategy_spec)  # SpecError (one line) before anything starts
    settings = replace(settings or ServerSettings(), address=("127.0.0.1", free_udp_port()))
    plan = _sipp_plan(load, seed, settings) if driver == "sipp" else None  # before Kamailio
    if driver not in DRIVERS:
        raise KamailioTargetError(f"driver {driver!r}: use one of {', '.join(DRIVERS)}")
    cfg = strategy.kamailio_config(settings, trace=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deferbench-kamailio-") as tmp:
        shm = SIPP_SHM_MB if plan is not None else None
        kamailio = KamailioProcess(cfg, Path(tmp), address=settings.address, shm_mb=shm)
        holder: list[LiveRun] = []
        try:
            if plan is None:
                run_stoppable(drive, kamailio, strategy, load, seed, settings, idle_window, holder)
                driven: LiveRun | _SippDriven = holder[0]
            else:
                driven = run_stoppable(
                    _drive_sipp, kamailio, plan, load.duration, idle_window, Path(tmp) / "sipp"
                )
        finally:
            kamailio.stop()
        log = kamailio.log_text()
    wall = time.perf_counter() - started
    roles = {pid: role_of(description) for pid, description in kamailio.table.items()}
    trace = parse_trace(log, roles)
    if isinstance(driven, LiveRun):
        ledger, calls, figures = driven.ledger, driven.calls_planned, None
    else:
        figures = driven.figures
        ledger, calls = sipp.ledger_of(figures, load.race_code), figures.calls
    run = KamailioRun(
        {},
        ledger,
        trace,
        log,
        cfg,
        str(kamailio.cfg_path),
        kamailio.pid,
        dict(kamailio.table),
        calls,
        driver,
        figures,
    )
    run.result = _result(run, driven, kamailio, strategy, load, seed, wall)
    return run


def _sipp_plan(load: LoadSpec, seed: int, settings: ServerSettings) -> sipp.SippPlan:
    """The SIPp plan of `load`, or a one-line error naming what SIPp cannot do."""
    if sipp.sipp_binary() is None:
        raise KamailioTargetError(
            "sipp not found: install the Debian package sip-tester (or set DEFERBENCH_SIPP)"
        )
    try:
        return sipp.plan_for(load, seed, drain=settings.fr_timer + DRAIN_GRACE)
    except sipp.SippError as exc:
        raise KamailioTargetError(f"driver sipp: {exc}") from None


@dataclass(frozen=True, slots=True)
class _SippDriven:
    figures: sipp.SippFigures
    load_start: float  # wall clock the UAC started (the clock of its send times)


async def _drive_sipp(
    kamailio: KamailioProcess,
    plan: sipp.SippPlan,
    duration: float,
    idle_window: float,
    workdir: Path,
) -> _SippDriven:
    """The python driver's sequence with SIPp as UAC and UAS: Kamailio answers, the UAS
    listens, idle window, load window of `duration` from the UAC's start, then the calls
    drain (bounded: the plan's timeout is duration + fr_timer + a grace, as for the
    python driver)."""
    proxy = await kamailio.wait_ready()

    async def load_starts() -> None:
        await kamailio.snapshot()  # idle window opens
        await anyio.sleep(idle_window)
        await kamailio.snapshot()  # load window opens

    try:
        pair = sipp.SippPair(workdir, proxy, plan)
        figures = await sipp.drive(
            pair,
            load_starts=load_starts,
            window=duration,
            window_ends=kamailio.snapshot,  # load window closes
        )
    except sipp.SippError as exc:
        raise KamailioTargetError(f"driver sipp: {exc}") from None
    assert pair.uac_started is not None
    return _SippDriven(figures, pair.uac_started)


def _result(
    run: KamailioRun,
    driven: LiveRun | _SippDriven,
    kamailio: KamailioProcess,
    strategy: Strategy,
    load: LoadSpec,
    seed: int,
    wall: float,
) -> dict[str, Any]:
    if len(kamailio.snapshots) < 3:
        raise KamailioTargetError(f"took {len(kamailio.snapshots)} of 3 CPU snapshots")
    processes = Counter(role_of(d) for d in kamailio.table.values())
    counters = {
        **run.trace.counters,
        **{f"processes: {role}": n for role, n in sorted(processes.items())},
        f"driver: {run.driver}": 1,
    }
    if isinstance(driven, LiveRun):
        uac: Any = driven.uac
        uas = driven.uas
        sources: tuple[tuple[str, Any], ...] = (
            ("uac", driven.uac.counters),
            ("uas", driven.uas.counters),
            ("harness", driven.counters),
        )
    else:
        figures = driven.figures
        uac = UacFigures.of_reinvites(
            tuple(r.sent for r in figures.reinvites),
            tuple(r.response_time for r in figures.reinvites),
            figures.calls - figures.successful - figures.failed,
        )
        uas = None
        sources = tuple(figures.counters().items())
    return strategy_entry(
        strategy=strategy,
        target=TARGET,
        load=load,
        seed=seed,
        records=run.trace.records,
        ledger=run.ledger,
        uac=uac,
        uas=uas,
        window=kamailio.window(1, 2),
        idle=kamailio.window(0, 1),
        counters=counters,
        sources=sources,
        calls_planned=run.calls_planned,
        samples=[],
        wall=wall,
        speed_wall=None,
        load_start=driven.load_start,
    )
