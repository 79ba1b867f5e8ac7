"""The sim target: one seeded load through one strategy's model, on virtual time.

One `Kernel` (driven on trio's `MockClock` by `run_on_virtual_time`), one modelled Kamailio
`Server` running the strategy, a `Uac` and a `Uas` (`harness.load.endpoints`) and the
`SimNetwork` between them. Calls start at the load's seeded schedule; the run ends when
every call has finished, or at duration + fr_timer + 5 s at the latest (a transaction
nobody resumes is answered 408 by the fr_timer, so that bound accounts for every one).

Figures, all on virtual time:
- delay: resume − suspend of each deferral the server recorded, streamed to a
  `DeferralTally` as each transaction is freed (`server.deferrals` keeps the live ones);
  lateness and the early share against the strategy's requested delay.
- e2e: intended send time of each re-INVITE -> its first final response at the UAC.
- ledger: the UAC/UAS reports plus the server's resumes (more than one: duplicated) and
  stale continues, closed into one outcome per re-INVITE (`harness.measure.ledger`).
- CPU over the load window [0, duration]: modelled busy time of every process / (window ×
  cores) (`busy_share`), wake-ups per second, busy µs per re-INVITE sent in the window, and
  the same by process role. `idle_share` comes from a second run of the same server with
  no traffic for `duration`, at most 10 s (the standing cost is periodic: 10 s hold
  thousands of timer periods); `SimTarget.idle` gives the idle case in full, by role.
- queue depth: datagrams waiting in the UDP socket plus the strategy's own backlog
  (`Strategy.backlog(server)`), sampled every 10 ms of the load window.
- speed: re-INVITE transactions simulated per wall-clock second of the loaded run.

The same seed gives the same result, except `wall_seconds` and `sim_txn_per_wall_s`.
This module must not compute percentiles, outcomes or CPU shares itself
(`harness.measure.entry` does, for every target), and never sleeps or opens a socket.
"""

from __future__ import annotations

import random
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

# Imported here, before any run: trio's first import leaves a reference cycle through the
# frames that import it (its `_run` module builds a traceback on purpose), and imported
# from inside the first run, those frames are the run's own (`simulate` and the rest,
# whose locals hold the whole model), which then waits for the cyclic collector: ≈ 0.3 s
# of the default load's run, once in every process that runs the sim.
import trio.testing  # noqa: F401

from core.events import Address
from core.runtime.costs import CostProfile
from core.runtime.kernel import Kernel, run_on_virtual_time, sim_gc
from core.runtime.server import Server, ServerSettings
from harness.load.endpoints import Uac, Uas
from harness.load.network import UAC, UAS, Link, SimHost, SimNetwork, Wire
from harness.load.spec import CallPlan, LoadSpec, call_plans
from harness.measure.entry import CpuWindow, DeferralTally, strategy_entry
from harness.measure.ledger import Ledger
from harness.measure.records import RecordFiles
from harness.targets.base import TargetOptions, refuse
from harness.targets.children import run_stoppable
from strategies import parse_spec
from strategies.base import Strategy

TARGET = "sim"
SAMPLE_INTERVAL = 0.010  # queue-depth sampling period (virtual seconds)
DRAIN_GRACE = 5.0  # seconds after duration + fr_timer before a run is cut off
IDLE_WINDOW_MAX = 10.0  # the idle run behind `idle_share` lasts min(duration, this)
_STEP = 0.1  # virtual seconds between "have all calls ended?" checks after the load window


@dataclass(frozen=True, slots=True)
class Links:
    """The four directions of the sim network (None: the default 0.5 ms ± 0.2 ms, no loss)."""

    uac_to_proxy: Link | None = None
    proxy_to_uas: Link | None = None
    uas_to_proxy: Link | None = None
    proxy_to_uac: Link | None = None

    def as_kwargs(self) -> dict[str, Link | None]:
        return {
            "uac_to_proxy": self.uac_to_proxy,
            "proxy_to_uas": self.proxy_to_uas,
            "uas_to_proxy": self.uas_to_proxy,
            "proxy_to_uac": self.proxy_to_uac,
        }


def _window_of(server: Server, seconds: float) -> CpuWindow:
    """Modelled busy seconds and wake-ups by role at the end of a window starting at 0."""
    return CpuWindow(
        seconds, server.settings.cores, server.busy_by_role(), server.wakeups_by_role()
    )


_Window = CpuWindow  # the name this module used before the figures moved to `common`


@dataclass
class SimRun:
    """One sim run: the result-schema entry plus the objects that produced it (for tests)."""

    result: dict[str, Any]
    kernel: Kernel
    server: Server
    ledger: Ledger
    uac: Uac
    uas: Uas
    network: SimNetwork
    end: float  # virtual time the run stopped
    calls_planned: int  # the schedule's calls, counted as they are drawn (all by its end)
    tally: DeferralTally | None = None  # the deferrals streamed as their transactions went
    window: _Window | None = None  # busy time and wake-ups over [0, duration]
    samples: list[int] = field(default_factory=list)  # queue depth every 10 ms

    def release(self) -> None:
        """Unlink the model's objects from one another; the run is unusable afterwards.

        Why: processes, the server, transactions and their timer entries refer to one
        another, so what a run leaves behind (the transactions still lingering, the
        processes) is freed only by the cyclic collector, whose next pass then traverses
        every one of them: 0.1–0.3 s after each run of the default load, ≈ 7 % of the
        default comparison's time. Unlinked, reference counting frees them as the run is
        dropped.
        """
        self.kernel.clear()
        self.network.close()
        self.server.close()
        self.uac.close()
        self.uas.close()


@dataclass(frozen=True, slots=True)
class SimTarget:
    """The sim as a `harness.targets.Target`: the cost profile and network it charges.

    `measure_idle=False` skips the second, traffic-free run (`cpu.idle_share` is then null).
    """

    costs: CostProfile = field(default_factory=CostProfile)
    costs_source: str | None = None  # where `costs` came from (`harness.profile`)
    network: Link | None = None  # every direction (None: the default link)
    measure_idle: bool = True
    wire: Wire = "objects"
    driver: str | None = None  # "sipp": the UAC pauses as late as SIPp (`sipp_pause_late`)
    records: str | None = None  # a directory: each run streams its raw records there
    name: ClassVar[str] = TARGET
    real_clock: ClassVar[bool] = False

    def run_key(self, strategy: Strategy) -> str:
        """Deterministic: strategies with one model share a run (`Strategy.model`), unless
        each writes its own record files, which only the same spec shares."""
        return strategy.model if self.records is None else strategy.spec

    @classmethod
    def from_options(cls, options: TargetOptions) -> SimTarget:
        refuse(TARGET, options, "costs", "driver")
        driver = "sipp" if options.driver == "sipp" else None
        return cls(options.costs or CostProfile(), options.costs_source, options.network,
                   driver=driver)  # fmt: skip

    def check(self, load: LoadSpec, seed: int) -> None:
        """The sim plays any load."""

    def run(
        self, strategy: str, load: LoadSpec, seed: int, settings: ServerSettings | None = None
    ) -> dict[str, Any]:
        """Drive `load` through `strategy` on virtual time; one result-schema entry. A load
        with rate 0 is the idle case: no calls, CPU and wake-ups of the idle server."""
        links = Links(self.network, self.network, self.network, self.network)
        with sim_gc():  # nothing the run leaves behind is traversed by the collector
            stem = None if self.records is None else Path(self.records) / record_stem(strategy)
            run = simulate(strategy, load, seed, settings, self.costs, links=links,
                           wire=self.wire, measure_idle=self.measure_idle,
                           driver=self.driver, records=stem)  # fmt: skip
            result = run.result
            run.release()
            del run
        return result

    def idle(
        self, strategy: str, duration: float, seed: int, settings: ServerSettings | None = None
    ) -> dict[str, Any]:
        """The server with no traffic for `duration`; CPU and wake-ups by role."""
        idle = replace(self, measure_idle=False, records=None)  # no transactions to record
        return idle.run(strategy, idle_load(duration), seed, settings)

    def facts(self) -> dict[str, Any]:
        network = self.network.describe() if self.network is not None else None
        return {"backend": None, "network": network, "costs": self.costs_source,
                "driver": self.driver}  # fmt: skip


def record_stem(strategy: str) -> str:
    """A file name for `strategy`'s records: its short spec, ':' and ',' made '_'."""
    return re.sub(r"[^A-Za-z0-9=.-]+", "_", parse_spec(strategy).short_spec)


def sipp_pause_late(costs: CostProfile, seed: int) -> Callable[[], float]:
    """How late each of SIPp's pauses ends (s), from a generator of its own (seeded from
    `seed`), so the model's other draws stay those of the same seed without it: from the
    measured distribution (`driver_pause_late_quantiles`, linear between neighbouring
    quantiles) when the profile has it, else uniform in `driver_pause_late` ±
    `driver_pause_late_jitter`. SIPp's timing is the one part of the driver modelled: on
    time, each call's re-INVITEs would meet a timer whose period divides the gap at one
    fixed phase; SIPp's late pauses spread them over it."""
    rng = random.Random(f"sipp-pause-{seed}")
    quantiles = [q * 1e-6 for q in costs.driver_pause_late_quantiles]
    if quantiles:
        steps = len(quantiles) - 1

        def draw() -> float:
            at = rng.random() * steps
            k = min(int(at), steps - 1)
            return quantiles[k] + (quantiles[k + 1] - quantiles[k]) * (at - k)

        return draw
    late = costs.seconds("driver_pause_late")
    jitter = costs.seconds("driver_pause_late_jitter")
    low, high = max(0.0, late - jitter), late + jitter
    uniform = rng.uniform
    return lambda: uniform(low, high)


def idle_load(duration: float) -> LoadSpec:
    """A load of no calls for `duration` seconds (rate 0 bypasses the load-spec check)."""
    if not duration > 0:
        raise ValueError(f"idle duration must be > 0 s, got {duration!r}")
    return LoadSpec(rate=0.0, duration=duration, arrival="constant")


def simulate(
    strategy_spec: str,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings | None = None,
    costs: CostProfile | None = None,
    *,
    links: Links | None = None,
    wire: Wire = "objects",
    measure_idle: bool = True,
    keep_records: bool = False,
    driver: str | None = None,
    records: Path | None = None,
) -> SimRun:
    """`SimTarget.run`, keeping the server, ledger, endpoints and network for inspection.

    Per-transaction records are accounted as each becomes final and then dropped, so a run's
    memory does not grow with its length; `keep_records` keeps them all instead (every
    deferral in `server.deferrals`, every re-INVITE's timing in `uac.timings`), for tests.
    `records` (a path stem) also streams them to CSV files as they go (`RecordFiles`).
    The result is the same either way."""
    strategy = parse_spec(strategy_spec)  # SpecError (one line) before anything runs
    settings = replace(settings or ServerSettings(), seed=seed)
    costs = costs or CostProfile()
    links = links or Links()
    with sim_gc():  # the result is built from the run's live objects: no collector either
        files = RecordFiles(records) if records is not None else None
        try:
            return _simulate(strategy_spec, strategy, load, seed, settings, costs, links, wire,
                             measure_idle, keep_records, driver, files)  # fmt: skip
        finally:
            if files is not None:
                files.close()


def _simulate(
    strategy_spec: str,
    strategy: Strategy,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    costs: CostProfile,
    links: Links,
    wire: Wire,
    measure_idle: bool,
    keep_records: bool,
    driver: str | None,
    files: RecordFiles | None,
) -> SimRun:
    started = time.perf_counter()
    run = _run_loaded(strategy, load, seed, settings, costs, links, wire, keep_records, driver,
                      files)  # fmt: skip
    loaded_wall = time.perf_counter() - started
    idle: _Window | None = None
    if load.rate <= 0:
        idle = run.window
    elif measure_idle:
        window = min(load.duration, IDLE_WINDOW_MAX)
        idle = _run_idle_window(strategy_spec, window, settings, costs)
    wall = time.perf_counter() - started
    run.result = _result(run, strategy, load, seed, settings, idle, wall, loaded_wall)
    if files is not None:  # the re-INVITEs the run ended before their final
        for (call_id, _), timing in run.uac.timings.items():
            if timing.status is None:
                files.reinvite(call_id, timing)
    return run


# ---------------------------------------------------------------------------- the runs


def _run_loaded(
    strategy: Strategy,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    costs: CostProfile,
    links: Links,
    wire: Wire,
    keep_records: bool,
    driver: str | None,
    files: RecordFiles | None = None,
) -> SimRun:
    plans = call_plans(load, seed) if load.rate > 0 else iter(())
    duration = load.duration
    hard_end = duration + settings.fr_timer + DRAIN_GRACE
    holder: list[SimRun] = []

    async def main() -> None:
        kernel = Kernel()
        proxy = settings.address
        # streamed records: the ledger hears of each suspension as it happens
        ledger = Ledger(race_code=load.race_code, streamed=not keep_records)
        network = SimNetwork(kernel, seed, proxy=proxy, wire=wire, **links.as_kwargs())
        send = network.send

        def transport(message: Any, destination: Address) -> None:
            send(message, proxy, destination)

        server = Server(kernel, strategy, settings, costs, transport)
        tally = DeferralTally(ledger, _role_lookup(server), strategy.requested_delay)
        if not keep_records:
            server.deferral_sink = tally  # records are accounted as they go, not kept
        # The proxy core never edits what it is handed (it copies before it changes a
        # header), so it shares the senders' objects instead of getting a copy of each.
        network.attach(proxy, server.receive, owns=False, takes_bytes=True)
        uac = Uac(
            UAC,
            UAS,
            reinvites=load.reinvites,
            gap=load.gap,
            outbound_proxy=proxy,
            observer=ledger,
            keep_timings=keep_records,
            keep_calls=keep_records,
            window_end=duration,  # the load window is [0, duration] on the UAC's clock too
            pause_late=sipp_pause_late(costs, seed) if driver == "sipp" else None,
        )
        if files is not None:
            uac.on_final = files.reinvite
            tally.on_record = files.deferral
        uas = Uas(UAS, race_code=load.race_code, observer=ledger)
        uac_host = SimHost(kernel, network, UAC, uac)
        SimHost(kernel, network, UAS, uas)
        run = SimRun({}, kernel, server, ledger, uac, uas, network, 0.0, 0, tally)
        holder.append(run)

        def start_call(plan: CallPlan) -> None:
            uac_host.emit(uac.start_call(plan.index, kernel.now, plan.start))
            run.calls_planned += 1

        schedule = _Schedule(kernel, plans, start_call)
        _QueueSampler(kernel, server, strategy, run.samples, duration)
        await kernel.run(until=duration)
        run.window = _window_of(server, duration)
        now = duration
        while now < hard_end and not (uac.active == 0 and schedule.drawn):
            now = min(hard_end, now + _STEP)
            await kernel.run(until=now)
        run.end = kernel.now
        run.calls_planned += sum(1 for _ in plans)  # calls the run ended before starting

    run_on_virtual_time(main, run=run_stoppable)
    return holder[0]


class _Schedule:
    """Starts each call of `plans` at its time, drawing a call only when the one before it
    starts (the schedule is never held whole); `drawn` once every call was.

    A class and not a closure that schedules itself: such a closure refers to itself, a
    cycle that would keep everything it holds alive after the run (`SimRun.release`)."""

    def __init__(
        self, kernel: Kernel, plans: Iterator[CallPlan], start: Callable[[CallPlan], None]
    ) -> None:
        self.kernel = kernel
        self.plans = plans
        self.start = start
        self.drawn = False
        self._draw()

    def _draw(self) -> None:
        plan = next(self.plans, None)
        if plan is None:
            self.drawn = True
        else:
            self.kernel.call_at(plan.start, self._start, plan)

    def _start(self, plan: CallPlan) -> None:
        self.start(plan)
        self._draw()


class _QueueSampler:
    """Samples the queue depth (datagrams in the UDP socket plus the strategy's backlog)
    every `SAMPLE_INTERVAL` of the load window [0, `duration`] into `samples`."""

    def __init__(
        self, kernel: Kernel, server: Server, strategy: Strategy, samples: list[int],
        duration: float,
    ) -> None:  # fmt: skip
        self.kernel = kernel
        self.server = server
        self.backlog = strategy.backlog
        self.samples = samples
        self.last = duration - 1e-9
        kernel.call_at(0.0, self._sample)

    def _sample(self) -> None:
        server = self.server
        self.samples.append(len(server.sip_socket) + self.backlog(server))
        kernel = self.kernel
        if kernel.now + SAMPLE_INTERVAL < self.last:
            kernel.call_at(kernel.now + SAMPLE_INTERVAL, self._sample)


def _role_lookup(server: Server) -> Any:
    """Process name -> role, over the processes the server has forked so far."""
    roles: dict[str, str] = {}

    def role_of(name: str) -> str:
        if name not in roles:
            roles.update((process.name, process.role) for process in server.processes)
        return roles.get(name, "unknown")

    return role_of


def _run_idle_window(
    strategy_spec: str, duration: float, settings: ServerSettings, costs: CostProfile
) -> _Window:
    """The same server with no traffic for `duration`: its standing CPU and wake-ups."""
    holder: list[_Window] = []

    async def main() -> None:
        kernel = Kernel()
        server = Server(kernel, parse_spec(strategy_spec), settings, costs)
        await kernel.run(until=duration)
        holder.append(_window_of(server, duration))

    run_on_virtual_time(main, run=run_stoppable)
    return holder[0]


# ---------------------------------------------------------------------------- the result


def _result(
    run: SimRun,
    strategy: Strategy,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    idle: _Window | None,
    wall: float,
    loaded_wall: float,
) -> dict[str, Any]:
    server = run.server
    assert run.window is not None
    tally = run.tally
    assert tally is not None
    for deferral in server.deferrals.values():  # still live when the run ended
        tally.retired(deferral)
    return strategy_entry(
        strategy=strategy,
        target=TARGET,
        load=load,
        seed=seed,
        records=(),
        tally=tally,
        ledger=run.ledger,
        uac=run.uac,
        uas=run.uas,
        window=run.window,
        idle=idle,
        counters=server.counters,
        sources=(
            ("proxy", server.proxy.stats()),
            ("uac", run.uac.counters),
            ("uas", run.uas.counters),
            ("network", run.network.stats()),
        ),
        calls_planned=run.calls_planned,
        samples=run.samples,
        wall=wall,
        speed_wall=loaded_wall,
    )
