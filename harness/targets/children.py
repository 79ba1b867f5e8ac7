"""Stopping the processes the harness starts (serve, Kamailio, SIPp): by PID, never by name.

What this module must not do: wait without a bound, or signal anything it was not handed.
"""

from __future__ import annotations

import contextlib
import signal
import subprocess


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
