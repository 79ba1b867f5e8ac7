"""Kamailio's log, read back: the DEFERBENCH trace lines of a run.

With `trace=True` the strategy's cfg logs (Kamailio's own wall clock `$TV(Sn)`, µs):

- **Delay.** `DEFERBENCH suspend $TV(Sn) $ci $cs $pp` just before the deferral and
  `DEFERBENCH resume ...` as the continuation's first action. Delays are paired per
  (Call-ID, CSeq): the first suspend and the first resume after it; every further resume
  counts as a duplicate (`parse_trace`).
- **Timer phases.** `mqueue-rtimer`'s traced cfg also logs `DEFERBENCH timer-pass $TV(Sn)
  $pp` for passes 101-120 of each rtimer process (`Trace.timer_passes`), from which
  `deferbench calibrate` fits fork gaps, ε and its drift (`parse_timer_passes`).

It also counts the log's ERROR/WARNING/CRITICAL/ALERT lines.

What this module must not do: start, signal or wait for a process, open a socket or a file
(it parses text it is given; roles come in as {PID: role}); compute a percentile, an
outcome beyond resumed/pending, or a CPU share.
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field

from harness.measure.entry import DeferralRecord
from strategies.inline import TRACE_MARK

_TRACE = re.compile(
    rf"{TRACE_MARK} (suspend|resume) (\d+)\.(\d+) (\S+) (\d+) (\d+)"
)  # $TV(Sn) is "seconds.microseconds"; $ci $cs $pp
_TIMER_PASS = re.compile(rf"{TRACE_MARK} timer-pass (\d+)\.(\d+) (\d+)")  # $TV(Sn) $pp


@dataclass
class Trace:
    """The DEFERBENCH lines of one run, paired per (Call-ID, CSeq)."""

    records: list[DeferralRecord]
    counters: dict[str, int]
    timer_passes: dict[int, list[float]] = field(default_factory=dict)  # PID -> pass times
    epoch: int = 0  # the whole wall-clock second that record times count from

    def suspended_us(self) -> dict[tuple[str, int], int]:
        """(Call-ID, CSeq) -> when Kamailio suspended it, wall-clock µs (the clock SIPp
        stamps with), to set Kamailio's times beside the driver's."""
        return {(r.call_id, r.cseq): self.epoch * 1_000_000 + round(r.suspended_at * 1e6)
                for r in self.records}  # fmt: skip


def parse_timer_passes(log: str) -> dict[int, list[float]]:
    """`timer-pass` lines (a strategy's first passes of each timer process) -> PID -> times.

    Seconds since the first such line: only differences mean anything (phases, periods).
    """
    passes: dict[int, list[float]] = {}
    base: int | None = None
    for sec, usec, pid in _TIMER_PASS.findall(log):
        if base is None:
            base = int(sec)
        passes.setdefault(int(pid), []).append((int(sec) - base) + int(usec) / 1e6)
    return passes


def parse_trace(log: str, role_by_pid: dict[int, str]) -> Trace:
    """Suspend/resume lines -> one `DeferralRecord` per (Call-ID, CSeq) that was suspended.

    Times are Kamailio's wall clock in seconds since the first traced second. The first
    suspend is the suspension; the first resume at or after it gives the delay and
    the role that resumed it (by PID); every resume is counted (two or more: duplicated).
    A second suspend of the same key (a retransmission suspended again) is counted.
    """
    suspends: dict[tuple[str, int], float] = {}
    resumes: dict[tuple[str, int], list[tuple[float, int]]] = {}
    counters: Counter[str] = Counter()
    base: int | None = None  # whole seconds of the first line: keeps µs exact in a float
    for match in _TRACE.finditer(log):
        event, sec, usec, call_id, cseq, pid = match.groups()
        if base is None:
            base = int(sec)
        when = (int(sec) - base) + int(usec) / 1e6
        key = (call_id, int(cseq))
        if event == "suspend":
            counters["trace: suspends"] += 1
            if key in suspends:
                counters["trace: suspended again"] += 1
            else:
                suspends[key] = when
        else:
            counters["trace: resumes"] += 1
            resumes.setdefault(key, []).append((when, int(pid)))
    records = []
    for key, suspended in suspends.items():
        seen = sorted(resumes.pop(key, []))
        first = next(((t, pid) for t, pid in seen if t >= suspended), None)
        records.append(
            DeferralRecord(
                call_id=key[0],
                cseq=key[1],
                suspended_at=suspended,
                resumed_at=first[0] if first else None,
                resumed_by=role_by_pid.get(first[1], "unknown") if first else "",
                resumes=len(seen),
                stale_continues=0,  # Kamailio logs no trace line for a continue that misses
                outcome="resumed" if first else "pending",
            )
        )
    counters["trace: resumes without suspend"] = sum(len(v) for v in resumes.values())
    for level in ("ERROR", "WARNING", "CRITICAL", "ALERT"):
        counters[f"log: {level} lines"] = len(re.findall(rf"\) {level}:", log))
    return Trace(records, dict(counters), parse_timer_passes(log), base or 0)
