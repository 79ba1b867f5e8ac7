"""A modelled Kamailio server: the sans-IO proxy core run by Kamailio's processes.

The server owns the process model (SIP workers reading one UDP socket, the core timer
processes, whatever a strategy forks), the proxy core, and the routing script: new
in-dialog re-INVITEs are handed to the deferral strategy, everything else is relayed.
Strategies use `suspend()` and `resume()` from the process they run in; they never see the
clock kind or the network.

What it must not do: touch sockets or real time (the target gives it a `transport` and an
anyio-driven `Kernel`), or know which strategy it runs beyond `DeferralStrategy`, the
interface it calls (strategies implement it; the runtime never imports them).
"""

from __future__ import annotations

import os
import random
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, Protocol

from mypy_extensions import mypyc_attr

from core.compiled import pickle_by_fields
from core.events import (
    Action,
    Address,
    ContinueOutcome,
    Deliver,
    Discarded,
    Send,
    SuspendOutcome,
    SuspensionEvent,
    TxnId,
)
from core.proxy import Proxy, ProxyConfig
from core.runtime.costs import CostProfile
from core.runtime.kernel import Kernel
from core.runtime.process import (
    Compute,
    CpuPool,
    Get,
    Pass,
    Process,
    Program,
    Queue,
    Sleep,
    Stalls,
    new_process,
)
from core.runtime.tasks import TaskGroup, TaskGroupConfig
from core.sip import SipMessage, SipParseError, SipRequest, parse_message

TICK = 0.0625
"""Kamailio's core timer tick (`TIMER_TICKS_HZ` = 16)."""

UDP_DATAGRAM_FOOTPRINT = 1024
"""Bytes of receive buffer one queued datagram uses (payload + skb overhead), to turn
`maxbuffer` into a queue length."""

Transport = Callable[[SipMessage, Address], None]


class DeferralStrategy(Protocol):
    """What the server calls on the strategy it runs: the runtime's side of the plug.

    `install` forks the strategy's processes when the server starts; `defer` is the script's
    deferral of one transaction, run in the SIP worker that received it; `backlog` counts
    the deferred requests waiting in the strategy's own queues.
    """

    def install(self, server: Server) -> None: ...

    def defer(self, server: Server, process: Process, txn: TxnId) -> Program: ...

    def backlog(self, server: Server) -> int: ...


@dataclass(frozen=True, slots=True)
class ServerSettings:
    """Server-wide settings that belong to no strategy (flags of every target command)."""

    children: int = 8
    cores: int = field(default_factory=lambda: os.cpu_count() or 1)
    fr_timer: float = 30.0
    address: Address = ("127.0.0.1", 5060)
    maxbuffer: int = 262_144
    seed: int = 0

    def __post_init__(self) -> None:
        if self.children < 1:
            raise ValueError(f"children must be >= 1, got {self.children}")
        if self.cores < 1:
            raise ValueError(f"cores must be >= 1, got {self.cores}")
        if not 0 < self.fr_timer <= 3600:
            raise ValueError(f"fr_timer must be in (0, 3600] s, got {self.fr_timer}")


pickle_by_fields(ServerSettings)


@dataclass(slots=True)
class Deferral:
    """One suspension of one transaction, as the server saw it."""

    txn: TxnId
    suspended_at: float
    call_id: str = ""
    cseq: int = 0
    resumed_at: float | None = None
    resumed_by: str | None = None  # process name that ran the continuation
    outcome: str = "pending"  # pending | resumed | timed_out | cancelled
    resumes: int = 0  # continuations that found it (more than 1 is a duplicate)
    stale_continues: int = 0  # continues that found the transaction gone (NOT_FOUND)
    slot: int = -1  # its place in suspend order, given by a `DeferralSink` (-1: none)

    @property
    def delay(self) -> float | None:
        return None if self.resumed_at is None else self.resumed_at - self.suspended_at


class DeferralSink(Protocol):
    """Where a server streams its deferral records instead of keeping them all (optional).

    `opened` when a suspension is first recorded (the sink may give it a `slot`);
    `retired` when its transaction is freed, after which the server forgets the record
    (nothing but a stale continue can touch it any more); `stale` for a continue that finds
    nothing and whose record was retired already; `recorded` for a record a strategy
    writes whole, without a suspension (`record`). Records never retired (still live at
    the end) stay in `Server.deferrals`.
    """

    def opened(self, deferral: Deferral) -> None: ...

    def retired(self, deferral: Deferral) -> None: ...

    def stale(self, txn: TxnId) -> None: ...

    def recorded(self, deferral: Deferral) -> None: ...


@mypyc_attr(allow_interpreted_subclasses=True)  # the live target's `LiveServer`
class Server:
    """Kamailio's processes around one `Proxy`, deferring re-INVITEs with one strategy."""

    def __init__(
        self,
        kernel: Kernel,
        strategy: DeferralStrategy,
        settings: ServerSettings | None = None,
        costs: CostProfile | None = None,
        transport: Transport | None = None,
    ) -> None:
        self.kernel = kernel
        self.strategy = strategy
        self.settings = settings or ServerSettings()
        self.costs = costs or CostProfile()
        self.transport: Transport = transport or (lambda message, destination: None)
        self.random = random.Random(self.settings.seed)
        self.cpu = CpuPool(kernel, self.settings.cores)
        self.cpu.load_exponent = self.costs.load_exponent
        self.cpu.load_floor = max(1e-6, self.costs.load_floor)
        self.cpu.load_ceiling = max(self.cpu.load_floor, self.costs.load_ceiling)
        self.proxy = Proxy(
            ProxyConfig(
                address=self.settings.address,
                fr_timer=self.settings.fr_timer,
                label_seed=self.settings.seed,
            )
        )
        self.processes: list[Process] = []
        self.counters: Counter[str] = Counter()
        self.deferrals: dict[TxnId, Deferral] = {}
        self.deferral_sink: DeferralSink | None = None  # None: keep every record
        self.strategy_state: Any = None  # what the strategy keeps per server (`install`)
        self.task_groups: dict[str, TaskGroup] = {}
        self.sip_socket = Queue(
            kernel, "udp", max(1, self.settings.maxbuffer // UDP_DATAGRAM_FOOTPRINT)
        )
        self._overshoot = self.costs.seconds("sleep_overshoot")
        self._jitter = self.costs.seconds("sleep_overshoot_jitter")
        # The wake-up tail is the load's (traffic and the co-located load generator compete
        # for the cores): Kamailio's idle timers show none, so it starts with the traffic.
        costs = self.costs
        tail = costs.wakeup_tail > 0 or costs.wakeup_tail_per_load > 0
        self._tail_on_traffic = tail and costs.wakeup_tail_share > 0
        for i in range(self.settings.children):
            self.spawn("sip-worker", f"udp receiver child={i}", self._sip_worker)
        self._slow_timer_due = Queue(kernel, "slow timer", 1)
        self.spawn("timer", "timer", self._timer)
        self.spawn("slow-timer", "slow timer", self._slow_timer)
        strategy.install(self)

    # ------------------------------------------------------------------ process plumbing

    def spawn(self, role: str, name: str, program: Callable[[Process], Program]) -> Process:
        """Fork a process running `program(process)` from now on."""
        process = new_process(self.kernel, self.cpu, role, name)
        self.processes.append(process)
        process.start(program(process))
        return process

    def task_group(self, config: TaskGroupConfig) -> TaskGroup:
        """The core async task group `config.name`, created (with its workers) on first use."""
        group = self.task_groups.get(config.name)
        if group is None:
            group = self.task_groups[config.name] = TaskGroup(self, config)
        return group

    def overshoot(self) -> float:
        """ε, how late a sleep returns (seeded jitter: timer phases drift as in Kamailio)."""
        if not self._jitter:
            return self._overshoot
        return max(0.0, self._overshoot + self.random.uniform(-self._jitter, self._jitter))

    def fork_offsets(self, processes: int) -> list[float]:
        """When each of `processes` forked one after another starts, from the first (s).

        Gaps are `fork_gap` on average; `fork_gap_spread` mixes in a seeded exponential
        part, so the phases bunch and straggle as Kamailio's measured first passes do.
        """
        mean = self.costs.seconds("fork_gap")
        spread = min(1.0, self.costs.fork_gap_spread)
        offsets, at = [], 0.0
        for k in range(processes):
            if k:
                at += mean * (1.0 - spread + spread * self.random.expovariate(1.0))
            offsets.append(at)
        return offsets

    def count(self, event: str, n: int = 1) -> None:
        """Count a strategy/server event (overflow, undelayed, stranded...): never hidden."""
        self.counters[event] += n

    @property
    def now(self) -> float:
        return self.kernel.now

    # ------------------------------------------------------------------ network side

    def receive(self, data: bytes | SipMessage, source: Address) -> None:
        """A datagram arrives on the UDP socket; dropped (and counted) if the buffer is full."""
        if self._tail_on_traffic:
            self._tail_on_traffic = False
            self.cpu.wakeup_latency = Stalls(self.kernel, self.random,
                                             self.costs.seconds("wakeup_tail"),
                                             self.costs.wakeup_tail_share,
                                             self.costs.wakeup_tail_common,
                                             self.costs.seconds("wakeup_tail_per_load"),
                                             self.cpu, self.costs.wakeup_tail_ceiling)  # fmt: skip
        if not self.sip_socket.offer((data, source)):
            self.count("udp_receive_buffer_drops")

    def _sip_worker(self, process: Process) -> Program:
        costs = self.costs
        request_cost = costs.seconds("request")
        response_cost = costs.seconds("response")
        retransmission_cost = costs.seconds("retransmission")
        socket = self.sip_socket
        kernel = self.kernel
        proxy = self.proxy
        # The ops are only read by the process: one instance of each serves every loop.
        get = Get(socket)
        compute_request = Compute(request_cost)
        compute_response = Compute(response_cost)
        compute_retransmission = Compute(retransmission_cost)
        while True:
            data, source = yield get
            message = data
            if isinstance(data, bytes):
                try:
                    message = parse_message(data)
                except SipParseError:
                    message = None
            if message is None:
                yield compute_retransmission
                actions = proxy.receive(data, source, kernel.now)
            else:
                actions = proxy.receive_message(message, source, kernel.now)
            delivered = False
            for action in actions:
                if type(action) is Deliver:
                    delivered = True
                    break
            if message is not None:
                if isinstance(message, SipRequest):
                    yield compute_request if delivered else compute_retransmission
                else:
                    yield compute_response
            if delivered:
                yield from self.apply(process, actions)
            else:
                self._apply_now(actions)

    def _apply_now(self, actions: Iterable[Action]) -> None:
        """`apply` for actions without a `Deliver` (nothing in them yields): no generator."""
        for action in actions:
            if isinstance(action, Send):
                self.transport(action.message, action.destination)
            elif isinstance(action, SuspensionEvent):
                self._note(action)
            elif isinstance(action, Discarded):
                self.count(f"discarded: {action.reason}")

    def _timer(self, process: Process) -> Program:
        """Kamailio's "timer" process: a tick every 1/16 s; when a TM timer is due it signals
        the slow timer (the fr timer without retransmissions is not `F_TIMER_FAST`, §7)."""
        tick = Pass(self.costs.seconds("timer_tick"))
        due = self._slow_timer_due
        ticks = 0
        while True:
            ticks += 1
            yield Sleep(ticks * TICK - self.kernel.now)
            yield tick
            deadline = self.proxy.next_deadline()
            if deadline is not None and deadline <= self.kernel.now:
                due.offer(ticks)  # a signal already pending covers this tick too

    def _slow_timer(self, process: Process) -> Program:
        """Kamailio's "slow timer" process: sleeps until signalled, then runs every TM timer
        that is due (408s); a busy slow timer makes timeouts late."""
        tick_cost = self.costs.seconds("timer_tick")
        reply_cost = self.costs.seconds("reply")
        get = Get(self._slow_timer_due)
        while True:
            yield get
            actions = self.proxy.expire(self.kernel.now)
            sends = sum(1 for a in actions if type(a) is Send)
            yield Compute(tick_cost + sends * reply_cost)
            yield from self.apply(process, actions)

    # ------------------------------------------------------------------ routing script

    def apply(self, process: Process, actions: Iterable[Action]) -> Program:
        """Carry out the core's actions in `process`: send, run the script, keep books."""
        for action in actions:
            if isinstance(action, Send):
                self.transport(action.message, action.destination)
            elif isinstance(action, Deliver):
                yield from self._request_route(process, action)
            elif isinstance(action, SuspensionEvent):
                self._note(action)
            elif isinstance(action, Discarded):
                self.count(f"discarded: {action.reason}")

    def _request_route(self, process: Process, deliver: Deliver) -> Program:
        request = deliver.request
        now = self.kernel.now
        if deliver.txn is None:
            actions = self.proxy.forward_stateless(request, now)
        elif request.method == "INVITE" and request.to_tag:
            yield from self.strategy.defer(self, process, deliver.txn)
            return
        else:
            actions = self.proxy.relay(deliver.txn, now)
        yield Compute(self.costs.seconds("relay"))
        yield from self.apply(process, actions)

    def relay_now(self, process: Process, txn: TxnId) -> Program:
        """Relay without deferral (strategies that give up, `inline`)."""
        yield Compute(self.costs.seconds("relay"))
        yield from self.apply(process, self.proxy.relay(txn, self.kernel.now))

    # ------------------------------------------------------------------ TM for strategies

    def suspend(self, process: Process, txn: TxnId) -> Program:
        """`t_suspend()` in `process`; the program returns the `SuspendOutcome`."""
        yield Compute(self.costs.seconds("t_suspend"))
        outcome, actions = self.proxy.suspend(txn, self.kernel.now)
        yield from self.apply(process, actions)
        if outcome is not SuspendOutcome.SUSPENDED:
            self.count(f"suspend {outcome.value}")
        return outcome

    def resume(self, process: Process, txn: TxnId) -> Program:
        """`t_continue()` + the continuation route (relay) in `process`.

        Runs synchronously in the calling process, which stays blocked until the route ends.
        The program returns the `ContinueOutcome`.
        """
        costs = self.costs
        yield Compute(costs.seconds("t_continue"))
        outcome, actions = self.proxy.continue_transaction(txn, self.kernel.now)
        if outcome is ContinueOutcome.RESUMED:
            deferral = self.deferrals.get(txn)
            if deferral is not None:
                deferral.resumes += 1
                if deferral.resumed_at is None:
                    deferral.resumed_at = self.kernel.now
                    deferral.resumed_by = process.name
                    deferral.outcome = "resumed"
            actions = list(actions) + self.proxy.relay(txn, self.kernel.now)
            actions += self.proxy.end_continuation(txn, self.kernel.now)
            yield Compute(costs.seconds("relay"))
        else:
            self.count(f"continue {outcome.value}")
            deferral = self.deferrals.get(txn)
            if outcome is ContinueOutcome.NOT_FOUND:
                if deferral is not None:
                    deferral.stale_continues += 1
                elif self.deferral_sink is not None:
                    self.deferral_sink.stale(txn)
        yield from self.apply(process, actions)
        return outcome

    def record(self, deferral: Deferral) -> None:
        """The whole record of a deferral made without a suspension (a blocking sleep):
        nothing can change it, so a sink accounts it at once; else it is kept."""
        if self.deferral_sink is not None:
            self.deferral_sink.recorded(deferral)
        else:
            self.deferrals[deferral.txn] = deferral

    def _note(self, event: SuspensionEvent) -> None:
        kind = event.kind
        if kind == "suspended":
            if event.txn not in self.deferrals:
                request = self.proxy.request_of(event.txn)
                opened = self.deferrals[event.txn] = Deferral(
                    event.txn,
                    event.time,
                    call_id=request.call_id if request is not None else "",
                    cseq=request.cseq.number if request is not None else 0,
                )
                if self.deferral_sink is not None:
                    self.deferral_sink.opened(opened)
            return
        if kind == "freed":
            if self.deferral_sink is not None:
                freed = self.deferrals.pop(event.txn, None)
                if freed is not None:
                    self.deferral_sink.retired(freed)
            return
        deferral = self.deferrals.get(event.txn)
        if deferral is None:
            return
        if kind == "timed_out":
            deferral.outcome = "timed_out"
        elif kind == "cancelled":
            deferral.outcome = "cancelled"
        elif kind == "absorbed":
            self.count("retransmissions absorbed while suspended")

    def close(self) -> None:
        """Stop every process and forget every transaction (the run is over): processes,
        their programs and the server refer to one another, so this lets reference counting
        free what the run leaves behind instead of the cyclic collector."""
        for process in self.processes:
            process.stop()
        self.cpu.wakeup_latency = None
        self.proxy.close()
        self.deferrals.clear()
        self.deferral_sink = None  # it may look processes up through the server

    # ------------------------------------------------------------------ accounting

    def busy_by_role(self) -> dict[str, float]:
        totals: dict[str, float] = {}
        for process in self.processes:
            totals[process.role] = totals.get(process.role, 0.0) + process.busy
        return totals

    def wakeups_by_role(self) -> dict[str, int]:
        totals: Counter[str] = Counter()
        for process in self.processes:
            totals[process.role] += process.wakeups
        return dict(totals)
