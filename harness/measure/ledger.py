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

from collections import Counter
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


# What the ledger keeps of one transaction, packed in a small int (CPython shares those:
# an entry costs its key and a dict slot) below 256: resumes seen (0, 1, 2 = more), the
# stale and reordered flags, the class of the first final response and whether the UAS
# received it.
_RESUMES = 0b11
_STALE = 1 << 2
_REORDERED = 1 << 3
_FINAL_SHIFT = 4
_FINAL = 0b111 << _FINAL_SHIFT
_REACHED = 1 << 7
_NO_FINAL, _RACE, _TIMEOUT, _ERROR_5XX, _OTHER, _SUCCESS = range(6)
_BY_FINAL = {
    _NO_FINAL: "lost",
    _RACE: "race_491",
    _TIMEOUT: "timeout_408",
    _ERROR_5XX: "error_5xx",
    _OTHER: "other",
    _SUCCESS: "resumed",
}


class Ledger:
    """Collects events per transaction; `close()` turns them into a LedgerSummary.

    `race_code` is the final status counted as a lost glare race (the load's race_code).
    Each transaction costs its key and a small int (see `_RESUMES`), not a record.

    `streamed`: every deferral record to come is announced as soon as it exists (`keep`),
    and retired when its transaction is freed (`retire`), as the sim's servers do. Then a
    transaction with no record is counted, not kept, once the UAS has it and its final
    response is in (nothing left can change its outcome), so a long run keeps no entry per
    undeferred re-INVITE (`inline`, or a strategy that relays undelayed). Targets that
    hand their records over at the end keep every entry until then.
    """

    def __init__(self, race_code: int = 491, streamed: bool = False) -> None:
        self.race_code = race_code
        self.streamed = streamed
        self._to_come: set[Key] = set()  # `streamed`: with a record to come (`keep`)
        self._entries: dict[Key, int] = {}
        self._highest_cseq: dict[Any, int] = {}
        self.unknown_events = 0
        self.duplicate_open = 0
        self.retransmissions = 0
        self._retired: Counter[int] = Counter()  # entries retired (see `retire`), by value

    def __len__(self) -> int:
        return len(self._entries) + self._retired.total()

    def retire(self, key: Key) -> int | None:
        """Stop keeping a transaction whose outcome only a stale continue can still change
        (the caller knows: its proxy transaction is gone): it is counted, not kept, and its
        packed value returned for `retired_stale`. Not done (None) while it has no final
        response, or when that is a 408, which the UAC also gives itself on Timer B while
        the request may still reach the UAS (and so be found reordered)."""
        self._to_come.discard(key)
        entry = self._entries.get(key)
        if entry is None:
            return None
        return self._settle(key, entry)

    def _settle(self, key: Key, entry: int) -> int | None:
        """Count `entry` as retired and forget its key, once its final is neither missing
        nor a 408; its value, else None."""
        if (entry & _FINAL) >> _FINAL_SHIFT in (_NO_FINAL, _TIMEOUT):
            return None
        del self._entries[key]
        self._retired[entry] += 1
        return entry

    def keep(self, key: Key) -> None:
        """This transaction has a deferral record still to come (`streamed` only): it is
        kept until its record is retired, whatever the UAS and the UAC saw."""
        if self.streamed:
            self._to_come.add(key)

    def retired_stale(self, entry: int) -> int:
        """`stale` for a retired transaction, given the value `retire` returned (or this
        method did): its new value."""
        if not entry & _STALE:
            self._retired[entry] -= 1
            entry |= _STALE
            self._retired[entry] += 1
        return entry

    def open(self, key: Key) -> None:
        """The UAC sent this re-INVITE: from now on it must be accounted for."""
        if key in self._entries:
            self.duplicate_open += 1
        else:
            self._entries[key] = 0

    def _entry(self, key: Key) -> int | None:
        entry = self._entries.get(key)
        if entry is None:
            self.unknown_events += 1
        return entry

    def _final_class(self, status: int) -> int:
        if status == self.race_code:
            return _RACE
        if status == 408:
            return _TIMEOUT
        if 500 <= status <= 599:
            return _ERROR_5XX
        if status >= 300:
            return _OTHER
        return _SUCCESS

    def final(self, key: Key, status: int) -> None:
        """The UAC received a final response; only the first one per key is its outcome."""
        if not 200 <= status <= 699:
            raise ValueError(f"final response status {status} is not in 200..699")
        entry = self._entry(key)
        if entry is None:
            return
        if entry & _FINAL == 0:  # _NO_FINAL
            entry |= self._final_class(status) << _FINAL_SHIFT
            self._entries[key] = entry
            if self.streamed and entry & _REACHED and key not in self._to_come:
                self._settle(key, entry)

    def resumed(self, key: Key) -> None:
        """The proxy ran the continuation of this transaction (twice or more: duplicated)."""
        if (entry := self._entry(key)) is not None and entry & _RESUMES < 2:
            self._entries[key] = entry + 1

    def stale(self, key: Key) -> None:
        """A continue for this transaction found nothing to continue."""
        if (entry := self._entry(key)) is not None:
            self._entries[key] = entry | _STALE

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None:
        """The UAS received it; lower than a CSeq already seen on the dialog means reordered."""
        entry = self._entry(key)
        if entry is None:
            return
        highest = self._highest_cseq.get(dialog)
        if highest is not None and cseq < highest:
            entry |= _REORDERED
        else:
            self._highest_cseq[dialog] = cseq
        self._entries[key] = entry | _REACHED

    def dialog_ended(self, dialog: Any) -> None:
        """The UAS ended `dialog`: no re-INVITE on it reaches the UAS any more, so its
        highest CSeq is forgotten (a long run keeps no entry per call)."""
        self._highest_cseq.pop(dialog, None)

    def retransmission(self, key: Key) -> None:
        """A retransmitted request the proxy absorbed (not an outcome)."""
        if self._entry(key) is not None:
            self.retransmissions += 1

    def outcome(self, key: Key) -> str:
        """The single outcome of one transaction as things stand (KeyError if never opened)."""
        return self._outcome(self._entries[key])

    def _outcome(self, entry: int) -> str:
        if entry & _RESUMES > 1:
            return "duplicated"
        if entry & _STALE:
            return "stale"
        if entry & _REORDERED:
            return "reordered"
        return _BY_FINAL[(entry & _FINAL) >> _FINAL_SHIFT]

    def close(self) -> LedgerSummary:
        """Give each transaction its one outcome; transactions with no final response are lost.

        Does not change the ledger: closing again after more events gives the new summary.
        """
        counts = dict.fromkeys(OUTCOMES, 0)
        for entry, n in (Counter(self._entries.values()) + self._retired).items():
            counts[self._outcome(entry)] += n
        return LedgerSummary(
            transactions=len(self),
            retransmissions=self.retransmissions,
            unknown_events=self.unknown_events,
            duplicate_open=self.duplicate_open,
            **counts,
        )
