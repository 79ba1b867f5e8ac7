"""`mqueue-rtimer`: `t_suspend` + `mq_add` in the SIP worker, N rtimer processes polling the queue.

The hand-built deferral of reference §6–§8, with its flaws kept:

- **SIP worker** (`route[DEFER]`): `t_suspend()` (100 Trying, blind branch, fr deadline), then
  `mq_add("dq", "$T(id_index)", "$T(id_label)")`. The queue knows nothing of transactions or
  time; its `size`/`addmode` policy may drop an item and still report success (addmode 0:
  the *oldest* on overflow; 1: the *new* one on a duplicate key; 2: the *old* one with that
  key). A dropped item strands its transaction until the fr_timer answers 408. Every drop is
  counted on the server.
- **rtimer processes** (`mode=N`): each loops sleep-then-run with no catch-up —
  `Sleep(interval + ε)`, then a pass costing `rtimer_pass` plus its `mq_fetch` calls. The
  continuation (`t_continue` + relay) runs *inside* the timer process, so its time pushes
  that process's next tick back. `take=one` pops one item per pass (the `return` inside the
  `while`): capacity ≈ N / (interval + ε + pass); `take=all` drains the queue in the pass.
  The processes are forked in sequence a few µs apart and then drift with the seeded jitter
  of ε, so the delay is "until any process's next pass", D ∈ [0, P) + backlog — not the
  interval the seed intended.
- **`min_age`** (the corrected variant; unset = the seed): the item also carries the time of
  its `mq_add`; a consumer that pops an item younger than `min_age` sleeps out the rest
  *in its own timer process* (`usleep`, blocking that timer) and then resumes it. Design
  choice: mqueue cannot peek, and putting the item back would send it to the tail (reordering
  the dialog's requests and re-polling it every pass), so sleeping out is the only way with
  these modules never to resume early and to keep FIFO order. Its price is capacity: while a
  timer sleeps out it polls nothing, so at light load every resume costs a timer up to
  `min_age` of blocked time.

What it must not do: resume anywhere but in an rtimer process, or hide a dropped item.
"""

from __future__ import annotations

from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from core.events import TxnId
from core.runtime.process import Compute, Pass, Process, Program, Sleep
from strategies.base import Strategy
from strategies.inline import continuation_route, routing_script, trace_line
from strategies.spec import Param, SpecError, format_duration

if TYPE_CHECKING:
    from core.runtime.server import Server, ServerSettings

QUEUE_NAME = "dq"
TIMER_NAME = "dq"

DROP_COUNTERS = {
    "overflow": "mqueue_overflow_dropped_oldest",
    "duplicate_new": "mqueue_duplicate_key_dropped_new",
    "duplicate_old": "mqueue_duplicate_key_removed_old",
}
"""Server counter for each way `mq_add` silently loses an item (its transaction then 408s)."""


@dataclass(slots=True)
class QueuedItem:
    """One mqueue item: key `$T(id_index)`, value `$T(id_label)` (+ the add time for min_age)."""

    key: int
    txn: TxnId
    added_at: float


@dataclass(slots=True)
class MessageQueue:
    """mqueue's shared-memory FIFO with Kamailio 5.6's `mq_item_add()` size/addmode policy.

    `add()` always "succeeds", as `mq_add` does, and returns what it silently dropped.
    """

    name: str
    size: int = 0  # 0 = unbounded
    addmode: int = 0
    items: deque[QueuedItem] = field(default_factory=deque)
    added: int = 0
    fetched: int = 0
    max_depth: int = 0
    dropped: Counter[str] = field(default_factory=Counter)
    _keys: Counter[int] = field(default_factory=Counter)

    def __len__(self) -> int:
        return len(self.items)

    def add(self, item: QueuedItem) -> list[tuple[str, QueuedItem]]:
        """`mq_add`: returns [(reason, dropped item)], reasons as in `DROP_COUNTERS`."""
        self.added += 1
        dropped: list[tuple[str, QueuedItem]] = []
        items = self.items
        if self.addmode and self._keys[item.key]:
            old = next(i for i in items if i.key == item.key)
            if self.addmode == 1:  # keep the oldest: the new item is silently freed
                dropped.append(("duplicate_new", item))
                self.dropped["duplicate_new"] += 1
                return dropped
            items.remove(old)  # addmode 2, keep the newest: the old one is freed
            self._keys[old.key] -= 1
            dropped.append(("duplicate_old", old))
            self.dropped["duplicate_old"] += 1
        items.append(item)
        if self.addmode:
            self._keys[item.key] += 1
        if self.size and len(items) > self.size:  # frees the head and still returns 0
            oldest = items.popleft()
            if self.addmode:
                self._keys[oldest.key] -= 1
            dropped.append(("overflow", oldest))
            self.dropped["overflow"] += 1
        if len(items) > self.max_depth:
            self.max_depth = len(items)
        return dropped

    def fetch(self) -> QueuedItem | None:
        """`mq_fetch`: pop the head (FIFO) or None when empty (-2); consumers only poll."""
        if not self.items:
            return None
        item = self.items.popleft()
        self.fetched += 1
        if self.addmode:
            self._keys[item.key] -= 1
        return item


@dataclass(slots=True)
class RtimerPool:
    """What `install()` created on one server: the queue and the timer processes."""

    queue: MessageQueue
    processes: list[Process] = field(default_factory=list)
    passes: int = 0  # exec-route runs, all timers together
    sleep_outs: int = 0  # min_age: pops that had to sleep out the item's remaining age
    slept_out: float = 0.0  # seconds of rtimer time spent sleeping out


class MqueueRtimer(Strategy):
    """`t_suspend` + `mq_add`; N `mode=N` rtimer processes poll with `mq_fetch` + `t_continue`."""

    name = "mqueue-rtimer"
    summary = "t_suspend + mq_add; N rtimer processes poll mq_fetch and t_continue in the timer"
    params = (
        Param("timers", "int", 12, "rtimer processes (rtimer mode=N)", minimum=1, maximum=256),
        Param(
            "interval",
            "duration",
            0.010,
            "rtimer interval (written as interval=<µs>u), sleep between passes",
            minimum=1e-6,
            maximum=60.0,
        ),
        Param(
            "take",
            "choice",
            "one",
            "items popped per pass: one (return inside the while) or all (drain)",
            choices=("one", "all"),
        ),
        Param(
            "size",
            "int",
            0,
            "mqueue size: 0 unbounded; over it addmode 0 frees the oldest item",
            minimum=0,
            maximum=10_000_000,
        ),
        Param(
            "addmode",
            "int",
            0,
            "mqueue addmode: 0 append, 1 duplicate key drops the new, 2 drops the old",
            minimum=0,
            maximum=2,
        ),
        Param(
            "min_age",
            "duration",
            None,
            "corrected variant: a consumer sleeps out an item younger than this (unset = seed)",
            minimum=0.0,
            maximum=30.0,
        ),
    )

    def validate(self) -> None:
        interval_us = self.values["interval"] * 1e6
        if abs(interval_us - round(interval_us)) > 1e-6:
            raise SpecError(
                f"{self.name}: interval={format_duration(self.values['interval'])} is not a "
                "whole number of µs (rtimer takes interval=<µs>u)"
            )
        if self.values["min_age"] == 0:  # 0 is the seed behaviour: keep the spec canonical
            self.values["min_age"] = None

    @property
    def requested_delay(self) -> float:
        return self.values["min_age"] or self.values["interval"]

    # ------------------------------------------------------------------ model

    def install(self, server: Server) -> None:
        pool = RtimerPool(MessageQueue(QUEUE_NAME, self.values["size"], self.values["addmode"]))
        server.strategy_state = pool
        for child, forked in enumerate(server.fork_offsets(self.values["timers"])):
            pool.processes.append(
                server.spawn(
                    "rtimer",
                    f"RTIMER EXEC child={child} timer={TIMER_NAME}",
                    self._timer_program(server, pool, forked),
                )
            )

    def backlog(self, server: Server) -> int:
        """Items waiting in the mqueue (popped ones being slept out are not counted)."""
        return len(self.pool(server).queue)

    def pool(self, server: Server) -> RtimerPool:
        """The queue and timer processes installed on `server`."""
        return server.strategy_state

    def defer(self, server: Server, process: Process, txn: TxnId) -> Program:
        # the script does not test t_suspend(): whatever it returned, the ids are queued
        yield from server.suspend(process, txn)
        added_at = server.now  # $TV(Sn), read just before mq_add
        yield Compute(server.costs.seconds("mq_add"))
        for reason, _ in self.pool(server).queue.add(QueuedItem(txn.index, txn, added_at)):
            server.count(DROP_COUNTERS[reason])

    def _timer_program(
        self, server: Server, pool: RtimerPool, forked: float
    ) -> Callable[[Process], Program]:
        def program(process: Process) -> Program:
            costs = server.costs
            queue = pool.queue
            interval = self.values["interval"]
            take_all = self.values["take"] == "all"
            min_age = self.values["min_age"]
            fetch_empty = costs.seconds("mq_fetch_empty")
            first_fetch = costs.seconds("rtimer_pass") + fetch_empty
            item_extra = max(0.0, costs.seconds("mq_fetch_item") - fetch_empty)
            wait = forked + interval + server.overshoot()  # forked: after the first child
            while True:
                yield Sleep(wait)  # fork_basic_utimer(): sleep_us(interval) first ...
                yield Pass(first_fetch)  # ... then the pass: faked msg, route, mq_fetch
                pool.passes += 1
                item = queue.fetch()
                while item is not None:
                    yield Compute(item_extra)  # $mqk/$mqv copies, {s.int}
                    if min_age is not None:
                        rest = item.added_at + min_age - server.now
                        if rest > 0.0:  # usleep() in this timer: it polls nothing meanwhile
                            started = server.now
                            yield Sleep(rest + server.overshoot())
                            pool.sleep_outs += 1
                            pool.slept_out += server.now - started
                    yield from server.resume(process, item.txn)  # runs HERE, blocking us
                    if not take_all:
                        break  # `return` inside the while: one item per pass
                    yield Compute(fetch_empty)
                    item = queue.fetch()
                wait = interval + server.overshoot()  # no catch-up: the pass delayed the tick

        return program

    # ------------------------------------------------------------------ kamailio.cfg

    def kamailio_config(self, settings: ServerSettings | None = None, trace: bool = False) -> str:
        timers = self.values["timers"]
        interval_us = round(self.values["interval"] * 1e6)
        size, addmode, min_age = self.values["size"], self.values["addmode"], self.values["min_age"]
        take_one = self.values["take"] == "one"
        modules = ["mqueue", "rtimer"] + (["cfgutils"] if min_age is not None else [])
        return routing_script(
            spec=self.spec,
            about=_about(timers, self.values["interval"], take_one, min_age),
            defer=_defer_block(min_age, trace),
            settings=settings,
            modules=modules,
            modparams=[
                _queue_comment(size, addmode),
                f'modparam("mqueue", "mqueue", "name={QUEUE_NAME};size={size};addmode={addmode}")',
                "# rtimer reads the fields of a timer in REVERSE: written as",
                '# "interval=<µs>u;mode=N" it forks N processes; "mode=N;interval=<µs>u" forks',
                "# ONE (the µs interval sets mode=1 while mode is still 0).",
                "# Each process: sleep_us(interval), then the exec route; no catch-up, so",
                "# period = interval + overshoot + pass, and the pass includes the continuation.",
                f'modparam("rtimer", "timer", "name={TIMER_NAME};interval={interval_us}u;'
                f'mode={timers}")',
                f'modparam("rtimer", "exec", "timer={TIMER_NAME};route=DQ_POLL")',
            ],
            routes=_poll_route(take_one, min_age, trace) + continuation_route(trace),
        )


# ---------------------------------------------------------------------- cfg text


def _about(timers: int, interval: float, take_one: bool, min_age: float | None) -> list[str]:
    lines = [
        f"mqueue + rtimer: t_suspend() and mq_add() in the SIP worker; {timers} rtimer",
        f"processes every {format_duration(interval)} pop "
        + ("ONE item per pass" if take_one else "EVERY item (drain)")
        + " and t_continue() it inside the timer process.",
        "The delay is until ANY timer's next pass, not the interval: D in [0, P) plus backlog,",
        "with P = interval + overshoot + pass.",
    ]
    if take_one:
        lines.append(f"Capacity: {timers} / P resumes per second; excess waits in the queue.")
    if min_age is not None:
        lines += [
            f"min_age={format_duration(min_age)} (corrected variant): an item younger than that is",
            "slept out in the popping timer (usleep), so nothing resumes early, at the cost of",
            "that timer polling nothing meanwhile.",
        ]
    return lines


def _queue_comment(size: int, addmode: int) -> str:
    policy = {
        0: "addmode=0: append at the tail",
        1: "addmode=1: a duplicate key SILENTLY DROPS THE NEW item (key = $T(id_index): two\n"
        "# live transactions in one hash bucket collide; the second is stranded)",
        2: "addmode=2: a duplicate key REMOVES THE OLD item (stranded) and appends the new",
    }[addmode]
    bound = (
        f"size={size}: past {size} items mq_add FREES THE OLDEST and still returns success;\n"
        "# that transaction is stranded until fr_timer answers 408"
        if size
        else "size=0: unbounded (shared memory only)"
    )
    return f"# mqueue: a shared-memory FIFO of string pairs, one lock.\n# {policy}.\n# {bound}."


def _defer_block(min_age: float | None, trace: bool = False) -> str:
    value = '"$T(id_label)"' if min_age is None else '"$T(id_label):$TV(Sn)"'
    stamp = (
        ""
        if min_age is None
        else '\t# min_age: the value also carries the add time, "sec.usec" read in one call\n'
    )
    return (
        (trace_line("suspend") if trace else "")
        + "\t# t_suspend() creates the transaction, sends 100 Trying at once, adds a blind\n"
        "\t# branch and arms its fr_timer: nobody continuing it in time means a 408.\n"
        "\tt_suspend();\n"
        "\t# key = hash index, value = label: strings; the timer converts them back\n"
        f"{stamp}"
        f'\tmq_add("{QUEUE_NAME}", "$T(id_index)", {value});\n'
        "\texit;"
    )


TRACED_PASSES = 20
TRACE_AFTER = 100
"""With `trace`, each rtimer process logs passes TRACE_AFTER+1 .. TRACE_AFTER+TRACED_PASSES
(about 1 s after its fork: startup's contention has passed): phases and periods to fit."""


def _poll_route(take_one: bool, min_age: float | None, trace: bool = False) -> str:
    label = (
        f"$(mqv({QUEUE_NAME}){{s.int}})"
        if min_age is None
        else f"$(mqv({QUEUE_NAME}){{s.select,0,:}}{{s.int}})"
    )
    lines = [
        "",
        "# Runs in each RTIMER EXEC process after every sleep. mqueue has no blocking wait:",
        "# the timers poll, and an item waits for whichever timer passes next.",
        "route[DQ_POLL] {",
        *(
            [
                f"\tif ($var(passes) < {TRACE_AFTER + TRACED_PASSES}) {{  # per process, from 0",
                "\t\t$var(passes) = $var(passes) + 1;",
                f"\t\tif ($var(passes) > {TRACE_AFTER}) {{",
                trace_line("timer-pass", "\t\t\t", "$TV(Sn) $pp").rstrip("\n"),
                "\t\t}",
                "\t}",
            ]
            if trace
            else []
        ),
        f'\twhile (mq_fetch("{QUEUE_NAME}")) {{',
        "\t\t# $mqk/$mqv are strings: passing them to t_continue() unconverted fails",
        '\t\t# ("Could not convert PV to int") and strands the transaction',
        f"\t\t$var(tindex) = $(mqk({QUEUE_NAME}){{s.int}});",
        f"\t\t$var(tlabel) = {label};",
    ]
    if min_age is not None:
        min_age_us = round(min_age * 1e6)
        lines += [
            "\t\t# min_age: sleep out the rest of the item's age IN THIS TIMER (it polls",
            "\t\t# nothing meanwhile): never resumes early, costs timer capacity.",
            f"\t\t$var(added) = $(mqv({QUEUE_NAME}){{s.select,1,:}});",
            "\t\t$var(now) = $TV(Sn);",
            "\t\t$var(age) = ($(var(now){s.select,0,.}{s.int})"
            " - $(var(added){s.select,0,.}{s.int})) * 1000000"
            " + $(var(now){s.select,1,.}{s.int}) - $(var(added){s.select,1,.}{s.int});",
            f"\t\tif ($var(age) < {min_age_us}) {{",
            f"\t\t\t$var(rest) = {min_age_us} - $var(age);",
            '\t\t\tusleep("$var(rest)");',
            "\t\t}",
        ]
    lines += [
        "\t\t# the continuation runs HERE, synchronously: its time delays this timer's next tick",
        '\t\tt_continue("$var(tindex)", "$var(tlabel)", "RESUME");',
    ]
    if take_one:
        lines += [
            "\t\t# `return` inside the while: ONE item per pass, capacity = timers / period",
            "\t\treturn;",
        ]
    else:
        lines.append("\t\t# no return: drain the queue in this pass (a burst goes in one tick)")
    lines += ["\t}", "}"]
    return "\n".join(lines) + "\n"


STRATEGY = MqueueRtimer
