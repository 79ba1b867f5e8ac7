"""A sans-IO stateful record-routing SIP proxy with Kamailio's TM suspend/continue semantics.

The proxy turns datagrams (or pre-parsed messages) into actions (`Send`, `Deliver`,
`Discarded`, `SuspensionEvent`) and exposes its next timer deadline; whoever drives it does
the I/O, owns the clock and runs the routing logic (Kamailio's request_route) on each
`Deliver`, calling back `relay`, `reply`, `suspend`, `continue_transaction`...

This module is the proxy object: what arrives from the network (requests, retransmissions,
CANCEL, responses) and the API the routing logic calls. The rest lives in its own modules:
`core.tm` (the transaction table: cells, branches, timers, reply picking, reference §0-§1
of kamailio-deferral-semantics.md), `core.proxy_routing` (loose routing and the rewrite
before forwarding), `core.proxy_malformed` (answers to unparseable datagrams) and
`core.proxy_config`. Flaws are modelled on purpose: a timed-out or cancelled suspension only
shows up when the continuation is attempted; a continuation that neither relays nor replies
ends in a 500; replies arriving while suspended are stored, not relayed.

This module must not open sockets, read clocks, sleep, or import an event loop; it never
raises on network input (malformed or unmatchable input becomes `Discarded` or an error
response).
"""

from __future__ import annotations

import zlib
from collections import Counter

from core.events import (
    Action,
    Address,
    ContinueOutcome,
    Deliver,
    Discarded,
    Send,
    SuspendOutcome,
    SuspensionEvent,
    TxnId,
)
from core.proxy_config import ProxyConfig
from core.proxy_malformed import answer_for_malformed
from core.proxy_routing import Router, response_address, via_address
from core.sip import (
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    make_response,
    parse_message,
)
from core.tm import KILL_REASON, Branch, Cell, TransactionTable
from core.transaction import (
    MAGIC_COOKIE,
    ClientTransaction,
    PassToUser,
    TransactionError,
    server_key,
)


class Proxy:
    """Sans-IO stateful record-routing proxy with Kamailio's TM suspend/continue semantics.

    Messages handed in are kept (a server transaction keeps its request) but never edited:
    the proxy copies before it changes a header.  Messages it emits must not be edited by
    the caller either (a server transaction re-sends the same object).
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._stats: Counter[str] = Counter()
        self._router = router = Router(config.address, config.label_seed)
        self._tm = tm = TransactionTable(config, router.token, self._stats)
        # The table's timer heap and indexes, read on every message (shared, never rebound).
        self._settings = tm.settings
        self._timers = tm.timers
        self._cells = tm.cells
        self._servers = tm.servers
        self._clients = tm.clients
        self._branch_prefix = router.branch_prefix

    # ------------------------------------------------------------------ network input

    def receive(self, data: bytes, source: Address, now: float) -> list[Action]:
        """A datagram from `source`: parse it and handle it (never raises)."""
        try:
            message = parse_message(data)
        except SipParseError as error:
            return self._malformed(data, error, source)
        except Exception as error:  # noqa: BLE001 - network input must never raise
            return [self._discard("parse error", f"{type(error).__name__}: {error}", source)]
        return self.receive_message(message, source, now)

    def receive_message(self, message: SipMessage, source: Address, now: float) -> list[Action]:
        """An already parsed message from `source` (the proxy takes ownership of it)."""
        try:
            if isinstance(message, SipRequest):
                return self._on_request(message, source, now)
            if isinstance(message, SipResponse):
                return self._on_response(message, source, now)
            return [self._discard("not a SIP message", type(message).__name__, source)]
        except (SipParseError, ValueError) as error:
            return [self._discard("malformed", str(error), source)]
        except TransactionError as error:
            return [self._discard("protocol error", str(error), source)]
        except Exception as error:  # noqa: BLE001 - a bug must not stop a live server
            return [self._discard("internal error", f"{type(error).__name__}: {error}", source)]

    def _on_request(self, request: SipRequest, source: Address, now: float) -> list[Action]:
        method = request.method
        via = request.top_via
        if via is None:
            return [self._discard("malformed", "request without Via", source)]
        branch = via.branch
        if branch is not None and branch.startswith(MAGIC_COOKIE):
            matched = "INVITE" if method == "ACK" else method
            key: tuple = (branch, via.host.lower(), via.port, matched)
        else:
            key = server_key(request)
        cell = self._servers.get(key)
        if cell is not None:
            return self._retransmission(cell, request, source, now)
        if method == "ACK":
            if request.max_forwards == 0:
                return [self._discard("too many hops", "ACK with Max-Forwards 0", source)]
            self._stats["acks_delivered"] += 1
            return [Deliver(request, source, None)]
        if method == "CANCEL":
            return self._on_cancel(request, key, via, source, now)
        max_forwards = request.max_forwards
        cell = self._tm.new_cell(request, key, via, source, now)
        if max_forwards == 0:
            self._stats["too_many_hops"] += 1
            return self._tm.send_final(
                cell, self._tm.local_response(cell, 483, "Too Many Hops"), now
            )
        self._stats["requests_delivered"] += 1
        return [Deliver(request, source, cell.id)]

    def _retransmission(
        self, cell: Cell, request: SipRequest, source: Address, now: float
    ) -> list[Action]:
        server = cell.server
        if server.terminated:
            self._stats["retransmissions_absorbed"] += 1
            return []
        outputs = server.receive_request(request, now)
        actions: list[Action] = []
        for out in outputs:
            if type(out) is Send:
                actions.append(out)
            elif type(out) is PassToUser:  # ACK with the INVITE's branch after a 2xx
                self._stats["acks_delivered"] += 1
                actions.append(Deliver(request, source, None))
        if request.method == "ACK":
            self._stats["acks_absorbed"] += 1
            self._tm.progress(cell, now)
        else:
            self._stats["retransmissions_absorbed"] += 1
            if cell.suspended and not server.final_sent:
                self._stats["absorbed_while_suspended"] += 1
                actions.append(SuspensionEvent("absorbed", cell.id, now))
        return actions

    def _on_cancel(
        self, request: SipRequest, key: tuple, via: Via, source: Address, now: float
    ) -> list[Action]:
        """e2e_cancel: answer the CANCEL ourselves, cancel the INVITE's branches."""
        invite_key = (*key[:-1], "INVITE")
        invite = self._servers.get(invite_key)
        if invite is None or not invite.is_invite:
            self._stats["cancels_unmatched"] += 1
            response = make_response(request, 481, None, f"{self._router.token}.481")
            return [Send(response, response_address(via, source))]
        self._stats["cancels"] += 1
        cancel_cell = self._tm.new_cell(request, key, via, source, now)
        actions: list[Action] = []
        was_suspended = invite.suspended and not invite.server.final_sent
        if not invite.server.final_sent:
            invite.cancelled = True
            for branch in invite.branches:
                if branch.final is not None:
                    continue
                if branch.client is None:  # a blind branch cannot be cancelled: faked 487
                    branch.final = 487
                    self._tm.stop_fr(branch)
                elif branch.provisional:
                    actions += self._tm.send_cancel(branch, now)
                else:
                    branch.cancel_pending = True  # cancel_b_method 1: CANCEL on provisional
            actions += self._tm.relay_best(invite, now)
            if not invite.server.final_sent and not invite.pending():
                actions += self._tm.send_final(invite, self._tm.local_response(invite, 487), now)
        actions += self._tm.send_final(cancel_cell, self._tm.local_response(cancel_cell, 200), now)
        if was_suspended:
            self._stats["suspension_cancels"] += 1
            actions.append(SuspensionEvent("cancelled", invite.id, now))
        return actions

    def _on_response(self, response: SipResponse, source: Address, now: float) -> list[Action]:
        via = response.top_via
        if via is None:
            return [self._discard("malformed", "response without Via", source)]
        entry = self._clients.get((via.branch, response.cseq.method))
        if entry is None:
            return self._unmatched_response(response, via, source)
        cell, branch, client = entry
        if client.terminated:
            return [self._discard("no matching transaction", "late response", source)]
        try:
            outputs = client.receive_response(response, now)
        except TransactionError as error:
            return [self._discard("protocol error", str(error), source)]
        return self._tm.client_outputs(cell, branch, client, outputs, now)

    def _unmatched_response(self, response: SipResponse, via: Via, source: Address) -> list[Action]:
        """A 2xx to an INVITE whose cell is gone (retransmitted after the wait timer) is
        forwarded statelessly, as Kamailio's core does; anything else is dropped."""
        branch = via.branch or ""
        if (
            200 <= response.status < 300
            and response.cseq.method == "INVITE"
            and branch.startswith(self._branch_prefix)
        ):
            vias = response.vias
            if len(vias) >= 2:
                response = response.copy()
                response.remove_first_value("Via")
                self._stats["responses_forwarded_stateless"] += 1
                return [Send(response, via_address(vias[1]))]
        return [self._discard("no matching transaction", f"{response.status} {branch}", source)]

    # ------------------------------------------------------------------ routing logic API

    def relay(self, txn: TxnId, now: float) -> list[Action]:
        """t_relay(): forward the transaction's request statefully (loose routing).

        Returns [] when the transaction cannot be relayed (unknown, answered, cancelled,
        or out of branches), as t_relay() returns an error to the script.
        """
        cell = self._cells.get((txn.index, txn.label))
        if cell is None or cell.waiting or cell.cancelled or cell.server.final_sent:
            self._stats["relays_refused"] += 1
            return []
        if len(cell.branches) >= self.config.max_branches:
            self._stats["relays_refused"] += 1
            return []
        request = cell.server.request
        max_forwards = request.max_forwards
        if max_forwards == 0:
            self._stats["too_many_hops"] += 1
            return self._tm.send_final(
                cell, self._tm.local_response(cell, 483, "Too Many Hops"), now
            )
        actions: list[Action] = []
        if cell.is_invite and self.config.auto_inv_100 and cell.server.last_response is None:
            actions += self._tm.send_provisional(cell, 100, now)
        source, destination, drop_route = self._router.loose_route(request)
        if destination is None:
            return actions + self._tm.send_final(
                cell, self._tm.local_response(cell, 400, "Bad Route or Request-URI"), now
            )
        number = len(cell.branches)
        branch = Branch(cell, number, None)
        suffix = f"{cell.id.index:x}.{cell.id.label:x}.{number}"
        branch_id = f"{self._branch_prefix}{suffix}"
        branch.branch_id = branch_id
        if cell.via_fix is not None:
            if source is request:
                source = request.copy()
            source.remove_first_value("Via")
            source.prepend("Via", cell.via_fix)
        out = self._router.rewrite(
            request,
            source,
            suffix,
            max_forwards,
            record_route=cell.is_invite and request.to_tag is None,
            drop_route=drop_route,
        )
        client = ClientTransaction(
            out, destination, self._timers, self._settings, branch, (branch_id, request.method)
        )
        branch.client = client
        cell.branches.append(branch)
        self._clients[client.key] = (cell, branch, client)
        actions += client.start(now)  # type: ignore[arg-type]  # a start only sends
        branch.fr = self._timers.schedule(
            self._tm.deadline(cell, now, self.config.fr_timer), branch, "fr"
        )
        self._stats["relayed"] += 1
        return actions

    def forward_stateless(self, request: SipRequest, now: float) -> list[Action]:
        """forward(): send a request on without a transaction (ACK for a 2xx, ...)."""
        try:
            max_forwards = request.max_forwards
            if max_forwards == 0:
                return [self._discard("too many hops", f"{request.method} with Max-Forwards 0")]
            via = request.top_via
            source, destination, drop_route = self._router.loose_route(request)
            if destination is None:
                return [self._discard("unroutable", f"{request.method} {request.uri}")]
            incoming = via.branch if via is not None and via.branch else request.call_id
            digest = zlib.crc32(incoming.encode("utf-8", "surrogateescape"))
            out = self._router.rewrite(
                request, source, f"sl{digest:08x}", max_forwards, False, drop_route
            )
        except (SipParseError, ValueError) as error:
            return [self._discard("malformed", str(error))]
        self._stats["forwarded_stateless"] += 1
        return [Send(out, destination)]

    def reply(self, txn: TxnId, status: int, reason: str | None, now: float) -> list[Action]:
        """send_reply(): answer on the transaction (TM-aware, so no 500 follows)."""
        if not 100 <= status <= 699:
            raise ValueError(f"status {status} outside 100..699")
        cell = self._cells.get((txn.index, txn.label))
        if cell is None or cell.server.final_sent or cell.server.terminated:
            self._stats["replies_refused"] += 1
            return []
        if status < 200:
            return self._tm.send_provisional(cell, status, now, reason)
        self._stats["replies_sent"] += 1
        return self._tm.send_final(cell, self._tm.local_response(cell, status, reason), now)

    def suspend(self, txn: TxnId, now: float) -> tuple[SuspendOutcome, list[Action]]:
        """t_suspend(): add a blind branch with its fr deadline; 100 Trying for an INVITE."""
        cell = self._cells.get((txn.index, txn.label))
        if cell is None:
            return SuspendOutcome.NOT_FOUND, []
        if cell.cancelled:
            return SuspendOutcome.ALREADY_CANCELLED, []
        if cell.server.final_sent or cell.waiting:
            return SuspendOutcome.ALREADY_ANSWERED, []
        if len(cell.branches) >= self.config.max_branches:
            self._stats["suspends_refused"] += 1
            return SuspendOutcome.TOO_MANY_BRANCHES, []
        actions: list[Action] = []
        if cell.is_invite and self.config.auto_inv_100 and cell.server.last_response is None:
            actions += self._tm.send_provisional(cell, 100, now)
        branch = Branch(cell, len(cell.branches), None)
        cell.branches.append(branch)
        branch.fr = self._timers.schedule(
            self._tm.deadline(cell, now, self.config.fr_timer), branch, "fr"
        )
        cell.suspended = True
        self._stats["suspended"] += 1
        actions.append(SuspensionEvent("suspended", cell.id, now))
        return SuspendOutcome.SUSPENDED, actions

    def continue_transaction(self, txn: TxnId, now: float) -> tuple[ContinueOutcome, list[Action]]:
        """t_continue(): RESUMED means the caller runs its continuation now, then calls
        `end_continuation`.  Any other outcome means the continuation must be skipped."""
        cell = self._cells.get((txn.index, txn.label))
        if cell is None:
            return ContinueOutcome.NOT_FOUND, []
        if not cell.suspended:
            return ContinueOutcome.ALREADY_CONTINUED, []
        if cell.cancelled:
            return ContinueOutcome.CANCELLED, []
        blind = cell.last_blind()
        if blind is None or blind.final is not None:
            return ContinueOutcome.TIMED_OUT, []
        if cell.waiting:
            return ContinueOutcome.NOT_FOUND, []
        cell.suspended = False
        cell.continuing = True
        blind.final = 0
        self._tm.stop_fr(blind)
        self._stats["resumed"] += 1
        return ContinueOutcome.RESUMED, [SuspensionEvent("resumed", cell.id, now)]

    def end_continuation(self, txn: TxnId, now: float) -> list[Action]:
        """After the continuation route: no final reply and no pending branch -> 500."""
        cell = self._cells.get((txn.index, txn.label))
        if cell is None or not cell.continuing:
            return []
        cell.continuing = False
        if cell.suspended or cell.server.final_sent or cell.server.terminated:
            return []
        if any(b.client is not None and b.final is None for b in cell.branches):
            return []
        self._stats["killed_500"] += 1
        return self._tm.send_final(cell, self._tm.local_response(cell, 500, KILL_REASON), now)

    def request_of(self, txn: TxnId) -> SipRequest | None:
        """The server transaction's request as received (None once freed)."""
        cell = self._cells.get((txn.index, txn.label))
        return cell.server.request if cell is not None else None

    # ------------------------------------------------------------------ time

    def next_deadline(self) -> float | None:
        """The earliest time `expire` has something to do (exact), or None."""
        return self._timers.next_deadline()

    def expire(self, now: float) -> list[Action]:
        """Fire every timer due at or before `now`, earliest first."""
        actions: list[Action] = []
        pop = self._timers.pop_due
        while (entry := pop(now)) is not None:
            target, name = entry[2], entry[3]
            if name == "fr":
                target.fr = None
                actions += self._tm.branch_timeout(target, now)
            elif name == "wait":
                if self._tm.free(target):
                    actions.append(SuspensionEvent("freed", target.id, now))
            else:
                try:
                    outputs = target.on_timer(name, now)
                except TransactionError as error:  # a timer the table does not expect
                    actions.append(self._discard("protocol error", str(error)))
                    continue
                owner = target.owner
                if isinstance(owner, Cell):
                    actions += self._tm.server_outputs(owner, outputs, now)
                else:
                    actions += self._tm.client_outputs(owner.cell, owner, target, outputs, now)
        return actions

    def close(self) -> None:
        """Forget every transaction at once (the run is over), so that they are freed now."""
        self._tm.close()

    def stats(self) -> dict[str, int]:
        """Counters since creation, plus `transactions_live` and `timers_pending`."""
        out = dict(self._stats)
        out["transactions_live"] = len(self._cells)
        out["timers_pending"] = len(self._timers)
        return out

    # ------------------------------------------------------------------ internals

    def _discard(self, category: str, detail: str, source: Address | None = None) -> Discarded:
        self._stats["discarded"] += 1
        self._stats[f"discarded:{category}"] += 1
        return Discarded(f"{category}: {detail}", source)

    # -- malformed input

    def _malformed(self, data: bytes, error: SipParseError, source: Address) -> list[Action]:
        answer = answer_for_malformed(data, error.status_hint)
        if answer is None:
            return [self._discard("parse error", str(error), source)]
        response, via = answer
        self._stats["malformed_answered"] += 1
        destination = source
        if via is not None:
            destination = response_address(via, source)
        return [Send(response, destination)]
