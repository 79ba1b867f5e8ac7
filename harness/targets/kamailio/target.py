"""The kamailio target: real Kamailio 5.6 running the strategy's generated kamailio.cfg.

The harness writes `strategy.kamailio_config(settings, trace=True)` (listening on a free
127.0.0.1 UDP port, `children` and `fr_timer` from the settings) into a fresh temporary
directory and starts Kamailio in the foreground:

    kamailio -DD -E -T -f CFG -P PIDFILE -Y RUNDIR -w WORKDIR
             --loadmodule=ctl.so --modparam=ctl:binrpc:s:unix:RUNDIR/ctl.sock

`-DD` keeps the creator in the foreground (its PID is the main PID, the parent of every
other Kamailio process); `-E` logs to stderr, captured to WORKDIR/kamailio.log; `-T`
disables TCP (the load is UDP, and the TCP main process would only add an idle process).
The ctl module and its socket are added on the command line, not in the cfg, so the cfg is
the one `deferbench kamailio-cfg` prints, plus the trace lines.

Readiness: an OPTIONS with Max-Forwards 0 from a harness socket, repeated until a response
comes back (the script answers 483 to it: a SIP worker has run the routing script); a
bounded wait, with the log's last lines in the error if Kamailio exits or never answers.

Observation:
- **Delay.** With `trace=True` the cfg logs `DEFERBENCH suspend $TV(Sn) $ci $cs $pp` just
  before the deferral and `DEFERBENCH resume ...` as the continuation's first action
  (Kamailio's own wall clock, µs). Delays are paired per (Call-ID, CSeq): the first
  suspend and the first resume after it; every further resume counts as a duplicate.
- **Timer phases.** `mqueue-rtimer`'s traced cfg also logs `DEFERBENCH timer-pass $TV(Sn)
  $pp` for passes 101-120 of each rtimer process (`Trace.timer_passes`), from which
  `deferbench calibrate` fits fork gaps, ε and its drift.
- **Roles.** `kamcmd -s unix:RUNDIR/ctl.sock core.psx` once Kamailio answers: PID and
  description of every process ("udp receiver child=0 ...", "RTIMER EXEC child=3 timer=dq",
  "Async Task Worker - default", ...), mapped to the roles the sim uses (`role_of`). The
  resume line's PID names the role that ran the continuation. Chosen over process titles
  (5.6 does not set them: every /proc/PID/cmdline is the creator's) and over log prefixes
  (no pseudo-variable holds the process description).
- **CPU.** Every Kamailio process (the main PID and its children, from the psx table) is
  sampled at the start and end of the idle window and of the load window. Busy time is
  `/proc/PID/schedstat` run time (ns) where the kernel provides it, else `/proc/PID/stat`
  utime+stime (10 ms ticks: too coarse for an idle window of a second, hence the
  preference). **Wake-ups** are not counted by the kernel per process: the proxy used is
  voluntary + nonvoluntary context switches from `/proc/PID/status` (a process that
  wakes from a sleep and blocks again switches at least once). Shares are of ONE core
  (`cores=1`), as the reference quotes them ("% of a core"). The ctl handler shows up as
  role `ctl`; it is idle except for the one psx query, made before the idle window.
- **e2e and the ledger** come from the load driver, and `harness.measure.entry` turns
  everything into the result entry. Two drivers (`driver=`), the same Kamailio start and
  stop, idle window, three CPU snapshots (idle start, load start, load end) and trace:
  - `python` (default): the harness's own UAC and UAS, exactly as for the live target (the
    driving loop is the live target's public `drive`, with `KamailioProcess` in the place of the
    serve process). Any arrival; the strict UAS answers a re-INVITE that overtook the
    previous ACK with 491. Tops out near 1,000 re-INVITEs/s on two cores.
  - `sipp`: one SIPp UAC and one SIPp UAS (`harness.targets.kamailio.sipp`), for 2,000+
    re-INVITEs/s. The
    load maps to `-r rate` calls/s, `-m` = the calls of the constant schedule within
    `duration`, `reinvites` re-INVITE blocks, `gap` = the pause after each ACK (whole
    ms). Only `arrival=constant`: anything SIPp cannot honour is a one-line error before
    Kamailio starts. Kamailio gets `-m 1024` MB of shared memory with this driver (at
    2,000/s the default 64 MB runs out: tm keeps each answered INVITE transaction for
    its 5 s wait timer). The ledger has one transaction per re-INVITE the UAC sent
    (Call-ID, CSeq): resumed when its 200 came back; for a call SIPp aborted, the
    unanswered re-INVITE's outcome follows SIPp's error log for that call (the final
    status it aborted on: 408 -> timeout_408, 491 -> race_491, 5xx -> error_5xx, else
    other; a UDP retransmission timeout -> timeout_408, as the harness UAC counts Timer
    B); no final status for it in the log (a 1xx or a request was the unexpected message,
    or the run ended with it unanswered) -> lost. Kamailio's resume lines are
    reported as for the python driver (two or more: duplicated). `reordered` is never
    reported: SIPp does not tell the ledger what reached its UAS. The SIPp UAS does NOT
    play the strict-491 glare of the Python `Uas`: it is reorder-tolerant (Kamailio
    relays an ACK and the re-INVITE sent 1 ms after it in different workers) and answers
    every re-INVITE 200; requests that overtook an ACK and ACKs that never came are
    counted (`sipp uas: ...`). e2e is SIPp's response time of each re-INVITE: its send to
    its final response, gettimeofday microseconds logged by the scenario (SIPp's own
    rtd figures count whole milliseconds), from the actual send, not an intended one.
    The entry's counters say which driver ran (`driver: python|sipp` = 1).

Kamailio is stopped by its PID (SIGTERM, bounded wait, SIGKILL), then any of its recorded
processes still alive (same PID and start time) is killed by PID too — also when the run is
interrupted. Nothing is killed by name.

What this module must not do: compute a percentile, an outcome or a CPU share itself, or
leave a Kamailio process, socket or directory behind.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar

import anyio

from core.events import Address
from core.runtime.server import ServerSettings
from harness.load.spec import LoadSpec
from harness.measure.entry import CpuWindow, DeferralRecord, UacFigures, strategy_entry
from harness.measure.ledger import Ledger
from harness.targets.base import TargetError, TargetOptions, refuse
from harness.targets.children import terminate
from harness.targets.kamailio import sipp
from harness.targets.live.target import DRAIN_GRACE, LiveRun, drive
from strategies import parse_spec
from strategies.base import Strategy
from strategies.inline import TRACE_MARK

TARGET = "kamailio"
READY_TIMEOUT = 15.0  # seconds for Kamailio to answer the OPTIONS ping
STOP_TIMEOUT = 5.0  # seconds for Kamailio to exit after SIGTERM before SIGKILL
IDLE_WINDOW = 1.0  # seconds of no traffic before the load: the idle CPU figure
DRIVERS = ("python", "sipp")  # who plays the UAC and UAS of the load
SIPP_SHM_MB = 1024  # Kamailio's shared memory with the sipp driver (default 64 MB)
_PING_EVERY = 0.1
_CLK_TCK = os.sysconf("SC_CLK_TCK")

_TRACE = re.compile(
    rf"{TRACE_MARK} (suspend|resume) (\d+)\.(\d+) (\S+) (\d+) (\d+)"
)  # $TV(Sn) is "seconds.microseconds"; $ci $cs $pp
_TIMER_PASS = re.compile(rf"{TRACE_MARK} timer-pass (\d+)\.(\d+) (\d+)")  # $TV(Sn) $pp


class KamailioTargetError(TargetError):
    """Kamailio could not be found, started or observed (one line, names the cause)."""


def kamailio_binary() -> str | None:
    """The kamailio executable: $DEFERBENCH_KAMAILIO, else `kamailio` on PATH or /usr/sbin."""
    return _binary("DEFERBENCH_KAMAILIO", "kamailio")


def kamcmd_binary() -> str | None:
    """kamcmd (same Debian package), to read the process table over the ctl socket."""
    return _binary("DEFERBENCH_KAMCMD", "kamcmd")


def _binary(env: str, name: str) -> str | None:
    chosen = os.environ.get(env)
    if chosen:
        return chosen
    found = shutil.which(name)
    if found:
        return found
    fallback = Path("/usr/sbin") / name
    return str(fallback) if fallback.exists() else None


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now (Kamailio binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


# ---------------------------------------------------------------------------- processes

_ROLES: tuple[tuple[str, str], ...] = (
    ("main process", "main"),
    ("udp receiver", "sip-worker"),
    ("slow timer", "slow-timer"),
    ("secondary timer", "timer"),
    ("timer", "timer"),
    ("RTIMER EXEC", "rtimer"),
    ("ASYNC MOD MS TIMER", "async-ms-timer"),
    ("ASYNC MOD TIMER", "async-timer"),
    ("Async Task Worker", "async-task-worker"),
    ("ctl handler", "ctl"),
    ("tcp", "tcp"),
)
"""Kamailio process descriptions (`core.psx` DSC, by prefix) -> the roles the sim uses."""


def role_of(description: str) -> str:
    """The role of a Kamailio process from its `core.psx` description ("other" if unknown)."""
    for prefix, role in _ROLES:
        if description.startswith(prefix):
            return role
    return "other"


def parse_psx(text: str) -> dict[int, str]:
    """kamcmd's `core.psx` output -> {PID: description}."""
    table: dict[int, str] = {}
    pid: int | None = None
    for line in text.splitlines():
        key, _, value = line.strip().partition(":")
        if key == "PID":
            pid = int(value.strip())
        elif key == "DSC" and pid is not None:
            table[pid] = value.strip()
            pid = None
    return table


@dataclass(frozen=True, slots=True)
class ProcSample:
    """One process at one instant: CPU seconds so far and context switches so far."""

    cpu: float
    switches: int


def _start_time(pid: int) -> int | None:
    """Field 22 of /proc/PID/stat: tells a PID from a recycled one."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(stat[stat.rindex(")") + 2 :].split()[19])


def sample_process(pid: int) -> ProcSample | None:
    """CPU (schedstat ns, else stat utime+stime) and context switches; None if gone."""
    try:
        cpu: float | None = None
        try:
            cpu = int(Path(f"/proc/{pid}/schedstat").read_text().split()[0]) / 1e9
        except (OSError, ValueError, IndexError):
            cpu = None
        if cpu is None:
            stat = Path(f"/proc/{pid}/stat").read_text()
            fields = stat[stat.rindex(")") + 2 :].split()
            cpu = (int(fields[11]) + int(fields[12])) / _CLK_TCK
        switches = 0
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(("voluntary_ctxt_switches:", "nonvoluntary_ctxt_switches:")):
                switches += int(line.split(":")[1])
    except (OSError, ValueError, IndexError):
        return None
    return ProcSample(cpu, switches)


def children_of(parent: int) -> list[int]:
    """PIDs whose parent is `parent` (a scan of /proc: works without ctl)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        if int(stat[stat.rindex(")") + 2 :].split()[1]) == parent:
            found.append(int(entry.name))
    return sorted(found)


@dataclass(frozen=True, slots=True)
class Snapshot:
    """Every Kamailio process sampled at one instant (monotonic seconds)."""

    t: float
    by_pid: dict[int, ProcSample]


class KamailioProcess:
    """Kamailio in the foreground, started, observed and stopped by PID."""

    def __init__(
        self,
        cfg: str,
        workdir: Path,
        *,
        address: Address,
        binary: str | None = None,
        shm_mb: int | None = None,
    ) -> None:
        binary = binary or kamailio_binary()
        if binary is None or not Path(binary).exists():
            raise KamailioTargetError(
                "kamailio not found: install the Debian package `kamailio` "
                "(or set DEFERBENCH_KAMAILIO to its path)"
            )
        self.address = address
        self.workdir = workdir
        self.rundir = workdir / "run"
        self.rundir.mkdir()
        self.cfg_path = workdir / "kamailio.cfg"
        self.cfg_path.write_text(cfg, encoding="utf-8")
        self.log_path = workdir / "kamailio.log"
        self.pid_path = self.rundir / "kamailio.pid"
        self.ctl = f"unix:{self.rundir / 'ctl.sock'}"
        command = [
            binary, "-DD", "-E", "-T",
            "-f", str(self.cfg_path),
            "-P", str(self.pid_path),
            "-Y", str(self.rundir),
            "-w", str(workdir),
            "--loadmodule=ctl.so",
            f"--modparam=ctl:binrpc:s:{self.ctl}",
            *(["-m", str(shm_mb)] if shm_mb else []),
        ]  # fmt: skip
        self._log = open(self.log_path, "wb")  # noqa: SIM115 - closed in stop()
        try:
            self.process = subprocess.Popen(
                command,
                stdin=subprocess.DEVNULL,
                stdout=self._log,
                stderr=subprocess.STDOUT,
                cwd=str(workdir),
                start_new_session=True,  # a terminal's ^C reaches the harness, which stops it
            )
        except OSError as exc:
            self._log.close()
            raise KamailioTargetError(f"cannot start {binary}: {exc}") from None
        self.pid = self.process.pid
        self.table: dict[int, str] = {}  # PID -> core.psx description
        self._started: dict[int, int | None] = {}  # PID -> start time, for the final sweep
        self.snapshots: list[Snapshot] = []

    # ------------------------------------------------------------------ observation

    def log_text(self) -> str:
        try:
            return self.log_path.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _tail(self, lines: int = 3) -> str:
        tail = [line.strip() for line in self.log_text().strip().splitlines()[-lines:]]
        return " | ".join(tail) or "no output"

    async def wait_ready(self, timeout: float = READY_TIMEOUT) -> Address:
        """Ping with OPTIONS until Kamailio answers; then read its process table."""
        deadline = time.monotonic() + timeout
        call_id = f"deferbench-ping-{uuid.uuid4().hex}"
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as ping:
            ping.bind(("127.0.0.1", 0))
            ping.setblocking(False)
            request = _options(self.address, ping.getsockname(), call_id)
            while True:
                if self.process.poll() is not None:
                    raise KamailioTargetError(
                        f"kamailio exited with status {self.process.returncode} before "
                        f"answering: {self._tail()}"
                    )
                if time.monotonic() > deadline:
                    raise KamailioTargetError(
                        f"kamailio did not answer an OPTIONS ping on "
                        f"{self.address[0]}:{self.address[1]} within {timeout:g}s: {self._tail()}"
                    )
                ping.sendto(request, self.address)
                await anyio.sleep(_PING_EVERY)
                if _answered(ping, call_id):
                    break
        self.table = self.process_table()
        self._started = {pid: _start_time(pid) for pid in self.table}
        return self.address

    def process_table(self) -> dict[int, str]:
        """{PID: description} over ctl; without kamcmd, the main PID and its children."""
        kamcmd = kamcmd_binary()
        if kamcmd is not None:
            try:
                out = subprocess.run(
                    [kamcmd, "-s", self.ctl, "core.psx"],
                    capture_output=True,
                    text=True,
                    timeout=10,
                    check=False,
                )
                table = parse_psx(out.stdout)
                if self.pid in table:
                    return table
            except (OSError, subprocess.TimeoutExpired, ValueError):
                pass
        return {pid: "unknown" for pid in [self.pid, *children_of(self.pid)]}

    async def snapshot(self) -> None:
        """Sample every Kamailio process (the live target's `snapshot` hook)."""
        if self.process.poll() is not None:
            raise KamailioTargetError(
                f"kamailio exited with status {self.process.returncode}: {self._tail()}"
            )
        t = time.monotonic()
        samples = {pid: s for pid in self.table if (s := sample_process(pid)) is not None}
        self.snapshots.append(Snapshot(t, samples))

    def window(self, first: int, last: int) -> CpuWindow:
        """Busy seconds and context switches by role between two snapshots."""
        a, b = self.snapshots[first], self.snapshots[last]
        busy: Counter[str] = Counter()
        wakeups: Counter[str] = Counter()
        for pid, end in b.by_pid.items():
            start = a.by_pid.get(pid)
            if start is None:
                continue
            role = role_of(self.table.get(pid, ""))
            busy[role] += max(0.0, end.cpu - start.cpu)
            wakeups[role] += max(0, end.switches - start.switches)
        return CpuWindow(max(b.t - a.t, 1e-9), 1, dict(busy), dict(wakeups))

    # ------------------------------------------------------------------ stopping

    def alive(self) -> list[int]:
        """Recorded Kamailio PIDs (main included) still running as the same process."""
        pids = {self.pid: self._started.get(self.pid), **self._started}
        left = []
        for pid, started in pids.items():
            now = _start_time(pid)
            if now is None or (started is not None and now != started):
                continue
            if pid == self.pid and self.process.poll() is not None:
                continue  # reaped (a zombie until then)
            left.append(pid)
        return left

    def stop(self, timeout: float = STOP_TIMEOUT) -> int | None:
        """SIGTERM the main PID, bounded wait, SIGKILL; then kill any straggler by PID."""
        if not self._started and self.process.poll() is None:  # stopped before it answered
            self._started = {pid: _start_time(pid) for pid in children_of(self.pid)}
        try:
            terminate(self.process, timeout)
            deadline = time.monotonic() + timeout
            while (left := self.alive()) and time.monotonic() < deadline:
                time.sleep(0.02)  # children exit after the main process
            for pid in left:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        finally:
            self._log.close()
        return self.process.returncode


def _options(target: Address, source: Address, call_id: str) -> bytes:
    """An OPTIONS the script answers itself (483, Max-Forwards 0): proof a worker runs it."""
    host, port = target
    me = f"{source[0]}:{source[1]}"
    return (
        f"OPTIONS sip:ping@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {me};branch=z9hG4bK-{call_id}\r\n"
        "Max-Forwards: 0\r\n"
        f"From: <sip:deferbench@{me}>;tag=ping\r\n"
        f"To: <sip:ping@{host}:{port}>\r\n"
        f"Call-ID: {call_id}\r\n"
        "CSeq: 1 OPTIONS\r\n"
        "Content-Length: 0\r\n\r\n"
    ).encode()


def _answered(ping: socket.socket, call_id: str) -> bool:
    while True:
        try:
            data = ping.recv(65_536)
        except (BlockingIOError, ConnectionRefusedError):
            return False
        if data.startswith(b"SIP/2.0 ") and call_id.encode() in data:
            return True


# ---------------------------------------------------------------------------- the log


@dataclass
class Trace:
    """The DEFERBENCH lines of one run, paired per (Call-ID, CSeq)."""

    records: list[DeferralRecord]
    counters: dict[str, int]
    timer_passes: dict[int, list[float]] = field(default_factory=dict)  # PID -> pass times


def parse_timer_passes(log: str) -> dict[int, list[float]]:
    """`timer-pass` lines (a strategy's first passes of each timer process) -> PID -> times.

    Seconds since the first such line: only differences mean anything (phases, periods).
    """
    passes: dict[int, list[float]] = {}
    base: int | None = None
    for sec, usec, pid in _TIMER_PASS.findall(log):
        if base is None:
            base = int(sec)
        passes.setdefault(int(pid), []).append((int(sec) - base) + int(usec) / 1e6)
    return passes


def parse_trace(log: str, role_by_pid: dict[int, str]) -> Trace:
    """Suspend/resume lines -> one `DeferralRecord` per (Call-ID, CSeq) that was suspended.

    Times are Kamailio's wall clock in seconds since the first traced second. The first
    suspend is the suspension; the first resume at or after it gives the delay and
    the role that resumed it (by PID); every resume is counted (two or more: duplicated).
    A second suspend of the same key (a retransmission suspended again) is counted.
    """
    suspends: dict[tuple[str, int], float] = {}
    resumes: dict[tuple[str, int], list[tuple[float, int]]] = {}
    counters: Counter[str] = Counter()
    base: int | None = None  # whole seconds of the first line: keeps µs exact in a float
    for match in _TRACE.finditer(log):
        event, sec, usec, call_id, cseq, pid = match.groups()
        if base is None:
            base = int(sec)
        when = (int(sec) - base) + int(usec) / 1e6
        key = (call_id, int(cseq))
        if event == "suspend":
            counters["trace: suspends"] += 1
            if key in suspends:
                counters["trace: suspended again"] += 1
            else:
                suspends[key] = when
        else:
            counters["trace: resumes"] += 1
            resumes.setdefault(key, []).append((when, int(pid)))
    records = []
    for key, suspended in suspends.items():
        seen = sorted(resumes.pop(key, []))
        first = next(((t, pid) for t, pid in seen if t >= suspended), None)
        records.append(
            DeferralRecord(
                call_id=key[0],
                cseq=key[1],
                suspended_at=suspended,
                resumed_at=first[0] if first else None,
                resumed_by=role_by_pid.get(first[1], "unknown") if first else "",
                resumes=len(seen),
                stale_continues=0,  # Kamailio logs no trace line for a continue that misses
                outcome="resumed" if first else "pending",
            )
        )
    counters["trace: resumes without suspend"] = sum(len(v) for v in resumes.values())
    for level in ("ERROR", "WARNING", "CRITICAL", "ALERT"):
        counters[f"log: {level} lines"] = len(re.findall(rf"\) {level}:", log))
    return Trace(records, dict(counters), parse_timer_passes(log))


# ---------------------------------------------------------------------------- the run


@dataclass
class KamailioRun:
    """One run: the result entry plus what produced it (for tests)."""

    result: dict[str, Any]
    ledger: Ledger
    trace: Trace
    log: str
    cfg: str
    cfg_path: str  # where it was written (its directory is gone after the run)
    main_pid: int
    pids: dict[int, str] = field(default_factory=dict)  # PID -> core.psx description
    calls_planned: int = 0
    driver: str = "python"
    sipp: sipp.SippFigures | None = None  # what SIPp measured (sipp driver)


@dataclass(frozen=True, slots=True)
class KamailioTarget:
    """Real Kamailio as a `harness.targets.Target`, with the load played by `driver`:
    "python" (the harness's UAC/UAS) or "sipp" (see the module docstring)."""

    driver: str = "python"
    idle_window: float = IDLE_WINDOW
    name: ClassVar[str] = "kamailio"
    real_clock: ClassVar[bool] = True

    @classmethod
    def from_options(cls, options: TargetOptions) -> KamailioTarget:
        refuse("kamailio", options, "driver")
        driver = options.driver or "python"
        if driver not in DRIVERS:
            raise KamailioTargetError(f"driver {driver!r}: use one of {', '.join(DRIVERS)}")
        return cls(driver)

    def check(self, load: LoadSpec, seed: int) -> None:
        """SIPp installed and able to play `load`, when it is the driver."""
        if self.driver != "sipp":
            return
        if sipp.sipp_binary() is None:
            raise KamailioTargetError(
                "--driver sipp: sipp not found: install the Debian package sip-tester "
                "(or set DEFERBENCH_SIPP)"
            )
        try:
            sipp.plan_for(load, seed, drain=0.0)
        except sipp.SippError as exc:
            raise KamailioTargetError(f"--driver sipp: {exc}") from None

    def run(
        self, strategy: str, load: LoadSpec, seed: int, settings: ServerSettings | None = None
    ) -> dict[str, Any]:
        """Drive `load` through Kamailio running `strategy`'s cfg; a result-schema entry."""
        return kamailio_run(strategy, load, seed, settings, idle_window=self.idle_window,
                            driver=self.driver).result  # fmt: skip

    def facts(self) -> dict[str, Any]:
        return {"backend": None, "network": None, "costs": None}


def kamailio_run(
    strategy_spec: str,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings | None = None,
    *,
    idle_window: float = IDLE_WINDOW,
    driver: str = "python",
) -> KamailioRun:
    """`KamailioTarget.run`, keeping the ledger, the trace, the log and the PIDs for inspection."""
    strategy = parse_spec(strategy_spec)  # SpecError (one line) before anything starts
    settings = replace(settings or ServerSettings(), address=("127.0.0.1", free_udp_port()))
    plan = _sipp_plan(load, seed, settings) if driver == "sipp" else None  # before Kamailio
    if driver not in DRIVERS:
        raise KamailioTargetError(f"driver {driver!r}: use one of {', '.join(DRIVERS)}")
    cfg = strategy.kamailio_config(settings, trace=True)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="deferbench-kamailio-") as tmp:
        shm = SIPP_SHM_MB if plan is not None else None
        kamailio = KamailioProcess(cfg, Path(tmp), address=settings.address, shm_mb=shm)
        holder: list[LiveRun] = []
        try:
            if plan is None:
                anyio.run(drive, kamailio, strategy, load, seed, settings, idle_window, holder)
                driven: LiveRun | _SippDriven = holder[0]
            else:
                driven = anyio.run(
                    _drive_sipp, kamailio, plan, load.duration, idle_window, Path(tmp) / "sipp"
                )
        finally:
            kamailio.stop()
        log = kamailio.log_text()
    wall = time.perf_counter() - started
    roles = {pid: role_of(description) for pid, description in kamailio.table.items()}
    trace = parse_trace(log, roles)
    if isinstance(driven, LiveRun):
        ledger, calls, figures = driven.ledger, driven.calls_planned, None
    else:
        figures = driven.figures
        ledger, calls = sipp.ledger_of(figures, load.race_code), figures.calls
    run = KamailioRun(
        {},
        ledger,
        trace,
        log,
        cfg,
        str(kamailio.cfg_path),
        kamailio.pid,
        dict(kamailio.table),
        calls,
        driver,
        figures,
    )
    run.result = _result(run, driven, kamailio, strategy, load, seed, wall)
    return run


def _sipp_plan(load: LoadSpec, seed: int, settings: ServerSettings) -> sipp.SippPlan:
    """The SIPp plan of `load`, or a one-line error naming what SIPp cannot do."""
    if sipp.sipp_binary() is None:
        raise KamailioTargetError(
            "sipp not found: install the Debian package sip-tester (or set DEFERBENCH_SIPP)"
        )
    try:
        return sipp.plan_for(load, seed, drain=settings.fr_timer + DRAIN_GRACE)
    except sipp.SippError as exc:
        raise KamailioTargetError(f"driver sipp: {exc}") from None


@dataclass(frozen=True, slots=True)
class _SippDriven:
    figures: sipp.SippFigures
    load_start: float  # wall clock the UAC started (the clock of its send times)


async def _drive_sipp(
    kamailio: KamailioProcess,
    plan: sipp.SippPlan,
    duration: float,
    idle_window: float,
    workdir: Path,
) -> _SippDriven:
    """The python driver's sequence with SIPp as UAC and UAS: Kamailio answers, the UAS
    listens, idle window, load window of `duration` from the UAC's start, then the calls
    drain (bounded: the plan's timeout is duration + fr_timer + a grace, as for the
    python driver)."""
    proxy = await kamailio.wait_ready()

    async def load_starts() -> None:
        await kamailio.snapshot()  # idle window opens
        await anyio.sleep(idle_window)
        await kamailio.snapshot()  # load window opens

    try:
        pair = sipp.SippPair(workdir, proxy, plan)
        figures = await sipp.drive(
            pair,
            load_starts=load_starts,
            window=duration,
            window_ends=kamailio.snapshot,  # load window closes
        )
    except sipp.SippError as exc:
        raise KamailioTargetError(f"driver sipp: {exc}") from None
    assert pair.uac_started is not None
    return _SippDriven(figures, pair.uac_started)


def _result(
    run: KamailioRun,
    driven: LiveRun | _SippDriven,
    kamailio: KamailioProcess,
    strategy: Strategy,
    load: LoadSpec,
    seed: int,
    wall: float,
) -> dict[str, Any]:
    if len(kamailio.snapshots) < 3:
        raise KamailioTargetError(f"took {len(kamailio.snapshots)} of 3 CPU snapshots")
    processes = Counter(role_of(d) for d in kamailio.table.values())
    counters = {
        **run.trace.counters,
        **{f"processes: {role}": n for role, n in sorted(processes.items())},
        f"driver: {run.driver}": 1,
    }
    if isinstance(driven, LiveRun):
        uac: Any = driven.uac
        uas = driven.uas
        sources: tuple[tuple[str, Any], ...] = (
            ("uac", driven.uac.counters),
            ("uas", driven.uas.counters),
            ("harness", driven.counters),
        )
    else:
        figures = driven.figures
        uac = UacFigures(
            tuple(r.sent for r in figures.reinvites),
            tuple(r.response_time for r in figures.reinvites),
            figures.calls - figures.successful - figures.failed,
        )
        uas = None
        sources = tuple(figures.counters().items())
    return strategy_entry(
        strategy=strategy,
        target=TARGET,
        load=load,
        seed=seed,
        records=run.trace.records,
        ledger=run.ledger,
        uac=uac,
        uas=uas,
        window=kamailio.window(1, 2),
        idle=kamailio.window(0, 1),
        counters=counters,
        sources=sources,
        calls_planned=run.calls_planned,
        samples=[],
        wall=wall,
        speed_wall=None,
        load_start=driven.load_start,
    )
