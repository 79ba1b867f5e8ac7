"""`async-task:async_workers=4,nonblock=0,usleep=0`: `async_task_route()` into the core task pool.

Reference §4: `async_send_task()` creates the transaction, **suspends it first**, then pushes
the task (an 8-byte pointer) into the core `default` group's socketpair; one of the
`async_workers` "Async Task Worker - default" processes receives it and runs the continuation
at once. There is no timer: D = push + receive + t_continue at idle (≈0.1–0.3 ms), plus the
wait for an idle worker under load. It defers "until a worker is free", not for a delay.

Its flaws, kept:
- the socket holds ≈278 pending tasks; past that a blocking push (`nonblock=0`) stalls the SIP
  worker (backpressure), and a non-blocking one fails: the function returns -1 but the
  transaction **stays suspended** (no `t_cancel_suspend`) until the fr_timer answers 408;
- `usleep` µs are slept before every receive, so each worker does at most
  1 / (usleep + service) tasks per second;
- `t_suspend()` returning +1 (already cancelled) sets no ids, so the task continues 0:0.

What it must not do: delay on purpose, or resume outside the task workers.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from core.events import SuspendOutcome, TxnId
from core.runtime.process import Process, Program
from core.runtime.tasks import TaskGroupConfig
from strategies.base import Strategy
from strategies.inline import continuation_route, routing_script, trace_line
from strategies.spec import Param, SpecError

if TYPE_CHECKING:
    from core.runtime.server import Server, ServerSettings

NO_IDS = TxnId(0, 0)
"""What `async_send_task()` queues when `t_suspend()` returned +1 without setting the ids."""


class AsyncTask(Strategy):
    """Suspend, then push the continuation to the core default task group's workers."""

    name = "async-task"
    summary = "async_task_route(): suspend, then hand off to the core async_workers pool at once"
    params = (
        Param(
            "async_workers",
            "int",
            4,
            "core async_workers: processes of the default task group",
            minimum=0,
            maximum=256,
        ),
        Param(
            "nonblock",
            "bool",
            False,
            "core async_nonblock: a full task socket fails the push instead of blocking",
        ),
        Param(
            "usleep",
            "int",
            0,
            "core async_usleep: µs each task worker sleeps before every receive",
            minimum=0,
            maximum=10_000_000,
        ),
    )

    def validate(self) -> None:
        if self.values["async_workers"] < 1:
            raise SpecError(
                f"{self.name}: async_workers=0 disables the core task framework and Kamailio "
                "refuses to start (async_task_route fixup: 'set async_workers parameter in "
                "core'); use async_workers>=1"
            )

    @property
    def requested_delay(self) -> float:
        return 0.0

    def _config(self) -> TaskGroupConfig:
        return TaskGroupConfig(
            name="default",
            workers=self.values["async_workers"],
            nonblock=self.values["nonblock"],
            usleep=self.values["usleep"] * 1e-6,
        )

    def install(self, server: Server) -> None:
        server.task_group(self._config())

    def backlog(self, server: Server) -> int:
        """Tasks waiting on the default group's socket for an idle task worker."""
        return len(server.task_groups["default"].queue)

    def defer(self, server: Server, process: Process, txn: TxnId) -> Program:
        outcome = yield from server.suspend(process, txn)
        if outcome is SuspendOutcome.ALREADY_CANCELLED:
            target = NO_IDS  # +1 is "success" for async_send_task(), but no ids were set
        elif outcome is SuspendOutcome.SUSPENDED:
            target = txn
        else:
            server.count("async_task_route_failed_suspend")
            return  # -1: the script goes on to its `exit`
        group = server.task_groups["default"]  # created by install()
        pushed = yield from group.push(process, lambda worker: server.resume(worker, target))
        if not pushed:
            # -1, but the transaction stays suspended: stranded until the fr_timer's 408
            server.count("async_task_push_failed_stranded")

    def kamailio_config(self, settings: ServerSettings | None = None, trace: bool = False) -> str:
        workers, nonblock, usleep = (
            self.values["async_workers"],
            self.values["nonblock"],
            self.values["usleep"],
        )
        return routing_script(
            spec=self.spec,
            about=[
                "Core async tasks: async_task_route() suspends the transaction, then pushes it",
                f"to the default group of {workers} 'Async Task Worker' processes, which run",
                "route[RESUME] at once: no timer, D = hand-off + wait for an idle worker.",
                "The task socket holds about 278 pending tasks (wmem_default); past that the",
                "push blocks the SIP worker (async_nonblock=0) or fails (async_nonblock=1),",
                "and a failed push leaves the transaction suspended until its 408.",
            ],
            core=[
                "# core task pool (NOT the async module's modparam `workers`); async_nonblock",
                "# and async_usleep only change an EXISTING default group: keep them after it",
                f"async_workers={workers}",
                f"async_nonblock={1 if nonblock else 0}",
                f"async_usleep={usleep}",
            ],
            modules=("async",),
            modparams=[
                "# no ASYNC MOD TIMER processes: async_task_route() does not use them",
                'modparam("async", "workers", 0)',
            ],
            defer=(
                (trace_line("suspend") if trace else "")
                + "\t# creates and SUSPENDS the transaction first, then pushes the task;\n"
                "\t# on success it returns 0, which ends the script here\n"
                '\tasync_task_route("RESUME");\n'
                "\t# reached only on -1: if the push failed the transaction STAYS suspended\n"
                "\t# (no t_cancel_suspend) and the UAC gets a 408 at fr_timer\n"
                '\txlog("L_ERR", "async_task_route failed for $T(id_index):$T(id_label)\\n");\n'
                "\texit;"
            ),
            settings=settings,
            routes=continuation_route(trace),
        )


STRATEGY = AsyncTask
