"""`deferbench run` stopped by SIGTERM, SIGINT or SIGKILL leaves no process it started.

Each test starts `python -m harness.cli run ...` in its own session, records every
descendant it sees (walking /proc by parent PID, with start times so a recycled PID is not
mistaken for one of them), signals the harness by PID, and asserts within a bound that none
of them is still running (a zombie is dead). For SIGTERM and SIGINT it also asserts the
exit status (143, 130) and, once something had finished, the incomplete result. Anything
left behind is killed by PID at the end, so a failing test does not leak either.
"""

from __future__ import annotations

import contextlib
import json
import os
import pty
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from harness import PROJECT_ROOT
from harness.measure.results import read_result

SURVIVAL_BOUND = 20.0  # seconds after the signal within which everything must be gone
START_BOUND = 60.0  # seconds for the children (or the first finished strategy) to show up

needs_kamailio = pytest.mark.skipif(
    shutil.which("kamailio") is None or shutil.which("sipp") is None,
    reason="kamailio and sipp not installed",
)


def _stat(pid: int) -> list[str] | None:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return [text[text.index("(") + 1 : text.rindex(")")], *text[text.rindex(")") + 2 :].split()]


def _descendants(root: int) -> dict[tuple[int, str], str]:
    """(PID, start time) -> command name of every live descendant of `root`."""
    children: dict[int, list[int]] = {}
    info: dict[int, list[str]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit() and (fields := _stat(int(entry))) is not None:
            info[int(entry)] = fields
            children.setdefault(int(fields[2]), []).append(int(entry))
    found: dict[tuple[int, str], str] = {}
    stack = [root]
    while stack:
        for child in children.get(stack.pop(), []):
            found[(child, info[child][20])] = info[child][0]
            stack.append(child)
    return found


def _alive(key: tuple[int, str]) -> bool:
    fields = _stat(key[0])
    return fields is not None and fields[20] == key[1] and fields[1] not in ("Z", "X")


class Harness:
    """One `deferbench run` in its own session, its output in files."""

    def __init__(self, tmp: Path, args: list[str], command: str = "run") -> None:
        self.out = tmp / "out"
        self.stdout_path = tmp / "stdout"
        plots = ["--no-plots"] if command == "run" else []
        command_line = [sys.executable, "-m", "harness.cli", command, *plots,
                        "--out", str(self.out), *args]  # fmt: skip
        env = {**os.environ, "PYTHONPATH": str(PROJECT_ROOT)}
        # stderr on a terminal: the progress bar (which says when a strategy finished) is
        # drawn only there
        self._terminal, child_side = pty.openpty()
        os.set_blocking(self._terminal, False)
        self._err = b""
        with open(self.stdout_path, "wb") as out:
            self.process = subprocess.Popen(
                command_line, stdout=out, stderr=child_side, stdin=subprocess.DEVNULL,
                cwd=PROJECT_ROOT, env=env, start_new_session=True,
            )  # fmt: skip
        os.close(child_side)
        self.seen: dict[tuple[int, str], str] = {}

    def watch(self, ready: Callable[[Harness], bool], bound: float = START_BOUND) -> None:
        """Record descendants until `ready(self)` (bounded)."""
        deadline = time.monotonic() + bound
        while True:
            self.seen.update(_descendants(self.process.pid))
            if ready(self):
                return
            if self.process.poll() is not None:
                pytest.fail(f"deferbench ended ({self.process.returncode}) early: {self.stderr()}")
            if time.monotonic() > deadline:
                pytest.fail(f"not ready within {bound:g}s; seen {sorted(self.seen.values())}")
            time.sleep(0.05)

    def names(self) -> list[str]:
        return [name for key, name in self.seen.items() if _alive(key)]

    def stderr(self) -> str:
        while True:
            try:
                chunk = os.read(self._terminal, 65536)
            except (BlockingIOError, OSError):  # nothing now, or the child side closed
                break
            if not chunk:
                break
            self._err += chunk
        return self._err.decode(errors="replace").replace("\r\n", "\n")

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace")

    def signal_and_wait(self, sig: int) -> tuple[int, list[str]]:
        """Signal the harness by PID; its exit status (-N when killed) and whatever of its
        descendants still ran `SURVIVAL_BOUND` seconds later."""
        self.seen.update(_descendants(self.process.pid))
        self.process.send_signal(sig)
        deadline = time.monotonic() + SURVIVAL_BOUND
        while (status := self.process.poll()) is None and time.monotonic() < deadline:
            self.stderr()  # keep the terminal drained: a full one would block the harness
            time.sleep(0.02)
        while (left := [k for k in self.seen if _alive(k)]) and time.monotonic() < deadline:
            time.sleep(0.05)
        survivors = [f"{self.seen[k]}({k[0]})" for k in left]
        if status is None:
            survivors.append(f"deferbench({self.process.pid})")
        return (-999 if status is None else status), survivors

    def cleanup(self) -> None:
        with contextlib.suppress(OSError):
            os.close(self._terminal)
        for key in self.seen:
            if _alive(key):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(key[0], signal.SIGKILL)
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait(10)


@pytest.fixture
def start(tmp_path: Path) -> Iterator[Callable[..., Harness]]:
    started: list[Harness] = []

    def run(args: list[str], command: str = "run") -> Harness:
        started.append(Harness(tmp_path, args, command))
        return started[-1]

    yield run
    for harness in started:
        harness.cleanup()


EXPECTED = {signal.SIGTERM: 143, signal.SIGINT: 130, signal.SIGKILL: -signal.SIGKILL}


def _finished(count: int, total: int) -> Callable[[Harness], bool]:
    """Ready once the progress line says `count` of `total` strategies have finished."""
    return lambda h: f"] {count}/{total} " in h.stderr()


def _check_stopped(h: Harness, sig: int, finished: list[str], missing: list[str]) -> None:
    status, survivors = h.signal_and_wait(sig)
    assert survivors == [], f"left running after {signal.Signals(sig).name}: {survivors}"
    assert status == EXPECTED[sig], h.stderr()
    if sig == signal.SIGKILL:
        return
    assert f"stopped by {signal.Signals(sig).name}" in h.stderr()
    assert "Traceback" not in h.stderr()
    result = read_result(h.out / "result.json")
    assert result.incomplete is not None
    assert result.incomplete.signal == signal.Signals(sig).name
    assert [s.strategy.split(":")[0] for s in result.strategies] == finished
    assert [m.split(":")[0] for m in result.incomplete.missing] == missing
    assert json.loads((h.out / "result.json").read_text())["incomplete"]["missing"]
    assert "incomplete: stopped by" in h.stdout()
    assert finished[0] in h.stdout()  # the comparison table of what finished


SIGNALS = [signal.SIGTERM, signal.SIGINT, signal.SIGKILL]
IDS = ["TERM", "INT", "KILL"]

# ------------------------------------------------------------------------- sim, pool


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_sim_with_a_pool(start: Callable[[list[str]], Harness], sig: int) -> None:
    # inline finishes in a few seconds; the 64-timer mqueue-rtimer takes far longer
    h = start([
        "--jobs", "2", "--strategy", "inline",
        "--strategy", "mqueue-rtimer:timers=64,interval=1ms",
        "--load", "reinvite:rate=20/s,duration=60s",
    ])  # fmt: skip
    h.watch(lambda h: len(h.names()) >= 2 and _finished(1, 2)(h))
    _check_stopped(h, sig, ["inline"], ["mqueue-rtimer"])


# ------------------------------------------------------------------------- live

LIVE = ["--target", "live", "--strategy", "inline", "--strategy", "async-sleep:ms=10",
        "--load", "reinvite:rate=20/s,duration=6s", "--fr-timer", "2s"]  # fmt: skip


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_live(start: Callable[[list[str]], Harness], sig: int) -> None:
    h = start(LIVE)
    if sig == signal.SIGKILL:
        h.watch(lambda h: "python" in h.names())  # serve runs
        _check_stopped(h, sig, [], [])
        return
    h.watch(lambda h: _finished(1, 2)(h) and "python" in h.names())  # the second serve
    _check_stopped(h, sig, ["inline"], ["async-sleep"])


# ------------------------------------------------------------------------- kamailio

KAMAILIO = ["--target", "kamailio", "--strategy", "inline", "--strategy", "async-sleep:ms=10",
            "--fr-timer", "2s", "--children", "4"]  # fmt: skip
SIPP = [*KAMAILIO, "--driver", "sipp",
        "--load", "reinvite:rate=20/s,duration=6s,arrival=constant"]  # fmt: skip
PYTHON_DRIVER = [*KAMAILIO, "--driver", "python", "--load", "reinvite:rate=10/s,duration=6s"]


def _kamailio_running(h: Harness, sipp: bool) -> bool:
    names = h.names()
    return names.count("kamailio") >= 4 and (not sipp or names.count("sipp") >= 2)


@needs_kamailio
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_kamailio_with_sipp(start: Callable[[list[str]], Harness], sig: int) -> None:
    h = start(SIPP)
    if sig == signal.SIGKILL:
        h.watch(lambda h: _kamailio_running(h, sipp=True))
        _check_stopped(h, sig, [], [])
        return
    h.watch(lambda h: _finished(1, 2)(h) and _kamailio_running(h, sipp=True))
    _check_stopped(h, sig, ["inline"], ["async-sleep"])


@needs_kamailio
@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_kamailio_with_the_python_driver(start: Callable[[list[str]], Harness], sig: int) -> None:
    h = start(PYTHON_DRIVER)
    if sig == signal.SIGKILL:
        h.watch(lambda h: _kamailio_running(h, sipp=False))
        _check_stopped(h, sig, [], [])
        return
    h.watch(lambda h: _finished(1, 2)(h) and _kamailio_running(h, sipp=False))
    _check_stopped(h, sig, ["inline"], ["async-sleep"])


def test_nothing_finished_writes_no_result(start: Callable[[list[str]], Harness]) -> None:
    h = start(["--jobs", "2", "--strategy", "mqueue-rtimer:timers=64,interval=1ms",
               "--load", "reinvite:rate=20/s,duration=60s"])  # fmt: skip
    h.watch(lambda h: len(h.names()) >= 1)
    status, survivors = h.signal_and_wait(signal.SIGTERM)
    assert (status, survivors) == (143, [])
    assert not (h.out / "result.json").exists()
    assert "stopped by SIGTERM" in h.stderr()


@pytest.mark.parametrize("sig", SIGNALS, ids=IDS)
def test_sweep_with_a_pool(start: Callable[..., Harness], sig: int) -> None:
    h = start(["--rates", "100,200", "--strategy", "mqueue-rtimer:timers=64,interval=1ms",
               "--load", "reinvite:rate=10/s,duration=60s", "--jobs", "2"], "sweep")  # fmt: skip
    h.watch(lambda h: len(h.names()) >= 2)
    status, survivors = h.signal_and_wait(sig)
    assert survivors == []
    assert status == EXPECTED[sig], h.stderr()
