"""`StopSignals` in-process: what a signal does wherever it lands in the harness's own code."""

from __future__ import annotations

import gc
import signal
import time

import anyio
import pytest

from harness.cli.stopping import StopSignals
from harness.targets.children import Stopped, run_stoppable


class _SignalledWhileCollected:
    """Takes a SIGINT inside its finalizer, as a `Popen.__del__` can during a collection."""

    def __del__(self) -> None:
        signal.raise_signal(signal.SIGINT)


def test_a_stop_signal_inside_a_finalizer_is_raised_again_outside_it(capsys) -> None:
    with StopSignals() as stop, pytest.raises(Stopped):
        _SignalledWhileCollected()  # collected at once: the signal lands in __del__
        time.sleep(5)  # ... and `Stopped` comes out here, not lost with a traceback
    assert stop.signum == signal.SIGINT
    assert "Traceback" not in capsys.readouterr().err


def test_signals_and_hooks_are_restored_after_the_command() -> None:
    import sys

    hook = sys.unraisablehook
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM, signal.SIGALRM)}
    with StopSignals():
        assert signal.getsignal(signal.SIGINT) is not handlers[signal.SIGINT]
    assert sys.unraisablehook is hook
    assert {s: signal.getsignal(s) for s in handlers} == handlers


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_a_signal_before_the_loop_listens_cancels_the_driver_at_its_next_await(
    backend: str, capsys
) -> None:
    """The loop's signal receiver opens only once the loop runs: a signal that lands
    earlier (here, in the driver's first step) must not raise into the loop, which would
    abandon its tasks; the driver is cancelled, cleans up, and `Stopped` comes after."""
    steps: list[str] = []

    async def driver() -> None:
        signal.raise_signal(signal.SIGINT)
        steps.append("first step ran to its end")
        try:
            await anyio.sleep(5)
        except anyio.get_cancelled_exc_class():
            steps.append("cancelled")
            raise

    with StopSignals() as stop, pytest.raises(Stopped):
        run_stoppable(driver, backend=backend)
    gc.collect()
    assert steps == ["first step ran to its end", "cancelled"]
    assert stop.signum == signal.SIGINT
    assert "Traceback" not in capsys.readouterr().err


def test_a_signal_the_process_ignores_does_not_stop_the_driver() -> None:
    """A process-pool worker ignores SIGINT (the harness stops the pool): its runs go on."""
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)

    async def driver() -> str:
        signal.raise_signal(signal.SIGINT)
        await anyio.sleep(0.01)
        return "finished"

    try:
        assert run_stoppable(driver, backend="trio") == "finished"
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_a_driver_stopped_under_a_handler_that_does_not_raise_raises_stopped() -> None:
    """The driver was cancelled, so it has no result to return: `Stopped` says why."""
    seen: list[int] = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))

    async def driver() -> str:
        signal.raise_signal(signal.SIGTERM)
        await anyio.sleep(5)
        return "finished"

    try:
        with pytest.raises(Stopped):
            run_stoppable(driver, backend="asyncio")
        assert seen == [signal.SIGTERM]
    finally:
        signal.signal(signal.SIGTERM, previous)


def test_a_driver_that_finishes_returns_its_result() -> None:
    async def driver(value: int) -> int:
        await anyio.sleep(0)
        return value * 2

    assert run_stoppable(driver, 21, backend="trio") == 42
