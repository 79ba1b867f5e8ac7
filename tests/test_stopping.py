"""`StopSignals` in-process: what a signal does wherever it lands in the harness's own code."""

from __future__ import annotations

import signal
import time

import pytest

from harness.cli.stopping import StopSignals
from harness.targets.children import Stopped


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
