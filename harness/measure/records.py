"""Per-transaction records, on request, streamed to CSV files as each becomes final.

A run's figures come from histograms and counters filled as transactions end, so nothing
is kept per transaction. An operator who wants the raw rows (to join with Kamailio's own
logs, or to plot them another way) asks for them (`deferbench run --records`), and each row
goes to disk as soon as it is known: memory stays flat however long the run.

Two files per strategy, joined on (call_id, cseq):

- `<stem>.reinvites.csv`: each re-INVITE the UAC sent, when it was meant to go and went,
  its first final status and when that came (empty when the run ended first), its
  end-to-end latency and its Timer A retransmissions;
- `<stem>.deferrals.csv`: each suspension at the proxy, when it was suspended and resumed,
  the delay, the role whose process ran the continuation, its outcome, how many
  continuations found it (more than 1 is a duplicate) and how many came after it was gone.

Times are seconds on the run's clock (virtual time on the sim), durations milliseconds.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

REINVITE_COLUMNS = (
    "call_id", "cseq", "intended_s", "sent_s", "final_s", "status", "e2e_ms",
    "retransmissions",
)  # fmt: skip
DEFERRAL_COLUMNS = (
    "call_id", "cseq", "suspended_s", "resumed_s", "delay_ms", "resumed_by", "outcome",
    "resumes", "stale_continues",
)  # fmt: skip


def _seconds(value: float | None) -> str:
    return "" if value is None else f"{value:.6f}"


def _ms(value: float | None) -> str:
    return "" if value is None else f"{1000.0 * value:.3f}"


class RecordFiles:
    """The two CSV files of one run, written row by row (close them at the end)."""

    def __init__(self, stem: Path) -> None:
        stem.parent.mkdir(parents=True, exist_ok=True)
        self.paths = (
            stem.with_name(stem.name + ".reinvites.csv"),
            stem.with_name(stem.name + ".deferrals.csv"),
        )
        self._files = [path.open("w", newline="", encoding="utf-8") for path in self.paths]
        self._reinvites = csv.writer(self._files[0])
        self._deferrals = csv.writer(self._files[1])
        self._reinvites.writerow(REINVITE_COLUMNS)
        self._deferrals.writerow(DEFERRAL_COLUMNS)

    def reinvite(self, call_id: str, timing: Any) -> None:
        """A `harness.load.uac.ReinviteTiming`: answered, or unanswered at the run's end."""
        final = timing.final_at
        self._reinvites.writerow((
            call_id, timing.cseq, _seconds(timing.intended), _seconds(timing.sent),
            _seconds(final), timing.status or "",
            _ms(None if final is None else final - timing.intended), timing.retransmissions,
        ))  # fmt: skip

    def deferral(self, record: Any, role: str) -> None:
        """A `core.runtime.server.Deferral` that can no longer change, and the role of the
        process that resumed it ("" if none did)."""
        resumed = record.resumed_at
        self._deferrals.writerow((
            record.call_id, record.cseq, _seconds(record.suspended_at), _seconds(resumed),
            _ms(None if resumed is None else resumed - record.suspended_at), role,
            record.outcome, record.resumes, record.stale_continues,
        ))  # fmt: skip

    def close(self) -> None:
        for file in self._files:
            file.close()
