"""What every target computes the same way: from observations to one result-schema entry.

Targets differ in how they start and observe the server (a modelled server on virtual
time, a live proxy over UDP, real Kamailio); they never differ in how a ledger is closed,
a percentile computed or a CPU share defined. A target hands this module:

- the deferrals the server recorded (`DeferralRecord`: suspend/resume times on the
  server's clock, the role of the process that resumed, resumes, stale continues);
- the UAC and UAS it drove (their timings and counters) and the ledger they reported to,
  or, for a driver that is not the harness's own UAC (SIPp), the same UAC figures as
  `UacFigures` (re-INVITEs sent in the window, the e2e distribution, unfinished calls);
- the CPU it observed over the load window (`CpuWindow`: busy seconds and wake-ups per
  role, the window's length and how many cores the busy time is a share of) and, if
  measured, over an idle window;
- its own counters (prefix -> {name: value}) and queue-depth samples.

This module does no I/O and reads no clock.
"""

from __future__ import annotations

import math
from array import array
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from harness.load.endpoints import Uac, Uas
from harness.load.spec import LoadSpec
from harness.measure.inorder import InOrder
from harness.measure.ledger import Key, Ledger
from harness.measure.metrics import EARLY_EPSILON_S, Distribution, lateness_summary
from strategies.base import Strategy


@dataclass(frozen=True, slots=True)
class DeferralRecord:
    """One suspension as the server saw it, in a form that survives JSON (live `serve`)."""

    call_id: str
    cseq: int
    suspended_at: float
    resumed_at: float | None
    resumed_by: str  # role of the process that ran the continuation ("" if none)
    resumes: int
    stale_continues: int
    outcome: str = "pending"

    @classmethod
    def of(cls, deferral: Any, role_of: Mapping[str, str]) -> DeferralRecord:
        """From a `core.runtime.server.Deferral`; `role_of` maps process name -> role."""
        by = deferral.resumed_by
        return cls(
            deferral.call_id,
            deferral.cseq,
            deferral.suspended_at,
            deferral.resumed_at,
            role_of.get(by, "unknown") if by else "",
            deferral.resumes,
            deferral.stale_continues,
            deferral.outcome,
        )

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> DeferralRecord:
        return cls(**{name: data[name] for name in cls.__slots__})


@dataclass(frozen=True)
class CpuWindow:
    """Busy seconds and wake-ups by role over a window of `seconds`; shares are of `cores`.
    `host_ticks`: the machine's (stolen, all) CPU ticks over the window, where known."""

    seconds: float
    cores: int
    busy: dict[str, float]
    wakeups: dict[str, int]
    host_ticks: tuple[int, int] | None = None

    @property
    def busy_total(self) -> float:
        return sum(self.busy.values())

    def busy_share(self, busy: float) -> float:
        return busy / (self.seconds * self.cores)

    def per_second(self, count: float) -> float:
        return count / self.seconds

    @property
    def steal_share(self) -> float | None:
        """Share of the machine's CPU time the hypervisor gave to someone else."""
        if self.host_ticks is None or self.host_ticks[1] <= 0:
            return None
        return max(0, self.host_ticks[0]) / self.host_ticks[1]


@dataclass(frozen=True, slots=True)
class UacFigures:
    """What the entry needs from the load's UAC, whoever played it: how many re-INVITEs it
    sent before a time (`sent_before`, on the clock of `load_start`), the e2e latency of
    those answered (recorded in send order), and the calls planned but not finished."""

    sent_before: Callable[[float], int]
    e2e: Distribution
    calls_unfinished: int

    @classmethod
    def of(cls, uac: Uac, calls_planned: int) -> UacFigures:
        """From the harness's own UAC (which recorded them as the run went)."""
        unfinished = uac.active + calls_planned - uac.calls_started
        return cls(uac.sent_before, uac.e2e_distribution(), unfinished)

    @classmethod
    def of_reinvites(
        cls, sent: Sequence[float], e2e: Sequence[float | None], calls_unfinished: int
    ) -> UacFigures:
        """From per re-INVITE send times and e2e latencies in send order (None or NaN: no
        final response), for a driver that reports them at the end (SIPp)."""
        latency = Distribution()
        for value in e2e:
            if value is not None and value == value:  # None or NaN: no final response
                latency.record(value)
        return cls(lambda end: sum(1 for t in sent if t < end), latency, calls_unfinished)


class _Delays:
    """Where a `DeferralTally`'s delays go, in suspend order: their distribution and how
    many came before `early_below`. Not a method of the tally: its `InOrder` would then
    hold the tally that holds it, a cycle that keeps a finished run's ledger alive."""

    __slots__ = ("distribution", "early", "early_below")

    def __init__(self, early_below: float) -> None:
        self.distribution = Distribution()
        self.early = 0
        self.early_below = early_below

    def __call__(self, delay: float) -> None:
        self.distribution.record(delay)
        if delay < self.early_below:
            self.early += 1


class DeferralTally:
    """Deferral records accounted as each becomes final, so a run keeps no record per
    deferral: resumes and stale continues go to the ledger, the delay into `delay` in
    suspend order (the order the records were kept in, which the float sum of the mean
    depends on: see `harness.measure.inorder`) and into the count of those shorter than
    `requested` (`early_share`), the resuming role into a counter.

    It is the sink a sim server streams to (`core.runtime.server.DeferralSink`): `opened`
    gives a suspension its place (and tells the ledger to keep its entry), `retired`
    accounts it when its transaction is freed (and retires its ledger entry too), `stale`
    reports a continue that comes after that, and `recorded` accounts at once a record
    written whole without a suspension (a blocking sleep).
    For that last case it keeps each retired transaction's packed id with the ledger's
    value of its entry in two arrays (9 bytes a deferral; a stale continue is rare, so it
    is looked up by a scan), or its key in a dict if the ledger kept the entry (no final
    yet, or a 408). `role_of` maps a process name to its role. Records without a place
    (`recorded`, or handed to `add` by other targets) follow in the order given.
    """

    def __init__(
        self,
        ledger: Ledger,
        role_of: Callable[[str], str] | None = None,
        requested: float = 0.0,
    ) -> None:
        self.ledger = ledger
        self._role_of = role_of
        self.requested = requested
        self._taken = _Delays(requested - EARLY_EPSILON_S)
        self.delay = self._taken.distribution
        self._delays = InOrder(self._taken)
        self.resumed_by: Counter[str] = Counter()
        self._retired_ids = array("Q")  # packed txn ids of retired ledger entries...
        self._retired_entries = array("B")  # ...and the ledger's value of each
        self._kept: dict[int, Key] = {}  # packed txn id -> key of an entry the ledger kept
        # Told of each record as it is accounted, with its resuming role (raw records).
        self.on_record: Callable[[Any, str], None] | None = None

    def opened(self, deferral: Any) -> None:
        deferral.slot = self._delays.open()
        self.ledger.keep((deferral.call_id, deferral.cseq))

    def recorded(self, deferral: Any) -> None:
        """A record written whole, without a suspension: accounted now, nothing kept (no
        continue can find it later)."""
        self._account(deferral, self._role(deferral))

    def _role(self, deferral: Any) -> str:
        by = deferral.resumed_by
        return "" if not by else self._role_of(by) if self._role_of else "unknown"

    def retired(self, deferral: Any) -> None:
        """A `core.runtime.server.Deferral` that can no longer change (or the run ended)."""
        key = self._account(deferral, self._role(deferral))
        txn = deferral.txn
        entry = self.ledger.retire(key)
        if entry is None:
            self._kept[txn.index << 32 | txn.label] = key
        else:
            self._retired_ids.append(txn.index << 32 | txn.label)
            self._retired_entries.append(entry)

    def stale(self, txn: Any) -> None:
        packed = txn.index << 32 | txn.label
        key = self._kept.get(packed)
        if key is not None:
            self.ledger.stale(key)
            return
        try:
            i = self._retired_ids.index(packed)
        except ValueError:
            return  # never deferred here (a strategy's own record, another target)
        self._retired_entries[i] = self.ledger.retired_stale(self._retired_entries[i])

    def add(self, record: DeferralRecord) -> None:
        """A record accounted at the end (a target that keeps them, a live record)."""
        self._account(record, record.resumed_by)

    def _account(self, record: Any, role: str) -> Key:
        if self.on_record is not None:
            self.on_record(record, role)
        key = (record.call_id, record.cseq)
        ledger = self.ledger
        for _ in range(record.resumes):
            ledger.resumed(key)
        if record.stale_continues:
            ledger.stale(key)
        slot = getattr(record, "slot", -1)
        if record.resumed_at is not None:
            delay = record.resumed_at - record.suspended_at
            self._delays.close(slot if slot >= 0 else self._delays.open(), delay)
            self.resumed_by[role or "unknown"] += 1
        elif slot >= 0:
            self._delays.close(slot, math.nan)  # never resumed: no delay
        return key

    def finish(self) -> None:
        """Every record is in (the run ended): the delays still held go into `delay`."""
        self._delays.flush()

    def early_share(self) -> float | None:
        """Share of the delays shorter than `requested` by more than 1 ns (`early_share` in
        `harness.measure.metrics`, counted as they came); None when there are none."""
        return self._taken.early / len(self.delay) if len(self.delay) else None


def cpu_figures(window: CpuWindow, idle: CpuWindow | None, sent_in_window: int) -> dict[str, Any]:
    """The `cpu` object of the result schema."""
    busy = window.busy_total
    figures: dict[str, Any] = {
        "busy_share": window.busy_share(busy),
        "idle_share": None if idle is None else idle.busy_share(idle.busy_total),
        "wakeups_per_s": window.per_second(sum(window.wakeups.values())),
        "per_txn_us": busy * 1e6 / sent_in_window if sent_in_window else None,
        "by_role": {
            role: {
                "busy_share": window.busy_share(window.busy.get(role, 0.0)),
                "wakeups_per_s": window.per_second(window.wakeups.get(role, 0)),
            }
            for role in sorted(set(window.busy) | set(window.wakeups))
        },
    }
    if window.steal_share is not None:  # a real machine's (a sim has no host)
        figures["host_steal_share"] = window.steal_share
    return figures


def _counters(
    counters: Mapping[str, int],
    resumed_by: Counter[str],
    sources: Iterable[tuple[str, Mapping[str, Any]]],
    calls_planned: int,
    calls_unfinished: int,
) -> dict[str, int]:
    """The `counters` object: the server's, who resumed, then each source under its prefix."""
    out: dict[str, int] = dict(sorted(counters.items()))
    for role, n in sorted(resumed_by.items()):
        out[f"resumed by {role}"] = n
    for prefix, source in sources:
        for name, value in sorted(source.items()):
            out[f"{prefix}: {name}"] = int(value)
    out["calls planned"] = calls_planned
    out["calls unfinished"] = calls_unfinished
    return out


def strategy_entry(
    *,
    strategy: Strategy,
    target: str,
    load: LoadSpec,
    seed: int,
    records: Iterable[DeferralRecord],
    ledger: Ledger,
    uac: Uac | UacFigures,
    uas: Uas | None,
    window: CpuWindow,
    idle: CpuWindow | None,
    counters: Mapping[str, int],
    sources: Iterable[tuple[str, Mapping[str, Any]]],
    calls_planned: int,
    samples: list[int],
    wall: float,
    speed_wall: float | None,
    load_start: float = 0.0,
    tally: DeferralTally | None = None,
) -> dict[str, Any]:
    """One strategy entry of `deferbench.result/1`.

    `counters` are the server's own, `sources` further (prefix, counters) pairs in report
    order; re-INVITEs count as sent in the window when sent before `load_start +
    window.seconds` (UAC clock). `speed_wall`: wall seconds the loaded run took, for the
    simulation speed figure (None: not a simulation). `uac` is the harness's UAC or, for
    another driver, its `UacFigures` (`uas` is not read). `tally`: the deferrals streamed
    during the run (`records` then holds those it has not seen).
    """
    if not isinstance(uac, UacFigures):
        uac = UacFigures.of(uac, calls_planned)
    requested = strategy.requested_delay
    if tally is None:
        tally = DeferralTally(ledger, requested=requested)
    if tally.requested != requested:
        raise ValueError(f"the tally counted early delays against {tally.requested} s")
    for record in records:
        tally.add(record)
    tally.finish()
    delay, resumed_by = tally.delay, tally.resumed_by
    summary = ledger.close()

    e2e = uac.e2e
    sent_in_window = uac.sent_before(load_start + window.seconds)
    delay_ms = delay.summary()

    out = _counters(counters, resumed_by, sources, calls_planned, uac.calls_unfinished)
    return {
        "strategy": strategy.spec,
        "params": dict(strategy.values),
        "target": target,
        "load": load.spec,
        "seed": seed,
        "requested_delay_ms": requested * 1e3,
        "delay_ms": delay_ms,
        "lateness_ms": lateness_summary(delay_ms, requested * 1e3),
        "e2e_ms": e2e.summary(),
        "early_share": tally.early_share(),
        "ledger": summary.to_json(),
        "cpu": cpu_figures(window, idle, sent_in_window),
        "counters": out,
        "queue_depth": {
            "max": max(samples) if samples else None,
            "mean": sum(samples) / len(samples) if samples else None,
        },
        "histograms": {"delay": delay.encode(), "e2e": e2e.encode()},
        "wall_seconds": wall,
        "sim_txn_per_wall_s": (
            summary.transactions / speed_wall if speed_wall and summary.transactions else None
        ),
    }
