"""Per-transaction values handed on in the order their transactions began, as they end.

A run's mean delay or e2e latency is a float sum, and a float sum depends on its order: the
figures are summed in the order the transactions began (suspend order, send order), while
the values become known in the order they end. `InOrder` bridges the two without keeping a
value per transaction for the whole run: each transaction takes a slot when it begins,
closes it with its value (or none) when it ends, and every value whose slot and earlier
slots are all closed goes on to the consumer at once. What it holds is the slots from the
oldest one still open on, so its size follows the transactions in flight, not the run's
length; the consumer sees exactly the sequence an array of every slot, read at the end
with the empty ones skipped, would give.

This module does no I/O and knows nothing about SIP.
"""

from __future__ import annotations

import math
from array import array
from collections.abc import Callable

_COMPACT_AFTER = 1024  # passed-on slots kept before the buffers are cut down


class InOrder:
    """Values taken in slot order: `open()` a slot, `close(slot, value)` it (NaN: no
    value), `flush()` at the end of the run; `take` gets each value, in slot order."""

    __slots__ = ("_take", "_values", "_closed", "_head", "_base")

    def __init__(self, take: Callable[[float], object]) -> None:
        self._take = take
        self._values = array("d")  # slot `_base` + i - `_head` at index i; NaN: no value
        self._closed = bytearray()  # 1 where that slot is closed
        self._head = 0  # index of the oldest slot not yet passed on
        self._base = 0  # its slot number

    def __len__(self) -> int:
        """Slots opened so far."""
        return self._base + len(self._values) - self._head

    @property
    def held(self) -> int:
        """Slots held: from the oldest open one on (what memory it takes follows this)."""
        return len(self._values) - self._head

    def open(self) -> int:
        """A transaction began: its slot."""
        self._values.append(math.nan)
        self._closed.append(0)
        return len(self) - 1

    def close(self, slot: int, value: float) -> None:
        """The transaction of `slot` ended with `value` (NaN: it has none)."""
        index = slot - self._base + self._head
        if index < self._head:
            raise ValueError(f"slot {slot} was closed or flushed already")
        self._values[index] = value
        self._closed[index] = 1
        if index == self._head:
            self._pass_on()

    def flush(self) -> None:
        """The run ended: every closed slot's value goes on in slot order; the slots still
        open have none (their transactions never ended)."""
        for i in range(self._head, len(self._values)):
            self._closed[i] = 1
        self._pass_on()

    def _pass_on(self) -> None:
        values, closed, take = self._values, self._closed, self._take
        i, end = self._head, len(values)
        while i < end and closed[i]:
            value = values[i]
            if value == value:  # not NaN
                take(value)
            i += 1
        self._base += i - self._head
        self._head = i
        if i >= _COMPACT_AFTER and 2 * i >= end:
            del values[:i]
            del closed[:i]
            self._head = 0
