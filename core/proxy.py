"""A sans-IO stateful record-routing SIP proxy with Kamailio's TM suspend/continue semantics.

The proxy turns datagrams (or pre-parsed messages) into actions (`Send`, `Deliver`,
`Discarded`, `SuspensionEvent`) and exposes its next timer deadline; whoever drives it does
the I/O, owns the clock and runs the routing logic (Kamailio's request_route) on each
`Deliver`, calling back `relay`, `reply`, `suspend`, `continue_transaction`...

Model (reference §0-§1 of kamailio-deferral-semantics.md): a `Cell` is one Kamailio
transaction: an RFC 3261 server transaction, its branches (relayed client transactions or
blind branches added by each suspend), the async flags and the fr/wait timers quantised to
the core tick.  Flaws are modelled on purpose: a timed-out or cancelled suspension only
shows up when the continuation is attempted; a continuation that neither relays nor
replies ends in a 500; replies arriving while suspended are stored, not relayed.

This module must not open sockets, read clocks, sleep, or import an event loop; it never
raises on network input (malformed or unmatchable input becomes `Discarded` or an error
response).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass

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
from core.sip import (
    _MISSING,
    SipMessage,
    SipParseError,
    SipRequest,
    SipResponse,
    Via,
    _request,
    make_response,
    parse_message,
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
    TransactionError,
    TransactionTimeout,
    make_cancel,
    server_key,
)

KILL_REASON = "I'm terribly sorry, server error occurred (1/TM)"
_NO_ENTRY = (None, None, None)


@dataclass(frozen=True)
class ProxyConfig:
    """Kamailio core/tm settings the proxy honours (seconds; defaults of 5.6.3)."""

    address: Address
    fr_timer: float = 30.0
    fr_inv_timer: float = 120.0
    wt_timer: float = 5.0
    max_inv_lifetime: float = 180.0
    max_noninv_lifetime: float = 32.0
    max_branches: int = 12
    auto_inv_100: bool = True
    t1: float = 0.5
    t2: float = 4.0
    t4: float = 5.0
    tick: float = 0.0625
    label_seed: int = 0

    def __post_init__(self) -> None:
        host, port = self.address
        if not isinstance(host, str) or not host or not isinstance(port, int):
            raise ValueError(f"address must be (host, port), got {self.address!r}")
        if not 0 < port < 65536:
            raise ValueError(f"port {port} outside 1..65535")
        for name in (
            "fr_timer",
            "fr_inv_timer",
            "wt_timer",
            "max_inv_lifetime",
            "max_noninv_lifetime",
            "tick",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be > 0, got {getattr(self, name)!r}")
        if self.max_branches < 1:
            raise ValueError(f"max_branches must be >= 1, got {self.max_branches}")
        TimerSettings(self.t1, self.t2, self.t4)  # validates


class Branch:
    """One outgoing branch of a cell: a relayed client transaction, or (client None) the
    blind branch a suspend adds.  `final` is the branch's final status: None while
    pending, 0 for a blind branch answered by a continue, else the (maybe faked) code."""

    __slots__ = (
        "cell",
        "number",
        "branch_id",
        "client",
        "final",
        "response",
        "fr",
        "provisional",
        "cancel_pending",
        "cancel",
    )

    def __init__(self, cell: Cell, number: int, client: ClientTransaction | None) -> None:
        self.cell = cell
        self.number = number
        self.branch_id: str | None = None
        self.client = client
        self.final: int | None = None
        self.response: SipResponse | None = None
        self.fr: list | None = None  # timer-heap entry of the fr / fr_inv timer
        self.provisional = False
        self.cancel_pending = False  # CANCEL requested before any provisional arrived
        self.cancel: ClientTransaction | None = None

    @property
    def blind(self) -> bool:
        return self.client is None


class Cell:
    """One Kamailio transaction (`struct cell`): server transaction, branches, async flags."""

    __slots__ = (
        "id",
        "server",
        "upstream",
        "via_fix",
        "is_invite",
        "branches",
        "end_of_life",
        "suspended",
        "continuing",
        "cancelled",
        "timed_out",
        "waiting",
        "wait",
        "freed",
        "to_tag",
    )

    def __init__(self, txn_id: TxnId, upstream: Address, via_fix: str | None) -> None:
        self.id = txn_id
        self.server: ServerTransaction = None  # type: ignore[assignment]  # set right after
        self.upstream = upstream
        self.via_fix = via_fix  # top Via with received/rport added, if the source needs it
        self.is_invite = False
        self.branches: list[Branch] = []
        self.end_of_life = 0.0
        self.suspended = False  # T_ASYNC_SUSPENDED
        self.continuing = False  # inside a continuation (between RESUMED and end_continuation)
        self.cancelled = False  # T_CANCELED
        self.timed_out = False  # a blind branch got its faked 408
        self.waiting = False  # on the wait timer: final answer done, about to be freed
        self.wait: list | None = None
        self.freed = False
        self.to_tag = ""


def _strip_brackets(host: str) -> str:
    return host[1:-1] if host.startswith("[") and host.endswith("]") else host


def via_address(via: Via) -> Address:
    """Where a response to this Via goes (RFC 3261 §18.2.2, RFC 3581): received/rport if
    present, else sent-by with the default port 5060."""
    host = via.received or via.host
    rport = via.rport
    port = int(rport) if rport and rport.isdigit() else via.port or 5060
    return (_strip_brackets(host), port)


def _via_parts(head: str, prefix: str) -> tuple[str, str, int | None] | None:
    """(transport, host, port) of the Via `head` + branch suffix parses to, so the proxy can
    build the parsed Via of what it forwards without parsing it; None if it does not parse
    to exactly that (then forwarded messages parse their Via when asked, as any other)."""
    try:
        via = Via.parse(f"{head}0")
    except SipParseError:
        return None
    if via != Via(via.transport, via.host, via.port, (("branch", f"{prefix}0"),)):
        return None
    return (via.transport, via.host, via.port)


# Cache slots of a request that the rewrite before forwarding leaves valid (their lines are
# copied unchanged); see `core.sip.SipMessage._cached`.
_FORWARD_SLOTS = ("from", "to", "call-id", "cseq", "content-length")


def _rank(status: int) -> tuple[int, int]:
    """Order of preference among final answers (RFC 3261 §16.7 step 6, simplified)."""
    return (0 if status < 300 else 1 if status >= 600 else 2, status)


class Proxy:
    """Sans-IO stateful record-routing proxy with Kamailio's TM suspend/continue semantics.

    Messages handed in are kept (a server transaction keeps its request) but never edited:
    the proxy copies before it changes a header.  Messages it emits must not be edited by
    the caller either (a server transaction re-sends the same object).
    """

    def __init__(self, config: ProxyConfig) -> None:
        self.config = config
        self._settings = TimerSettings(config.t1, config.t2, config.t4)
        self._timers = TimerHeap()
        self._cells: dict[tuple[int, int], Cell] = {}
        self._servers: dict[tuple, Cell] = {}
        self._clients: dict[tuple, tuple[Cell, Branch, ClientTransaction]] = {}
        self._labels: dict[int, int] = {}
        self._uri_cache: dict[str, Address | None] = {}
        self._stats: Counter[str] = Counter()
        host, port = config.address
        self._host = _strip_brackets(host)
        self._port = port
        ref = f"[{self._host}]" if ":" in self._host else self._host
        self._record_route = f"<sip:{ref}:{port};lr>"
        self._token = f"{zlib.crc32(f'{config.label_seed}/{ref}:{port}'.encode()):08x}"
        self._via_head = f"SIP/2.0/UDP {ref}:{port};branch={MAGIC_COOKIE}{self._token}."
        self._branch_prefix = f"{MAGIC_COOKIE}{self._token}."
        self._via_parts = _via_parts(self._via_head, self._branch_prefix)

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
        cell = self._new_cell(request, key, via, source, now)
        if max_forwards == 0:
            self._stats["too_many_hops"] += 1
            return self._send_final(cell, self._local_response(cell, 483, "Too Many Hops"), now)
        self._stats["requests_delivered"] += 1
        return [Deliver(request, source, cell.id)]

    def _new_cell(
        self, request: SipRequest, key: tuple, via: Via, source: Address, now: float
    ) -> Cell:
        """t_newtran: a cell with a fresh (index, label) and its server transaction."""
        cseq = request.cseq
        call_id = request.call_id
        index = zlib.crc32(f"{call_id} {cseq.number}".encode("utf-8", "surrogateescape")) & 0xFFFF
        label = self._labels.get(index)
        if label is None:
            label = zlib.crc32(f"{self.config.label_seed}:{index}".encode()) & 0x3FFFFFFF
        self._labels[index] = label + 1
        txn_id = TxnId(index, label)

        src_host, src_port = source
        via_host = _strip_brackets(via.host)
        rport = via.rport
        upstream = (src_host, src_port if rport is not None else via.port or 5060)
        via_fix = None
        if via_host != src_host or rport is not None:
            fix: dict[str, str] = {}
            if via_host != src_host:
                fix["received"] = src_host
            if rport is not None:
                fix["rport"] = str(src_port)
            via_fix = str(via.with_params(**fix))

        cell = Cell(txn_id, upstream, via_fix)
        cell.is_invite = request.method == "INVITE"
        cell.to_tag = f"{self._token}.{index:x}{label:x}"
        tick = self.config.tick
        life = self.config.max_inv_lifetime if cell.is_invite else self.config.max_noninv_lifetime
        cell.end_of_life = (math.floor(now / tick + 1e-9) + math.ceil(life / tick - 1e-9)) * tick
        server = ServerTransaction(request, upstream, self._timers, self._settings, cell, key)
        server.start(now)
        cell.server = server
        self._cells[(index, label)] = cell
        self._servers[key] = cell
        self._stats["transactions_created"] += 1
        return cell

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
            self._progress(cell, now)
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
            response = make_response(request, 481, None, f"{self._token}.481")
            return [Send(response, self._response_address(via, source))]
        self._stats["cancels"] += 1
        cancel_cell = self._new_cell(request, key, via, source, now)
        actions: list[Action] = []
        was_suspended = invite.suspended and not invite.server.final_sent
        if not invite.server.final_sent:
            invite.cancelled = True
            for branch in invite.branches:
                if branch.final is not None:
                    continue
                if branch.client is None:  # a blind branch cannot be cancelled: faked 487
                    branch.final = 487
                    self._stop_fr(branch)
                elif branch.provisional:
                    actions += self._send_cancel(branch, now)
                else:
                    branch.cancel_pending = True  # cancel_b_method 1: CANCEL on provisional
            actions += self._relay_best(invite, now)
            if not invite.server.final_sent and not self._pending(invite):
                actions += self._send_final(invite, self._local_response(invite, 487), now)
        actions += self._send_final(cancel_cell, self._local_response(cancel_cell, 200), now)
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
        return self._client_outputs(cell, branch, client, outputs, now)

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
            return self._send_final(cell, self._local_response(cell, 483, "Too Many Hops"), now)
        actions: list[Action] = []
        if cell.is_invite and self.config.auto_inv_100 and cell.server.last_response is None:
            actions += self._send_provisional(cell, 100, now)
        source, destination, drop_route = self._loose_route(request)
        if destination is None:
            return actions + self._send_final(
                cell, self._local_response(cell, 400, "Bad Route or Request-URI"), now
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
        out = self._rewrite(
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
        actions += client.start(now)
        branch.fr = self._timers.schedule(
            self._deadline(cell, now, self.config.fr_timer), branch, "fr"
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
            source, destination, drop_route = self._loose_route(request)
            if destination is None:
                return [self._discard("unroutable", f"{request.method} {request.uri}")]
            incoming = via.branch if via is not None and via.branch else request.call_id
            digest = zlib.crc32(incoming.encode("utf-8", "surrogateescape"))
            out = self._rewrite(request, source, f"sl{digest:08x}", max_forwards, False, drop_route)
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
            return self._send_provisional(cell, status, now, reason)
        self._stats["replies_sent"] += 1
        return self._send_final(cell, self._local_response(cell, status, reason), now)

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
            actions += self._send_provisional(cell, 100, now)
        branch = Branch(cell, len(cell.branches), None)
        cell.branches.append(branch)
        branch.fr = self._timers.schedule(
            self._deadline(cell, now, self.config.fr_timer), branch, "fr"
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
        blind = self._last_blind(cell)
        if blind is None or blind.final is not None:
            return ContinueOutcome.TIMED_OUT, []
        if cell.waiting:
            return ContinueOutcome.NOT_FOUND, []
        cell.suspended = False
        cell.continuing = True
        blind.final = 0
        self._stop_fr(blind)
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
        return self._send_final(cell, self._local_response(cell, 500, KILL_REASON), now)

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
                actions += self._branch_timeout(target, now)
            elif name == "wait":
                self._free(target)
            else:
                try:
                    outputs = target.on_timer(name, now)
                except TransactionError as error:  # a timer the table does not expect
                    actions.append(self._discard("protocol error", str(error)))
                    continue
                owner = target.owner
                if isinstance(owner, Cell):
                    actions += self._server_outputs(owner, outputs, now)
                else:
                    actions += self._client_outputs(owner.cell, owner, target, outputs, now)
        return actions

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

    def _deadline(self, cell: Cell, now: float, duration: float) -> float:
        """τ(now) + ⌈duration / tick⌉ ticks, capped at the cell's end of life (§1.4)."""
        tick = self.config.tick
        ticks = math.floor(now / tick + 1e-9) + math.ceil(duration / tick - 1e-9)
        return min(ticks * tick, cell.end_of_life)

    def _stop_fr(self, branch: Branch) -> None:
        if branch.fr is not None:
            self._timers.cancel(branch.fr)
            branch.fr = None

    @staticmethod
    def _pending(cell: Cell) -> bool:
        return any(b.final is None for b in cell.branches)

    @staticmethod
    def _last_blind(cell: Cell) -> Branch | None:
        for branch in reversed(cell.branches):
            if branch.client is None:
                return branch
        return None

    def _local_response(self, cell: Cell, status: int, reason: str | None = None) -> SipResponse:
        request = cell.server.request
        response = make_response(request, status, reason, None if status == 100 else cell.to_tag)
        if cell.via_fix is not None:
            response.remove_first_value("Via")
            response.prepend("Via", cell.via_fix)
        return response

    def _response_address(self, via: Via, source: Address) -> Address:
        return (source[0], source[1] if via.rport is not None else via.port or 5060)

    def _send_provisional(
        self, cell: Cell, status: int, now: float, reason: str | None = None
    ) -> list[Action]:
        outputs = cell.server.send_response(self._local_response(cell, status, reason), now)
        return [o for o in outputs if type(o) is Send]

    def _send_final(self, cell: Cell, response: SipResponse, now: float) -> list[Action]:
        """Send a final answer upstream through the server transaction (first final only;
        later 2xx to an INVITE pass statelessly) and clean up the branches."""
        server = cell.server
        if server.final_sent and not (200 <= response.status < 300):
            return []
        if server.state in ("completed", "confirmed", "terminated"):
            self._stats["responses_relayed"] += 1
            return [Send(response, cell.upstream)]
        first = not server.final_sent
        outputs = server.send_response(response, now)
        actions: list[Action] = [o for o in outputs if type(o) is Send]
        if first:
            actions += self._after_final(cell, response.status, now)
        return actions

    def _after_final(self, cell: Cell, status: int, now: float) -> list[Action]:
        """A final answer went upstream: stop every branch timer, cancel pending INVITE
        branches (RFC 3261 §16.7 step 10), and go on wait unless an ACK is awaited."""
        actions: list[Action] = []
        for branch in cell.branches:
            self._stop_fr(branch)
            if branch.client is not None and branch.final is None:
                branch.client.stop_retransmissions()
                if cell.is_invite:
                    if branch.provisional:
                        actions += self._send_cancel(branch, now)
                    else:
                        branch.cancel_pending = True
        self._progress(cell, now)
        return actions

    def _progress(self, cell: Cell, now: float) -> None:
        """Put the cell on its wait timer once its server transaction needs nothing more."""
        if cell.waiting:
            return
        state = cell.server.state
        if state in ("accepted", "confirmed", "terminated") or (
            not cell.is_invite and state == "completed"
        ):
            cell.waiting = True
            tick = self.config.tick
            ticks = math.floor(now / tick + 1e-9) + math.ceil(self.config.wt_timer / tick - 1e-9)
            cell.wait = self._timers.schedule(ticks * tick, cell, "wait")

    def _free(self, cell: Cell) -> None:
        """The wait timer fired: forget the cell; its id is never valid again."""
        cell.freed = True
        self._cells.pop((cell.id.index, cell.id.label), None)
        if self._servers.get(cell.server.key) is cell:
            del self._servers[cell.server.key]
        cell.server.terminate()
        cell.server.owner = None  # break the reference cycles: refcounting frees the cell
        for branch in cell.branches:
            self._stop_fr(branch)
            for client in (branch.client, branch.cancel):
                if client is not None:
                    client.terminate()
                    client.owner = None
                    if self._clients.get(client.key, _NO_ENTRY)[2] is client:
                        del self._clients[client.key]
        cell.branches = []
        self._stats["transactions_freed"] += 1

    def _server_outputs(self, cell: Cell, outputs: Iterable, now: float) -> list[Action]:
        actions: list[Action] = []
        for out in outputs:
            if type(out) is Send:
                actions.append(out)
            elif out is TERMINATED:
                self._progress(cell, now)
        return actions

    def _client_outputs(
        self,
        cell: Cell,
        branch: Branch,
        client: ClientTransaction,
        outputs: Iterable,
        now: float,
    ) -> list[Action]:
        actions: list[Action] = []
        for out in outputs:
            kind = type(out)
            if kind is Send:
                actions.append(out)
            elif kind is PassToUser:
                if client is branch.client and not cell.freed:
                    actions += self._branch_response(cell, branch, out.message, now)
            elif kind is TransactionTimeout:
                if client is branch.client:
                    self._stats["branch_timeouts"] += 1
                    actions += self._branch_timeout(branch, now)
            elif out is TERMINATED and self._clients.get(client.key, _NO_ENTRY)[2] is client:
                del self._clients[client.key]
        return actions

    def _branch_response(
        self, cell: Cell, branch: Branch, response: SipResponse, now: float
    ) -> list[Action]:
        """A response of a relayed branch reached the proxy core (reply_received)."""
        status = response.status
        actions: list[Action] = []
        if status < 200:
            if not branch.provisional:
                branch.provisional = True
                if branch.cancel_pending:
                    actions += self._send_cancel(branch, now)
                elif cell.is_invite and branch.final is None and branch.fr is not None:
                    self._timers.cancel(branch.fr)
                    branch.fr = self._timers.schedule(
                        self._deadline(cell, now, self.config.fr_inv_timer), branch, "fr"
                    )
            if status == 100 or cell.suspended or cell.server.final_sent:
                return actions
            response = response.copy()
            response.remove_first_value("Via")
            self._stats["responses_relayed"] += 1
            return actions + self._send_provisional_relayed(cell, response, now)
        response = response.copy()
        response.remove_first_value("Via")
        if branch.final is not None:  # already faked (fr timeout): only a 2xx still goes up
            if 200 <= status < 300 and cell.is_invite and not cell.suspended:
                self._stats["responses_relayed"] += 1
                return actions + self._send_final(cell, response, now)
            return actions
        branch.final = status
        branch.response = response
        self._stop_fr(branch)
        if 200 <= status < 300 and not cell.suspended:
            self._stats["responses_relayed"] += 1
            return actions + self._send_final(cell, response, now)
        return actions + self._relay_best(cell, now)

    def _send_provisional_relayed(
        self, cell: Cell, response: SipResponse, now: float
    ) -> list[Action]:
        outputs = cell.server.send_response(response, now)
        return [o for o in outputs if type(o) is Send]

    def _relay_best(self, cell: Cell, now: float) -> list[Action]:
        """When no branch is pending, send the best final answer upstream (t_pick_branch)."""
        if cell.server.final_sent or self._pending(cell):
            return []
        candidates = [b for b in cell.branches if b.final]
        if not candidates:
            return []
        best = min(candidates, key=lambda b: _rank(b.final or 0))
        response = best.response
        if response is None:
            assert best.final is not None
            response = self._local_response(cell, best.final)
        else:
            self._stats["responses_relayed"] += 1
        return self._send_final(cell, response, now)

    def _branch_timeout(self, branch: Branch, now: float) -> list[Action]:
        """fr (or Timer B/F) expired on a branch: a faked 408 on it (§1.4)."""
        cell = branch.cell
        if branch.final is not None or cell.freed:
            return []
        self._stop_fr(branch)
        branch.final = 408
        events: list[Action] = []
        actions: list[Action] = []
        if branch.client is None:
            cell.timed_out = True
            if cell.suspended:
                self._stats["suspension_timeouts"] += 1
                events.append(SuspensionEvent("timed_out", cell.id, now))
        else:
            branch.client.stop_retransmissions()
            if cell.is_invite and branch.provisional:
                actions += self._send_cancel(branch, now)
        actions += self._relay_best(cell, now)
        return actions + events

    def _send_cancel(self, branch: Branch, now: float) -> list[Action]:
        client = branch.client
        if branch.cancel is not None or client is None or branch.branch_id is None:
            return []
        branch.cancel_pending = False
        cancel = ClientTransaction(
            make_cancel(client.request),
            client.peer,
            self._timers,
            self._settings,
            branch,
            (branch.branch_id, "CANCEL"),
        )
        branch.cancel = cancel
        self._clients[cancel.key] = (branch.cell, branch, cancel)
        self._stats["cancels_sent"] += 1
        return cancel.start(now)

    # -- request rewriting

    def _loose_route(self, request: SipRequest) -> tuple[SipRequest, Address | None, bool]:
        """Find the Route entries naming this proxy (loose_route()); the next hop is the top
        remaining Route, else the Request-URI (None if it cannot be routed).  Returns the
        message to forward from (the request itself unless Route values had to be popped
        from a copy) and whether the rewrite pass must drop the first Route line (the common
        case: one Route line holding exactly our Record-Route)."""
        request._positions("")  # index and cache up to date
        lines = request._index.get("route")
        rr = self._record_route
        if lines is not None and len(lines) == 1 and request._headers[lines[0]][1] == rr:
            # One Route line, exactly our Record-Route: drop the line, go by Request-URI.
            return request, self._uri_address(request.uri), True
        out = request
        routes = request.get_all("Route")
        pops = 0
        while pops < len(routes) and self._is_self(routes[pops]):
            pops += 1
        drop_line = False
        if pops == 1 and request.get("Route") == rr and len(routes) >= 1:
            drop_line = request._headers[lines[0]][1] == rr  # type: ignore[index]
        if pops and not drop_line:
            out = request.copy()
            for _ in range(pops):
                out.remove_first_value("Route")
        if pops < len(routes):
            try:
                target = parse_name_addr(routes[pops]).uri
            except SipParseError:
                return out, None, False
        else:
            target = out.uri
        return out, self._uri_address(target), drop_line

    def _is_self(self, route: str) -> bool:
        if route == self._record_route:
            return True
        try:
            uri = parse_uri(parse_name_addr(route).uri)
        except SipParseError:
            return False
        if not uri.is_sip:
            return False
        port = uri.port or (5061 if uri.scheme.lower() == "sips" else 5060)
        return _strip_brackets(uri.host).lower() == self._host.lower() and port == self._port

    def _uri_address(self, text: str) -> Address | None:
        cache = self._uri_cache
        if text in cache:
            return cache[text]
        try:
            uri = parse_uri(text)
        except SipParseError:
            address = None
        else:
            if uri.is_sip:
                default = 5061 if uri.scheme.lower() == "sips" else 5060
                address = (_strip_brackets(uri.host), uri.port or default)
            else:
                address = None
        if len(cache) >= 4096:
            cache.clear()
        cache[text] = address
        return address

    def _rewrite(
        self,
        request: SipRequest,
        source: SipRequest,
        branch_suffix: str,
        max_forwards: int | None,
        record_route: bool = False,
        drop_route: bool = False,
    ) -> SipRequest:
        """The request to forward, from `source`'s headers in one pass: push our Via (branch
        `_branch_prefix` + `branch_suffix`), decrement Max-Forwards (70 if absent), add
        Record-Route (at the top, or before the first Record-Route), drop the first Route
        line if `drop_route` (it names only us). `source` is `request` or its edited copy."""
        via = f"{self._via_head}{branch_suffix}"
        headers: list[tuple[str, str]] = []
        append = headers.append
        mf = "70" if max_forwards is None else str(max_forwards - 1)
        via_done = rr_done = mf_done = False
        for line in source._headers:
            name = line[0]
            if name[0] not in "VvMmRr":  # only Via, Max-Forwards, (Record-)Route matter
                append(line)
                continue
            key = name.lower()
            if drop_route and key == "route":
                drop_route = False
                continue
            if not via_done and (key == "via" or key == "v"):
                if record_route and not rr_done:
                    append(("Record-Route", self._record_route))
                    rr_done = True
                append(("Via", via))
                via_done = True
            elif key == "max-forwards":
                if mf_done:
                    continue
                line = (name, mf)
                mf_done = True
            elif key == "record-route" and record_route and not rr_done:
                append(("Record-Route", self._record_route))
                rr_done = True
            append(line)
        if not mf_done:
            headers.insert(1 if via_done else 0, ("Max-Forwards", mf))
        # What the request has parsed stays valid for the lines copied unchanged.
        source._positions("")
        old = source._cache
        cache: dict = {"max-forwards": int(mf)}
        for slot in _FORWARD_SLOTS:
            value = old.get(slot, _MISSING)
            if value is not _MISSING:
                cache[slot] = value
        parts = self._via_parts
        if via_done and parts is not None:
            branch = f"{self._branch_prefix}{branch_suffix}"
            cache["via/top"] = Via(parts[0], parts[1], parts[2], (("branch", branch),))
        return _request(request.method, request.uri, headers, source.body, request.version, cache)

    # -- malformed input

    def _malformed(self, data: bytes, error: SipParseError, source: Address) -> list[Action]:
        answer = _answer_for_malformed(data, error.status_hint)
        if answer is None:
            return [self._discard("parse error", str(error), source)]
        response, via = answer
        self._stats["malformed_answered"] += 1
        destination = source
        if via is not None:
            destination = self._response_address(via, source)
        return [Send(response, destination)]


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
_REASONS = {
    400: "Bad Request",
    413: "Request Entity Too Large",
    414: "Request-URI Too Long",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    505: "Version Not Supported",
    513: "Message Too Large",
}


def _answer_for_malformed(data: bytes, status: int) -> tuple[SipResponse, Via | None] | None:
    """If a malformed datagram is still a request with Via, From, To, Call-ID and CSeq,
    the error response to it (and its parsed top Via, if that parses); else None."""
    try:
        head = bytes(data).split(b"\r\n\r\n", 1)[0].decode("utf-8", "replace")
        lines = head.lstrip("\r\n").split("\r\n")
        start = lines[0].split(" ")
        if len(start) != 3 or start[0].upper().startswith("SIP/") or start[0] == "ACK":
            return None
        if not start[2].upper().startswith("SIP/"):
            return None
        vias: list[tuple[str, str]] = []
        found: dict[str, tuple[str, str]] = {}
        for line in lines[1:]:
            name, colon, value = line.partition(":")
            if not colon:
                continue
            key = name.strip(" \t").lower()
            key = _COMPACT.get(key, key)
            value = value.strip(" \t")
            if "\r" in value or "\n" in value:
                return None
            if key == "via":
                vias.append(("Via", value))
            elif key in ("from", "to", "call-id", "cseq") and key not in found:
                found[key] = (name.strip(" \t"), value)
        if not vias or len(found) < 4:
            return None
        to_name, to_value = found["to"]
        if ";tag=" not in to_value.replace(" ", "").lower():
            to_value = f"{to_value};tag=malformed"
        headers = [
            *vias,
            found["from"],
            (to_name, to_value),
            found["call-id"],
            found["cseq"],
            ("Content-Length", "0"),
        ]
        reason = _REASONS.get(status, "Bad Request")
        response = SipResponse(status, reason, headers)
        try:
            via = Via.parse(vias[0][1].split(",", 1)[0])
        except SipParseError:
            via = None
        return response, via
    except Exception:  # noqa: BLE001 - best effort only: no answer is always safe
        return None
