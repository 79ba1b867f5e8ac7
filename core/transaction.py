"""RFC 3261 §17 client and server transactions as sans-IO state machines.

Each transaction kind is a table `(kind, state, event) -> (new state, effects)`; a missing
entry is a `TransactionError` naming the kind, state and event, so the user (a proxy, a UAC
or a UAS) can turn an out-of-place message into a discard instead of crashing.  Effects are
plain strings ("send_ack", "start A", "backoff E" ...) compiled once at import, so the
tables stay data you can print (`describe()`), not branches spread over methods.

Time is passed in; timers live in a `TimerHeap` (`core.timer_heap`) shared by every
transaction of one user, which exposes the exact next deadline.  Transport is
UDP (unreliable): the RFC timers for reliable transports are not modelled.

This module must not open sockets, read clocks, sleep, or import an event loop.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.compiled import pickle_by_fields
from core.events import Address, Send
from core.sip import SipMessage, SipRequest, SipResponse, parse_message
from core.timer_heap import TimerHeap  # the users of transactions import it from here

INVITE_CLIENT = "INVITE client"
NON_INVITE_CLIENT = "non-INVITE client"
INVITE_SERVER = "INVITE server"
NON_INVITE_SERVER = "non-INVITE server"

MAGIC_COOKIE = "z9hG4bK"


class TransactionError(Exception):
    """A message or timer the transaction's state machine has no entry for."""

    def __init__(self, kind: str, state: str, event: str) -> None:
        super().__init__(f"{kind} transaction in state {state!r} cannot handle {event!r}")
        self.kind = kind
        self.state = state
        self.event = event


@dataclass(frozen=True, slots=True)
class TimerSettings:
    """RFC 3261 timer base values (seconds); every §17 timer derives from these."""

    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0

    def __post_init__(self) -> None:
        if not (0 < self.t1 <= self.t2) or self.t4 <= 0:
            raise ValueError(f"need 0 < t1 <= t2 and t4 > 0, got {self}")

    def initial(self, timer: str) -> float:
        """The first interval of `timer` (Table 4 of RFC 3261, UDP; L and M from RFC 6026)."""
        if timer in "AEG":
            return self.t1
        if timer in "BFHJLM":
            return 64 * self.t1
        if timer == "D":
            return max(32.0, 64 * self.t1)
        if timer in "IK":
            return self.t4
        raise ValueError(f"unknown timer {timer!r}")


pickle_by_fields(TimerSettings)

# ---------------------------------------------------------------- outputs (txn -> user)


@dataclass(frozen=True, slots=True)
class PassToUser:
    """A message the transaction user must see (new request, ACK to 2xx, response)."""

    message: SipMessage


@dataclass(frozen=True, slots=True)
class TransactionTimeout:
    """Timer B, F or H fired: the transaction gave up (the user answers 408 or cleans up)."""

    timer: str


@dataclass(frozen=True, slots=True)
class TransactionTerminated:
    """The transaction reached Terminated; the user drops it from its matching tables."""


TERMINATED = TransactionTerminated()

TxnOutput = Send | PassToUser | TransactionTimeout | TransactionTerminated


# ---------------------------------------------------------------- the tables

_CALLING_EXIT = ("stop A", "stop B")
_TRYING_EXIT = ("stop E", "stop F")

TRANSITIONS: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]] = {
    # INVITE client, §17.1.1 with RFC 6026's Accepted state (2xx retransmissions reach the TU)
    (INVITE_CLIENT, "init", "send"): ("calling", ("send_request", "start A", "start B")),
    (INVITE_CLIENT, "calling", "timer_A"): ("calling", ("send_request", "backoff A")),
    (INVITE_CLIENT, "calling", "timer_B"): ("terminated", ("timeout B", "terminate")),
    (INVITE_CLIENT, "calling", "1xx"): ("proceeding", (*_CALLING_EXIT, "pass")),
    (INVITE_CLIENT, "calling", "2xx"): ("accepted", (*_CALLING_EXIT, "pass", "start M")),
    (INVITE_CLIENT, "calling", "300-699"): (
        "completed",
        (*_CALLING_EXIT, "send_ack", "pass", "start D"),
    ),
    (INVITE_CLIENT, "proceeding", "1xx"): ("proceeding", ("pass",)),
    (INVITE_CLIENT, "proceeding", "2xx"): ("accepted", ("pass", "start M")),
    (INVITE_CLIENT, "proceeding", "300-699"): ("completed", ("send_ack", "pass", "start D")),
    (INVITE_CLIENT, "completed", "300-699"): ("completed", ("send_ack",)),
    (INVITE_CLIENT, "completed", "timer_D"): ("terminated", ("terminate",)),
    (INVITE_CLIENT, "accepted", "2xx"): ("accepted", ("pass",)),
    (INVITE_CLIENT, "accepted", "timer_M"): ("terminated", ("terminate",)),
    # non-INVITE client, §17.1.2
    (NON_INVITE_CLIENT, "init", "send"): ("trying", ("send_request", "start E", "start F")),
    (NON_INVITE_CLIENT, "trying", "timer_E"): ("trying", ("send_request", "backoff E")),
    (NON_INVITE_CLIENT, "trying", "timer_F"): ("terminated", ("timeout F", "terminate")),
    (NON_INVITE_CLIENT, "trying", "1xx"): ("proceeding", ("pass",)),
    (NON_INVITE_CLIENT, "trying", "2xx"): ("completed", (*_TRYING_EXIT, "pass", "start K")),
    (NON_INVITE_CLIENT, "trying", "300-699"): (
        "completed",
        (*_TRYING_EXIT, "pass", "start K"),
    ),
    (NON_INVITE_CLIENT, "proceeding", "timer_E"): ("proceeding", ("send_request", "hold E")),
    (NON_INVITE_CLIENT, "proceeding", "timer_F"): ("terminated", ("timeout F", "terminate")),
    (NON_INVITE_CLIENT, "proceeding", "1xx"): ("proceeding", ("pass",)),
    (NON_INVITE_CLIENT, "proceeding", "2xx"): (
        "completed",
        (*_TRYING_EXIT, "pass", "start K"),
    ),
    (NON_INVITE_CLIENT, "proceeding", "300-699"): (
        "completed",
        (*_TRYING_EXIT, "pass", "start K"),
    ),
    (NON_INVITE_CLIENT, "completed", "2xx"): ("completed", ()),
    (NON_INVITE_CLIENT, "completed", "300-699"): ("completed", ()),
    (NON_INVITE_CLIENT, "completed", "timer_K"): ("terminated", ("terminate",)),
    # INVITE server, §17.2.1 with RFC 6026's Accepted state.  A retransmitted INVITE
    # re-sends the last response in every state (as Kamailio's t_retransmit_reply does).
    (INVITE_SERVER, "init", "request"): ("proceeding", ("pass",)),
    (INVITE_SERVER, "proceeding", "request"): ("proceeding", ("resend_response",)),
    (INVITE_SERVER, "proceeding", "tu_1xx"): ("proceeding", ("send_response",)),
    (INVITE_SERVER, "proceeding", "tu_2xx"): ("accepted", ("send_response", "start L")),
    (INVITE_SERVER, "proceeding", "tu_300-699"): (
        "completed",
        ("send_response", "start G", "start H"),
    ),
    (INVITE_SERVER, "completed", "request"): ("completed", ("resend_response",)),
    (INVITE_SERVER, "completed", "timer_G"): ("completed", ("resend_response", "backoff G")),
    (INVITE_SERVER, "completed", "timer_H"): ("terminated", ("timeout H", "terminate")),
    (INVITE_SERVER, "completed", "ack"): ("confirmed", ("stop G", "stop H", "start I")),
    (INVITE_SERVER, "confirmed", "ack"): ("confirmed", ()),
    (INVITE_SERVER, "confirmed", "request"): ("confirmed", ("resend_response",)),
    (INVITE_SERVER, "confirmed", "timer_I"): ("terminated", ("terminate",)),
    (INVITE_SERVER, "accepted", "request"): ("accepted", ("resend_response",)),
    (INVITE_SERVER, "accepted", "ack"): ("accepted", ("pass",)),
    (INVITE_SERVER, "accepted", "tu_2xx"): ("accepted", ("send_response",)),
    (INVITE_SERVER, "accepted", "timer_L"): ("terminated", ("terminate",)),
    # non-INVITE server, §17.2.2
    (NON_INVITE_SERVER, "init", "request"): ("trying", ("pass",)),
    (NON_INVITE_SERVER, "trying", "request"): ("trying", ()),
    (NON_INVITE_SERVER, "trying", "tu_1xx"): ("proceeding", ("send_response",)),
    (NON_INVITE_SERVER, "trying", "tu_2xx"): ("completed", ("send_response", "start J")),
    (NON_INVITE_SERVER, "trying", "tu_300-699"): ("completed", ("send_response", "start J")),
    (NON_INVITE_SERVER, "proceeding", "request"): ("proceeding", ("resend_response",)),
    (NON_INVITE_SERVER, "proceeding", "tu_1xx"): ("proceeding", ("send_response",)),
    (NON_INVITE_SERVER, "proceeding", "tu_2xx"): ("completed", ("send_response", "start J")),
    (NON_INVITE_SERVER, "proceeding", "tu_300-699"): (
        "completed",
        ("send_response", "start J"),
    ),
    (NON_INVITE_SERVER, "completed", "request"): ("completed", ("resend_response",)),
    (NON_INVITE_SERVER, "completed", "timer_J"): ("terminated", ("terminate",)),
}


def describe() -> str:
    """The tables as text, one transition a line (for docs and eyeballing)."""
    return "\n".join(
        f"{kind:18} {state:11} --{event}--> {new:11} {', '.join(effects)}"
        for (kind, state, event), (new, effects) in TRANSITIONS.items()
    )


def response_event(status: int) -> str:
    """The table event of a response status code."""
    if status < 200:
        return "1xx"
    if status < 300:
        return "2xx"
    return "300-699"


# ---------------------------------------------------------------- transactions


class Transaction:
    """State shared by the four kinds: a table-driven state plus named timers."""

    __slots__ = (
        "kind",
        "state",
        "request",
        "peer",
        "owner",
        "_heap",
        "_settings",
        "_timers",
        "_interval",
        "_carrier",
    )

    def __init__(
        self,
        kind: str,
        request: SipRequest,
        peer: Address,
        heap: TimerHeap,
        settings: TimerSettings,
        owner: Any = None,
    ) -> None:
        self.kind = kind
        self.state = "init"
        self.request = request
        self.peer = peer  # where this transaction sends: next hop (client) or upstream (server)
        self.owner = owner  # opaque to the transaction: whatever the user wants back
        self._heap = heap
        self._settings = settings
        self._timers: dict[str, tuple[float, int]] | None = {}  # (when, seq); None: lingers
        self._interval: dict[str, float] | None = {}  # last interval of A, E, G (backoff)
        # Its entry in the heap (a list carrying its timers), or in a linger queue (a tuple,
        # see `_linger`), or None.
        self._carrier: Any = None

    def __repr__(self) -> str:
        method = self.request.method if self.request is not None else "(settled)"
        return f"<{self.kind} transaction {self.state} {method}>"

    @property
    def terminated(self) -> bool:
        return self.state == "terminated"

    def timer_deadline(self, timer: str) -> float | None:
        """When the named timer fires next, or None if it is not running."""
        timers = self._timers
        if timers is None:
            lingering = self._carrier
            return lingering[0] if lingering is not None and lingering[3] == timer else None
        key = timers.get(timer)
        return key[0] if key is not None else None

    def on_timer(self, timer: str, now: float) -> list[TxnOutput]:
        """A timer of this transaction popped from the heap (`TimerHeap.pop_due`)."""
        return self._fire(_TIMER_EVENT[timer], None, now)

    def terminate(self) -> None:
        """Forced end by the user (e.g. its owner is freed): stop timers, emit nothing."""
        self.state = "terminated"
        self._cancel_all()

    def _fire(self, event: str, message: SipMessage | None, now: float) -> list[TxnOutput]:
        entry = _COMPILED.get((self.kind, self.state, event))
        if entry is None:
            raise TransactionError(self.kind, self.state, event)
        self.state = entry[0]
        out: list[TxnOutput] = []
        for step, arg in entry[1]:
            step(self, arg, message, now, out)
        return out

    def _init(
        self,
        kind: str,
        request: SipRequest,
        peer: Address,
        heap: TimerHeap,
        settings: TimerSettings,
        owner: Any,
    ) -> None:
        """`Transaction.__init__` without the call through super() (subclasses' hot path)."""
        self.kind = kind
        self.state = "init"
        self.request = request
        self.peer = peer
        self.owner = owner
        self._heap = heap
        self._settings = settings
        self._timers = {}
        self._interval = {}
        self._carrier = None

    def _cancel_all(self) -> None:
        heap = self._heap
        timers = self._timers
        carrier = self._carrier
        if timers is None:  # lingering: its queue entry, no longer held, is skipped
            if carrier is not None:
                self._carrier = None
                heap._running -= 1
            return
        heap._running -= len(timers)
        timers.clear()
        if carrier is not None:
            self._carrier = None
            heap._kill(carrier)

    def _linger(self) -> None:
        """Settled, with one linger timer left (M, K, L, J): it moves to the heap's queue
        for it (`_carrier` is its entry there); the timer dict and heap carrier go. Left is
        what absorbing retransmissions needs: the key, the state, the owner."""
        timers = self._timers
        if timers is None or len(timers) != 1:
            return
        ((name, (when, seq)),) = timers.items()
        if name not in _LINGER_TIMERS:
            return
        heap = self._heap
        entry = heap._linger(when, seq, self, name)
        if entry is None:
            return
        carrier = self._carrier
        if carrier is not None:
            heap._kill(carrier)
        self._timers = None
        self._carrier = entry

    def _timer_table(self) -> dict[str, tuple[float, int]]:
        """Its running timers, its linger timer taken back from the queue if it lingers."""
        timers = self._timers
        if timers is not None:
            return timers
        timers = self._timers = {}
        lingering = self._carrier
        self._carrier = None
        if lingering is not None:
            timers[lingering[3]] = (lingering[0], lingering[1])
            self._carrier = self._heap._carry(lingering[0], lingering[1], self)
        return timers

    # timers (one heap entry carries them all, see TimerHeap) ---------------------------

    def _carries(self, seq: int) -> bool:
        """Whether a running timer has sequence number `seq` (asked on every look at the
        heap's head: a plain loop, no generator)."""
        for key in self._timers.values():  # type: ignore[union-attr]  # noqa: SIM110
            if key[1] == seq:
                return True
        return False

    def _recarry(self, carrier: list[Any]) -> str | None:
        """The carrier popped: the timer of its key, if still running, fires (removed and
        named); a new carrier goes in at the earliest timer left."""
        self._carrier = None
        seq = carrier[1]
        fired = None
        earliest = None
        timers: dict = self._timers  # type: ignore[assignment]  # a carrier: not lingering
        for name, key in timers.items():
            if key[1] == seq:
                fired = name
            elif earliest is None or key < earliest:
                earliest = key
        if fired is not None:
            del timers[fired]
        if earliest is not None:
            self._carrier = self._heap._carry(earliest[0], earliest[1], self)
        return fired

    def _start(self, timer: str, interval: float, now: float) -> None:
        heap = self._heap
        timers = self._timers if self._timers is not None else self._timer_table()
        if timer in timers:
            del timers[timer]
            heap._running -= 1
        if timer in "AEG":
            self._interval[timer] = interval  # type: ignore[index]
        when = now + interval
        seq = next(heap._seq)
        timers[timer] = (when, seq)
        heap._running += 1
        carrier = self._carrier
        if carrier is None or when < carrier[0]:
            if carrier is not None:
                heap._kill(carrier)
            self._carrier = heap._carry(when, seq, self)

    def _eff_start(self, timer: str, message: Any, now: float, out: list) -> None:
        settings = self._settings
        # TimerSettings.initial(timer), inlined: the timers of UDP transactions (Table 4)
        if timer in "AEG":
            interval = settings.t1
        elif timer in "BFHJLM":
            interval = 64 * settings.t1
        else:
            interval = settings.initial(timer)
        self._start(timer, interval, now)

    def _eff_backoff(self, timer: str, message: Any, now: float, out: list) -> None:
        intervals = self._interval
        assert intervals is not None  # only a settled transaction drops it, and stops backing off
        interval = 2 * intervals.get(timer, self._settings.t1)
        if timer != "A":  # Timer A doubles without bound; E and G are capped at T2
            interval = min(interval, self._settings.t2)
        self._start(timer, interval, now)

    def _eff_hold(self, timer: str, message: Any, now: float, out: list) -> None:
        self._start(timer, self._settings.t2, now)

    def _eff_stop(self, timer: str, message: Any, now: float, out: list) -> None:
        if self._timer_table().pop(timer, None) is not None:
            self._heap._running -= 1  # its carrier, if it was the earliest, pops early

    def _eff_pass(self, arg: Any, message: Any, now: float, out: list) -> None:
        out.append(PassToUser(message if message is not None else self.request))

    def _eff_timeout(self, timer: str, message: Any, now: float, out: list) -> None:
        out.append(TransactionTimeout(timer))

    def _eff_terminate(self, arg: Any, message: Any, now: float, out: list) -> None:
        self._cancel_all()
        out.append(TERMINATED)


class ClientTransaction(Transaction):
    """§17.1: sends a request to `peer` and retransmits it until answered or timed out.

    Matching key (§17.1.3): the branch of the top Via plus the CSeq method.
    """

    __slots__ = ("key", "last_response")

    def __init__(
        self,
        request: SipRequest,
        peer: Address,
        heap: TimerHeap,
        settings: TimerSettings,
        owner: Any = None,
        key: tuple[str | None, str] | None = None,
    ) -> None:
        kind = INVITE_CLIENT if request.method == "INVITE" else NON_INVITE_CLIENT
        self._init(kind, request, peer, heap, settings, owner)
        self.key = key if key is not None else client_key(request)
        self.last_response: SipResponse | None = None

    def start(self, now: float) -> list[TxnOutput]:
        """Send the request for the first time and arm the retransmission/timeout timers."""
        return self._fire("send", None, now)

    def receive_response(self, response: SipResponse, now: float) -> list[TxnOutput]:
        """A response matched to this transaction (by `client_key`)."""
        outputs = self._fire(response_event(response.status), response, now)
        self.last_response = response
        return outputs

    def settle(self) -> None:
        """The user is done with the final answer: once nothing can make this transaction
        send its request again (an INVITE accepted, a non-INVITE completed), drop the
        request and the response. It lingers (Timer M, K) on its key, state and timers
        alone: a few hundred bytes instead of two messages for up to 64·T1."""
        state = self.state
        if state == "accepted" or (self.kind == NON_INVITE_CLIENT and state == "completed"):
            self.request = None  # type: ignore[assignment]
            self.last_response = None
            self._interval = None  # no timer backs off any more
            self._linger()

    def stop_retransmissions(self) -> None:
        """Stop re-sending the request and its timeout (Kamailio does this on fr expiry or
        CANCEL) while the transaction stays matchable for a late answer."""
        timers = self._timer_table()
        for timer in ("A", "B", "E", "F"):
            if timers.pop(timer, None) is not None:
                self._heap._running -= 1

    def _eff_send_request(self, arg: Any, message: Any, now: float, out: list) -> None:
        out.append(Send(self.request, self.peer))

    def _eff_send_ack(self, arg: Any, message: Any, now: float, out: list) -> None:
        out.append(Send(make_ack(self.request, message), self.peer))


class ServerTransaction(Transaction):
    """§17.2: absorbs retransmissions of a request and re-sends the last response.

    Matching key (§17.2.3): top Via branch + sent-by + method (ACK counts as INVITE);
    requests without the RFC 3261 magic cookie fall back to an RFC 2543 style key.
    """

    # The last response is `_last`, or, once settled, its bytes (`_wire`): parsed again
    # only if a retransmission asks for it.
    __slots__ = ("key", "_last", "_wire")

    def __init__(
        self,
        request: SipRequest,
        peer: Address,
        heap: TimerHeap,
        settings: TimerSettings,
        owner: Any = None,
        key: tuple | None = None,
    ) -> None:
        kind = INVITE_SERVER if request.method == "INVITE" else NON_INVITE_SERVER
        self._init(kind, request, peer, heap, settings, owner)
        self.key = key if key is not None else server_key(request)
        self._last: SipResponse | None = None
        self._wire: bytes | None = None

    @property
    def last_response(self) -> SipResponse | None:
        last = self._last
        if last is None and self._wire is not None:
            return parse_message(self._wire)  # type: ignore[return-value]
        return last

    @last_response.setter
    def last_response(self, response: SipResponse | None) -> None:
        self._last = response
        self._wire = None

    @property
    def final_sent(self) -> bool:
        last = self._last
        if last is None:
            return self._wire is not None  # settled: only after a final response
        return last.status >= 200

    def start(self, now: float) -> list[TxnOutput]:
        """The request arrived for the first time: hand it to the user."""
        return self._fire("request", None, now)

    def receive_request(self, request: SipRequest, now: float) -> list[TxnOutput]:
        """A retransmission (or, for INVITE, an ACK) matched to this transaction."""
        return self._fire("ack" if request.method == "ACK" else "request", request, now)

    def send_response(self, response: SipResponse, now: float) -> list[TxnOutput]:
        """The user answers; the transaction sends it and keeps it for retransmissions."""
        status = response.status
        event = "tu_1xx" if status < 200 else "tu_2xx" if status < 300 else "tu_300-699"
        return self._fire(event, response, now)

    def settle(self) -> None:
        """The user has answered finally: absorbing retransmissions needs only the key and
        the last response, so the request goes and the response is kept as the bytes it
        serialises to (parsed again if a retransmission needs it). A transaction lingering
        on Timer L, J or G/H/I then costs a few hundred bytes instead of two messages."""
        last = self._last
        if last is not None and last.status >= 200:
            self.request = None  # type: ignore[assignment]
            self._wire = bytes(last)
            self._last = None
            if self.state != "completed":  # Timer G (backoff) runs only in Completed
                self._interval = None
            self._linger()

    def _eff_send_response(self, arg: Any, message: Any, now: float, out: list) -> None:
        self._last = message
        self._wire = None
        out.append(Send(message, self.peer))

    def _eff_resend_response(self, arg: Any, message: Any, now: float, out: list) -> None:
        if self.last_response is not None:
            out.append(Send(self.last_response, self.peer))


_TIMER_EVENT = {t: f"timer_{t}" for t in "ABDEFGHIJKLM"}

# Timers that only keep a settled transaction matchable, a fixed interval (see `_linger`).
_LINGER_TIMERS = frozenset("MKLJ")

_STEP_BY_VERB: dict[str, Callable[..., None]] = {
    "start": Transaction._eff_start,
    "backoff": Transaction._eff_backoff,
    "hold": Transaction._eff_hold,
    "stop": Transaction._eff_stop,
    "pass": Transaction._eff_pass,
    "timeout": Transaction._eff_timeout,
    "terminate": Transaction._eff_terminate,
    "send_request": ClientTransaction._eff_send_request,
    "send_ack": ClientTransaction._eff_send_ack,
    "send_response": ServerTransaction._eff_send_response,
    "resend_response": ServerTransaction._eff_resend_response,
}


def _compile(
    table: dict[tuple[str, str, str], tuple[str, tuple[str, ...]]],
) -> dict[tuple[str, str, str], tuple[str, tuple[tuple[Callable[..., None], str | None], ...]]]:
    compiled = {}
    for key, (new_state, effects) in table.items():
        steps = []
        for effect in effects:
            verb, _, arg = effect.partition(" ")
            steps.append((_STEP_BY_VERB[verb], arg or None))
        compiled[key] = (new_state, tuple(steps))
    return compiled


_COMPILED = _compile(TRANSITIONS)


def expire(heap: TimerHeap, now: float) -> list[tuple[Transaction, list[TxnOutput]]]:
    """Fire every transaction timer due at or before `now`, earliest first, for users whose
    heap holds only transaction timers (a UAC or UAS); returns what each one emitted."""
    fired: list[tuple[Transaction, list[TxnOutput]]] = []
    while (entry := heap.pop_due(now)) is not None:
        txn = entry[2]
        fired.append((txn, txn.on_timer(entry[3], now)))
    return fired


# ---------------------------------------------------------------- matching keys


def client_key(message: SipMessage) -> tuple[str | None, str]:
    """§17.1.3: a response matches the client transaction whose request carried the same
    top Via branch and CSeq method (CANCEL and INVITE share a branch, not a key)."""
    via = message.top_via
    return (via.branch if via is not None else None, message.cseq.method)


def server_key(request: SipRequest) -> tuple:
    """§17.2.3: branch + sent-by + method, with ACK (and CANCEL's INVITE) matched by
    `invite_key`.  Without the magic cookie, an RFC 2543 style key (§17.2.3 end)."""
    return _server_key(request, "INVITE" if request.method == "ACK" else request.method)


def invite_key(request: SipRequest) -> tuple:
    """The key of the INVITE server transaction a CANCEL (or ACK) refers to."""
    return _server_key(request, "INVITE")


def _server_key(request: SipRequest, method: str) -> tuple:
    via = request.top_via
    if via is None:
        raise ValueError("request has no Via")
    branch = via.branch
    if branch is not None and branch.startswith(MAGIC_COOKIE):
        return (branch, via.host.lower(), via.port, method)
    return (
        "rfc2543",
        request.call_id,
        request.from_tag,
        request.cseq.number,
        via.host.lower(),
        via.port,
        request.uri,
        method,
    )


# ---------------------------------------------------------------- request builders


def _first_via(request: SipRequest) -> str:
    vias = request.get_all("Via")
    if not vias:
        raise ValueError("request has no Via")
    return vias[0]


def _hop_by_hop(request: SipRequest, method: str, to: str | None) -> SipRequest:
    headers: list[tuple[str, str]] = [("Via", _first_via(request))]
    routes = request.get_all("Route")
    if routes:
        headers.append(("Route", ", ".join(routes)))
    headers.append(("Max-Forwards", "70"))
    for name in ("From",):
        value = request.get(name)
        if value is not None:
            headers.append((name, value))
    if to is not None:
        headers.append(("To", to))
    headers.append(("Call-ID", request.call_id))
    headers.append(("CSeq", f"{request.cseq.number} {method}"))
    headers.append(("Content-Length", "0"))
    return SipRequest(method, request.uri, headers)


def make_ack(request: SipRequest, response: SipResponse) -> SipRequest:
    """§17.1.1.3: the ACK an INVITE client transaction sends for a 300-699 response
    (same branch and Request-URI, To from the response, Route copied)."""
    return _hop_by_hop(request, "ACK", response.get("To"))


def make_cancel(request: SipRequest) -> SipRequest:
    """§9.1: a CANCEL for `request` (same branch, Request-URI, From, To, Call-ID, CSeq number)."""
    return _hop_by_hop(request, "CANCEL", request.get("To"))
