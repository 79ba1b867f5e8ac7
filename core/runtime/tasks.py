"""Kamailio's core async task framework (`async_workers`, `async_workers_group`), reference §4.

A group is N "Async Task Worker - <name>" processes reading one AF_UNIX datagram socketpair:
one FIFO with N servers. The socket's send buffer bounds it (≈278 pending tasks at the
default `wmem_default`); beyond that a blocking push stalls the pushing process
(`nonblock=0`, the default) or fails (`nonblock=1`). A push into a group with no workers
"succeeds" and the task is leaked — the silent strand behind `async_ms_route` without the
core pool (§5). Every such event is counted here, not hidden.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

from core.runtime.costs import CostProfile
from core.runtime.kernel import Kernel
from core.runtime.process import Compute, Get, Process, Program, Put, Queue, Sleep

Task = Callable[[Process], Program]
"""A task: given the worker process it runs in, the program of its work."""

DEFAULT_TASK_CAPACITY = 278
"""Pending tasks per group at `net.core.wmem_default` = 212,992 B (≈768 B per datagram)."""


class TaskHost(Protocol):
    """What a task group needs of the server it belongs to (the server is one)."""

    kernel: Kernel
    costs: CostProfile

    def spawn(self, role: str, name: str, program: Callable[[Process], Program]) -> Process: ...

    def count(self, event: str, n: int = 1) -> None: ...


@dataclass(frozen=True, slots=True)
class TaskGroupConfig:
    name: str = "default"
    workers: int = 0
    nonblock: bool = False
    usleep: float = 0.0  # seconds slept before every receive
    capacity: int = DEFAULT_TASK_CAPACITY


class TaskGroup:
    """One task group and its worker processes."""

    def __init__(self, server: TaskHost, config: TaskGroupConfig) -> None:
        self.server = server
        self.config = config
        self.queue = Queue(server.kernel, f"async-tasks/{config.name}", config.capacity)
        self.leaked = 0  # pushed into a group without workers: the task never runs
        self.refused = 0  # non-blocking push on a full socket: push returns -1
        self.blocked_pushes = 0  # pushes that had to wait for room (nonblock=0)
        self.workers = [
            server.spawn("async-task-worker", f"Async Task Worker - {config.name} #{i}", self._work)
            for i in range(config.workers)
        ]

    def push(self, process: Process, task: Task) -> Program:
        """`async_task_push()` from `process`; the program returns True on "success"."""
        yield Compute(self.server.costs.seconds("task_push"))
        if not self.config.workers:
            self.leaked += 1
            self.server.count("task_pushed_without_workers")
            return True
        if self.queue.offer(task):
            return True
        if self.config.nonblock:
            self.refused += 1
            self.server.count("task_push_refused")
            return False
        self.blocked_pushes += 1
        yield Put(self.queue, task)
        return True

    def _work(self, process: Process) -> Program:
        receive = self.server.costs.seconds("task_receive")
        usleep = self.config.usleep
        while True:
            if usleep:
                yield Sleep(usleep)
            task = yield Get(self.queue)
            yield Compute(receive)
            yield from task(process)
