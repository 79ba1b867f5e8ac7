"""Kamailio 5.6.3's `async` module as a model: the seconds ring, the ms list, their timers.

Reference §2, §3 and §5. `async-route` and `async-sleep` share everything here; they differ
only in what the continuation is called in kamailio.cfg (a named route, or the rest of the
current action block), which costs the same in this model.

What is modelled, flaws included (a model kinder than Kamailio is wrong):

- **Seconds ring** (`async_route(R, s)`, `async_sleep(s)`): 100 slots, each pushed and
  popped at its head (LIFO within one second). An item goes to slot
  (get_ticks() + s) mod 100, get_ticks() being the whole seconds since start. `workers`
  "ASYNC MOD TIMER" processes each loop `sleep(1)` (+ε), then drain only the slot of the
  *current* second, running every continuation synchronously in that timer process. There
  is no catch-up (5.6.3): when a worker's drifting phase wraps past a second boundary it
  never visits the second it jumped over, and those items wait for the ring to come round
  (≈100 s), i.e. until their 408 at fr_timer.
- **ms list** (`async_ms_route(R, ms)`, `async_ms_sleep(ms)`): one list sorted by due time
  behind one lock, ties in front, a soft cap of 10,000 read without the lock. Exactly one
  "ASYNC MOD MS TIMER" process loops `select()` for ms_timer (+ε), then, holding the lock,
  pops every due item and pushes it to the core *default* task group, where an
  "Async Task Worker" runs the continuation. A blocking push on a full task socket blocks
  the timer while it holds the lock, so SIP workers inserting block too; a non-blocking
  push that fails frees the task; a group without workers "accepts" and leaks it. The
  last two strand the transaction until its 408.
- **Preconditions** (§5): `workers` ≤ 0 makes every async_* return -1; the ms functions also
  need `ms_timer` > 0; an out-of-range delay or a full ms list returns -1 too. All of these
  are checked before any transaction handling, so the script goes on and relays at once.
  Core `async_workers` = 0 is never checked: a silent strand.

Every rejection, strand, skipped second and lock wait is `server.count()`ed.

What it must not do: know about the clock kind or the network, or resume anything any
other way than Kamailio does.
"""

from __future__ import annotations

import math
import random
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from mypy_extensions import mypyc_attr

from core.events import SuspendOutcome, TxnId
from core.runtime.process import Compute, Get, Pass, Process, Program, Queue, Sleep
from core.runtime.server import TICK
from core.runtime.tasks import Task, TaskGroup, TaskGroupConfig
from strategies.base import Strategy
from strategies.inline import routing_script
from strategies.spec import Param, SpecError

if TYPE_CHECKING:
    from core.runtime.server import Server, ServerSettings

TICKS_HZ = 16
"""`TIMER_TICKS_HZ`: get_ticks() is the shared tick counter divided by it."""

RING_SIZE = 100
"""`ASYNC_RING_SIZE`: slots of the seconds ring; the largest accepted delay is 99 s."""

MAX_MS_SLEEP = 30_000
"""`MAX_MS_SLEEP`: ms delays must be below it (largest accepted 29,999)."""

MAX_MS_SLEEP_QUEUE = 10_000
"""`MAX_MS_SLEEP_QUEUE`: the soft cap of the ms list (checked without the lock)."""

RACED_CANCEL_ID = TxnId(0, 0)
"""What a CANCEL racing the suspend leaves in the item: t_suspend returned +1 and set no ids."""

# Counter names (server.count); a report can list them as they are.
REJECTED_NO_WORKERS = "async_* returned -1: modparam workers <= 0"
REJECTED_MS_TIMER_OFF = "async_ms_* returned -1: ms_timer = 0"
REJECTED_MS_RANGE = "async_ms_* returned -1: ms not in 1..29999"
REJECTED_S_RANGE = "async_* returned -1: s not in 1..99"
REJECTED_MS_FULL = "async_ms_* returned -1: ms list full (10000)"
REJECTED_SUSPEND = "async_* returned -1: t_suspend failed"
RELAYED_UNDELAYED = "async_* -1: relayed undelayed"
STRANDED_LEAKED = "async_ms stranded: pushed to a task group without workers"
STRANDED_REFUSED = "async_ms stranded: non-blocking task push refused, task freed"
TIMER_PUSH_BLOCKED = "async_ms timer blocked in a task push, holding the list lock"
LOCK_WAITS = "async_ms insert waited for the list lock"
SECONDS_SKIPPED = "async seconds skipped by a timer worker"

_LOCK_TOKEN = object()


# ---------------------------------------------------------------- shared-memory structures


class SecondsRing:
    """`_async_list_head->ring`: 100 singly linked lists, pushed and popped at the head."""

    def __init__(self) -> None:
        self._slots: list[list[TxnId]] = [[] for _ in range(RING_SIZE)]
        self.pending = 0

    def __len__(self) -> int:
        return self.pending

    def push(self, second: int, txn: TxnId) -> None:
        """Insert at the head of slot `second` mod 100 (the item's target second)."""
        self._slots[second % RING_SIZE].append(txn)  # list end = linked-list head
        self.pending += 1

    def pop(self, second: int) -> TxnId | None:
        """Unlink the head of slot `second` mod 100, whatever second its items were meant for."""
        slot = self._slots[second % RING_SIZE]
        if not slot:
            return None
        self.pending -= 1
        return slot.pop()

    def slot_size(self, second: int) -> int:
        return len(self._slots[second % RING_SIZE])


@dataclass(frozen=True, slots=True)
class MsItem:
    due: float
    txn: TxnId


class MsList:
    """`_async_ms_list`: sorted by due time as `async_insert_item()` sorts it.

    Front if due <= head (ties go in front), O(1) append only if due > tail, else a linear
    scan that inserts before the first item due at or after it (ties in front again).
    """

    def __init__(self) -> None:
        self._items: deque[MsItem] = deque()
        self.max_len = 0

    def __len__(self) -> int:
        return len(self._items)

    def insert(self, item: MsItem) -> None:
        items = self._items
        if not items or item.due <= items[0].due:
            items.appendleft(item)
        elif item.due > items[-1].due:
            items.append(item)
        else:
            for position, other in enumerate(items):
                if item.due <= other.due:
                    items.insert(position, item)
                    break
        if len(items) > self.max_len:
            self.max_len = len(items)

    def pop_due(self, now: float) -> MsItem | None:
        """The head if it is due (`now >= due`), else None: the list is sorted."""
        items = self._items
        if items and items[0].due <= now:
            return items.popleft()
        return None

    def dues(self) -> list[float]:
        return [item.due for item in self._items]


# ---------------------------------------------------------------- the module in one server


@dataclass(frozen=True, slots=True)
class AsyncModuleConfig:
    """The settings that shape the module: two modparams and two core parameters."""

    workers: int = 1  # modparam("async", "workers"): ASYNC MOD TIMER processes
    ms_timer: int = 0  # modparam("async", "ms_timer"), ms; 0 = no ms list, no ms timer
    async_workers: int = 0  # core async_workers: the default task group (unrelated pool)
    async_nonblock: bool = False  # core async_nonblock
    ticks_start: int | None = None  # the core tick counter's start (None: seeded random())


class AsyncModule:
    """The module's shared state and processes in one modelled server (`mod_init` + forks)."""

    def __init__(self, server: Server, config: AsyncModuleConfig) -> None:
        self.server = server
        self.config = config
        # init_timer() starts *ticks at random(): a stream of its own, so drawing it moves
        # no other seeded draw of the server
        self.ticks_start = (
            config.ticks_start
            if config.ticks_start is not None
            else random.Random(f"ticks_start/{server.settings.seed}").randrange(2**31)
        )
        enabled = config.workers > 0  # mod_init() returns before creating either list
        self.ring: SecondsRing | None = SecondsRing() if enabled else None
        self.ms_list: MsList | None = MsList() if enabled and config.ms_timer > 0 else None
        self.ms_lock = Queue(server.kernel, "async ms list lock", capacity=1)
        self.ms_lock.offer(_LOCK_TOKEN)
        self.tasks: TaskGroup = server.task_group(
            TaskGroupConfig(
                name="default",
                workers=config.async_workers,
                nonblock=config.async_nonblock,
            )
        )
        self.timers: list[Process] = []
        if enabled:
            for i in range(config.workers):
                self.timers.append(
                    server.spawn("async-timer", f"ASYNC MOD TIMER #{i}", self._seconds_timer)
                )
        if self.ms_list is not None:
            self.ms_timer: Process | None = server.spawn(
                "async-ms-timer", "ASYNC MOD MS TIMER", self._ms_timer
            )
        else:
            self.ms_timer = None

    def get_ticks(self) -> int:
        """Kamailio's `get_ticks()`: the 16 Hz tick counter in whole seconds.

        The counter starts at `ticks_start` (Kamailio: `random()`; unset, a draw seeded by
        the server's seed), so its second boundaries fall (−ticks_start mod 16)/16 s after
        startup, and only at tick instants. With ticks_start=0 this is ⌊now⌋.
        """
        ticks = math.floor(self.server.now / TICK + 1e-9) + self.ticks_start
        return ticks // TICKS_HZ

    # ------------------------------------------------------------------ script functions

    def async_sleep(self, process: Process, txn: TxnId, seconds: int) -> Program:
        """`async_sleep(s)` / `async_route(R, s)` in SIP worker `process`; returns 0 or -1."""
        server = self.server
        if self.ring is None:
            return self._reject(REJECTED_NO_WORKERS)
        if not 0 < seconds < RING_SIZE:
            return self._reject(REJECTED_S_RANGE)
        target = self.get_ticks() + seconds  # read before t_suspend, as in async_sleep()
        outcome = yield from server.suspend(process, txn)
        if outcome is SuspendOutcome.ALREADY_CANCELLED:
            txn = RACED_CANCEL_ID  # +1 counts as success; its continue finds nothing
        elif outcome is not SuspendOutcome.SUSPENDED:
            return self._reject(REJECTED_SUSPEND)
        yield Compute(server.costs.seconds("async_insert"))
        self.ring.push(target, txn)
        return 0

    def async_ms_sleep(self, process: Process, txn: TxnId, ms: int) -> Program:
        """`async_ms_sleep(ms)` / `async_ms_route(R, ms)` in SIP worker `process`; 0 or -1."""
        server = self.server
        if self.ring is None:
            return self._reject(REJECTED_NO_WORKERS)
        ms_list = self.ms_list
        if ms_list is None:
            return self._reject(REJECTED_MS_TIMER_OFF)
        if not 0 < ms < MAX_MS_SLEEP:
            return self._reject(REJECTED_MS_RANGE)
        if len(ms_list) >= MAX_MS_SLEEP_QUEUE:  # read without the lock: a soft cap
            return self._reject(REJECTED_MS_FULL)
        outcome = yield from server.suspend(process, txn)
        if outcome is SuspendOutcome.ALREADY_CANCELLED:
            txn = RACED_CANCEL_ID
        elif outcome is not SuspendOutcome.SUSPENDED:
            return self._reject(REJECTED_SUSPEND)
        due = server.now + ms / 1000.0  # gettimeofday() after the suspend
        if not self.ms_lock.items:
            server.count(LOCK_WAITS)
        yield Get(self.ms_lock)
        yield Compute(server.costs.seconds("async_insert"))
        ms_list.insert(MsItem(due, txn))
        self.ms_lock.offer(_LOCK_TOKEN)
        return 0

    def _reject(self, reason: str) -> int:
        self.server.count(reason)
        return -1

    # ------------------------------------------------------------------ timer processes

    def _seconds_timer(self, process: Process) -> Program:
        """An "ASYNC MOD TIMER": sleep 1 s (+ε), drain the current second's slot, repeat."""
        server = self.server
        ring = self.ring
        assert ring is not None
        pass_cost = server.costs.seconds("async_s_pass")
        item_cost = server.costs.seconds("async_item")
        last = self.get_ticks()
        while True:
            yield Sleep(1.0 + server.overshoot())
            second = self.get_ticks()  # what fork_basic_timer hands the callback
            if second > last + 1:
                server.count(SECONDS_SKIPPED, second - last - 1)
            last = second
            yield Pass(pass_cost)
            while (txn := ring.pop(second)) is not None:
                yield Compute(item_cost)
                yield from server.resume(process, txn)  # t_continue, synchronously, here

    def _ms_timer(self, process: Process) -> Program:
        """The "ASYNC MOD MS TIMER": select() ms_timer (+ε), hand every due item to the pool."""
        server = self.server
        ms_list = self.ms_list
        assert ms_list is not None
        period = self.config.ms_timer / 1000.0
        pass_cost = server.costs.seconds("async_ms_pass")
        item_cost = server.costs.seconds("async_item")
        tasks = self.tasks
        while True:
            yield Sleep(period + server.overshoot())
            yield Pass(pass_cost)
            now = server.now  # gettimeofday(), taken before the lock
            yield Get(self.ms_lock)
            while (item := ms_list.pop_due(now)) is not None:
                yield Compute(item_cost)
                blocked = tasks.blocked_pushes
                pushed = yield from tasks.push(process, self._continuation(item.txn))
                if tasks.blocked_pushes != blocked:
                    server.count(TIMER_PUSH_BLOCKED)
                if not pushed:
                    server.count(STRANDED_REFUSED)
                elif not tasks.config.workers:
                    server.count(STRANDED_LEAKED)
            self.ms_lock.offer(_LOCK_TOKEN)

    def _continuation(self, txn: TxnId) -> Task:
        """The task `async_exec_task()`: t_continue + the route, in the task worker."""
        server = self.server

        def task(worker: Process) -> Program:
            return server.resume(worker, txn)

        return task


# ---------------------------------------------------------------- the strategies' shared part

_S_DEFAULTS = {"ms": None, "ms_timer": 0, "async_workers": 0}
"""With s= the ms form's own defaults give way to Kamailio's (ms_timer 0, async_workers 0)."""

ASYNC_PARAMS: tuple[Param, ...] = (
    Param(
        "ms",
        "int",
        10,
        "delay in ms of the ms form async_ms_*(ms); Kamailio accepts 1..29999, anything else "
        "returns -1 and the request is relayed undelayed (unset when s= is given)",
        minimum=0,
        maximum=600_000,
    ),
    Param(
        "s",
        "int",
        None,
        "delay in seconds: use the seconds form async_*(s) instead of ms; Kamailio accepts "
        "1..99 and may resume up to 1 s early",
        minimum=0,
        maximum=3_600,
    ),
    Param(
        "workers",
        "int",
        1,
        'modparam("async","workers"): ASYNC MOD TIMER processes of the seconds ring; must be '
        "> 0 for EVERY async_* function, the ms ones included",
        minimum=0,
        maximum=64,
    ),
    Param(
        "ms_timer",
        "int",
        1,
        'modparam("async","ms_timer") in ms: period of the single ASYNC MOD MS TIMER; 0 '
        "disables async_ms_* (default 1; Kamailio's 0 with s=)",
        minimum=0,
        maximum=10_000,
    ),
    Param(
        "async_workers",
        "int",
        1,
        "core async_workers: the CORE task pool that runs every async_ms_* continuation, "
        "unrelated to workers; 0 strands each ms deferral until its 408 (default 1; 0 with s=)",
        minimum=0,
        maximum=1_024,
    ),
    Param(
        "async_nonblock",
        "bool",
        False,
        "core async_nonblock: a push to a full task socket fails (transaction stranded until "
        "408) instead of blocking the ms timer and, through its lock, the SIP workers",
    ),
    Param(
        "ticks_start",
        "int",
        None,
        "model only: the core tick counter's start value (Kamailio: random(), logged at debug "
        "as 'starting with *ticks=N'); get_ticks() seconds then begin (-N mod 16)/16 s after "
        "startup, which sets how early the seconds form resumes (unset: a seeded random draw)",
        minimum=0,
        maximum=2**32 - 1,
    ),
)


@mypyc_attr(allow_interpreted_subclasses=True)  # `async-route`, `async-sleep`
class AsyncModuleStrategy(Strategy):
    """A deferral through the async module; subclasses say what the script calls."""

    params = ASYNC_PARAMS

    def __init__(self, **values: Any) -> None:
        if values.get("s") is not None:
            for name, default in _S_DEFAULTS.items():
                values.setdefault(name, default)
        super().__init__(**values)

    def validate(self) -> None:
        ms, s = self.values["ms"], self.values["s"]
        if (ms is None) == (s is None):
            raise SpecError(f"{self.name}: give exactly one of ms= (async_ms_*) or s= (async_*)")

    # ------------------------------------------------------------------ description

    @property
    def model(self) -> str:
        """`async-route` and `async-sleep` with the same parameters are one model here."""
        return "async-module" + self.spec[len(self.name) :]

    @property
    def seconds_form(self) -> bool:
        return self.values["s"] is not None

    @property
    def delay_argument(self) -> int:
        """The value written in the script call: ms for the ms form, s for the seconds form."""
        return self.values["s"] if self.seconds_form else self.values["ms"]

    @property
    def requested_delay(self) -> float:
        return float(self.values["s"]) if self.seconds_form else self.values["ms"] / 1000.0

    @property
    def module_config(self) -> AsyncModuleConfig:
        return AsyncModuleConfig(
            workers=self.values["workers"],
            ms_timer=self.values["ms_timer"],
            async_workers=self.values["async_workers"],
            async_nonblock=self.values["async_nonblock"],
            ticks_start=self.values["ticks_start"],
        )

    # ------------------------------------------------------------------ behaviour

    def install(self, server: Server) -> None:
        server.strategy_state = AsyncModule(server, self.module_config)

    def backlog(self, server: Server) -> int:
        """Items in the seconds ring and the ms list, plus tasks waiting for a task worker."""
        module = self.module(server)
        waiting = len(module.tasks.queue)
        if module.ring is not None:
            waiting += len(module.ring)
        if module.ms_list is not None:
            waiting += len(module.ms_list)
        return waiting

    def module(self, server: Server) -> AsyncModule:
        """The module state installed on `server` (tests and reports look inside)."""
        return server.strategy_state

    def defer(self, server: Server, process: Process, txn: TxnId) -> Program:
        module = self.module(server)
        if self.seconds_form:
            rc = yield from module.async_sleep(process, txn, self.values["s"])
        else:
            rc = yield from module.async_ms_sleep(process, txn, self.values["ms"])
        if rc < 0:  # false: the script goes on to the t_relay() after the call
            server.count(RELAYED_UNDELAYED)
            yield from server.relay_now(process, txn)

    # ------------------------------------------------------------------ kamailio.cfg

    def config_warnings(self) -> list[str]:
        """What this configuration does wrong, in Kamailio's terms (cfg comments)."""
        v = self.values
        notes: list[str] = []
        fn = self.call_name()
        if v["workers"] <= 0:
            notes.append(f"workers={v['workers']}: every async_* returns -1, no deferral at all")
        if self.seconds_form:
            if not 0 < v["s"] < RING_SIZE:
                notes.append(f"s={v['s']} is outside 1..99: {fn}() returns -1, relayed undelayed")
            if v["workers"] > 0 and v["ms_timer"] > 0:
                notes.append(
                    f"ms_timer={v['ms_timer']} forks the ASYNC MOD MS TIMER although only the "
                    f"seconds form is used: ~{1000 // v['ms_timer']} idle wake-ups/s"
                )
            return notes
        if v["ms_timer"] <= 0:
            notes.append(f"ms_timer=0: {fn}() returns -1, relayed undelayed")
        if not 0 < v["ms"] < MAX_MS_SLEEP:
            notes.append(f"ms={v['ms']} is outside 1..29999: {fn}() returns -1, relayed undelayed")
        if v["async_workers"] <= 0:
            notes.append(
                "async_workers=0: Kamailio starts, but every due item is pushed to a task "
                "group without workers and the transaction strands until its 408 (§5)"
            )
        return notes

    def call_name(self) -> str:
        raise NotImplementedError

    def deferral_block(self, trace: bool = False) -> str:
        """The body of `route[DEFER]`: the call that defers the re-INVITE (`trace`: with the
        suspend/resume xlog lines of the kamailio target)."""
        raise NotImplementedError

    def resume_route(self, trace: bool = False) -> str:
        """Extra route blocks the continuation needs (empty for the sleep form)."""
        return ""

    def kamailio_config(self, settings: ServerSettings | None = None, trace: bool = False) -> str:
        return render_config(self, settings, trace)


def render_config(
    strategy: AsyncModuleStrategy, settings: ServerSettings | None = None, trace: bool = False
) -> str:
    """The kamailio.cfg of an async-module strategy (Kamailio 5.6.3 syntax), on the routing
    script every strategy shares (`strategies.inline.routing_script`)."""
    v = strategy.values
    core = [
        '# Core parameter: size of the CORE async task pool, group "default" (the',
        '# "Async Task Worker - default" processes). It is NOT the async module\'s modparam',
        '# "workers" (the "ASYNC MOD TIMER" processes): two unrelated pools. The ms timer',
        "# hands every due async_ms_* item to this pool; with async_workers=0 (Kamailio's",
        '# default) Kamailio still starts, logs "async task pushed, but no async workers -',
        '# ignoring", and every async_ms_* transaction strands until its 408 at fr_timer',
        "# (reference §5). The seconds form async_route()/async_sleep() does not use it.",
        f"async_workers={v['async_workers']}",
    ]
    if v["async_nonblock"]:
        core.append("async_nonblock=1  # only honoured AFTER async_workers (reference §4)")
    return routing_script(
        spec=strategy.spec,
        about=[
            f"Kamailio 5.6.3: {strategy.summary}",
            *(f"WARNING: {note}" for note in strategy.config_warnings()),
        ],
        defer=strategy.deferral_block(trace),
        settings=settings,
        core=core,
        modules=("async",),
        modparams=[
            '# "ASYNC MOD TIMER" processes (seconds ring). Must be > 0 for every async_*',
            "# function, async_ms_* included, or they all return -1.",
            f'modparam("async", "workers", {v["workers"]})',
            '# Period in ms of the one "ASYNC MOD MS TIMER" process; 0 disables async_ms_*.',
            f'modparam("async", "ms_timer", {v["ms_timer"]})',
        ],
        routes=strategy.resume_route(trace),
    )
