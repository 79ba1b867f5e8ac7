"""Small shared value types of the sans-IO core: addresses, transaction ids, and the
actions the core hands back to whoever does the I/O.

Nothing here knows about sockets or clocks; times are plain floats (seconds) passed in.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from core.sip import SipMessage, SipRequest

Address = tuple[str, int]


@dataclass(frozen=True, slots=True)
class TxnId:
    """Kamailio's transaction identity: (hash_index, label), as `$T(id_index)`/`$T(id_label)`.

    A stale id fails its lookup; it never names another call (reference §1).
    """

    index: int
    label: int

    def __post_init__(self) -> None:
        if not 0 <= self.index <= 65535:
            raise ValueError(f"transaction index {self.index} outside [0, 65535]")
        if self.label < 0:
            raise ValueError(f"transaction label {self.label} is negative")

    def __str__(self) -> str:
        return f"{self.index}:{self.label}"


# ---------------------------------------------------------------- actions (core -> caller)


@dataclass(frozen=True, slots=True)
class Send:
    """Send `message` to `destination` (the caller serialises and does the I/O)."""

    message: SipMessage
    destination: Address


@dataclass(frozen=True, slots=True)
class Deliver:
    """A new request for the routing logic (Kamailio's request_route).

    `txn` is None for requests that have no transaction of their own (ACK for a 2xx,
    stray ACKs); the routing logic forwards those statelessly.
    """

    request: SipRequest
    source: Address
    txn: TxnId | None


@dataclass(frozen=True, slots=True)
class Discarded:
    """Input dropped without an answer, and why (counted by servers, never silent)."""

    reason: str
    source: Address | None = None


@dataclass(frozen=True, slots=True)
class SuspensionEvent:
    """Something happened to a suspended transaction: for ledgers and delay accounting.

    kind is one of: "suspended", "resumed", "absorbed" (a retransmission answered from
    state while suspended), "cancelled" (487 sent, continuation will be skipped),
    "timed_out" (fr deadline: 408 sent, continuation will be discarded), "freed" (the
    transaction of a suspension is gone: a continue can only find nothing from now on).
    """

    kind: str
    txn: TxnId
    time: float


Action = Send | Deliver | Discarded | SuspensionEvent


class ContinueOutcome(enum.Enum):
    """What `t_continue(index, label)` found (reference §1.3), told apart as tmx cannot."""

    RESUMED = "resumed"  # route runs now
    NOT_FOUND = "not_found"  # stale or freed id (-1)
    ALREADY_CONTINUED = "already_continued"  # T_ASYNC_SUSPENDED cleared (-2)
    CANCELLED = "cancelled"  # T_CANCELED (+1, route skipped)
    TIMED_OUT = "timed_out"  # fr deadline passed, 408 sent (-2 / +1, route skipped)


class SuspendOutcome(enum.Enum):
    """What `t_suspend()` did (reference §1.1)."""

    SUSPENDED = "suspended"
    ALREADY_CANCELLED = "already_cancelled"  # +1: no ids, nothing to resume
    ALREADY_ANSWERED = "already_answered"  # -3: final reply already sent
    TOO_MANY_BRANCHES = "too_many_branches"  # max_branches blind branches used up
    NOT_FOUND = "not_found"  # unknown or freed id: nothing to suspend
