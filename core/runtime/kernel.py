"""The event kernel of the Kamailio process model: a heap of timed callbacks, driven by anyio.

Why a kernel and not one anyio task per process: a trio `MockClock` sleep costs ~60 µs of
wall time here, and a deferred transaction needs several process steps, so task-per-process
tops out far below the 20,000 simulated transactions per second we want. The kernel keeps
every process step as a plain callback on one heap (trio-style: lazy deletion, FIFO among
equal times) and lets a single anyio task drive it:

- on the **real clock** the driver sleeps until the next due callback (or until another
  task hands it work with `call_soon`), and stamps callbacks with the time they really ran;
- on **virtual time** (trio's `MockClock(autojump_threshold=0)`) it stamps each callback with
  its exact scheduled time and, when no other trio task could run or wake earlier, jumps the
  MockClock itself instead of paying for a sleep. Other tasks sharing the clock (tests, the
  harness) still see exact times, because the driver only jumps when nothing of theirs is due.

This module knows nothing of SIP or of strategies, and never looks at the wall clock except
through anyio.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import anyio.lowlevel

_CHECKPOINT_EVERY = 512  # jumps between real trio checkpoints (cancellation stays responsive)
RUN_AHEAD = True  # False: every step goes through the heap (`run_ahead` always declines)


class TimerHandle:
    """A scheduled callback; `cancel()` is O(1), the heap skips it when popped."""

    __slots__ = ("when", "callback", "args", "cancelled")

    def __init__(self, when: float, callback: Callable[..., Any], args: tuple[Any, ...]):
        self.when = when
        self.callback = callback
        self.args = args
        self.cancelled = False

    def cancel(self) -> None:
        self.cancelled = True


def _nothing() -> None:
    """What a cleared handle would call."""


class Kernel:
    """Discrete-event scheduler shared by every simulated process of one server."""

    def __init__(self, *, live: bool = False) -> None:
        # live (a real-clock target): time starts at 0 when `run` first starts, as a server's
        # timers count from its start, and processes time each step with thread_time().
        self.live = live
        self._origin = 0.0  # anyio time of kernel time 0 (live, real clock only)
        self._origin_set = False
        # Entries (when, seq, handle or None, callback, args): `post` (no handle, cannot be
        # cancelled) saves the TimerHandle of the many events nobody cancels.
        self._heap: list[tuple[float, int, TimerHandle | None, Callable[..., Any], tuple]] = []
        self._seq = 0
        self.now = 0.0
        self.events_run = 0
        self._virtual = False
        self._clock: Any | None = None
        self._driving = False
        self._guard: _JumpGuard | None = None
        # The driver's current sleep: cancelled when work is scheduled from outside.
        self._sleep: anyio.CancelScope | None = None
        self._reader: tuple[Any, Callable[[], object]] | None = None
        # Inside a virtual-time stretch (`_jump_through`): how far time may run ahead
        # (`run_ahead`), and the trio queues that must stay empty meanwhile.
        self.horizon = -math.inf
        self._trio_queues: tuple[Any, Any, Any] = ((), (), ())
        self._ahead = -math.inf  # the latest time a callback ran ahead to in this stretch

    # ------------------------------------------------------------------ scheduling

    def call_at(self, when: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Run `callback(*args)` at time `when` (never earlier than now)."""
        if when < self.now:
            when = self.now
        handle = TimerHandle(when, callback, args)
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, handle, callback, args))
        sleep = self._sleep
        if sleep is not None:  # scheduled from another task while the driver sleeps
            self._sleep = None
            sleep.cancel()
        return handle

    def post(self, when: float, callback: Callable[..., Any], *args: Any) -> None:
        """`call_at` for an event that is never cancelled: same order, no handle."""
        if when < self.now:
            when = self.now
        self._seq += 1
        heapq.heappush(self._heap, (when, self._seq, None, callback, args))
        sleep = self._sleep
        if sleep is not None:
            self._sleep = None
            sleep.cancel()

    def call_later(self, delay: float, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_at(self.now + delay, callback, *args)

    def call_soon(self, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        return self.call_at(self.now, callback, *args)

    def run_ahead(self, when: float) -> bool:
        """Move time to `when` now, inside the running callback, if the kernel would run
        nothing before it: no callback due until then (ties included, they run first), and
        `when` inside the current virtual-time stretch (no trio task runnable, no other
        task's deadline before it). True if time moved.

        Why: a step that computes or sleeps with nothing else due would post an event and
        pop it straight back; running ahead gives the same callbacks in the same order at
        the same times, without the heap round trip. Only a virtual-time stretch sets a
        horizon, so the real clock never runs ahead.
        """
        if when > self.horizon:  # the one check callers rely on: they test nothing first
            return False
        heap = self._heap
        if heap and heap[0][0] <= when:
            return False
        runq, queue, idempotent = self._trio_queues
        if runq or queue or idempotent:
            return False
        if when > self.now:
            self.now = self._ahead = when
        return True

    def clear(self) -> None:
        """Drop every scheduled callback, and what the handles still held point to (the run
        is over: nothing will drive it again; a handle kept by the object its callback
        belongs to is a reference cycle)."""
        for _, _, handle, _, _ in self._heap:
            if handle is not None:
                handle.callback, handle.args = _nothing, ()
        self._heap.clear()

    def next_time(self) -> float | None:
        """Time of the next live callback, dropping cancelled ones on the way."""
        heap = self._heap
        while heap and (h := heap[0][2]) is not None and h.cancelled:
            heapq.heappop(heap)
        return heap[0][0] if heap else None

    def run_due(self, now: float) -> None:
        """Run every callback due at or before `now`, in time order, stamping `self.now`.

        Time never runs backwards: a callback scheduled for a time already passed (work
        handed in from outside while the driver slept) runs stamped with the current time.
        """
        heap = self._heap
        while heap and heap[0][0] <= now:
            when, _, handle, callback, args = heapq.heappop(heap)
            if handle is not None and handle.cancelled:
                continue
            if when > self.now:
                self.now = when
            self.events_run += 1
            callback(*args)

    def add_reader(self, sock: Any, drain: Callable[[], object]) -> None:
        """Let the driver itself read `sock` (real clock): whenever it is readable, and
        after every run of due callbacks, `drain()` runs inside the kernel with `now` set,
        reading what is queued without blocking (and scheduling the work it implies).

        Why not a socket task handing datagrams over with `submit`: that costs a task
        switch and a wake-up of the driver per readiness, as much CPU as a proxy step; a
        reader drained by the driver batches a burst into one wake-up. `drain` must not
        block; when `sock` is closed the reader is dropped.
        """
        self._reader = (sock, drain)

    def _drain(self) -> None:
        reader = self._reader
        if reader is None:
            return
        if self._driving and not self._virtual:
            self.now = max(self.now, anyio.current_time() - self._origin)
        reader[1]()

    def submit(self, callback: Callable[..., Any], *args: Any) -> TimerHandle:
        """Hand work in from another task (a socket reader, a test): runs at the clock's now."""
        if self._driving:
            self.now = max(self.now, anyio.current_time() - self._origin)
        return self.call_at(self.now, callback, *args)

    # ------------------------------------------------------------------ driving

    async def run(self, until: float | None = None) -> None:
        """Drive the kernel on anyio's current clock until `until` (or until cancelled).

        Returns once every callback due by `until` has run, with `self.now == until` on
        virtual time.
        """
        self._clock = _virtual_clock()
        self._virtual = self._clock is not None
        self._guard = _JumpGuard()
        if self.live and not self._virtual and not self._origin_set:
            self._origin = anyio.current_time() - self.now
            self._origin_set = True
        self.now = max(self.now, anyio.current_time() - self._origin)
        self._driving = True
        try:
            while True:
                if self._clock is not None and self._jump_through(until):
                    maybe_collect()
                    await anyio.lowlevel.checkpoint()  # let cancellation and others in
                    continue
                nxt = self.next_time()
                if until is not None and (nxt is None or nxt > until):
                    if await self._advance_to(until) and self._idle_until(until):
                        self.now = max(self.now, until)
                        return
                    continue
                if nxt is None:
                    await self._wait(None)
                    continue
                if await self._advance_to(nxt):
                    if self._virtual:
                        self.run_due(nxt)
                    else:
                        self.run_due(anyio.current_time() - self._origin)
                        self._drain()
                        # Work that keeps falling due must not starve the other tasks
                        # (socket readers, signal handlers) of the real-clock event loop.
                        await anyio.lowlevel.checkpoint()
        finally:
            self._driving = False

    def _jump_through(self, until: float | None) -> bool:
        """Virtual-time fast path: run callbacks, moving virtual time between them, for as
        long as no other trio task could run or wake first. True when it stopped only to let
        trio breathe (a checkpoint is due), False when the slow path must take over.

        The MockClock itself is jumped once, when the stretch ends: no other task can look
        at it in between, and kernel callbacks read `kernel.now`.
        """
        clock = self._clock
        guard = self._guard
        assert clock is not None and guard is not None  # set by `run`, which calls this
        heap = self._heap
        limit = math.inf if until is None else until
        trio_deadline = guard.next_deadline()
        clock_time = clock.current_time()
        current = clock_time
        heappop = heapq.heappop
        runner = guard._runner
        if runner is not None:  # guard.runnable(), inlined: read once per time step
            runq = runner.runq
            entries = runner.entry_queue
            queue, idempotent = entries.queue, entries.idempotent_queue
            self._trio_queues = (runq, queue, idempotent)
            if RUN_AHEAD:  # callbacks may `run_ahead` up to the horizon
                self.horizon = min(limit, trio_deadline)
        ran = 0
        try:
            for _ in range(_CHECKPOINT_EVERY):
                while heap and (h := heap[0][2]) is not None and h.cancelled:
                    heappop(heap)
                if not heap:
                    return False
                when = heap[0][0]
                if when > limit:
                    return False
                if when > current:
                    if when > trio_deadline:
                        return False
                    if runner is None:
                        if guard.runnable():
                            return False
                    elif runq or queue or idempotent:
                        return False
                    current = when
                    self.now = when
                callback, args = heappop(heap)[3:]
                if when > self.now:
                    self.now = when
                ran += 1
                callback(*args)
            return True
        finally:
            self.horizon = -math.inf
            self.events_run += ran
            if self._ahead > current:  # a callback ran ahead (`run_ahead`)
                current = self._ahead
            self._ahead = -math.inf
            if current > clock_time:
                clock.jump(current - clock_time)

    def _idle_until(self, until: float) -> bool:
        nxt = self.next_time()
        return nxt is None or nxt > until

    async def _advance_to(self, when: float) -> bool:
        """Bring the clock to `when`; False if woken earlier by work handed in."""
        clock = self._clock
        current = clock.current_time() if clock is not None else anyio.current_time() - self._origin
        if when <= current:
            if clock is None:
                self.now = max(self.now, current)
            return True
        guard = self._guard
        if (
            clock is not None
            and guard is not None
            and not guard.runnable()
            and when <= guard.next_deadline()
        ):
            clock.jump(when - current)
            return True
        await self._wait(when)
        current = anyio.current_time() - self._origin
        if clock is None:
            self.now = max(self.now, current)
        return current >= when

    async def _wait(self, deadline: float | None) -> None:
        """Sleep until `deadline`, until work is scheduled from outside the kernel, or
        (with a reader) until the reader's socket is readable, which is then drained."""
        reader = self._reader
        sleep = anyio.CancelScope(
            deadline=math.inf if deadline is None else deadline + self._origin
        )
        self._sleep = sleep
        try:
            with sleep:
                if reader is None:
                    await anyio.sleep_forever()
                else:
                    try:
                        await anyio.wait_readable(reader[0])
                    except (anyio.ClosedResourceError, OSError, ValueError):
                        self._reader = None  # closed: nothing more to read
        finally:
            self._sleep = None
            self.now = max(self.now, anyio.current_time() - self._origin)
        if reader is not None:
            self._drain()


def _virtual_clock() -> Any | None:
    """The trio MockClock driving this run, if any (None on asyncio or trio's real clock)."""
    try:
        import trio
        import trio.testing
    except ImportError:  # pragma: no cover - trio is a dependency
        return None
    try:
        clock = trio.lowlevel.current_clock()
    except RuntimeError:  # not inside trio (asyncio backend)
        return None
    if isinstance(clock, trio.testing.MockClock) and clock.rate == 0:
        return clock
    return None


class _JumpGuard:
    """Says when jumping the MockClock cannot skip another trio task's wake-up.

    Safe when no task is runnable and no trio deadline (another task's sleep) falls before
    the jump target. `trio.lowlevel.current_statistics()` answers that but costs ~18 µs here
    (it also collects I/O statistics), more than a whole kernel event, so the guard reads the
    same two facts from trio's runner directly and falls back to the public call if trio's
    internals ever move.
    """

    def __init__(self) -> None:
        import trio

        self._statistics = trio.lowlevel.current_statistics
        self._current_time = trio.current_time
        try:
            from trio._core._run import GLOBAL_RUN_CONTEXT

            runner = GLOBAL_RUN_CONTEXT.runner
            runner.runq.__len__  # noqa: B018 - probe the attributes we rely on
            runner.deadlines.next_deadline  # noqa: B018
            runner.entry_queue.size  # noqa: B018
        except (ImportError, AttributeError, RuntimeError):
            runner = None
        self._runner = runner

    def runnable(self) -> bool:
        """Another task is ready to run (or a callback from a thread is queued)."""
        runner = self._runner
        if runner is None:
            stats = self._statistics()
            return bool(stats.tasks_runnable or stats.run_sync_soon_queue_size)
        return bool(runner.runq) or bool(runner.entry_queue.size())

    def next_deadline(self) -> float:
        """Absolute time of the earliest trio deadline (another task's sleep or timeout).

        Only trio code adds deadlines, and trio code runs only while the kernel awaits, so
        the answer holds for a whole synchronous stretch of kernel callbacks.
        """
        runner = self._runner
        if runner is None:
            return self._current_time() + self._statistics().seconds_to_next_deadline
        return runner.deadlines.next_deadline()


SIM_GC_THRESHOLDS = (50_000, 20, 100)
"""Thresholds used when the cyclic collector is left on (kept for callers that name them)."""

SIM_GC_GROWTH = 4_000_000
"""While a simulation runs the cyclic collector is off (`sim_gc`): the model's per-transaction
objects form no reference cycles, and with CPython's generational collector every one of them
(they live tens of virtual seconds) was traversed two or three times, a fifth of the run's
wall time. As a safety valve the virtual-time driver collects in full whenever the number of
GC-tracked objects grew by this much since the last collection (`maybe_collect`), so a model
that does leak cycles stays bounded instead of growing without limit."""


class sim_gc:
    """Context manager: cyclic GC off (re-entrant), restored on exit; for virtual-time runs."""

    _depth: ClassVar[int] = 0
    _was_enabled: ClassVar[bool] = True

    def __enter__(self) -> sim_gc:
        if sim_gc._depth == 0:
            sim_gc._was_enabled = gc.isenabled()
            gc.disable()
        sim_gc._depth += 1
        return self

    def __exit__(self, *exc: object) -> None:
        sim_gc._depth -= 1
        if sim_gc._depth == 0 and sim_gc._was_enabled:
            gc.enable()


_gc_limit = [SIM_GC_GROWTH]


def maybe_collect() -> None:
    """Full collection if the tracked heap grew by `SIM_GC_GROWTH` objects, or by as many as
    survived the last collection, since that one (`gc.get_count()[0]` counts allocations
    minus frees even while the collector is off): amortised, each object is traversed about
    once however long the run, and a steady heap is never traversed at all."""
    if not gc.isenabled() and gc.get_count()[0] > _gc_limit[0]:
        gc.collect()
        _gc_limit[0] = max(SIM_GC_GROWTH, len(gc.get_objects(generation=2)))


def run_on_virtual_time(
    async_fn: Callable[..., Any], *args: Any, run: Callable[..., Any] = anyio.run
) -> Any:
    """`anyio.run` on trio with `MockClock(autojump_threshold=0)`: the sim target's clock.
    `run` is what runs the loop: `anyio.run` or one of its signature that also handles
    signals (the harness's)."""
    import trio.testing

    clock = trio.testing.MockClock(autojump_threshold=0)
    with sim_gc():
        return run(async_fn, *args, backend="trio", backend_options={"clock": clock})
