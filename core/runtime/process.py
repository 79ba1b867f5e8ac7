"""Kamailio's process model: single-threaded processes sharing a pool of CPU cores.

A `Process` runs one *program*, a generator that yields what it waits for:

- `Compute(seconds)`: work that needs a core; it waits for one if all `cores` are busy, so
  CPU contention and backlog emerge instead of being assumed;
- `Pass(seconds)`: a timer's pass that finds nothing to do: a `Compute` whose time does not
  count towards the load that makes other steps cheaper (`CpuPool.at_load`);
- `Sleep(seconds)`: blocked in the kernel (`select()`, `usleep()`), holding no core; the
  return counts as a wake-up;
- `Get(queue)`: wait for the next item of a FIFO served by several processes (a UDP socket
  shared by the SIP workers, an async task group's socketpair); blocking counts a wake-up;
- `Put(queue, item)`: a blocking write into a bounded FIFO (backpressure on a full socket).

Because a process is a generator and not a task, a continuation that runs inside it blocks it
for its whole duration, as `t_continue()` blocks the Kamailio process that calls it.
Nothing here knows about SIP or strategies; processes only account their busy time, their
time waiting for a core and their wake-ups.
"""

from __future__ import annotations

import math
import time
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

from core.runtime.kernel import Kernel


class Compute:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Pass(Compute):
    __slots__ = ()


class Sleep:
    __slots__ = ("seconds",)

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Get:
    __slots__ = ("queue",)

    def __init__(self, queue: Queue) -> None:
        self.queue = queue


class Put:
    __slots__ = ("queue", "item")

    def __init__(self, queue: Queue, item: Any) -> None:
        self.queue = queue
        self.item = item


Op = Compute | Sleep | Get | Put  # a Pass is a Compute

_LATER = object()  # `Process._woken`: the program resumes from a posted event
Program = Generator[Op, Any, Any]


class Process:
    """One forked Kamailio process: executes one thing at a time, accounts what it costs."""

    __slots__ = (
        "kernel",
        "cpu",
        "role",
        "name",
        "busy",
        "cpu_wait",
        "wakeups",
        "cpu_time",
        "_program",
        "_wait_started",
    )

    def __init__(self, kernel: Kernel, cpu: CpuPool, role: str, name: str) -> None:
        self.kernel = kernel
        self.cpu = cpu
        self.role = role
        self.name = name
        self.busy = 0.0  # seconds holding a core
        self.cpu_wait = 0.0  # seconds runnable but waiting for a core
        self.wakeups = 0
        self.cpu_time = 0.0  # real CPU seconds of its steps (MeasuredProcess only)
        self._program: Program | None = None
        self._wait_started = 0.0

    def __repr__(self) -> str:
        return f"<Process {self.name} ({self.role})>"

    def start(self, program: Program) -> None:
        """Begin executing `program` at the kernel's current time."""
        if self._program is not None:
            raise RuntimeError(f"{self.name} already runs a program")
        self._program = program
        self.kernel.post(self.kernel.now, self._resume, None)

    def stop(self) -> None:
        """End the program where it waits (`GeneratorExit` in it); the process runs no more."""
        program, self._program = self._program, None
        if program is not None:
            program.close()

    # ------------------------------------------------------------------ stepping

    def _resume(self, value: Any) -> None:
        """Advance the program until it has to wait for time, a core or a queue."""
        program: Generator[object, Any, Any] | None = self._program
        if program is None:
            return
        op: object  # checked below: anything else a program yields is an error
        while True:
            try:
                op = program.send(value)
            except StopIteration:
                self._program = None
                return
            if isinstance(op, Compute):  # or its Pass
                seconds = op.seconds
                if seconds <= 0.0:
                    value = None
                    continue
                # take a free core or queue for one (the hottest step of the model)
                cpu = self.cpu
                kernel = self.kernel
                if cpu.load_exponent:
                    seconds = cpu.at_load(seconds, kernel.now, type(op) is Compute)
                if cpu.free:
                    self.busy += seconds
                    cpu.busy_total += seconds
                    end = kernel.now + seconds
                    if kernel.run_ahead(end):
                        value = None  # nothing else ran meanwhile: the core is free again
                        continue
                    cpu.free -= 1
                    kernel.post(end, cpu._release, self)
                else:
                    self._wait_started = kernel.now
                    cpu._runnable.append((self, seconds))
                return
            if isinstance(op, Sleep):
                kernel = self.kernel
                end = kernel.now + max(0.0, op.seconds)
                if kernel.run_ahead(end):
                    value = self._woken(None)  # `_wake`, without the recursion
                    if value is not _LATER:
                        continue
                    return
                kernel.post(end, self._wake, None)
                return
            if isinstance(op, Get):
                queue = op.queue
                if queue.items:
                    value = queue.take()
                    continue
                queue.getters.append(self)
                return
            if isinstance(op, Put):
                if op.queue.offer(op.item):
                    value = True
                    continue
                op.queue.putters.append((self, op.item))
                return
            raise TypeError(f"{self.name} yielded {op!r}, not a Compute/Pass/Sleep/Get/Put")

    def _wake(self, value: Any) -> None:
        """A blocked process is woken; with a wake-up latency model it runs a little later."""
        value = self._woken(value)
        if value is not _LATER:
            self._resume(value)

    def _woken(self, value: Any) -> Any:
        """Count the wake-up and draw its latency: `value` if the program goes on now
        (perhaps after running ahead), `_LATER` if its resumption was posted."""
        self.wakeups += 1
        latency = self.cpu.wakeup_latency
        if latency is not None:
            delay = latency()
            if delay > 0.0:
                kernel = self.kernel
                end = kernel.now + delay
                if kernel.run_ahead(end):
                    return value
                kernel.post(end, self._resume, value)
                return _LATER
        return value


class MeasuredProcess(Process):
    """A process on the real clock: each step also adds the thread CPU time it really took
    to `cpu_time` (modelled `busy` stays what the cost profile charged, zero when live)."""

    __slots__ = ()

    def _resume(self, value: Any) -> None:
        started = time.thread_time()
        try:
            Process._resume(self, value)
        finally:
            self.cpu_time += time.thread_time() - started


def new_process(kernel: Kernel, cpu: CpuPool, role: str, name: str) -> Process:
    """A process for `kernel`: one that measures the real CPU of its steps if the kernel is
    live, chosen once per process so the virtual-time step stays untouched."""
    cls = MeasuredProcess if kernel.live else Process
    return cls(kernel, cpu, role, name)


LOAD_WINDOW = 0.25
"""Seconds over which `CpuPool.at_load` averages how busy the cores are (an exponential
moving average): long enough to be steady at any rate, short beside a calibration run."""


class CpuPool:
    """`cores` CPUs shared by every process; FIFO run queue when all are busy.

    `wakeup_latency`, if set, draws how long a woken process takes to run (seconds): the
    OS scheduling delay a FIFO of cores does not produce by itself.

    `load_exponent` β, `load_floor` u₀ and `load_ceiling` u₁ (shares of the cores): a step
    costs its idle price × (min(u, u₁) / u₀)^−β when the cores are busier than u₀, u their
    recent busy share (`at_load`) without the timers' empty passes (`Pass`); above u₁ (the
    busiest load it was fitted at) the price stays the one at u₁. Kamailio's CPU per
    message falls with the load on this kind of machine, alike for every strategy (caches,
    and the CPU's clock and idle states, stay warm with the work).
    """

    def __init__(self, kernel: Kernel, cores: int) -> None:
        if cores < 1:
            raise ValueError(f"cores must be >= 1, got {cores}")
        self.kernel = kernel
        self.cores = cores
        self.wakeup_latency: Callable[[], float] | None = None
        self.free = cores
        self.busy_total = 0.0
        self._runnable: deque[tuple[Process, float]] = deque()
        self.load_exponent = 0.0
        self.load_floor = 1.0
        self.load_ceiling = 1.0
        self._load = 0.0  # busy share of the cores, moving average as of `_load_at`
        self._load_at = 0.0

    def at_load(self, seconds: float, now: float, counts: bool = True) -> float:
        """What a step of `seconds` at idle costs now, given the cores' recent load; the
        step then counts towards that load unless `counts` is False (an empty timer pass:
        Kamailio's message work grows no cheaper for its 1,000 wake-ups a second)."""
        load = self._load
        if now > self._load_at:
            load *= math.exp((self._load_at - now) / LOAD_WINDOW)
            self._load_at = now
        if load > self.load_floor:
            seconds *= (min(load, self.load_ceiling) / self.load_floor) ** -self.load_exponent
        self._load = load + seconds / (LOAD_WINDOW * self.cores) if counts else load
        return seconds

    def _release(self, process: Process) -> None:
        """`process`'s step ended: its core goes to the longest waiter, or back to the pool
        (a step starts in `Process._resume`)."""
        if self._runnable:
            waiting, seconds = self._runnable.popleft()
            now = self.kernel.now
            waiting.cpu_wait += now - waiting._wait_started
            waiting.busy += seconds
            self.busy_total += seconds
            self.kernel.post(now + seconds, self._release, waiting)
        else:
            self.free += 1
        process._resume(None)


class Stalls:
    """Episodes when the cores are taken by someone else (the load generator beside the
    server, other tenants of the VM): a process woken during one runs when it ends.

    Gaps and episodes alternate, both exponential; episodes last `mean_s` on average and
    cover `share` of the time (capped at 0.95), drawn lazily from `rng` as time goes on.
    A wake-up at a random time is delayed with probability `share`, by an exponential of
    mean `mean_s` (the residual of an exponential). With probability `common` a wake-up
    meets the shared episodes: processes woken in one all run at its end, so their phases
    do not drift apart (Kamailio's rtimers stay bunched under load); otherwise it draws
    the same distribution on its own. Use as `CpuPool.wakeup_latency`.

    With `per_load` (s per unit of busy share) and a `cpu`, each episode's mean is
    `mean_s + per_load × min(u, ceiling)` when it is drawn, u the cores' busy share over
    the last `LOAD_WINDOW` (every step, the timers' empty passes too: they hold cores as
    much as messages do): the busier the server, and the load generator beside it whose
    share grows with the same traffic, the longer a woken process waits for a core; above
    `ceiling` (the busiest load it was fitted at) it grows no more.
    """

    def __init__(
        self, kernel: Kernel, rng: Any, mean_s: float, share: float, common: float = 1.0,
        per_load: float = 0.0, cpu: CpuPool | None = None, ceiling: float = 1.0,
    ) -> None:  # fmt: skip
        share = min(share, 0.95)
        self.kernel = kernel
        self.rng = rng
        self.share = share
        self.common = common
        self.base = mean_s
        self.per_load = per_load
        self.ceiling = ceiling
        self.cpu = cpu if per_load else None  # read only for a tail that grows with it
        self._mark = (kernel.now, self.cpu.busy_total if self.cpu is not None else 0.0)
        self._busy = 0.0  # the cores' busy share over the window before `_mark`, capped
        self.start = self.end = kernel.now  # in a gap from now on

    def _mean(self, now: float) -> float:
        """The episodes' mean now: `base`, plus `per_load` × the last window's busy share."""
        cpu = self.cpu
        if cpu is None:
            return self.base
        since, busy = self._mark
        if now - since >= LOAD_WINDOW:
            busy = (cpu.busy_total - busy) / ((now - since) * cpu.cores)
            self._busy = min(busy, self.ceiling)
            self._mark = (now, cpu.busy_total)
        return self.base + self.per_load * self._busy

    def __call__(self) -> float:
        rng = self.rng
        now = self.kernel.now
        if self.common < 1.0 and rng.random() >= self.common:
            mean = self._mean(now)
            return rng.expovariate(1.0 / mean) if rng.random() < self.share and mean > 0 else 0.0
        if self.end <= now:
            self._draw(now)
        return self.end - now if self.start <= now else 0.0

    def _draw(self, now: float) -> None:
        """The episode or gap `now` falls in, the last episode having ended at `end`.

        Gaps and episodes are memoryless, so this is a two-state chain: from a gap that
        began t ago, P(in an episode now) = share·(1 − e^(−t/mean − t/gap)); in one, its
        rest is exponential of mean `mean`; in a gap, so is the rest of the gap. One draw
        instead of replaying every gap and episode since `end`, in the same law.
        """
        rng = self.rng
        mean = self._mean(now)
        if mean <= 0.0:
            self.start = self.end = now
            return
        gap = mean * (1.0 - self.share) / self.share  # episodes then cover `share` of the time
        if rng.random() < self.share * -math.expm1((self.end - now) * (1.0 / mean + 1.0 / gap)):
            self.start = now
        else:
            self.start = now + rng.expovariate(1.0 / gap)
        self.end = self.start + rng.expovariate(1.0 / mean)


class Queue:
    """A FIFO served by any number of processes, optionally bounded.

    The kernel wakes one waiting reader per item, as Linux wakes one `recvfrom()` per
    datagram: a group of readers is one queue with several servers.
    """

    def __init__(self, kernel: Kernel, name: str, capacity: int | None = None) -> None:
        if capacity is not None and capacity < 0:
            raise ValueError(f"queue {name}: capacity must be >= 0")
        self.kernel = kernel
        self.name = name
        self.capacity = capacity
        self.items: deque[Any] = deque()
        self.getters: deque[Process] = deque()
        self.putters: deque[tuple[Process, Any]] = deque()
        self.max_depth = 0
        self.accepted = 0
        self.refused = 0

    def __len__(self) -> int:
        return len(self.items)

    @property
    def full(self) -> bool:
        return self.capacity is not None and len(self.items) >= self.capacity

    def offer(self, item: Any) -> bool:
        """Non-blocking put: False (and counted) when the queue is full."""
        if self.getters:
            self.accepted += 1
            self.kernel.post(self.kernel.now, self.getters.popleft()._wake, item)
            return True
        if self.full:
            self.refused += 1
            return False
        self.accepted += 1
        self.items.append(item)
        if len(self.items) > self.max_depth:
            self.max_depth = len(self.items)
        return True

    def take(self) -> Any:
        """Pop the head; admits the first blocked writer, if any."""
        item = self.items.popleft()
        if self.putters:
            writer, pending = self.putters.popleft()
            self.items.append(pending)
            self.accepted += 1
            self.kernel.post(self.kernel.now, writer._wake, True)
        return item
