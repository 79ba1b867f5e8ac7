"""What every target computes the same way: from observations to one result-schema entry.

Targets differ in how they start and observe the server (a modelled server on virtual
time, a live proxy over UDP, real Kamailio); they never differ in how a ledger is closed,
a percentile computed or a CPU share defined. A target hands this module:

- the deferrals the server recorded (`DeferralRecord`: suspend/resume times on the
  server's clock, the role of the process that resumed, resumes, stale continues);
- the UAC and UAS it drove (their timings and counters) and the ledger they reported to,
  or, for a driver that is not the harness's own UAC (SIPp), the same UAC figures as
  `UacFigures` (send times, e2e samples, unfinished calls);
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
from harness.measure.ledger import Key, Ledger
from harness.measure.metrics import Distribution, early_share, lateness_summary
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
    """Busy seconds and wake-ups by role over a window of `seconds`; shares are of `cores`."""

    seconds: float
    cores: int
    busy: dict[str, float]
    wakeups: dict[str, int]

    @property
    def busy_total(self) -> float:
        return sum(self.busy.values())

    def busy_share(self, busy: float) -> float:
        return busy / (self.seconds * self.cores)

    def per_second(self, count: float) -> float:
        return count / self.seconds


@dataclass(frozen=True, slots=True)
class UacFigures:
    """What the entry needs from the load's UAC, whoever played it: per re-INVITE sent, its
    send time (on the clock of `load_start`) and e2e (None or NaN: no final response); and
    the calls planned but not finished."""

    sent: Sequence[float]
    e2e: Sequence[float | None]
    calls_unfinished: int

    @classmethod
    def of(cls, uac: Uac, calls_planned: int) -> UacFigures:
        """From the harness's own UAC (its arrays, shared: NaN for no final response)."""
        return cls(uac.sent, uac.e2e, uac.active + calls_planned - len(uac.calls))


class DeferralTally:
    """Deferral records accounted as each becomes final, so a run keeps no record per
    deferral: resumes and stale continues go to the ledger, the delay into an array of
    doubles at the record's place in suspend order (the order the records were kept in,
    which the float sum of the mean depends on), the resuming role into a counter.

    It is the sink a sim server streams to (`core.runtime.server.DeferralSink`): `opened`
    gives a suspension its place, `retired` accounts it when its transaction is freed (and
    retires its ledger entry too), and `stale` reports a continue that comes after that.
    For that last case it keeps each retired transaction's packed id with the ledger's
    value of its entry in two arrays (9 bytes a deferral; a stale continue is rare, so it
    is looked up by a scan), or its key in a dict if the ledger kept the entry (no final
    yet, or a 408). `role_of` maps a process name to its role. Records handed to `add`
    without a place (a strategy that records without suspending, other targets) follow in
    the order given.
    """

    def __init__(self, ledger: Ledger, role_of: Callable[[str], str] | None = None) -> None:
        self.ledger = ledger
        self._role_of = role_of
        self._delays = array("d")
        self.resumed_by: Counter[str] = Counter()
        self._retired_ids = array("Q")  # packed txn ids of retired ledger entries...
        self._retired_entries = array("B")  # ...and the ledger's value of each
        self._kept: dict[int, Key] = {}  # packed txn id -> key of an entry the ledger kept

    def opened(self, deferral: Any) -> None:
        deferral.slot = len(self._delays)
        self._delays.append(math.nan)

    def retired(self, deferral: Any) -> None:
        """A `core.runtime.server.Deferral` that can no longer change (or the run ended)."""
        by = deferral.resumed_by
        role = "" if not by else self._role_of(by) if self._role_of else "unknown"
        key = self._account(deferral, role)
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
        key = (record.call_id, record.cseq)
        ledger = self.ledger
        for _ in range(record.resumes):
            ledger.resumed(key)
        if record.stale_continues:
            ledger.stale(key)
        if record.resumed_at is not None:
            delay = record.resumed_at - record.suspended_at
            slot = getattr(record, "slot", -1)
            if slot >= 0:
                self._delays[slot] = delay
            else:
                self._delays.append(delay)
            self.resumed_by[role or "unknown"] += 1
        return key

    def delays(self) -> array[float]:
        """Every resumed deferral's delay (s), in suspend order (doubles, not float objects:
        a long run's result is built without a Python float per transaction)."""
        return array("d", [d for d in self._delays if not math.isnan(d)])


def account_deferrals(
    ledger: Ledger, records: Iterable[DeferralRecord]
) -> tuple[list[float], Counter[str]]:
    """Report resumes and stale continues to the ledger; the delays and who resumed."""
    tally = DeferralTally(ledger)
    for record in records:
        tally.add(record)
    return list(tally.delays()), tally.resumed_by


def cpu_figures(window: CpuWindow, idle: CpuWindow | None, sent_in_window: int) -> dict[str, Any]:
    """The `cpu` object of the result schema."""
    busy = window.busy_total
    return {
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
    if tally is None:
        tally = DeferralTally(ledger)
    for record in records:
        tally.add(record)
    delays, resumed_by = tally.delays(), tally.resumed_by
    summary = ledger.close()

    delay = Distribution()
    delay.record_all(delays)
    e2e = Distribution()
    sent_in_window = 0
    window_end = load_start + window.seconds
    for sent, latency in zip(uac.sent, uac.e2e, strict=True):
        if sent < window_end:
            sent_in_window += 1
        if latency is not None and latency == latency:  # None or NaN: no final response
            e2e.record(latency)

    requested = strategy.requested_delay
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
        "early_share": early_share(delays, requested),
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
