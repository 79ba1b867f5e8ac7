"""The running Kamailio: found, started in the foreground, observed through /proc, stopped.

`KamailioProcess` writes the cfg it is given into a working directory and starts:

    kamailio -DD -E -T -f CFG -P PIDFILE -Y RUNDIR -w WORKDIR
             --loadmodule=ctl.so --modparam=ctl:binrpc:s:unix:RUNDIR/ctl.sock

`-DD` keeps the creator in the foreground (its PID is the main PID, the parent of every
other Kamailio process); `-E` logs to stderr, captured to WORKDIR/kamailio.log; `-T`
disables TCP (the load is UDP, and the TCP main process would only add an idle process).
The ctl module and its socket are added on the command line, not in the cfg, so the cfg is
the one `deferbench kamailio-cfg` prints, plus the trace lines. `shm_mb` adds `-m`.

Readiness: an OPTIONS with Max-Forwards 0 from a harness socket, repeated until a response
comes back (the script answers 483 to it: a SIP worker has run the routing script); a
bounded wait, with the log's last lines in the error if Kamailio exits or never answers.

- **Roles.** `kamcmd -s unix:RUNDIR/ctl.sock core.psx` once Kamailio answers: PID and
  description of every process ("udp receiver child=0 ...", "RTIMER EXEC child=3 timer=dq",
  "Async Task Worker - default", ...), mapped to the roles the sim uses (`role_of`). The
  trace's resume line's PID names the role that ran the continuation. Chosen over process
  titles (5.6 does not set them: every /proc/PID/cmdline is the creator's) and over log
  prefixes (no pseudo-variable holds the process description).
- **CPU.** `snapshot` samples every Kamailio process (the main PID and its children, from
  the psx table); the run takes one at the start and end of the idle window and of the
  load window. Busy time is `/proc/PID/schedstat` run time (ns) where the kernel provides
  it, else `/proc/PID/stat` utime+stime (10 ms ticks: too coarse for an idle window of a
  second, hence the preference). **Wake-ups** are not counted by the kernel per process:
  the proxy used is voluntary + nonvoluntary context switches from `/proc/PID/status` (a
  process that wakes from a sleep and blocks again switches at least once). `window`
  gives shares of ONE core (`cores=1`), as the reference quotes them ("% of a core"). The
  ctl handler shows up as role `ctl`; it is idle except for the one psx query, made before
  the idle window. Each snapshot also reads the machine's CPU ticks from /proc/stat, so a
  window says how much of the time the hypervisor gave the virtual CPUs to someone else
  (steal): a run on a disturbed host is told apart from one on a quiet host.

Kamailio is stopped by its PID (SIGTERM, bounded wait, SIGKILL), then any of its recorded
processes still alive (same PID and start time) is killed by PID too — also when the run is
interrupted. Nothing is killed by name. If the harness dies without stopping it (kill -9),
the kernel sends Kamailio's main process SIGTERM (`harness.targets.children.spawn`), on
which it stops every process it forked and exits.

What this module must not do: talk to anything but 127.0.0.1; wait without a bound; kill a
process by name or one it did not start (a recycled PID is told apart by its start time);
compute a percentile, an outcome or a CPU share (it hands busy seconds and switches by
role to `harness.measure.entry`); know about strategies, loads or the trace lines.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import anyio

from core.events import Address
from harness.measure.entry import CpuWindow
from harness.targets.base import TargetError, host_ticks
from harness.targets.children import spawn, terminate

READY_TIMEOUT = 15.0  # seconds for Kamailio to answer the OPTIONS ping
STOP_TIMEOUT = 5.0  # seconds for Kamailio to exit after SIGTERM before SIGKILL
_PING_EVERY = 0.1
_CLK_TCK = os.sysconf("SC_CLK_TCK")


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
    host: tuple[int, int] | None = None  # `host_ticks` at the same instant


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
            self.process = spawn(
                command,
                # if the harness dies, Kamailio's main process stops its own children
                death_signal=signal.SIGTERM,
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
        self.snapshots.append(Snapshot(t, samples, host_ticks()))

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
        host = None
        if a.host is not None and b.host is not None:
            host = (b.host[0] - a.host[0], b.host[1] - a.host[1])
        return CpuWindow(max(b.t - a.t, 1e-9), 1, dict(busy), dict(wakeups), host)

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
