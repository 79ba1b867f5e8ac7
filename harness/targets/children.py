"""The processes the harness starts (serve, Kamailio, SIPp, process-pool workers): started so
that they die with it, and stopped by PID, never by name.

- **Dying with the harness.** `spawn` starts a child with `PR_SET_PDEATHSIG` set between
  fork and exec, so the kernel signals it when the harness dies, whatever killed the
  harness (kill -9 included). The signal is SIGKILL for children without children of their
  own (serve, SIPp) and SIGTERM for Kamailio, whose main process stops its own forked
  processes on SIGTERM (PDEATHSIG is not inherited across fork: Kamailio's children are
  its main process's job). `pool_worker_init` does the same for a process pool's workers.
  The parent that counts is the *thread* that forked: children are started from the main
  thread. If the harness died between fork and prctl, the child signals itself at once.
- **Signals during an event loop.** `run_stoppable` is `anyio.run` for the targets' drivers
  (the sim's virtual-time loop too): a SIGTERM or SIGINT cancels the driver (so its
  `finally` blocks and context managers stop what it started), and once the loop has
  unwound the same signal is raised again for whatever handler was there before (the CLI's
  `StopSignals`, or the default action). A handler that raised straight into a running
  trio or asyncio loop would abandon it, so none may from the loop's start to its end.
- **Stopping.** `terminate` (SIGTERM, bounded wait, SIGKILL, bounded wait). `stop_all`
  does that to every child `spawn` started that still runs: the harness's last step when a
  signal stops it, whatever the event loop that was running left undone.

What this module must not do: wait without a bound, or signal anything it was not handed.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import signal
import subprocess
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio

T = TypeVar("T")
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)

PR_SET_PDEATHSIG = 1  # <linux/prctl.h>

try:
    _prctl: Any = ctypes.CDLL(None, use_errno=True).prctl  # resolved before any fork
except (OSError, AttributeError):  # not Linux: children outlive a killed harness
    _prctl = None

_started: dict[int, subprocess.Popen] = {}  # PID -> every child `spawn` started
_lock = threading.Lock()


class Stopped(KeyboardInterrupt):
    """A signal (`signum`: SIGTERM or SIGINT) asked the harness to stop."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


def run_stoppable(
    func: Callable[..., Awaitable[T]],
    *args: Any,
    backend: str = "asyncio",
    backend_options: dict[str, Any] | None = None,
) -> T:
    """`anyio.run(func, *args)`, cancelled by SIGTERM or SIGINT, which is raised again for
    the previous handler once the loop has unwound (see the module docstring). A signal the
    process ignores (a pool worker's SIGINT) stays ignored.

    No Python handler may raise while the loop runs: one that raised between two tasks'
    steps would abandon the loop with its tasks still suspended. So the handler only
    records the signal and, once the loop runs, asks it (the one call each loop allows from
    a signal handler) to cancel `func`; a signal recorded before that cancels it at once.
    Nothing is cancelled on the way to a normal return: a cancellation's exception and
    traceback make a reference cycle through the frames below, which would hold all that
    `func`'s callers hold (a sim run's whole model) for the cyclic collector."""
    watched = [sig for sig in STOP_SIGNALS if signal.getsignal(sig) is not signal.SIG_IGN]
    if threading.current_thread() is not threading.main_thread() or not watched:
        return anyio.run(func, *args, backend=backend, backend_options=backend_options)
    caught: list[int] = []
    returned: list[T] = []
    stop_soon: list[Callable[[], object]] = []  # while the loop runs: cancel `func` from it

    async def main() -> None:
        with anyio.CancelScope() as scope:
            stop_soon.append(_from_a_handler(backend, scope.cancel))
            try:
                if caught:
                    scope.cancel()
                returned.append(await func(*args))
            finally:
                stop_soon.clear()

    def record(signum: int, frame: object) -> None:
        caught.append(signum)
        for stop in stop_soon:
            stop()

    previous = {sig: signal.signal(sig, record) for sig in watched}
    try:
        anyio.run(main, backend=backend, backend_options=backend_options)
    finally:
        for sig, handler in previous.items():  # asyncio leaves SIG_DFL behind
            if handler is not None:
                signal.signal(sig, handler)
        if caught:
            signal.raise_signal(caught[0])  # the previous handler runs now
    if returned:
        return returned.pop()
    raise Stopped(caught[0])  # cancelled, and the previous handler did not raise


def _from_a_handler(backend: str, callback: Callable[[], object]) -> Callable[[], object]:
    """A function a signal handler may call to have the running loop call `callback`:
    trio's token (`run_sync_soon` is signal-safe) or asyncio's thread-safe call."""
    if backend == "trio":
        import trio

        token = trio.lowlevel.current_trio_token()
        return lambda: token.run_sync_soon(callback, idempotent=True)
    loop = asyncio.get_running_loop()
    return lambda: loop.call_soon_threadsafe(callback)


def die_with_parent(parent: int, sig: int = signal.SIGKILL) -> None:
    """Ask the kernel to send `sig` to this process when its parent (PID `parent`) dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
    if os.getppid() != parent:  # the parent died before prctl took effect
        os.kill(os.getpid(), sig)


def _preexec(sig: int) -> Callable[[], None]:
    harness = os.getpid()

    def preexec() -> None:  # in the forked child, before exec: no allocation-heavy work
        if _prctl is not None:
            _prctl(PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        if os.getppid() != harness:
            os.kill(os.getpid(), sig)

    return preexec


def spawn(
    command: list[str], *, death_signal: int = signal.SIGKILL, **popen: Any
) -> subprocess.Popen:
    """`subprocess.Popen(command, **popen)` for a child that gets `death_signal` when the
    harness dies, recorded for `stop_all`."""
    if threading.current_thread() is not threading.main_thread():
        # PDEATHSIG follows the forking thread: a worker thread's exit would kill the child
        raise RuntimeError("children are started from the main thread")
    process = subprocess.Popen(command, preexec_fn=_preexec(death_signal), **popen)
    with _lock:
        for pid in [pid for pid, p in _started.items() if p.returncode is not None]:
            del _started[pid]
        _started[process.pid] = process
    return process


def running() -> list[int]:
    """PIDs of children `spawn` started that have not been reaped."""
    with _lock:
        return [pid for pid, p in _started.items() if p.poll() is None]


def stop_all(timeout: float = 5.0) -> None:
    """`terminate` every child `spawn` started that still runs (SIGTERM to all first)."""
    with _lock:
        live = [p for p in _started.values() if p.poll() is None]
    for process in live:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    for process in live:
        terminate(process, timeout)


def pool_worker_init(harness: int) -> None:
    """`initializer` of a process pool (`initargs=(os.getpid(),)`): the worker dies with the
    harness (SIGKILL), leaves a terminal's ^C to the harness (which stops the pool) and
    takes SIGTERM's default action."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent(harness, signal.SIGKILL)


def terminate(process: subprocess.Popen, timeout: float) -> int | None:
    """SIGTERM (the child writes its files and exits), a bounded wait, then SIGKILL and
    another bounded wait; the exit status (None if it outlived even that)."""
    if process.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout)
    return process.returncode
