"""The simulated strict UAS: answers the UAC's calls and shows a re-INVITE race as a 491.

Over the core's RFC 3261 server transactions (`core.transaction`) the UA core does what §13
asks of it: it retransmits its 2xx until the ACK comes (§13.3.1.4), giving up after 64·T1.

Choices where the issue and the RFC leave room (all deliberate, all documented here):

- The strict UAS answers a re-INVITE that arrives while the previous 2xx on the dialog is
  still waiting for its ACK with `race_code` (491 Request Pending), and one whose CSeq is not
  above the dialog's remote CSeq with 500 (§12.2.2); it never sends a 1xx (the proxy
  sends 100 Trying). A 2xx never acknowledged within 64·T1 is counted, not followed by a BYE.
- Its tag is derived from the Call-ID, so two runs with the same schedule send
  byte-identical messages; responses go where §18.2.2 / RFC 3581 say (`received`, `rport`).

It reports `reached_uas` to its observer (`harness.load.agent.ReinviteObserver`) when a new
server transaction for a re-INVITE reaches it, and `dialog_ended` when a BYE ends a dialog.

What this module must not do: read a clock, sleep, or touch a socket (it is sans-IO: the
sim target's kernel or the live target's host calls `receive` and `expire` with `now` and
sends what they return), rely on the UAC's internals, or know which strategy the proxy runs.
"""

from __future__ import annotations

import zlib
from collections import Counter
from typing import Any

from core.events import Address, Send
from core.sip import SipMessage, SipParseError, SipRequest, SipResponse, make_response
from core.transaction import (
    TERMINATED,
    PassToUser,
    ServerTransaction,
    TimerHeap,
    TimerSettings,
    TransactionError,
    TransactionTimeout,
    server_key,
)
from harness.load.agent import NO_OBSERVER, Endpoint, ReinviteObserver, host_ref


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


class Uas(Endpoint):
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
        # Each address answered to, once: the lingering transactions share their peer.
        self._peers: dict[Address, Address] = {}
        self._contact = f"<sip:uas@{host_ref(address)}>"

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
                message, self._peer(message, source), self._heap, self.settings, key=key
            )
            self._servers[key] = txn
            txn.start(now)
            response = self._answer(message, txn, now)
            outputs = txn.send_response(response, now)
            txn.settle()  # answered: it lingers on its key and response alone
            return self._outputs(txn, outputs, now)
        except (SipParseError, ValueError, TransactionError):
            self.counters["requests refused"] += 1
            return []

    def _own_timer(self, target: Any, name: str, when: float, now: float) -> list[Send]:
        return self._retransmit_2xx(target, now)

    def _peer(self, request: SipRequest, source: Address) -> Address:
        address = _reply_address(request, source)
        return self._peers.setdefault(address, address)

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
            self.observer.dialog_ended(call_id)
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
        if dialog is not None and pending is not None and pending.cseq == ack.cseq.number:
            self._stop(dialog)
            self.counters["2xx acknowledged"] += 1
        else:
            self.counters["ACK without a pending 2xx"] += 1

    def _stop(self, dialog: _Dialog) -> None:
        pending = dialog.pending
        if pending is not None:
            if pending.entry is not None:
                self._heap.cancel(pending.entry)
                pending.entry = None  # the entry holds `pending`: no cycle left behind
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
