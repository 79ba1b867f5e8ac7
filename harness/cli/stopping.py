"""SIGTERM and SIGINT during a command that runs targets: stop cleanly, in bounded time.

`StopSignals` turns the first SIGTERM or SIGINT into `Stopped` (a `KeyboardInterrupt`, so it
unwinds event loops, process pools and `finally` blocks as ^C does) and ignores any further
one while the command cleans up (the cleanup is bounded; children die with the harness
anyway, see `harness.targets.children`). The command then stops every child by PID, writes
what finished as an incomplete result and exits with `exit_status` (128 + the signal: 130
for SIGINT, 143 for SIGTERM).

Installing a Python handler for SIGINT also keeps asyncio's and trio's own from taking it
over (asyncio's cancels the main task, which a cancellation-tolerant loop can swallow). The
targets' event loops run under `harness.targets.children.run_stoppable`, which cancels
them cleanly on these signals and then hands the signal on to this handler.

A signal that lands while a finalizer runs (a `Popen.__del__` during garbage collection)
would raise `Stopped` where Python drops exceptions and prints a traceback instead; the
hook for such exceptions takes it back and a SIGALRM 10 ms later raises it again, outside.

It must not import `harness.cli` or heavy modules.
"""

from __future__ import annotations

import signal
import sys
import threading
from types import FrameType, TracebackType
from typing import Any

from harness.targets.children import STOP_SIGNALS, Stopped


class StopSignals:
    """Context manager: SIGTERM/SIGINT raise `Stopped` once; `signum` tells which came."""

    def __init__(self) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._previous_hook: Any = None
        self._lost: int | None = None  # a signal whose `Stopped` a finalizer swallowed

    def __enter__(self) -> StopSignals:
        if threading.current_thread() is threading.main_thread():
            for sig in STOP_SIGNALS:
                self._previous[sig] = signal.signal(sig, self._handle)
            self._previous[signal.SIGALRM] = signal.signal(signal.SIGALRM, self._redeliver)
            self._previous_hook, sys.unraisablehook = sys.unraisablehook, self._unraisable
        return self

    def __exit__(self, *exc: type[BaseException] | BaseException | TracebackType | None) -> None:
        if self._previous_hook is not None:
            signal.setitimer(signal.ITIMER_REAL, 0.0)
            sys.unraisablehook, self._previous_hook = self._previous_hook, None
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)
        self._previous.clear()

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.signum is not None:
            return  # already stopping: the cleanup is bounded, let it finish
        self.signum = signum
        raise Stopped(signum)

    def _unraisable(self, unraisable: Any) -> None:
        """`Stopped` raised inside a finalizer is lost there: raise it again soon, outside."""
        if isinstance(unraisable.exc_value, Stopped) and self.signum is not None:
            self._lost, self.signum = self.signum, None
            signal.setitimer(signal.ITIMER_REAL, 0.01)
            return
        self._previous_hook(unraisable)

    def _redeliver(self, signum: int, frame: FrameType | None) -> None:
        lost, self._lost = self._lost, None
        if lost is not None:
            self._handle(lost, frame)

    @property
    def name(self) -> str:
        return signal.Signals(self.signum).name if self.signum is not None else ""

    @property
    def exit_status(self) -> int:
        return 128 + (self.signum or signal.SIGINT)
