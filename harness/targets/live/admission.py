"""Admission control of the live proxy: which requests are answered 503 instead of served.

A proxy that takes every request it is sent under overload serves none of them well: the
socket buffer overflows and drops datagrams at random (in-dialog ones too, so calls it
already carries fail), and every transaction it creates lives on for the wait timer, so
memory grows with the offered load instead of with the load carried. `LiveServer` sheds
*new work* early and cheaply instead, with a stateless 503 Service Unavailable and a
`Retry-After` (as `sl_send_reply("503")` before `t_newtran()` in kamailio.cfg): no
transaction is created for it, and the ACK of such a 503 (recognised by its To tag) is
absorbed. What decides, checked as each datagram arrives:

- queue depth: the datagrams waiting for the SIP workers — still in the OS receive buffer
  (its bytes from SO_MEMINFO, one cheap getsockopt, over `OS_DATAGRAM_FOOTPRINT`), in the
  workers' UDP queue (`server.sip_socket`) — plus the strategy's backlog. At `max_queue`
  or more, requests that would start a dialog or stand alone (no To tag) are shed; requests
  inside a dialog are still served, so the calls already admitted can finish;
- memory: RSS (from /proc/self/statm, read at most every `MEMORY_CHECK_PERIOD`) at or
  above `max_rss_mb` freezes the transaction budget at what is live then (tightened while
  RSS keeps growing): new dialogs are shed while that many transactions live. A budget,
  not "shed while RSS is high": CPython rarely returns freed memory to the OS, so RSS
  stays up after a burst while the memory it holds is reused by the next transactions;
- transactions: at `max_transactions` live transactions (plus queued datagrams) every
  request but ACK and CANCEL is shed, retransmissions included (the last resort).

Every shed request is counted by cause (`shed: 503 ...`). What this module must not do:
create a transaction for a shed request, or change what the proxy core decides for a
request it lets through.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.events import Address
from core.runtime.server import Server
from core.sip import SipMessage, SipParseError, SipRequest, make_response, parse_message

DEFAULT_MAX_TRANSACTIONS = 20_000
DEFAULT_MAX_QUEUE = 256
"""Datagrams waiting before new dialogs are shed: about 12 ms of the proxy's work, room
for the bursts of a load at capacity, and little over half of what serve's receive
buffer holds (`LIVE_RCVBUF`), so that new work is refused before the OS drops datagrams of
calls already admitted."""
DEFAULT_MAX_RSS_MB = 1024
RETRY_AFTER = 2
"""Seconds a shed client should wait (Retry-After): a queue drains in milliseconds, but
clients told to come back at once return all together."""
OS_DATAGRAM_FOOTPRINT = 2304
"""Bytes of receive buffer one queued SIP datagram takes on Linux loopback (the skb's
truesize, measured for an 800-byte datagram)."""
MEMORY_CHECK_PERIOD = 0.05  # seconds of kernel time between two RSS reads
MEMORY_FLOOR = 100  # transactions always admitted, however high RSS is
MEMORY_GROWTH = 0.01  # RSS growth over the budget's that tightens the budget again
SHED_TAG = b"deferbench-shed-503"
SHED_QUEUE = "shed: 503 over queue depth"
SHED_MEMORY = "shed: 503 over memory ceiling"
SHED_CAP = "shed: 503 over transaction cap"
SHED_ACK = "shed: ACK of a 503 absorbed"
SHED_COUNTERS = (SHED_QUEUE, SHED_MEMORY, SHED_CAP)


@dataclass(frozen=True, slots=True)
class AdmissionLimits:
    """The three limits (`--max-transactions`, `--max-queue`, `--max-rss`)."""

    max_transactions: int = DEFAULT_MAX_TRANSACTIONS
    max_queue: int = DEFAULT_MAX_QUEUE
    max_rss_mb: float = DEFAULT_MAX_RSS_MB
    memory_floor: int = MEMORY_FLOOR

    def __post_init__(self) -> None:
        if self.max_transactions < 1:
            raise ValueError(f"max transactions must be >= 1, got {self.max_transactions}")
        if self.max_queue < 1:
            raise ValueError(f"max queue must be >= 1 datagram, got {self.max_queue}")
        if not 64 <= self.max_rss_mb <= 1_048_576:
            raise ValueError(f"max RSS must be in 64..1048576 MB, got {self.max_rss_mb:g}")


class StatmRss:
    """This process's RSS in MB from /proc/self/statm: one pread of a file kept open
    (well under a microsecond); 0.0 where there is no /proc."""

    def __init__(self) -> None:
        self._page = os.sysconf("SC_PAGE_SIZE")
        try:
            self._fd: int | None = os.open("/proc/self/statm", os.O_RDONLY)
        except OSError:
            self._fd = None

    def __call__(self) -> float:
        if self._fd is None:
            return 0.0
        return int(os.pread(self._fd, 128, 0).split()[1]) * self._page / 1e6

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


class MemoryBudget:
    """How many live transactions new dialogs may find, given RSS (None: no limit)."""

    def __init__(self, ceiling_mb: float, floor: int) -> None:
        self.ceiling_mb = ceiling_mb
        self.floor = floor
        self.budget: int | None = None
        self._rss_at_budget = 0.0

    def update(self, rss_mb: float, live: int) -> None:
        """RSS read now with `live` transactions: set, tighten or lift the budget."""
        if rss_mb < self.ceiling_mb:
            self.budget = None
            return
        if self.budget is None or rss_mb > self._rss_at_budget * (1 + MEMORY_GROWTH):
            current = live if self.budget is None else min(live, self.budget)
            self.budget = max(self.floor, current)
            self._rss_at_budget = rss_mb

    def full(self, live: int) -> bool:
        return self.budget is not None and live >= self.budget


def _zero() -> int:
    return 0


class LiveServer(Server):
    """The modelled server plus the live target's admission control (module docstring).

    `os_queued_bytes` and `rss_mb` are how it looks at the OS: the socket's receive queue
    and the process's memory (injected, so tests need neither a loaded socket nor memory).
    """

    def __init__(
        self,
        *args: Any,
        limits: AdmissionLimits | None = None,
        os_queued_bytes: Callable[[], int] = _zero,
        rss_mb: Callable[[], float] = _zero,
        **kwargs: Any,
    ) -> None:
        self.limits = limits or AdmissionLimits()
        self.os_queued_bytes = os_queued_bytes
        self.rss_mb = rss_mb
        self.memory = MemoryBudget(self.limits.max_rss_mb, self.limits.memory_floor)
        self._memory_due = float("-inf")
        super().__init__(*args, **kwargs)

    def queue_depth(self) -> int:
        """Datagrams waiting for the SIP workers (OS buffer + UDP queue) + strategy backlog."""
        return (
            self.os_queued_bytes() // OS_DATAGRAM_FOOTPRINT
            + len(self.sip_socket)
            + self.strategy.backlog(self)
        )

    def receive(self, data: bytes | SipMessage, source: Address) -> None:
        if isinstance(data, bytes):
            if SHED_TAG in data and self._absorb_shed_ack(data):
                return
            cause = self._overload()
            if cause is not None and self._shed(data, source, cause):
                return
        Server.receive(self, data, source)

    def _overload(self) -> str | None:
        """Why new work would be shed now (None: it is served)."""
        limits = self.limits
        live = self.proxy.stats()["transactions_live"] + len(self.sip_socket)
        if live >= limits.max_transactions:
            return SHED_CAP
        if self.queue_depth() >= limits.max_queue:
            return SHED_QUEUE
        now = self.kernel.now
        if now >= self._memory_due:
            self._memory_due = now + MEMORY_CHECK_PERIOD
            self.memory.update(self.rss_mb(), live)
        if self.memory.full(live):
            return SHED_MEMORY
        return None

    def _shed(self, data: bytes, source: Address, cause: str) -> bool:
        """Answer `data` 503 + Retry-After if `cause` applies to it; False: serve it."""
        try:
            message = parse_message(data)
        except SipParseError:
            return False  # the proxy core answers or drops it as usual
        if not isinstance(message, SipRequest) or message.method in ("ACK", "CANCEL"):
            return False
        if cause != SHED_CAP and message.to_tag is not None:
            return False  # inside a dialog: the call was admitted, let it finish
        via = message.top_via
        if via is None:
            return False
        response = make_response(message, 503, "Service Unavailable", SHED_TAG.decode())
        response.set("Retry-After", str(RETRY_AFTER))
        port = source[1] if via.rport is not None else via.port or 5060
        self.transport(response, (source[0], port))
        self.count(cause)
        return True

    def _absorb_shed_ack(self, data: bytes) -> bool:
        try:
            message = parse_message(data)
        except SipParseError:
            return False
        is_ack = isinstance(message, SipRequest) and message.method == "ACK"
        if is_ack and message.to_tag == SHED_TAG.decode():
            self.count(SHED_ACK)
            return True
        return False

    def shed_total(self) -> int:
        """503s sent so far, every cause."""
        return sum(self.counters[name] for name in SHED_COUNTERS)
