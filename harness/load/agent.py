"""What the simulated SIP user agents (`harness.load.uac`, `harness.load.uas`) share.

- `Endpoint`, their base: one timer heap driving both their RFC 3261 transactions' timers
  (`core.transaction`) and their own (the UAC's next request and forgetting a call, the
  UAS's 2xx retransmission), behind `next_deadline()` / `expire(now)`;
- `ReinviteObserver`, what they report about each re-INVITE, and `NO_OBSERVER`;
- `host_ref`, an address as the host:port of their URIs and Via.

Every re-INVITE is reported to an observer (the ledger) under key (Call-ID, CSeq number):
`open` when first sent, `retransmission` on each Timer A retransmission by the UAC,
`final` with the first final status, and `reached_uas` when a new server transaction for it
reaches the UAS; `dialog_ended` when the UAS ends a dialog (no re-INVITE reaches it after).

What this module must not do: read a clock, sleep, or touch a socket (the agents are sans-IO:
the sim target's kernel or the live target's host drives them with `now`), import the UAC or
the UAS (they import it), or know which strategy the proxy runs.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections import Counter
from typing import Any, Protocol

from core.events import Address, Send
from core.transaction import TimerHeap, Transaction, TransactionError

Key = tuple[str, int]  # (Call-ID, CSeq number) of a re-INVITE


class ReinviteObserver(Protocol):
    """What the agents report about each re-INVITE (`harness.measure.ledger.Ledger` is one)."""

    def open(self, key: Key) -> None: ...

    def final(self, key: Key, status: int) -> None: ...

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None: ...

    def retransmission(self, key: Key) -> None: ...

    def dialog_ended(self, dialog: Any) -> None: ...


class _NoObserver:
    def open(self, key: Key) -> None:
        pass

    def final(self, key: Key, status: int) -> None:
        pass

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None:
        pass

    def retransmission(self, key: Key) -> None:
        pass

    def dialog_ended(self, dialog: Any) -> None:
        pass


NO_OBSERVER: ReinviteObserver = _NoObserver()


def host_ref(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


class Endpoint(ABC):
    """What both user agents share: one timer heap driving their transactions' timers and
    their own (next request, 2xx retransmission, forgetting a call), all sans-IO."""

    _heap: TimerHeap
    counters: Counter[str]

    def next_deadline(self) -> float | None:
        return self._heap.next_deadline()

    def close(self) -> None:
        """Drop every timer and transaction at once (the run is over), so that reference
        counting frees them (see `TimerHeap.clear`)."""
        self._heap.clear()

    def expire(self, now: float) -> list[Send]:
        """Fire every timer due at or before `now`: retransmissions, timeouts, next steps."""
        sends: list[Send] = []
        pop = self._heap.pop_due
        while (entry := pop(now)) is not None:
            target, name = entry[2], entry[3]
            if isinstance(target, Transaction):
                try:
                    outputs = target.on_timer(name, now)
                except TransactionError:  # a timer its table does not expect: drop it
                    self.counters["timers out of place"] += 1
                    continue
                self._transaction_timer(target, name)
                sends += self._outputs(target, outputs, now)
            else:
                sends += self._own_timer(target, name, entry[0], now)
        return sends

    def _transaction_timer(self, txn: Transaction, name: str) -> None:
        """A transaction timer fired (before its outputs are handled); nothing by default."""
        return None

    @abstractmethod
    def _outputs(self, txn: Any, outputs: list, now: float) -> list[Send]:
        """Handle what a transaction returned; the messages to send."""

    @abstractmethod
    def _own_timer(self, target: Any, name: str, when: float, now: float) -> list[Send]:
        """One of the endpoint's own timers fired."""
