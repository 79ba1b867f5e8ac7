"""Kamailio's TM layer over the RFC 3261 transactions of `core.transaction` (reference §0-§1
of kamailio-deferral-semantics.md): the transaction table of cells, each one server
transaction with its branches (relayed client transactions, or the blind branch a suspend
adds) and async flags, and what happens to a cell as answers and timers arrive — fr/fr_inv
and wait timers quantised to the core tick, the best final answer picked and relayed
upstream, CANCEL of pending branches, freeing.

Flaws are modelled on purpose: a timed-out or cancelled suspension only shows up when the
continuation is attempted; replies arriving while suspended are stored, not relayed.

It decides nothing about routing (that is `core.proxy_routing`) and exposes no API to the
routing logic (that is `core.proxy.Proxy`). Sans-IO: it must not open sockets, read clocks
(`now` is always passed in), sleep, or import an event loop.
"""

from __future__ import annotations

import math
import zlib
from array import array
from collections import Counter
from collections.abc import Iterable

from core.events import Action, Address, Send, SuspensionEvent, TxnId
from core.proxy_config import ProxyConfig
from core.proxy_routing import strip_brackets
from core.sip import SipRequest, SipResponse, Via, make_response
from core.transaction import (
    TERMINATED,
    ClientTransaction,
    PassToUser,
    ServerTransaction,
    TimerHeap,
    TimerSettings,
    TransactionTimeout,
    make_cancel,
)

# The reason of the 500 a continuation that neither relays nor replies ends in.
KILL_REASON = "I'm terribly sorry, server error occurred (1/TM)"
_NO_ENTRY = (None, None, None)


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

    def pending(self) -> bool:
        """Whether a branch still awaits its final answer."""
        return any(b.final is None for b in self.branches)

    def last_blind(self) -> Branch | None:
        """The blind branch of the latest suspend, if any."""
        for branch in reversed(self.branches):
            if branch.client is None:
                return branch
        return None


def _rank(status: int) -> tuple[int, int]:
    """Order of preference among final answers (RFC 3261 §16.7 step 6, simplified)."""
    return (0 if status < 300 else 1 if status >= 600 else 2, status)


class TransactionTable:
    """The cells of one proxy, indexed by id, by server-transaction key and by
    client-transaction key, with the timer heap they all run on; `stats` is the proxy's."""

    def __init__(self, config: ProxyConfig, token: str, stats: Counter[str]) -> None:
        self.config = config
        self.settings = TimerSettings(config.t1, config.t2, config.t4)
        self.timers = TimerHeap()
        self.cells: dict[tuple[int, int], Cell] = {}
        self.servers: dict[tuple, Cell] = {}
        self.clients: dict[tuple, tuple[Cell, Branch, ClientTransaction]] = {}
        self.stats = stats
        # Next label of each hash index, + 1 (0: the index was never used): one array of
        # 2^16 slots instead of a dict that fills up with a long run.
        self._labels = array("Q", bytes(8 * 0x10000))
        self._token = token

    def new_cell(
        self, request: SipRequest, key: tuple, via: Via, source: Address, now: float
    ) -> Cell:
        """t_newtran: a cell with a fresh (index, label) and its server transaction."""
        cseq = request.cseq
        call_id = request.call_id
        index = zlib.crc32(f"{call_id} {cseq.number}".encode("utf-8", "surrogateescape")) & 0xFFFF
        stored = self._labels[index]
        if stored:
            label = stored - 1
        else:
            label = zlib.crc32(f"{self.config.label_seed}:{index}".encode()) & 0x3FFFFFFF
        self._labels[index] = label + 2
        txn_id = TxnId(index, label)

        src_host, src_port = source
        via_host = strip_brackets(via.host)
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
        server = ServerTransaction(request, upstream, self.timers, self.settings, cell, key)
        server.start(now)
        cell.server = server
        self.cells[(index, label)] = cell
        self.servers[key] = cell
        self.stats["transactions_created"] += 1
        return cell

    def deadline(self, cell: Cell, now: float, duration: float) -> float:
        """τ(now) + ⌈duration / tick⌉ ticks, capped at the cell's end of life (§1.4)."""
        tick = self.config.tick
        ticks = math.floor(now / tick + 1e-9) + math.ceil(duration / tick - 1e-9)
        return min(ticks * tick, cell.end_of_life)

    def stop_fr(self, branch: Branch) -> None:
        """Cancel the branch's fr / fr_inv timer, if it runs."""
        if branch.fr is not None:
            self.timers.cancel(branch.fr)
            branch.fr = None

    def local_response(self, cell: Cell, status: int, reason: str | None = None) -> SipResponse:
        """A response the proxy itself answers the cell's request with (its to-tag unless 100,
        the top Via as the cell fixed it)."""
        request = cell.server.request
        response = make_response(request, status, reason, None if status == 100 else cell.to_tag)
        if cell.via_fix is not None:
            response.remove_first_value("Via")
            response.prepend("Via", cell.via_fix)
        return response

    def send_provisional(
        self, cell: Cell, status: int, now: float, reason: str | None = None
    ) -> list[Action]:
        """Send a local provisional answer upstream (100 Trying, or a reply() below 200)."""
        outputs = cell.server.send_response(self.local_response(cell, status, reason), now)
        return [o for o in outputs if type(o) is Send]

    def send_final(self, cell: Cell, response: SipResponse, now: float) -> list[Action]:
        """Send a final answer upstream through the server transaction (first final only;
        later 2xx to an INVITE pass statelessly) and clean up the branches."""
        server = cell.server
        if server.final_sent and not (200 <= response.status < 300):
            return []
        if server.state in ("completed", "confirmed", "terminated"):
            self.stats["responses_relayed"] += 1
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
            self.stop_fr(branch)
            if branch.client is not None and branch.final is None:
                branch.client.stop_retransmissions()
                if cell.is_invite:
                    if branch.provisional:
                        actions += self.send_cancel(branch, now)
                    else:
                        branch.cancel_pending = True
        self.progress(cell, now)
        return actions

    def progress(self, cell: Cell, now: float) -> None:
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
            cell.wait = self.timers.schedule(ticks * tick, cell, "wait")

    def free(self, cell: Cell) -> bool:
        """The wait timer fired: forget the cell; its id is never valid again. True if the
        cell was ever suspended (it had a blind branch): its deferral can no longer change,
        except by a continue that finds nothing (stale)."""
        deferred = any(branch.client is None for branch in cell.branches)
        cell.freed = True
        cell.wait = None  # its (fired) timer entry holds the cell: no cycle left behind
        self.cells.pop((cell.id.index, cell.id.label), None)
        if self.servers.get(cell.server.key) is cell:
            del self.servers[cell.server.key]
        cell.server.terminate()
        cell.server.owner = None  # break the reference cycles: refcounting frees the cell
        for branch in cell.branches:
            self.stop_fr(branch)
            for client in (branch.client, branch.cancel):
                if client is not None:
                    client.terminate()
                    client.owner = None
                    if self.clients.get(client.key, _NO_ENTRY)[2] is client:
                        del self.clients[client.key]
        cell.branches = []
        self.stats["transactions_freed"] += 1
        return deferred

    def close(self) -> None:
        """Free every cell and drop every timer: the proxy is done (see `TimerHeap.clear`)."""
        for cell in list(self.cells.values()):
            self.free(cell)
        self.timers.clear()

    def server_outputs(self, cell: Cell, outputs: Iterable, now: float) -> list[Action]:
        """What the cell's server transaction produced: sends go out; once it terminates, the
        cell goes on its wait timer."""
        actions: list[Action] = []
        for out in outputs:
            if type(out) is Send:
                actions.append(out)
            elif out is TERMINATED:
                self.progress(cell, now)
        return actions

    def client_outputs(
        self,
        cell: Cell,
        branch: Branch,
        client: ClientTransaction,
        outputs: Iterable,
        now: float,
    ) -> list[Action]:
        """What a branch's client transaction (or its CANCEL) produced: sends go out,
        responses reach the cell, a timeout fakes a 408 on the branch."""
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
                    self.stats["branch_timeouts"] += 1
                    actions += self.branch_timeout(branch, now)
            elif out is TERMINATED and self.clients.get(client.key, _NO_ENTRY)[2] is client:
                del self.clients[client.key]
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
                    actions += self.send_cancel(branch, now)
                elif cell.is_invite and branch.final is None and branch.fr is not None:
                    self.timers.cancel(branch.fr)
                    branch.fr = self.timers.schedule(
                        self.deadline(cell, now, self.config.fr_inv_timer), branch, "fr"
                    )
            if status == 100 or cell.suspended or cell.server.final_sent:
                return actions
            response = response.copy()
            response.remove_first_value("Via")
            self.stats["responses_relayed"] += 1
            return actions + self._send_provisional_relayed(cell, response, now)
        response = response.copy()
        response.remove_first_value("Via")
        if branch.final is not None:  # already faked (fr timeout): only a 2xx still goes up
            if 200 <= status < 300 and cell.is_invite and not cell.suspended:
                self.stats["responses_relayed"] += 1
                return actions + self.send_final(cell, response, now)
            return actions
        branch.final = status
        branch.response = response
        self.stop_fr(branch)
        if 200 <= status < 300 and not cell.suspended:
            self.stats["responses_relayed"] += 1
            return actions + self.send_final(cell, response, now)
        return actions + self.relay_best(cell, now)

    def _send_provisional_relayed(
        self, cell: Cell, response: SipResponse, now: float
    ) -> list[Action]:
        outputs = cell.server.send_response(response, now)
        return [o for o in outputs if type(o) is Send]

    def relay_best(self, cell: Cell, now: float) -> list[Action]:
        """When no branch is pending, send the best final answer upstream (t_pick_branch)."""
        if cell.server.final_sent or cell.pending():
            return []
        candidates = [b for b in cell.branches if b.final]
        if not candidates:
            return []
        best = min(candidates, key=lambda b: _rank(b.final or 0))
        response = best.response
        if response is None:
            assert best.final is not None
            response = self.local_response(cell, best.final)
        else:
            self.stats["responses_relayed"] += 1
        return self.send_final(cell, response, now)

    def branch_timeout(self, branch: Branch, now: float) -> list[Action]:
        """fr (or Timer B/F) expired on a branch: a faked 408 on it (§1.4)."""
        cell = branch.cell
        if branch.final is not None or cell.freed:
            return []
        self.stop_fr(branch)
        branch.final = 408
        events: list[Action] = []
        actions: list[Action] = []
        if branch.client is None:
            cell.timed_out = True
            if cell.suspended:
                self.stats["suspension_timeouts"] += 1
                events.append(SuspensionEvent("timed_out", cell.id, now))
        else:
            branch.client.stop_retransmissions()
            if cell.is_invite and branch.provisional:
                actions += self.send_cancel(branch, now)
        actions += self.relay_best(cell, now)
        return actions + events

    def send_cancel(self, branch: Branch, now: float) -> list[Action]:
        """Start a CANCEL client transaction for the branch (once, relayed branches only)."""
        client = branch.client
        if branch.cancel is not None or client is None or branch.branch_id is None:
            return []
        branch.cancel_pending = False
        cancel = ClientTransaction(
            make_cancel(client.request),
            client.peer,
            self.timers,
            self.settings,
            branch,
            (branch.branch_id, "CANCEL"),
        )
        branch.cancel = cancel
        self.clients[cancel.key] = (branch.cell, branch, cancel)
        self.stats["cancels_sent"] += 1
        return cancel.start(now)  # type: ignore[return-value]  # a start only sends
