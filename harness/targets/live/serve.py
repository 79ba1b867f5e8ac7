"""`deferbench serve`: the live target's SIP proxy, on the real clock over UDP.

The very same pieces as the sim target — the sans-IO proxy core, the Kamailio process
model (`core.runtime.server.Server`) and the strategy — run on a real-clock `Kernel` in one
anyio event loop (trio or asyncio). The kernel's driver reads the socket itself whenever it
is readable or has just run due work (`Kernel.add_reader`: a burst costs one wake-up, not
a task switch per datagram) and puts each datagram into the server's bounded UDP queue; the
SIP workers, timer processes and task workers stay concurrent activities of the kernel, and
a "blocking" sleep blocks its worker, not the event loop. The cyclic garbage collector is
tuned for a server holding thousands of live transactions (`LIVE_GC_THRESHOLDS`).

Real clock semantics: the modelled Compute costs are zero (`LIVE_COSTS`, the work is done
for real), sleeps are real, and CPU is measured: process CPU (`time.process_time`) and the
thread CPU time of every process step, summed per role (`Kernel(live=True)`). CPU spent
outside process steps (socket reads, the event loop) is reported as role `unattributed`.

Hostile input and overload, each counted in the summary, the proxy serving on:
- malformed datagrams: answered 400 when still a request with Via/From/To/Call-ID/CSeq
  (RFC 3261 §8.2.2 / §16.3), else dropped (the proxy core decides, `discarded: ...`);
- datagrams above `max_message` octets: a request answered 513 Message Too Large (§21.5.14)
  when it parses, anything else dropped (`oversize ...`);
- Max-Forwards 0: 483 Too Many Hops (§16.3 step 3); a loop through this proxy ends there;
  unknown methods are relayed like any non-INVITE (§16.1: a proxy need not understand them);
  responses matching no transaction are dropped (§16.7), except late 2xx to INVITE;
- overload (`harness.targets.live.admission`): new dialogs are answered 503 + Retry-After
  statelessly, creating no transaction, while the queue depth (datagrams still in the OS
  receive buffer and the workers' UDP queue, plus the strategy's backlog) is at
  `--max-queue` or more, or while RSS is above `--max-rss` and the transactions live
  then still live; requests inside a dialog are served, so admitted calls finish; above
  `--max-transactions` every new request is shed. Each 503 is counted by cause (`shed503=`
  in the summary, `shed: 503 ...` in the report); datagrams the queues dropped are counted
  too (`udp_receive_buffer_drops`, the OS's `os receive drops`).

Memory stays bounded under any load: by the admission limits, the transaction lifetimes,
and deferral records that are not kept: each is counted (and, with `--report`, appended
to a spool file beside the report) when its transaction is freed (`DeferralSink`); the
report is written from the spool at exit.

Signals: SIGINT/SIGTERM print a final summary, write the report and exit 0; SIGUSR1 takes a
snapshot (time, process CPU, CPU and wake-ups per role, the queue depth arriving datagrams
found since the previous one, RSS, 503s sent so far)
that the harness uses to bound its idle and load windows.

What this module must not do: compute a percentile or a ledger (the harness does, with
`harness.measure.entry`), or change what the core and the strategies decide.
"""

from __future__ import annotations

import gc
import json
import signal
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any, TextIO

import anyio

from core.events import Address, TxnId
from core.runtime.costs import DISTRIBUTIONS, CostProfile
from core.runtime.kernel import Kernel
from core.runtime.server import Deferral, ServerSettings
from core.sip import SipMessage, SipParseError, SipRequest, make_response, parse_message
from harness.measure.entry import DeferralRecord
from harness.targets.base import host_ticks
from harness.targets.live.admission import AdmissionLimits, LiveServer, StatmRss
from harness.targets.live.udp import UdpSocket
from strategies import parse_spec

LIVE_COSTS = CostProfile(
    **{f.name: 0.0 for f in fields(CostProfile) if f.name not in DISTRIBUTIONS}
)
"""Nothing modelled is charged on the live target: real work takes real CPU, and real
sleeps overshoot by themselves."""

BACKENDS = ("trio", "asyncio")
DEFAULT_MAX_MESSAGE = 16_384
LIVE_RCVBUF = 524_288
"""SO_RCVBUF asked for (Linux doubles it, up to net.core.rmem_max): room for ~450 SIP
datagrams, so a burst at capacity waits instead of being shed (`--max-queue` 256)."""
REPORT_SCHEMA = "deferbench.serve/1"


@dataclass(frozen=True)
class ServeOptions:
    """Everything `deferbench serve` takes."""

    strategy: str
    listen: Address = ("127.0.0.1", 5060)
    backend: str = "trio"
    settings: ServerSettings = field(default_factory=ServerSettings)
    interval: float = 1.0  # seconds between summary lines (0: none)
    report: Path | None = None
    limits: AdmissionLimits = field(default_factory=AdmissionLimits)
    max_message: int = DEFAULT_MAX_MESSAGE
    ready: Callable[[Address], None] | None = None  # called once the socket listens

    def __post_init__(self) -> None:
        if self.backend not in BACKENDS:
            raise ValueError(f"backend {self.backend!r}: choose one of {', '.join(BACKENDS)}")
        if self.interval < 0:
            raise ValueError(f"interval must be >= 0 s, got {self.interval}")
        if not 512 <= self.max_message <= 65_535:
            raise ValueError(f"max message must be in 512..65535 octets, got {self.max_message}")


class LiveProxy:
    """One running live proxy: socket, kernel, server, books."""

    def __init__(self, options: ServeOptions, log: TextIO | None = None) -> None:
        self.options = options
        self.log = log if log is not None else sys.stderr
        self.strategy = parse_spec(options.strategy)  # SpecError before any socket opens
        self.kernel = Kernel(live=True)
        self.socket = UdpSocket(*options.listen, rcvbuf=LIVE_RCVBUF)
        settings = replace(options.settings, address=self.socket.address)
        self.rss = StatmRss()
        self.server = LiveServer(
            self.kernel, self.strategy, settings, LIVE_COSTS, self._send,
            limits=options.limits, os_queued_bytes=self.socket.queued_bytes, rss_mb=self.rss,
        )  # fmt: skip
        self.server.deferral_sink = self  # records counted (and spooled) as they retire
        self.counters: Counter[str] = Counter()
        self.snapshots: list[dict[str, Any]] = []
        self._retired_count = Counter[str]()
        self._role_of = {process.name: process.role for process in self.server.processes}
        self._spool: TextIO | None = None
        if options.report is not None:
            self._spool = open(_spool_path(options.report), "w", encoding="utf-8")  # noqa: SIM115
        self._depth_max = 0
        self._depth_sum = 0
        self._depth_n = 0
        self._cpu_start = time.process_time()
        self._last = (0.0, self._cpu_start, 0, 0)  # time, cpu, datagrams in, deferrals

    @property
    def address(self) -> Address:
        return self.socket.address

    # ------------------------------------------------------------------ network

    def _send(self, message: SipMessage, destination: Address) -> None:
        self.socket.send(bytes(message), destination)

    def _drain(self) -> None:
        """The kernel's reader: what the socket holds, read now (see `Kernel.add_reader`)."""
        self.socket.drain(self._datagram)

    def _datagram(self, data: bytes, source: Address) -> None:
        """Oversize datagrams are handled here; the rest go to the workers' UDP queue.

        Runs inside the kernel (its reader), at the kernel's now: the datagram is queued
        directly, without a kernel event of its own, and the work it makes due runs before
        the next datagram is read. Real work is done at once on the live target (the costs
        are zero), so a burst read in one go must not let a worker that finishes early take
        a later datagram before the workers woken for the earlier ones have run: that would
        relay an in-dialog request ahead of the ACK sent before it.
        """
        try:
            if len(data) > self.options.max_message:
                self._oversize(data, source)
                return
            self._sample()
        except Exception as error:  # noqa: BLE001 - one datagram must not stop the server
            self.counters[f"internal error: {type(error).__name__}"] += 1
            return
        self.server.receive(data, source)
        self.kernel.run_due(self.kernel.now)

    def _oversize(self, data: bytes, source: Address) -> None:
        try:
            message = parse_message(data)
        except SipParseError:
            message = None
        if isinstance(message, SipRequest) and message.method != "ACK":
            via = message.top_via
            if via is not None:
                response = make_response(message, 513, "Message Too Large", "oversize")
                port = source[1] if via.rport is not None else via.port or 5060
                self.socket.send(bytes(response), (source[0], port))
                self.counters["oversize requests answered 513"] += 1
                return
        self.counters["oversize datagrams dropped"] += 1

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Serve until SIGINT/SIGTERM (or cancellation); then summary and report."""
        signals = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1)
        try:
            with anyio.open_signal_receiver(*signals) as received:
                async with anyio.create_task_group() as tasks:
                    self.kernel.add_reader(self.socket.sock, self._drain)
                    tasks.start_soon(self.kernel.run)
                    if self.options.interval:
                        self.kernel.call_later(self.options.interval, self._interval)
                    self.snapshot("start")
                    self._say(
                        f"deferbench serve: listening on {self.address[0]}:{self.address[1]} "
                        f"strategy {self.strategy.spec} backend {self.options.backend} "
                        f"children {self.server.settings.children}"
                    )
                    if self.options.ready is not None:
                        self.options.ready(self.address)
                    async for signum in received:
                        if signum == signal.SIGUSR1:
                            snap = self.snapshot(f"usr1-{len(self.snapshots)}")
                            self._say(
                                f"deferbench serve: snapshot {snap['label']} t={snap['t']} "
                                f"shed503={snap['shed_503']} rss={snap['rss_mb']:.0f}MB"
                            )
                            continue
                        break
                    tasks.cancel_scope.cancel()
        finally:
            self.finish()

    def finish(self) -> None:
        """Final snapshot, summary line and report (idempotent enough to call once)."""
        self.snapshot("end")
        self._say("deferbench serve: final " + self.summary_line(final=True))
        if self.options.report is not None:
            self.write_report(self.options.report)
        if self._spool is not None:
            self._spool.close()
            _spool_path(self.options.report).unlink(missing_ok=True)  # type: ignore[arg-type]
        self.rss.close()
        self.socket.close()

    def _say(self, line: str) -> None:
        print(line, file=self.log, flush=True)

    # ------------------------------------------------------------------ books

    def _sample(self) -> None:
        """Queue depth as an arriving datagram finds it (no timer: idle stays idle)."""
        depth = self.server.queue_depth()
        if depth > self._depth_max:
            self._depth_max = depth
        self._depth_sum += depth
        self._depth_n += 1

    def _interval(self) -> None:
        self._say("deferbench serve: " + self.summary_line())
        self.kernel.call_later(self.options.interval, self._interval)

    def totals(self) -> Counter[str]:
        """Deferral outcomes so far (retired records included)."""
        out = Counter(self._retired_count)
        for deferral in self.server.deferrals.values():
            out[deferral.outcome] += 1
            out["deferred"] += 1
        return out

    def summary_line(self, final: bool = False) -> str:
        now = self.kernel.now
        cpu = time.process_time()
        received = self.socket.counters["received"]
        totals = self.totals()
        first = (0.0, self._cpu_start, 0, 0)
        then, cpu_then, received_then, deferred_then = first if final else self._last
        self._last = (now, cpu, received, totals["deferred"])
        span = max(now - then, 1e-9)
        proxy = self.server.proxy.stats()
        counters = self.server.counters
        dropped = counters["udp_receive_buffer_drops"] + (self.socket.os_drops() or 0)
        discarded = sum(v for k, v in counters.items() if k.startswith("discarded"))
        hostile = (
            self.counters["oversize requests answered 513"]
            + self.counters["oversize datagrams dropped"]
        )
        return (
            f"t={now:.1f}s in={(received - received_then) / span:.0f}/s "
            f"deferred={(totals['deferred'] - deferred_then) / span:.0f}/s "
            f"total deferred={totals['deferred']} resumed={totals['resumed']} "
            f"timed_out={totals['timed_out']} pending={totals['pending']} "
            f"live_txn={proxy['transactions_live']} dropped={dropped} "
            f"shed503={self.server.shed_total()} rss={self.rss():.0f}MB "
            f"discarded={discarded} answered_malformed={proxy.get('malformed_answered', 0)} "
            f"too_many_hops={proxy.get('too_many_hops', 0)} oversize={hostile} "
            f"cpu={(cpu - cpu_then) / span:.1%}"
        )

    # ------------------------------------------------------------------ DeferralSink

    def opened(self, deferral: Deferral) -> None:
        """A suspension: its record stays in `server.deferrals` while its transaction lives."""

    def retired(self, deferral: Deferral) -> None:
        """Its transaction is freed: counted, spooled for the report, forgotten."""
        self._retired_count[deferral.outcome] += 1
        self._retired_count["deferred"] += 1
        if self._spool is not None:
            self._refresh_roles()
            record = DeferralRecord.of(deferral, self._role_of)
            self._spool.write(json.dumps(record.to_json()) + "\n")

    def recorded(self, deferral: Deferral) -> None:
        """A record written whole, without a suspension (a blocking sleep): nothing can
        change it, so it is counted and spooled at once, as a retired one."""
        self.retired(deferral)

    def stale(self, txn: TxnId) -> None:
        """A continue after the record was retired (and written): counted only."""
        self.counters["stale continues after the record was written"] += 1

    def snapshot(self, label: str) -> dict[str, Any]:
        """CPU and wake-ups per role now, and the queue depth since the previous snapshot."""
        cpu: Counter[str] = Counter()
        wakeups: Counter[str] = Counter()
        for process in self.server.processes:
            cpu[process.role] += process.cpu_time
            wakeups[process.role] += process.wakeups
        snap = {
            "label": label,
            "t": self.kernel.now,
            "process_cpu": time.process_time() - self._cpu_start,
            "cpu_by_role": dict(cpu),
            "wakeups_by_role": dict(wakeups),
            "queue_depth_max": self._depth_max if self._depth_n else None,
            "queue_depth_mean": self._depth_sum / self._depth_n if self._depth_n else None,
            "rss_mb": self.rss(),
            "shed_503": self.server.shed_total(),
            "host_ticks": host_ticks(),  # the machine's (stolen, all): was it disturbed?
        }
        self._depth_max = self._depth_sum = self._depth_n = 0
        self.snapshots.append(snap)
        return snap

    def report(self, *, with_records: bool = True) -> dict[str, Any]:
        """Everything the harness needs to build a result entry, JSON-ready (the deferral
        records read back from the spool unless `with_records` is False)."""
        counters = dict(self.server.counters)
        for name, value in self.counters.items():
            counters[f"live: {name}"] = value
        for name, value in self.socket.counters.items():
            counters[f"udp: {name}"] = value
        os_drops = self.socket.os_drops()
        if os_drops is not None:
            counters["udp: os receive drops"] = os_drops
        records = [json.loads(line) for line in self._records()] if with_records else []
        return {
            "schema": REPORT_SCHEMA,
            "strategy": self.strategy.spec,
            "backend": self.options.backend,
            "listen": list(self.address),
            "limits": asdict(self.options.limits),
            "snapshots": self.snapshots,
            "counters": counters,
            "proxy": self.server.proxy.stats(),
            "deferrals": records,
        }

    def _records(self) -> Iterator[str]:
        """Every deferral record as a JSON text: those spooled, then those still live."""
        if self._spool is not None and self.options.report is not None:
            self._spool.flush()
            with open(_spool_path(self.options.report), encoding="utf-8") as spooled:
                for line in spooled:
                    yield line.rstrip("\n")
        self._refresh_roles()
        for deferral in self.server.deferrals.values():
            yield json.dumps(DeferralRecord.of(deferral, self._role_of).to_json())

    def write_report(self, path: Path) -> None:
        """The report, its records streamed from the spool (never all in memory at once)."""
        path = Path(path)
        tmp = path.with_name(path.name + ".tmp")
        head = json.dumps(self.report(with_records=False))
        assert head.endswith('"deferrals": []}')
        with open(tmp, "w", encoding="utf-8") as out:
            out.write(head[: -len("[]}")] + "[")
            for i, record in enumerate(self._records()):
                out.write(("," if i else "") + record)
            out.write("]}")
        tmp.replace(path)

    def _refresh_roles(self) -> None:
        """Processes forked since (task workers start on first use) get their role."""
        if len(self._role_of) != len(self.server.processes):
            self._role_of = {p.name: p.role for p in self.server.processes}


def _spool_path(report: Path) -> Path:
    return Path(report).with_name(Path(report).name + ".deferrals.jsonl")


LIVE_GC_THRESHOLDS = (20_000, 50, 100)
"""The live proxy keeps thousands of live, acyclic objects (transactions, timers, messages
kept for the wait timer); with CPython's default thresholds the cyclic collector rescans
them every few hundred allocations, costing CPU per datagram and latency spikes under
load. Raised for `serve` only, and everything imported before serving is frozen out of
the collector's scans."""


def serve(options: ServeOptions, log: TextIO | None = None) -> LiveProxy:
    """Run the live proxy until SIGINT/SIGTERM on `options.backend`; returns it, stopped."""
    proxy = LiveProxy(options, log)
    saved = gc.get_threshold()
    gc.collect()
    gc.freeze()
    gc.set_threshold(*LIVE_GC_THRESHOLDS)
    try:
        anyio.run(proxy.run, backend=options.backend)
    finally:
        gc.set_threshold(*saved)
        gc.unfreeze()
    return proxy
