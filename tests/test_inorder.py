"""`InOrder`: values closed out of order reach the consumer in slot order, and only the
slots from the oldest open one on are held."""

from __future__ import annotations

import math
import random

import pytest

from harness.measure.inorder import InOrder


def test_values_go_on_in_slot_order_as_soon_as_every_earlier_slot_closed():
    taken: list[float] = []
    stream = InOrder(taken.append)
    slots = [stream.open() for _ in range(4)]
    assert slots == [0, 1, 2, 3]
    stream.close(2, 2.0)
    stream.close(1, 1.0)
    assert taken == [] and stream.held == 4  # slot 0 is still open
    stream.close(0, math.nan)  # no value: skipped
    assert taken == [1.0, 2.0] and stream.held == 1
    stream.flush()  # slot 3 never closed: no value
    assert taken == [1.0, 2.0] and stream.held == 0 and len(stream) == 4
    with pytest.raises(ValueError):
        stream.close(3, 3.0)


def test_the_sum_is_the_one_of_the_whole_array_read_in_slot_order():
    rng = random.Random(4)
    values = [rng.expovariate(100.0) for _ in range(20_000)]
    taken: list[float] = []
    stream = InOrder(taken.append)
    open_slots: list[int] = []
    most_held = 0
    for _ in values:
        open_slots.append(stream.open())
        if len(open_slots) > 50:  # about 50 in flight, closed in random order
            slot = open_slots.pop(rng.randrange(len(open_slots)))
            stream.close(slot, values[slot])
        most_held = max(most_held, stream.held)
    for slot in open_slots:
        stream.close(slot, values[slot])
    stream.flush()
    assert taken == values
    assert most_held < 2_000  # bounded by what is in flight, not by the run's length
    assert len(stream._values) < 2 * 1024  # the buffers are cut down as slots go on
