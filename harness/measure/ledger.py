"""The correctness ledger: every deferred re-INVITE accounted for exactly once.

"Nothing lost" is checked, not assumed. The endpoints and the proxy report what happened to
each transaction the UAC opened, keyed by (Call-ID, CSeq); `close()` gives each one exactly
one outcome, the worst that happened to it, by this precedence:

    duplicated   the proxy ran the continuation twice or more
    stale        a continue looked for it and found nothing (the transaction was gone)
    reordered    it reached the UAS after a higher CSeq of the same dialog had
    race_491     the UAC's final response was the load's race code (491 Request Pending)
    timeout_408  final response 408 (e.g. fr_timer fired while it sat suspended)
    error_5xx    final response 500..599
    other        any other non-2xx final response (4xx except the above, 6xx)
    lost         no final response by close()
    resumed      a 2xx final response: the clean case

The first final response for a key is its outcome; later ones are retransmitted responses.
Retransmitted requests absorbed by the proxy while the transaction sat suspended are counted
in `retransmissions`, which is not an outcome. Events for keys never opened are counted in
`unknown_events`, and opening a key twice in `duplicate_open`; neither crashes the run, and
both make the ledger unclean, since the harness could not account for something.

This module does no I/O and knows nothing about SIP messages.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

Key = tuple[str, int]  # (Call-ID, CSeq number) of a re-INVITE the UAC sent

OUTCOMES: tuple[str, ...] = (
    "duplicated",
    "stale",
    "reordered",
    "race_491",
    "timeout_408",
    "error_5xx",
    "other",
    "lost",
    "resumed",
)


@dataclass(frozen=True, slots=True)
class LedgerSummary:
    """Outcome counts (they sum to `transactions`) plus the counts that are not outcomes."""

    transactions: int = 0
    resumed: int = 0
    lost: int = 0
    duplicated: int = 0
    stale: int = 0
    reordered: int = 0
    race_491: int = 0
    timeout_408: int = 0
    error_5xx: int = 0
    retransmissions: int = 0
    other: int = 0
    unknown_events: int = 0
    duplicate_open: int = 0

    @property
    def clean(self) -> bool:
        """Every transaction resumed and answered 2xx, and the harness saw nothing it could
        not account for. Absorbed retransmissions do not make a run unclean."""
        return (
            self.resumed == self.transactions
            and self.unknown_events == 0
            and self.duplicate_open == 0
        )

    def outcomes(self) -> dict[str, int]:
        return {name: getattr(self, name) for name in OUTCOMES}

    def to_json(self) -> dict[str, int]:
        return asdict(self)

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        return tuple(f.name for f in fields(cls))


@dataclass(slots=True)
class _Entry:
    final: int | None = None
    resumes: int = 0
    stale: bool = False
    reordered: bool = False
    retransmissions: int = 0


class Ledger:
    """Collects events per transaction; `close()` turns them into a LedgerSummary.

    `race_code` is the final status counted as a lost glare race (the load's race_code).
    """

    def __init__(self, race_code: int = 491) -> None:
        self.race_code = race_code
        self._entries: dict[Key, _Entry] = {}
        self._highest_cseq: dict[Any, int] = {}
        self.unknown_events = 0
        self.duplicate_open = 0

    def __len__(self) -> int:
        return len(self._entries)

    def open(self, key: Key) -> None:
        """The UAC sent this re-INVITE: from now on it must be accounted for."""
        if key in self._entries:
            self.duplicate_open += 1
        else:
            self._entries[key] = _Entry()

    def _entry(self, key: Key) -> _Entry | None:
        entry = self._entries.get(key)
        if entry is None:
            self.unknown_events += 1
        return entry

    def final(self, key: Key, status: int) -> None:
        """The UAC received a final response; only the first one per key is its outcome."""
        if not 200 <= status <= 699:
            raise ValueError(f"final response status {status} is not in 200..699")
        entry = self._entry(key)
        if entry is None:
            return
        if entry.final is None:
            entry.final = status

    def resumed(self, key: Key) -> None:
        """The proxy ran the continuation of this transaction (twice or more: duplicated)."""
        if (entry := self._entry(key)) is not None:
            entry.resumes += 1

    def stale(self, key: Key) -> None:
        """A continue for this transaction found nothing to continue."""
        if (entry := self._entry(key)) is not None:
            entry.stale = True

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None:
        """The UAS received it; lower than a CSeq already seen on the dialog means reordered."""
        entry = self._entry(key)
        if entry is None:
            return
        highest = self._highest_cseq.get(dialog)
        if highest is not None and cseq < highest:
            entry.reordered = True
        else:
            self._highest_cseq[dialog] = cseq

    def retransmission(self, key: Key) -> None:
        """A retransmitted request the proxy absorbed (not an outcome)."""
        if (entry := self._entry(key)) is not None:
            entry.retransmissions += 1

    def outcome(self, key: Key) -> str:
        """The single outcome of one transaction as things stand (KeyError if never opened)."""
        return self._outcome(self._entries[key])

    def _outcome(self, entry: _Entry) -> str:
        if entry.resumes > 1:
            return "duplicated"
        if entry.stale:
            return "stale"
        if entry.reordered:
            return "reordered"
        status = entry.final
        if status is None:
            return "lost"
        if status == self.race_code:
            return "race_491"
        if status == 408:
            return "timeout_408"
        if 500 <= status <= 599:
            return "error_5xx"
        if status >= 300:
            return "other"
        return "resumed"

    def close(self) -> LedgerSummary:
        """Give each transaction its one outcome; transactions with no final response are lost.

        Does not change the ledger: closing again after more events gives the new summary.
        """
        counts = dict.fromkeys(OUTCOMES, 0)
        retransmissions = 0
        for entry in self._entries.values():
            counts[self._outcome(entry)] += 1
            retransmissions += entry.retransmissions
        return LedgerSummary(
            transactions=len(self._entries),
            retransmissions=retransmissions,
            unknown_events=self.unknown_events,
            duplicate_open=self.duplicate_open,
            **counts,
        )
