"""The simulated UAC: plays each call of the load's schedule and times its re-INVITEs.

Each call is INVITE, `reinvites` re-INVITEs `gap` apart, BYE, over the core's RFC 3261 client
transactions (`core.transaction`, which retransmit over UDP); above them the UA core does
what §13 asks of it: it acknowledges every 2xx, again on each retransmitted 2xx, also for
`LINGER` seconds after its call ended. A long run keeps no record per call or re-INVITE:

- the end-to-end latency of each re-INVITE goes into `Uac.e2e_distribution()` in send
  order, as soon as every earlier one's is known (`harness.measure.inorder`);
- `Uac.sent_before` counts the re-INVITEs sent before the load window's end: as they go
  when it is given as `window_end`, else from `Uac.sent` (every send time);
- `Uac.timings` holds the `ReinviteTiming` of each re-INVITE still unanswered (of every
  one with `keep_timings`);
- `Uac.calls_started` and `Uac.invite_statuses` count the calls and how their INVITEs were
  answered; `Uac.calls` keeps how each call went only with `keep_calls`.

Choices where the issue and the RFC leave room (all deliberate, all documented here):

- Routing: the INVITE goes to the outbound proxy with a pre-loaded `Route: <proxy;lr>`
  and the UAS as Request-URI; the route set is the reversed Record-Route of the 2xx and
  in-dialog requests (ACK, re-INVITE, BYE) go to the UAS Contact along it. Without an
  outbound proxy (tests) the UAC sends straight to the Request-URI.
- Timing: a re-INVITE (or the BYE) is sent `gap` after the ACK that precedes it (plus
  `pause_late()` when given: how late SIPp's pauses end, for a sim standing in for it); for a
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
- Tags, branches and Call-IDs are derived from the call index (and the CSeq), so two runs
  with the same schedule send byte-identical messages.

It reports `open`, `retransmission` and `final` for each re-INVITE to its observer
(`harness.load.agent.ReinviteObserver`).

What this module must not do: read a clock, sleep, or touch a socket (it is sans-IO: the
sim target's kernel or the live target's host calls `start_call`, `receive` and `expire`
with `now` and sends what they return), rely on the UAS's internals, or know which strategy
the proxy runs.
"""

from __future__ import annotations

from array import array
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.events import Address, Send
from core.sip import (
    CSeq,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    _request,
    parse_name_addr,
    parse_uri,
)
from core.transaction import (
    MAGIC_COOKIE,
    TERMINATED,
    ClientTransaction,
    PassToUser,
    TimerHeap,
    TimerSettings,
    Transaction,
    TransactionError,
    TransactionTimeout,
    client_key,
)
from harness.load.agent import NO_OBSERVER, Endpoint, Key, ReinviteObserver, host_ref
from harness.measure.inorder import InOrder
from harness.measure.metrics import Distribution


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
    slot: int = -1  # its place in send order (the UAC's e2e stream)

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


class Uac(Endpoint):
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
        keep_timings: bool = False,
        keep_calls: bool = False,
        window_end: float | None = None,
        pause_late: Callable[[], float] | None = None,
    ) -> None:
        if reinvites < 0:
            raise ValueError(f"reinvites must be >= 0, got {reinvites}")
        if gap < 0:
            raise ValueError(f"gap must be >= 0, got {gap}")
        self.address = address
        self.target = target
        self.reinvites = reinvites
        self.gap = gap
        # how late each pause after an ACK ends, in s (a stand-in for SIPp's timing): drawn
        # once per pause; None: on time
        self.pause_late = pause_late
        self.outbound_proxy = outbound_proxy
        self.observer = observer if observer is not None else NO_OBSERVER
        self.settings = timers or TimerSettings()
        self.calls: list[CallRecord] = []  # every call's record, only with `keep_calls`
        self.keep_calls = keep_calls
        self.calls_started = 0
        self.invite_statuses: Counter[int] = Counter()  # final status of each call's INVITE
        # Per re-INVITE in send order: its e2e once answered, recorded in send order (`_e2e`);
        # how many went before `window_end`, or every send time (`sent`) without it; its
        # ReinviteTiming stays in `timings` until answered (for good: `keep_timings`).
        self._latency = Distribution()
        self._e2e = InOrder(self._latency.record)
        self.window_end = window_end
        self.sent_in_window = 0
        self.sent = array("d")
        self.timings: dict[Key, ReinviteTiming] = {}
        self.keep_timings = keep_timings
        # Told of each re-INVITE's (Call-ID, timing) as its final arrives (raw records).
        self.on_final: Callable[[str, ReinviteTiming], None] | None = None
        self.counters: Counter[str] = Counter()
        self.active = 0
        self._heap = TimerHeap()
        self._clients: dict[tuple, ClientTransaction] = {}
        self._live: dict[str, _Call] = {}
        ref = host_ref(address)
        self._via = f"SIP/2.0/UDP {ref};branch={MAGIC_COOKIE}"
        self._via_parts = _via_parts(self._via)
        self._contact = f"<sip:uac@{ref}>"
        self._uas_uri = f"sip:uas@{host_ref(target)}"
        self._preloaded = (
            [f"<sip:{host_ref(outbound_proxy)};lr>"] if outbound_proxy is not None else []
        )

    # ------------------------------------------------------------------ figures

    def e2e_distribution(self) -> Distribution:
        """The e2e latency of every answered re-INVITE, recorded in send order (the order
        its mean is summed in). For the end of the run: those still unanswered get none."""
        self._e2e.flush()
        return self._latency

    def sent_before(self, end: float) -> int:
        """Re-INVITEs sent before `end` (this UAC's clock): counted as they went if `end` is
        the `window_end` it was given, else from every send time."""
        if self.window_end is None:
            return sum(1 for sent in self.sent if sent < end)
        if end != self.window_end:
            raise ValueError(f"sends were counted before {self.window_end}, not {end}")
        return self.sent_in_window

    # ------------------------------------------------------------------ inputs

    def start_call(self, index: int, now: float, intended: float | None = None) -> list[Send]:
        """Begin call `index` (its INVITE) now; `intended` is its scheduled start."""
        call_id = f"call-{index}@{self.address[0]}"
        record = CallRecord(index, call_id, now if intended is None else intended, now)
        host = self.address[0]
        call = _Call(record, f"<sip:uac@{host}>;tag=uac-{index}", f"<{self._uas_uri}>")
        if self.keep_calls:
            self.calls.append(record)
        self.calls_started += 1
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
        if name == "forget":
            call_id = target.call_id
            if self._live.get(call_id) is target:
                del self._live[call_id]
        return []

    # ------------------------------------------------------------------ requests

    def _send_request(
        self, call: _Call, method: str, now: float, intended: float | None = None
    ) -> list[Send]:
        call.cseq += 1
        cseq = call.cseq
        request = self._build(call, method, cseq, f"{call.record.index}.{cseq}")
        assert call.next_hop is not None
        # The owner says what the UA core needs of the request once the transaction has
        # settled (dropped it): its call, method and CSeq number.
        owner = (call, method, cseq)
        txn = ClientTransaction(request, call.next_hop, self._heap, self.settings, owner)
        self._clients[txn.key] = txn
        if method == "INVITE" and cseq > 1:
            call.reinvites_sent += 1
            key = (call.call_id, cseq)
            planned = now if intended is None else intended
            slot = self._e2e.open()
            timing = ReinviteTiming(call.record.index, cseq, planned, now, slot=slot)
            self.timings[key] = timing
            if self.window_end is None:
                self.sent.append(now)
            elif now < self.window_end:
                self.sent_in_window += 1
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
        txn.settle()  # answered for good: it lingers (Timer M, K) without its messages
        return sends

    def _on_response(self, txn: ClientTransaction, response: SipResponse, now: float) -> list[Send]:
        status = response.status
        if status < 200:
            return []
        call: _Call
        call, method, cseq = txn.owner
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
                self.invite_statuses[status] += 1
                self._end(call, "failed", now)
                return []
            return self._pause(call, now) if current else []
        if cseq == 1:
            call.record.invite_status = status
            self.invite_statuses[status] += 1
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
            self._e2e.close(timing.slot, now - timing.intended)
            if self.on_final is not None:
                self.on_final(call.call_id, timing)
            if not self.keep_timings:
                del self.timings[key]
            self.observer.final(key, status)

    def _on_timeout(self, txn: ClientTransaction, now: float) -> list[Send]:
        call: _Call
        call, method, cseq = txn.owner
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
        if (
            call is not None
            and 200 <= response.status < 300
            and cseq.method == "INVITE"
            and cseq.number in call.acks
        ):
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
            late = self.pause_late
            self._heap.schedule(now + self.gap + (late() if late else 0.0), call, "next")
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
