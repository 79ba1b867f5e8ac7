"""Simulated SIP user agents: the UAC that plays the load's call flow, and a strict UAS.

Each call is the flow the deferral exists for (one dialog, CSeq 1, 2, ...):

    INVITE -> (100 from the proxy) -> 200 -> ACK, then `reinvites` times
    [gap] re-INVITE -> 200 -> ACK, then [gap] BYE -> 200.

Both agents are sans-IO like the core: they take `now`, return the `Send`s to do, and
expose `next_deadline()` / `expire(now)`. Retransmissions over UDP are the core's RFC 3261
client and server transactions (`core.transaction`); the UA cores above them do what
§13 asks of them: the UAC acknowledges every 2xx (again on each retransmitted 2xx), the UAS
retransmits its 2xx until the ACK comes (§13.3.1.4), giving up after 64·T1.

Choices where the issue and the RFC leave room (all deliberate, all documented here):

- Routing: the INVITE goes to the outbound proxy with a pre-loaded `Route: <proxy;lr>`
  and the UAS as Request-URI; the route set is the reversed Record-Route of the 2xx and
  in-dialog requests (ACK, re-INVITE, BYE) go to the UAS Contact along it. Without an
  outbound proxy (tests) the UAC sends straight to the Request-URI.
- Timing: a re-INVITE (or the BYE) is sent `gap` after the ACK that precedes it; for a
  re-INVITE that got a non-2xx final, that ACK is the transaction's own hop-by-hop ACK, sent
  when the final arrived. The *intended* send time of a re-INVITE is that ACK's time + gap
  and end-to-end latency is measured from it; the intended time of a call's INVITE is its
  scheduled start. The sim's UAC never lags, so intended == sent there; a live UAC may lag,
  and measuring from the intended time keeps coordinated omission out of the figure.
- After a non-2xx final to a re-INVITE (491 race, 408, 5xx) the UAC goes on with the call
  (next re-INVITE after `gap`, then BYE), with a new CSeq and no §14.1 random back-off, so
  that one failure does not hide the later ones. A re-INVITE that gets no response at all
  (Timer B) counts as a 408, as §8.1.3.1 says the UA should treat a timeout, and the call
  also goes on. A failed INVITE ends the call (no dialog, no re-INVITE).
- The strict UAS answers a re-INVITE that arrives while the previous 2xx on the dialog is
  still waiting for its ACK with `race_code` (491 Request Pending), and one whose CSeq is not
  above the dialog's remote CSeq with 500 (§12.2.2); it never sends a 1xx (the proxy
  sends 100 Trying). A 2xx never acknowledged within 64·T1 is counted, not followed by a BYE.
- Tags, branches and Call-IDs are derived from the call index (and the CSeq), so two runs
  with the same schedule send byte-identical messages.

Every re-INVITE is reported to an observer (the ledger) under key (Call-ID, CSeq number):
`open` when first sent, `retransmission` on each Timer A retransmission by the UAC,
`final` with the first final status, and `reached_uas` when a new server transaction for it
reaches the UAS.

What this module must not do: read a clock, sleep, or touch a socket (the sim target and the
live target drive it), or know which strategy the proxy runs.
"""

from __future__ import annotations

import zlib
from abc import ABC, abstractmethod
from collections import Counter
from dataclasses import dataclass
from typing import Any, Protocol

from core.events import Address, Send
from core.sip import (
    CSeq,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    _request,
    make_response,
    parse_name_addr,
    parse_uri,
)
from core.transaction import (
    MAGIC_COOKIE,
    TERMINATED,
    ClientTransaction,
    PassToUser,
    ServerTransaction,
    TimerHeap,
    TimerSettings,
    Transaction,
    TransactionError,
    TransactionTimeout,
    client_key,
    server_key,
)

Key = tuple[str, int]  # (Call-ID, CSeq number) of a re-INVITE


class ReinviteObserver(Protocol):
    """What the agents report about each re-INVITE (`harness.measure.ledger.Ledger` is one)."""

    def open(self, key: Key) -> None: ...

    def final(self, key: Key, status: int) -> None: ...

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None: ...

    def retransmission(self, key: Key) -> None: ...


class _NoObserver:
    def open(self, key: Key) -> None:
        pass

    def final(self, key: Key, status: int) -> None:
        pass

    def reached_uas(self, key: Key, dialog: Any, cseq: int) -> None:
        pass

    def retransmission(self, key: Key) -> None:
        pass


NO_OBSERVER: ReinviteObserver = _NoObserver()


def uri_address(uri: str) -> Address:
    """(host, port) a SIP URI names (port 5060 when absent); ValueError if it is not SIP."""
    parsed = parse_uri(uri)
    if not parsed.is_sip:
        raise ValueError(f"not a SIP URI: {uri!r}")
    host = parsed.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    return (host, parsed.port or 5060)


def _via_parts(head: str) -> tuple[str, str, int | None] | None:
    """(transport, host, port) that Via `head` + a branch suffix parses to, or None if it
    does not parse to exactly that (then built requests parse their Via when asked)."""
    try:
        via = Via.parse(f"{head}0")
    except SipParseError:
        return None
    branch = head.rpartition("branch=")[2] + "0"
    if via != Via(via.transport, via.host, via.port, (("branch", branch),)):
        return None
    return (via.transport, via.host, via.port)


def _known_name_addr(value: str) -> Any:
    """The parsed From/To of a request being built, or None if it does not parse (then it
    is left out of the cache, and asking for it raises as it would have)."""
    try:
        return parse_name_addr(value)
    except SipParseError:
        return None


def _host_ref(address: Address) -> str:
    host, port = address
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ---------------------------------------------------------------------------- UAC


@dataclass(slots=True)
class ReinviteTiming:
    """When one re-INVITE was meant to go, went, and was answered (seconds, run clock)."""

    call: int
    cseq: int
    intended: float
    sent: float
    final_at: float | None = None
    status: int | None = None
    retransmissions: int = 0

    @property
    def e2e(self) -> float | None:
        """Intended send -> first final response at the UAC (None while unanswered)."""
        return None if self.final_at is None else self.final_at - self.intended


@dataclass(slots=True)
class CallRecord:
    """One call of the schedule as the UAC played it."""

    index: int
    call_id: str
    intended: float  # the schedule's start time
    started: float
    answered_at: float | None = None  # 2xx to the INVITE
    invite_status: int | None = None
    ended_at: float | None = None
    outcome: str = "active"  # active | completed | failed


class _Call:
    """A call's dialog state on the UAC side."""

    __slots__ = (
        "record",
        "call_id",
        "from_value",
        "to_value",
        "remote_target",
        "route",
        "next_hop",
        "cseq",
        "reinvites_sent",
        "acks",
        "ended",
    )

    def __init__(self, record: CallRecord, from_value: str, to_value: str) -> None:
        self.record = record
        self.call_id = record.call_id
        self.from_value = from_value
        self.to_value = to_value  # gains the remote tag with the 2xx
        self.remote_target = ""
        self.route: list[str] = []
        self.next_hop: Address | None = None
        self.cseq = 0
        self.reinvites_sent = 0
        self.acks: dict[int, SipRequest] = {}  # CSeq -> the ACK sent for its 2xx
        self.ended = False


LINGER = 32.0
"""Seconds an ended call stays known, to acknowledge late 2xx retransmissions (64·T1)."""


class _Endpoint(ABC):
    """What both user agents share: one timer heap driving their transactions' timers and
    their own (next request, 2xx retransmission, forgetting a call), all sans-IO."""

    _heap: TimerHeap
    counters: Counter[str]

    def next_deadline(self) -> float | None:
        return self._heap.next_deadline()

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


class Uac(_Endpoint):
    """Plays each call of a schedule: INVITE, `reinvites` re-INVITEs `gap` apart, BYE."""

    def __init__(
        self,
        address: Address,
        target: Address,
        *,
        reinvites: int,
        gap: float,
        outbound_proxy: Address | None = None,
        observer: ReinviteObserver | None = None,
        timers: TimerSettings | None = None,
    ) -> None:
        if reinvites < 0:
            raise ValueError(f"reinvites must be >= 0, got {reinvites}")
        if gap < 0:
            raise ValueError(f"gap must be >= 0, got {gap}")
        self.address = address
        self.target = target
        self.reinvites = reinvites
        self.gap = gap
        self.outbound_proxy = outbound_proxy
        self.observer = observer if observer is not None else NO_OBSERVER
        self.settings = timers or TimerSettings()
        self.calls: list[CallRecord] = []
        self.timings: dict[Key, ReinviteTiming] = {}
        self.counters: Counter[str] = Counter()
        self.active = 0
        self._heap = TimerHeap()
        self._clients: dict[tuple, ClientTransaction] = {}
        self._live: dict[str, _Call] = {}
        ref = _host_ref(address)
        self._via = f"SIP/2.0/UDP {ref};branch={MAGIC_COOKIE}"
        self._via_parts = _via_parts(self._via)
        self._contact = f"<sip:uac@{ref}>"
        self._uas_uri = f"sip:uas@{_host_ref(target)}"
        self._preloaded = (
            [f"<sip:{_host_ref(outbound_proxy)};lr>"] if outbound_proxy is not None else []
        )

    # ------------------------------------------------------------------ inputs

    def start_call(self, index: int, now: float, intended: float | None = None) -> list[Send]:
        """Begin call `index` (its INVITE) now; `intended` is its scheduled start."""
        call_id = f"call-{index}@{self.address[0]}"
        record = CallRecord(index, call_id, now if intended is None else intended, now)
        host = self.address[0]
        call = _Call(record, f"<sip:uac@{host}>;tag=uac-{index}", f"<{self._uas_uri}>")
        self.calls.append(record)
        self._live[call_id] = call
        self.active += 1
        self.counters["calls started"] += 1
        call.route = list(self._preloaded)
        call.remote_target = self._uas_uri
        call.next_hop = self.outbound_proxy or self.target
        return self._send_request(call, "INVITE", now)

    def receive(self, message: SipMessage, source: Address, now: float) -> list[Send]:
        """A datagram for the UAC: responses go to their client transaction."""
        if type(message) is not SipResponse:
            # The flow has no request towards the UAC; a UAS-initiated BYE would be 481.
            self.counters["requests ignored"] += 1
            return []
        try:
            txn = self._clients.get(client_key(message))
        except SipParseError:
            self.counters["malformed responses"] += 1
            return []
        if txn is None:
            return self._stray_response(message)
        try:
            outputs = txn.receive_response(message, now)
        except TransactionError:
            self.counters["responses out of place"] += 1
            return []
        return self._outputs(txn, outputs, now)

    def _transaction_timer(self, txn: Transaction, name: str) -> None:
        if name == "A" or name == "E":
            self._note_retransmission(txn)

    def _own_timer(self, target: Any, name: str, when: float, now: float) -> list[Send]:
        if name == "next":
            return self._next_step(target, now, when)
        if name == "forget" and self._live.get(target.call_id) is target:
            del self._live[target.call_id]
        return []

    # ------------------------------------------------------------------ requests

    def _send_request(
        self, call: _Call, method: str, now: float, intended: float | None = None
    ) -> list[Send]:
        call.cseq += 1
        cseq = call.cseq
        request = self._build(call, method, cseq, f"{call.record.index}.{cseq}")
        assert call.next_hop is not None
        txn = ClientTransaction(request, call.next_hop, self._heap, self.settings, call)
        self._clients[txn.key] = txn
        if method == "INVITE" and cseq > 1:
            call.reinvites_sent += 1
            key = (call.call_id, cseq)
            planned = now if intended is None else intended
            self.timings[key] = ReinviteTiming(call.record.index, cseq, planned, now)
            self.observer.open(key)
        return self._outputs(txn, txn.start(now), now)

    def _build(self, call: _Call, method: str, cseq: int, branch: str) -> SipRequest:
        # Every part is a literal or comes from a parsed message: built without the checks
        # of SipRequest(...), with the values it carries already parsed.
        headers = [("Via", f"{self._via}{branch}"), ("Max-Forwards", "70")]
        if call.route:
            headers.append(("Route", ", ".join(call.route)))
        headers += [
            ("From", call.from_value),
            ("To", call.to_value),
            ("Call-ID", call.call_id),
            ("CSeq", f"{cseq} {method}"),
        ]
        if method == "INVITE":
            headers.append(("Contact", self._contact))
        headers.append(("Content-Length", "0"))
        cache: dict[str, Any] = {
            "max-forwards": 70,
            "content-length": 0,
            "call-id": call.call_id,
            "cseq": CSeq(cseq, method),
        }
        parts = self._via_parts
        if parts is not None:
            via_branch = f"{MAGIC_COOKIE}{branch}"
            cache["via/top"] = Via(parts[0], parts[1], parts[2], (("branch", via_branch),))
        for slot, value in (("from", call.from_value), ("to", call.to_value)):
            parsed = _known_name_addr(value)
            if parsed is not None:
                cache[slot] = parsed
        return _request(method, call.remote_target, headers, cache=cache)

    def _ack_2xx(self, call: _Call, cseq: int) -> list[Send]:
        """§13.2.2.4: the UA core's ACK for a 2xx, a transaction of its own (new branch)."""
        ack = call.acks.get(cseq)
        if ack is not None:
            self.counters["acks resent"] += 1
        else:
            ack = self._build(call, "ACK", cseq, f"{call.record.index}.{cseq}.ack")
            # The UAS retransmits only its latest 2xx (a newer one needs the older ACKed).
            call.acks.clear()
            call.acks[cseq] = ack
        assert call.next_hop is not None
        return [Send(ack, call.next_hop)]

    # ------------------------------------------------------------------ responses

    def _outputs(self, txn: ClientTransaction, outputs: list, now: float) -> list[Send]:
        sends: list[Send] = []
        for out in outputs:
            kind = type(out)
            if kind is Send:
                sends.append(out)
            elif kind is PassToUser:
                sends += self._on_response(txn, out.message, now)
            elif kind is TransactionTimeout:
                sends += self._on_timeout(txn, now)
            elif out is TERMINATED and self._clients.get(txn.key) is txn:
                del self._clients[txn.key]
        return sends

    def _on_response(self, txn: ClientTransaction, response: SipResponse, now: float) -> list[Send]:
        status = response.status
        if status < 200:
            return []
        call: _Call = txn.owner
        method = txn.request.method
        cseq = txn.request.cseq.number
        if method == "BYE":
            self._end(call, "completed" if status < 300 else "failed", now)
            return []
        if cseq in call.acks:  # a retransmitted 2xx: acknowledge it again
            return self._ack_2xx(call, cseq)
        if call.ended:
            return []
        current = cseq == call.cseq  # else a late answer to a request the call gave up on
        if cseq > 1:
            self._final(call, cseq, status, now)
        if status >= 300:
            if cseq == 1:
                call.record.invite_status = status
                self._end(call, "failed", now)
                return []
            return self._pause(call, now) if current else []
        if cseq == 1:
            call.record.invite_status = status
            call.record.answered_at = now
            self._establish(call, response)
        sends = self._ack_2xx(call, cseq)
        return (sends + self._pause(call, now)) if current else sends

    def _establish(self, call: _Call, response: SipResponse) -> None:
        """§12.1.2: remote tag, remote target (Contact) and route set (reversed Record-Route)."""
        call.to_value = response.get("To") or call.to_value
        contact = response.get("Contact")
        if contact:
            call.remote_target = parse_name_addr(contact).uri
        call.route = list(reversed(response.get_all("Record-Route")))
        if call.route:
            call.next_hop = uri_address(parse_name_addr(call.route[0]).uri)
        else:
            call.next_hop = uri_address(call.remote_target)

    def _final(self, call: _Call, cseq: int, status: int, now: float) -> None:
        key = (call.call_id, cseq)
        timing = self.timings.get(key)
        if timing is not None and timing.status is None:
            timing.status = status
            timing.final_at = now
            self.observer.final(key, status)

    def _on_timeout(self, txn: ClientTransaction, now: float) -> list[Send]:
        call: _Call = txn.owner
        method = txn.request.method
        cseq = txn.request.cseq.number
        self.counters[f"{method} timeouts"] += 1
        if call.ended:
            return []
        if method == "BYE" or cseq == 1:
            self._end(call, "failed", now)
        else:
            self._final(call, cseq, 408, now)  # §8.1.3.1: a timeout is treated as a 408
            if cseq == call.cseq:
                return self._pause(call, now)
        return []

    def _stray_response(self, response: SipResponse) -> list[Send]:
        """A response no transaction knows: a late 2xx retransmission still gets its ACK."""
        try:
            call = self._live.get(response.call_id)
            cseq = response.cseq
        except SipParseError:
            call = None
        late_2xx = call is not None and 200 <= response.status < 300
        if late_2xx and cseq.method == "INVITE" and cseq.number in call.acks:
            return self._ack_2xx(call, cseq.number)
        self.counters["stray responses"] += 1
        return []

    def _note_retransmission(self, txn: Transaction) -> None:
        request = txn.request
        self.counters[f"{request.method} retransmissions"] += 1
        if request.method == "INVITE":
            cseq = request.cseq.number
            if cseq > 1:
                key = (request.call_id, cseq)
                timing = self.timings.get(key)
                if timing is not None:
                    timing.retransmissions += 1
                self.observer.retransmission(key)

    # ------------------------------------------------------------------ the call flow

    def _pause(self, call: _Call, now: float) -> list[Send]:
        """The ACK before the next request went out now: the next request is `gap` later."""
        if self.gap > 0:
            self._heap.schedule(now + self.gap, call, "next")
            return []
        return self._next_step(call, now)

    def _next_step(self, call: _Call, now: float, intended: float | None = None) -> list[Send]:
        """Send the next request; `intended` is when it was due (the ACK's time + gap)."""
        if call.ended:
            return []
        if call.reinvites_sent < self.reinvites:
            return self._send_request(call, "INVITE", now, intended)
        return self._send_request(call, "BYE", now)

    def _end(self, call: _Call, outcome: str, now: float) -> None:
        if call.ended:
            return
        call.ended = True
        call.record.outcome = outcome
        call.record.ended_at = now
        self.active -= 1
        self.counters[f"calls {outcome}"] += 1
        self._heap.schedule(now + LINGER, call, "forget")


# ---------------------------------------------------------------------------- UAS


class _Dialog:
    __slots__ = ("call_id", "local_tag", "remote_cseq", "pending")

    def __init__(self, call_id: str, local_tag: str, remote_cseq: int) -> None:
        self.call_id = call_id
        self.local_tag = local_tag
        self.remote_cseq = remote_cseq
        self.pending: _Pending2xx | None = None  # the 2xx still waiting for its ACK


class _Pending2xx:
    """A 2xx the UAS core retransmits until its ACK arrives (§13.3.1.4)."""

    __slots__ = ("dialog", "cseq", "response", "peer", "interval", "entry", "since")

    def __init__(self, dialog: _Dialog, cseq: int, response: SipResponse, peer: Address) -> None:
        self.dialog = dialog
        self.cseq = cseq
        self.response = response
        self.peer = peer
        self.interval = 0.0
        self.entry: list | None = None
        self.since = 0.0


class Uas(_Endpoint):
    """A strict UAS: 200 to INVITEs, `race_code` to a re-INVITE that overtook an ACK."""

    def __init__(
        self,
        address: Address,
        *,
        race_code: int = 491,
        observer: ReinviteObserver | None = None,
        timers: TimerSettings | None = None,
    ) -> None:
        if not 400 <= race_code <= 699:
            raise ValueError(f"race_code must be a final error status 400..699, got {race_code}")
        self.address = address
        self.race_code = race_code
        self.observer = observer if observer is not None else NO_OBSERVER
        self.settings = timers or TimerSettings()
        self.counters: Counter[str] = Counter()
        self._heap = TimerHeap()
        self._servers: dict[tuple, ServerTransaction] = {}
        self._dialogs: dict[tuple[str, str], _Dialog] = {}
        self._contact = f"<sip:uas@{_host_ref(address)}>"

    @property
    def dialogs(self) -> int:
        """Dialogs established and not yet ended by a BYE."""
        return len(self._dialogs)

    def receive(self, message: SipMessage, source: Address, now: float) -> list[Send]:
        if type(message) is not SipRequest:
            self.counters["responses ignored"] += 1
            return []
        try:
            key = server_key(message)
            txn = self._servers.get(key)
            if txn is not None:
                return self._outputs(txn, txn.receive_request(message, now), now)
            if message.method == "ACK":
                self._dialog_ack(message)
                return []
            txn = ServerTransaction(
                message, _reply_address(message, source), self._heap, self.settings, key=key
            )
            self._servers[key] = txn
            txn.start(now)
            response = self._answer(message, txn, now)
            return self._outputs(txn, txn.send_response(response, now), now)
        except (SipParseError, ValueError, TransactionError):
            self.counters["requests refused"] += 1
            return []

    def _own_timer(self, target: Any, name: str, when: float, now: float) -> list[Send]:
        return self._retransmit_2xx(target, now)

    # ------------------------------------------------------------------ answering

    def _answer(self, request: SipRequest, txn: ServerTransaction, now: float) -> SipResponse:
        method = request.method
        call_id = request.call_id
        to_tag = request.to_tag
        cseq = request.cseq.number
        self.counters[f"{method} received"] += 1
        if to_tag is None:
            if method != "INVITE":
                return make_response(request, 481)
            tag = f"uas-{zlib.crc32(call_id.encode('utf-8', 'surrogateescape')):08x}"
            dialog = self._dialogs.get((call_id, tag))
            if dialog is None:
                dialog = self._dialogs[(call_id, tag)] = _Dialog(call_id, tag, cseq)
            return self._ok(request, txn, dialog, tag, now)
        dialog = self._dialogs.get((call_id, to_tag))
        if dialog is None:
            self.counters["481 sent"] += 1
            return make_response(request, 481)
        if method == "INVITE":
            self.observer.reached_uas((call_id, cseq), call_id, cseq)
            if cseq <= dialog.remote_cseq:
                self.counters["out of order"] += 1
                return make_response(request, 500, "Out of Order")
            dialog.remote_cseq = cseq
            if dialog.pending is not None:
                self.counters["races"] += 1
                return make_response(request, self.race_code)
            return self._ok(request, txn, dialog, None, now)
        if method == "BYE":
            if cseq > dialog.remote_cseq:
                dialog.remote_cseq = cseq
            self._stop(dialog)
            del self._dialogs[(call_id, to_tag)]
            return make_response(request, 200)
        return make_response(request, 501)

    def _ok(
        self,
        request: SipRequest,
        txn: ServerTransaction,
        dialog: _Dialog,
        tag: str | None,
        now: float,
    ) -> SipResponse:
        """200 with Contact and the Record-Route copied; retransmitted until ACKed."""
        response = make_response(request, 200, None, tag)
        # The Record-Route lines on top and Contact before Content-Length (the last line
        # of what make_response builds): what headers= and set() would do, in one go. The
        # lines make_response parsed are unchanged, so its cache stays valid.
        headers = [(n, v) for n, v in request.headers if n.lower() == "record-route"]
        headers += response.headers
        headers.insert(len(headers) - 1, ("Contact", self._contact))
        response._reset_headers(headers, response._cache)
        self._stop(dialog)
        pending = _Pending2xx(dialog, request.cseq.number, response, txn.peer)
        pending.since = now
        pending.interval = self.settings.t1
        pending.entry = self._heap.schedule(now + pending.interval, pending, "2xx")
        dialog.pending = pending
        return response

    def _dialog_ack(self, ack: SipRequest) -> None:
        """An ACK for a 2xx (its own transaction): it ends that 2xx's retransmissions."""
        to_tag = ack.to_tag
        dialog = self._dialogs.get((ack.call_id, to_tag)) if to_tag else None
        pending = dialog.pending if dialog is not None else None
        if pending is not None and pending.cseq == ack.cseq.number:
            self._stop(dialog)
            self.counters["2xx acknowledged"] += 1
        else:
            self.counters["ACK without a pending 2xx"] += 1

    def _stop(self, dialog: _Dialog) -> None:
        pending = dialog.pending
        if pending is not None:
            if pending.entry is not None:
                self._heap.cancel(pending.entry)
            dialog.pending = None

    def _retransmit_2xx(self, pending: _Pending2xx, now: float) -> list[Send]:
        """T1, 2·T1, ... capped at T2, for 64·T1; then the dialog goes on unacknowledged."""
        pending.entry = None
        dialog = pending.dialog
        if dialog.pending is not pending:
            return []
        settings = self.settings
        if now - pending.since >= 64 * settings.t1:
            dialog.pending = None
            self.counters["2xx never acknowledged"] += 1
            return []
        self.counters["2xx retransmitted"] += 1
        pending.interval = min(2 * pending.interval, settings.t2)
        pending.entry = self._heap.schedule(now + pending.interval, pending, "2xx")
        return [Send(pending.response, pending.peer)]

    def _outputs(self, txn: ServerTransaction, outputs: list, now: float) -> list[Send]:
        sends: list[Send] = []
        for out in outputs:
            kind = type(out)
            if kind is Send:
                sends.append(out)
            elif kind is PassToUser and out.message.method == "ACK":
                self._dialog_ack(out.message)
            elif kind is TransactionTimeout:
                self.counters["ACK timeouts (Timer H)"] += 1
            elif out is TERMINATED and self._servers.get(txn.key) is txn:
                del self._servers[txn.key]
        return sends


def _reply_address(request: SipRequest, source: Address) -> Address:
    """§18.2.2 / RFC 3581: received (else sent-by host), rport (else sent-by port, 5060)."""
    via = request.top_via
    if via is None:
        return source
    host = via.received or via.host
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    rport = via.rport
    port = int(rport) if rport and rport.isdigit() else via.port or 5060
    return (host, port)
