"""The timer heap shared by a user's RFC 3261 transactions (`core.transaction`) and its own
timers: deadlines in one heap (trio-style lazy deletion) exposing the exact next deadline.

A transaction's timers ride on one carrier entry (see `TimerHeap`); the transaction keeps
them itself (`Transaction._timers`, `_carries`, `_recarry`). A settled transaction that only
lingers (Timer M, K, L or J) waits in a queue instead (`TimerHeap._linger`). Sans-IO: no
clock, no I/O.
"""

from __future__ import annotations

import heapq
import itertools
from collections import deque
from typing import Any

_heappush = heapq.heappush

_CARRIER = "(carrier)"  # the name of a heap entry that carries a transaction's timers

# A queued linger timer (when, seq, txn, name), typed as a plain tuple: it is told from a
# dead one by identity (`txn._carrier is entry`), which the compiled build keeps only for
# tuples it does not unpack into C values.
LingerEntry = tuple


class TimerHeap:
    """Deadlines of many timers in one heap; cancelled entries are skipped when popped.

    An entry is a list `[when, seq, target, name, live]`; `seq` breaks ties in schedule
    order so targets are never compared.  Dead entries are compacted away when they
    outnumber the live ones, so a steady load keeps the heap bounded.

    A transaction's timers (A and B started together and stopped a few ms later, then M
    for 64·T1...) do not get an entry each: the transaction keeps them as (when, seq) and
    the heap holds one *carrier* entry per transaction, keyed by the earliest of them when
    it was pushed. A timer stopped in the meantime leaves the carrier early, never late:
    when it pops with no timer of its key left, it is pushed again at the earliest key
    that is. Every timer still takes its `seq` when started, so timers fire in exactly the
    order one entry each would give. `len()` counts running timers either way.

    A settled transaction lingers for a fixed interval (Timer M, K, L or J) to absorb
    retransmissions; at a steady load tens of thousands do. Their one timer leaves the
    heap for a FIFO queue per timer name (`_linger`): started in time order with the same
    interval, they expire in the order they were queued, so a queue entry is a single
    tuple `(when, seq, txn, name)` and the transaction drops its timer dict and carrier.
    The transaction's `_carrier` is that tuple while it lingers; a queue entry it no
    longer holds is dead and skipped. Queue heads and the heap's head are merged by
    (when, seq), so timers still fire in exactly the order one entry each would give.
    """

    __slots__ = ("_heap", "_seq", "_dead", "_running", "_lingering")

    def __init__(self) -> None:
        self._heap: list[list[Any]] = []
        self._seq = itertools.count()
        self._dead = 0
        self._running = 0  # timers scheduled or started, neither cancelled nor fired
        self._lingering: dict[str, deque[LingerEntry]] = {}

    def __len__(self) -> int:
        return self._running

    def schedule(self, when: float, target: Any, name: str) -> list[Any]:
        entry = [when, next(self._seq), target, name, True]
        _heappush(self._heap, entry)
        self._running += 1
        return entry

    def clear(self) -> None:
        """Drop every timer, unlinking each transaction from the entry that carries or queues
        it (the two refer to each other): once its owner lets go, reference counting frees
        it without the cyclic collector (`harness.targets.sim.SimRun.release`)."""
        for entry in self._heap:
            if getattr(entry[2], "_carrier", None) is entry:
                entry[2]._carrier = None
            entry[2] = None
        for queue in self._lingering.values():
            for queued in queue:
                if queued[2]._carrier is queued:
                    queued[2]._carrier = None
        self._heap.clear()
        self._lingering.clear()
        self._dead = self._running = 0

    def cancel(self, entry: list[Any]) -> None:
        if entry[4]:
            self._running -= 1
            self._kill(entry)

    def _kill(self, entry: list[Any]) -> None:
        entry[4] = False
        self._dead += 1
        if self._dead > 1024 and self._dead * 2 > len(self._heap):
            self._heap = [e for e in self._heap if e[4]]
            heapq.heapify(self._heap)
            self._dead = 0

    def _carry(self, when: float, seq: int, txn: Any) -> list[Any]:
        entry = [when, seq, txn, _CARRIER, True]
        _heappush(self._heap, entry)
        return entry

    def _linger(self, when: float, seq: int, txn: Any, name: str) -> LingerEntry | None:
        """Queue the linger timer `name` of `txn` (started as `(when, seq)`); its entry, or
        None if it would not be the queue's latest (then it stays on the heap)."""
        queue = self._lingering.get(name)
        if queue is None:
            queue = self._lingering[name] = deque()
        elif queue and queue[-1][:2] > (when, seq):
            return None
        entry: LingerEntry = (when, seq, txn, name)
        queue.append(entry)
        return entry

    def _lingering_head(self) -> LingerEntry | None:
        """The earliest live queued linger timer (dead queue heads are dropped)."""
        first: LingerEntry | None = None
        for queue in self._lingering.values():
            while queue and queue[0][2]._carrier is not queue[0]:
                queue.popleft()
            if queue and (first is None or queue[0] < first):
                first = queue[0]
        return first

    def next_deadline(self) -> float | None:
        heap = self._heap
        when = None
        while heap:
            head = heap[0]
            if not head[4]:
                heapq.heappop(heap)
                self._dead -= 1
            elif head[3] is _CARRIER and not head[2]._carries(head[1]):
                heapq.heappop(heap)  # early: its timer stopped; on to the earliest left
                head[4] = False
                head[2]._recarry(head)
            else:
                when = head[0]
                break
        if self._lingering:
            lingering = self._lingering_head()
            if lingering is not None and (when is None or lingering[0] < when):
                return lingering[0]
        return when

    def pop_due(self, now: float) -> list[Any] | None:
        """The earliest live entry due at or before `now` (marked fired), else None."""
        heap = self._heap
        lingering = self._lingering_head() if self._lingering else None
        if lingering is not None and lingering[0] > now:
            lingering = None
        while True:
            if lingering is not None and (
                not heap
                or lingering[0] < heap[0][0]
                or (lingering[0] == heap[0][0] and lingering[1] < heap[0][1])
            ):
                self._lingering[lingering[3]].popleft()
                lingering[2]._carrier = None
                self._running -= 1
                return [lingering[0], lingering[1], lingering[2], lingering[3], False]
            if not heap or heap[0][0] > now:
                return None
            entry = heapq.heappop(heap)
            if not entry[4]:
                self._dead -= 1
                continue
            entry[4] = False
            if entry[3] is not _CARRIER:
                self._running -= 1
                return entry
            name = entry[2]._recarry(entry)
            if name is not None:
                self._running -= 1
                return [entry[0], entry[1], entry[2], name, False]
