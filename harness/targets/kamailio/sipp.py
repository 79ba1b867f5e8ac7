"""SIPp as the load driver: scenarios, one UAC+UAS pair run by PID, and what it measured.

SIPp is C: one SIPp UAC and one SIPp UAS carry 2,000+ re-INVITEs/s on two cores where the
harness's Python UAC/UAS stop near 1,000. The flow is the harness's own (`harness.load.endpoints`):
INVITE/200/ACK, `reinvites` x [gap] re-INVITE/200/ACK, [gap] BYE/200, one dialog per call,
the UAC sending everything to the proxy (`-rsa`) and following the Record-Route.

Scenarios are generated from the message templates of the shipped
`harness/sipp/reinvite_{uac,uas}.xml` (the SIP text lives there only):

- UAC (`uac_scenario`): just before sending re-INVITE k it logs `sent CALL-ID k SEC USEC`,
  on its 200 `answered CALL-ID k SEC USEC` (`-trace_logs`, `gettimeofday`). A re-INVITE's
  response time is answered - sent at microsecond resolution; SIPp's own response-time
  figures (`rtd`, kept for its statistics) count whole milliseconds of its 1 ms clock
  tick, too coarse for a proxy that answers in 0.3 ms. 100 Trying is optional everywhere
  (`optional="global"`): Kamailio's 100, sent by the worker that took the INVITE, can
  arrive after the 200 relayed by another worker.
- UAS (`uas_scenario`), reorder-tolerant: Kamailio relays the ACK of re-INVITE n and
  re-INVITE n+1 (or the BYE) sent `gap` later in different SIP worker processes, so they
  can arrive in either order. Every ACK is `optional="global"`, never blocking the next
  request; after the BYE the UAS waits up to `UAS_LINGER_MS` for the ACKs still missing
  and fails the call if one never comes. It does NOT play the strict harness UAS's glare:
  a re-INVITE that overtook the ACK gets 200, not 491. So that nothing is hidden, the UAS
  logs every INVITE, ACK and BYE (`METHOD CALL-ID CSEQ`, CSeq read from the message) and
  `SippFigures` counts the requests that overtook an ACK and the ACKs that never came.

Two SIPp 3.6 traps the scenarios avoid: a `<nop>` right after a `<send>` makes the call
ignore the response (or a late message) it then matches, and a late ACK matched during a
`<pause>` leaves the call paused for ever. Both hang a call silently; the UAS's open calls
at its end are counted too (`uas_unfinished`).

Per re-INVITE (`SippReinvite`): answered when its 200 came back; otherwise the UAC's error
log (`-trace_err`) for its call gives the reason: the final status SIPp aborted the call
on (408, 491, 500, ...), a UDP retransmission timeout (the RFC's Timer B, which the harness
UAC counts as 408 too), or nothing (the run ended with it unanswered). `ledger_of` turns
them into the harness's `Ledger`.

`SippPair` starts the UAS, then the UAC, each with a bounded global timeout, and stops
every process it started by PID (SIGTERM: SIPp writes its files and exits; SIGKILL after a
bounded wait), also when interrupted. Nothing is killed by name.

What this module must not do: compute a percentile or decide an outcome (the ledger and
`harness.measure.entry` do), or talk to anything but loopback.
"""

from __future__ import annotations

import csv
import io
import os
import re
import shutil
import socket
import subprocess
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import anyio

from core.events import Address
from harness.load.spec import LoadSpec, schedule
from harness.measure.ledger import Ledger
from harness.targets.children import spawn, terminate

SCENARIOS = Path(__file__).parent / "sipp"
RETRANS_MS = 500  # SIPp's first UDP retransmission of an INVITE/BYE (T1), doubling
UAS_LINGER_MS = 500  # the UAS waits this long after the BYE for late ACKs
STOP_TIMEOUT = 5.0  # seconds for SIPp to exit after SIGTERM (then SIGKILL)
READY_TIMEOUT = 5.0  # seconds for the UAS to bind its port
_POLL = 0.02


class SippError(RuntimeError):
    """SIPp is missing, cannot carry the load as specified, or misbehaved (one line)."""


def sipp_binary() -> str | None:
    """The sipp executable: $DEFERBENCH_SIPP, else `sipp` on PATH (Debian: sip-tester)."""
    chosen = os.environ.get("DEFERBENCH_SIPP")
    if chosen:
        return chosen if Path(chosen).exists() else None
    return shutil.which("sipp")


# ---------------------------------------------------------------------------- scenarios

_CDATA = re.compile(r"<!\[CDATA\[(.*?)\]\]>", re.S)


def _templates(name: str) -> list[str]:
    """The CDATA message texts of a shipped scenario, in order."""
    return _CDATA.findall((SCENARIOS / name).read_text(encoding="iso-8859-1"))


def _send(text: str, *, retrans: bool = False, extra: str = "") -> str:
    attrs = f' retrans="{RETRANS_MS}"' if retrans else ""
    return f"  <send{attrs}{extra}>\n    <![CDATA[{text}]]>\n  </send>\n"


def _cseq(text: str, cseq: int) -> str:
    return re.sub(r"CSeq: \d+ ", f"CSeq: {cseq} ", text)


def _pause(gap_ms: int) -> str:
    return f'  <pause milliseconds="{gap_ms}"/>\n' if gap_ms > 0 else ""


def _head(name: str, comment: str) -> str:
    return (
        '<?xml version="1.0" encoding="ISO-8859-1" ?>\n'
        '<!DOCTYPE scenario SYSTEM "sipp.dtd">\n'
        f"<!-- {comment} (harness.targets.kamailio.sipp) -->\n"
        f'<scenario name="{name}">\n'
    )


def uac_scenario(reinvites: int, gap_ms: int) -> str:
    """The UAC: INVITE, `reinvites` re-INVITEs `gap_ms` after each ACK, BYE; each re-INVITE
    logged when sent and when answered (microsecond wall clock)."""
    if reinvites < 0 or gap_ms < 0:
        raise ValueError(f"reinvites and gap_ms must be >= 0, got {reinvites}, {gap_ms}")
    invite, ack, reinvite, _ack2, *_, bye = _templates("reinvite_uac.xml")
    stamp = '<gettimeofday assign_to="sec,usec"/>'
    parts = [
        _head("deferbench re-INVITE UAC", f"{reinvites} re-INVITEs, gap {gap_ms} ms"),
        _send(invite, retrans=True),
        '  <recv response="100" optional="global"/>\n',
        '  <recv response="200" rrs="true" rtd="true"/>\n',
        _send(_cseq(ack, 1)),
    ]
    for cseq in range(2, reinvites + 2):
        parts += [
            _pause(gap_ms),
            # stamped just BEFORE the send: a <nop> between a send and its responses
            # makes SIPp 3.6 ignore the 200 (the call retransmits until it times out)
            f'  <nop><action>{stamp}<log message="sent [call_id] {cseq} [$sec] [$usec]"/>'
            "</action></nop>\n",
            _send(_cseq(reinvite, cseq), retrans=True, extra=' start_rtd="2"'),
            '  <recv response="100" optional="global"/>\n',
            f'  <recv response="200" rtd="2" repeat_rtd="true"><action>{stamp}'
            f'<log message="answered [call_id] {cseq} [$sec] [$usec]"/></action></recv>\n',
            _send(_cseq(ack, cseq)),
        ]
    parts += [
        _pause(gap_ms),
        _send(_cseq(bye, reinvites + 2), retrans=True),
        '  <recv response="200"/>\n',
        "</scenario>\n",
    ]
    return "".join(parts)


def uas_scenario(reinvites: int) -> str:
    """The reorder-tolerant UAS: 200 to the INVITE and each re-INVITE, every ACK optional
    wherever it arrives, 200 to the BYE, then up to `UAS_LINGER_MS` for ACKs the BYE
    overtook (the call fails without them); every INVITE, ACK and BYE logged with its
    CSeq."""
    if reinvites < 0:
        raise ValueError(f"reinvites must be >= 0, got {reinvites}")
    ok_invite, ok_reinvite, *_, ok_bye = _templates("reinvite_uas.xml")
    acks = reinvites + 1

    def logged(method: str, attrs: str = "", count: str = "") -> str:
        return (
            f'  <recv request="{method}"{attrs}><action>'
            '<ereg regexp="[0-9]+" search_in="hdr" header="CSeq:" assign_to="cs"/>'
            f'<log message="{method} [call_id] [$cs]"/>{count}</action></recv>\n'
        )

    count = '<add assign_to="acks" value="1"/>'
    ack = logged("ACK", ' optional="global"', count)
    parts = [
        _head("deferbench re-INVITE UAS", f"{reinvites} re-INVITEs, reorder-tolerant"),
        logged("INVITE"),
        _send(ok_invite),
        ack,
    ]
    for _ in range(reinvites):
        parts += [logged("INVITE"), _send(ok_reinvite), ack]
    # The BYE can overtake the last ACK: wait up to UAS_LINGER_MS for every ACK, then end
    # (a timeout fails the call). Not a <pause>, nor a <nop> right after a <send>: a late
    # message matched there leaves a SIPp 3.6 call paused for ever.
    complete = (
        f'<test assign_to="complete" variable="acks" compare="greater_than_equal" value="{acks}"/>'
    )
    parts += [
        logged("BYE", count=complete),
        _send(ok_bye, extra=' next="done" test="complete"'),
        '  <label id="linger"/>\n',
        logged(
            "ACK",
            f' timeout="{UAS_LINGER_MS}" ontimeout="done" next="done" test="complete"',
            count + complete,
        ),
        '  <nop next="linger"/>\n',
        '  <label id="done"/>\n',
        "</scenario>\n",
    ]
    return "".join(parts)


# ---------------------------------------------------------------------------- the plan


@dataclass(frozen=True, slots=True)
class SippPlan:
    """What one UAC+UAS pair is asked to do."""

    rate: float  # calls per second (-r), constant arrivals
    calls: int  # calls in all (-m)
    reinvites: int  # re-INVITEs per call
    gap_ms: int  # pause between an ACK and the next request (SIPp pauses in whole ms)
    timeout: float  # seconds the UAC may run in all (-timeout): duration + drain

    @property
    def reinvite_rate(self) -> float:
        return self.rate * self.reinvites


def plan_for(load: LoadSpec, seed: int, drain: float) -> SippPlan:
    """The SIPp plan of a load spec; SippError naming the field SIPp cannot honour.

    `rate` -> -r (calls/s; SIPp takes a fractional rate as it is), the number of calls
    -> -m (as many as the harness's constant schedule starts within `duration`),
    `reinvites` -> re-INVITE blocks, `gap` -> <pause> after each ACK. SIPp starts calls
    at a constant rate only: any other arrival is refused, not approximated.
    """
    if load.arrival != "constant":
        raise SippError(
            f"arrival={load.arrival}: SIPp starts calls at a constant rate only "
            "(use arrival=constant with the sipp driver)"
        )
    gap_us = round(load.gap * 1e6)
    if gap_us % 1000:
        raise SippError(f"gap={gap_us}us: SIPp pauses in whole milliseconds (e.g. gap=1ms)")
    calls = len(schedule(load, seed))
    return SippPlan(load.rate, calls, load.reinvites, gap_us // 1000, load.duration + drain)


# ---------------------------------------------------------------------------- figures


@dataclass(frozen=True, slots=True)
class SippReinvite:
    """One re-INVITE the SIPp UAC sent: when, and what came of it (wall clock, integer
    microseconds: a float of epoch seconds would blur the microseconds)."""

    call_id: str
    cseq: int
    sent_us: int
    final_us: int | None = None  # its 200, or when SIPp logged the error that ended it
    status: int | None = None  # 200; the final status SIPp aborted on; 408 (Timer B)
    reason: str = ""  # why there is no 200 ("" when answered)

    @property
    def sent(self) -> float:
        """Wall-clock seconds (time.time()'s clock)."""
        return self.sent_us / 1e6

    @property
    def response_time(self) -> float | None:
        """Sent -> final response, seconds (microsecond resolution); None: unanswered."""
        return None if self.final_us is None else (self.final_us - self.sent_us) / 1e6


@dataclass(frozen=True, slots=True)
class SippFigures:
    """What one SIPp UAC+UAS pair measured, read from the files it wrote."""

    plan: SippPlan
    successful: int  # UAC: calls played to the end
    failed: int  # UAC: calls aborted (unexpected message, timeout, ...)
    retransmissions: int  # UAC: requests retransmitted (lost or slow responses)
    unexpected: int  # UAC: calls failed on an unexpected message
    uas_failed: int  # UAS: calls aborted, or ended short of an ACK
    uas_unexpected: int  # UAS: calls failed on an unexpected message
    uas_unfinished: int  # UAS: calls still open when it was stopped
    reinvites: tuple[SippReinvite, ...]  # every re-INVITE the UAC sent, in send order
    acks_overtaken: int  # UAS: requests that arrived before the ACK sent ahead of them
    acks_missing: int  # UAS: 200s to INVITEs whose ACK never arrived
    first_error: str = ""  # SIPp's first error line (UAC, else UAS)
    uac_status: int | None = None  # exit status (None: never started)
    uas_status: int | None = None

    @property
    def calls(self) -> int:
        return self.plan.calls

    @property
    def answered(self) -> int:
        return sum(1 for r in self.reinvites if r.status == 200)

    @property
    def response_times(self) -> tuple[float, ...]:
        """Sent -> 200 of every answered re-INVITE, seconds, in send order."""
        return tuple(r.response_time for r in self.reinvites if r.status == 200)  # type: ignore[misc]

    @property
    def clean(self) -> bool:
        """Every call played to the end on both sides, every re-INVITE answered 200,
        every 200 acknowledged."""
        return (
            self.successful == self.calls
            and self.failed == 0
            and self.uas_failed == 0
            and self.uas_unfinished == 0
            and self.acks_missing == 0
            and self.answered == len(self.reinvites) == self.calls * self.plan.reinvites
        )

    def counters(self) -> dict[str, dict[str, int]]:
        """Counters for a result entry, per side (prefix -> {name: value})."""
        unanswered = Counter(r.reason for r in self.reinvites if r.status != 200)
        return {
            "sipp uac": {
                "calls": self.calls,
                "calls successful": self.successful,
                "calls failed": self.failed,
                "calls failed on an unexpected message": self.unexpected,
                "retransmissions": self.retransmissions,
                "re-INVITEs sent": len(self.reinvites),
                "re-INVITEs answered 200": self.answered,
                **{f"re-INVITEs unanswered: {why}": n for why, n in sorted(unanswered.items())},
            },
            "sipp uas": {
                "calls failed": self.uas_failed,
                "calls failed on an unexpected message": self.uas_unexpected,
                "calls unfinished": self.uas_unfinished,
                "requests before the previous ACK": self.acks_overtaken,
                "ACKs missing": self.acks_missing,
            },
        }


def ledger_of(figures: SippFigures, race_code: int = 491) -> Ledger:
    """The correctness ledger of a SIPp run: one transaction per re-INVITE the UAC sent,
    its final status as SIPp saw it (200, the status it aborted on, 408 for a retransmission
    timeout); none (lost) when the run ended with it unanswered."""
    ledger = Ledger(race_code=race_code)
    for reinvite in figures.reinvites:
        key = (reinvite.call_id, reinvite.cseq)
        ledger.open(key)
        if reinvite.status is not None:
            ledger.final(key, reinvite.status)
    return ledger


# ---------------------------------------------------------------------------- parsing


def parse_stats(text: str) -> dict[str, str]:
    """The last row of a `-trace_stat` file (';'-separated), by column name."""
    rows = list(csv.reader(io.StringIO(text), delimiter=";"))
    if len(rows) < 2:
        return {}
    return dict(zip(rows[0], rows[-1], strict=False))


def _stat(stats: dict[str, str], name: str, *, cumulative: bool = True) -> int:
    try:
        return int(stats.get(f"{name}(C)" if cumulative else name, "0") or 0)
    except ValueError:
        return 0


_WHEN = r"(?m)^\S+\t\S+\t(\d+\.\d+): "
_UNEXPECTED = re.compile(
    _WHEN + r"Aborting call on unexpected message for Call-Id '([^']+)': "
    r"while expecting '([^']*)' \(index \d+\), received '([^\r\n]*)"
)
_RETRANS = re.compile(_WHEN + r"Aborting call on UDP retransmission timeout for Call-ID '([^']+)'")
_CALL_TIMEOUT = re.compile(_WHEN + r"Call-Id: (\S+), (receive|send) timeout on message")
_STATUS = re.compile(r"^SIP/2\.0 (\d{3})")


@dataclass(frozen=True, slots=True)
class CallError:
    """Why SIPp ended a call early, from its error log."""

    at_us: int  # wall clock of the log line, microseconds
    status: int | None  # the final status it aborted on (408 for a retransmission timeout)
    reason: str


def parse_errors(text: str) -> dict[str, CallError]:
    """A `-trace_err` file -> the first error of each call, by Call-ID."""
    found: list[tuple[int, str, CallError]] = []
    for match in _UNEXPECTED.finditer(text):
        at, call_id, expected, received = match.groups()
        status = _STATUS.match(received)
        code = int(status.group(1)) if status else None
        final = code if code is not None and code >= 200 else None
        what = str(code) if code is not None else received.split(" ", 1)[0]
        reason = f"unexpected {what} (expecting {expected})"
        found.append((match.start(), call_id, CallError(_epoch_us(at), final, reason)))
    for match in _RETRANS.finditer(text):
        at, call_id = match.groups()
        error = CallError(_epoch_us(at), 408, "retransmission timeout")
        found.append((match.start(), call_id, error))
    for match in _CALL_TIMEOUT.finditer(text):
        at, call_id, kind = match.groups()
        found.append((match.start(), call_id, CallError(_epoch_us(at), None, f"{kind} timeout")))
    errors: dict[str, CallError] = {}
    for _, call_id, error in sorted(found, key=lambda f: f[0]):
        errors.setdefault(call_id, error)
    return errors


def first_error(text: str) -> str:
    """The first line of a `-trace_err` file that ended a call (else its first line, e.g.
    a late retransmission for a call already over), timestamp stripped; "" if none."""
    match = re.search(_WHEN + r"((?:Aborting call|Call-Id: \S+, \w+ timeout)[^\r\n]*)", text)
    match = match or re.search(_WHEN + r"([^\r\n]+)", text)
    return match.group(2) if match else ""


def _stamp(sec: str, usec: str) -> int:
    """`gettimeofday` seconds and microseconds, logged as doubles ("1700000000.000000"),
    as integer microseconds."""
    return int(float(sec)) * 1_000_000 + int(float(usec))


def _epoch_us(text: str) -> int:
    """ "1700000000.123456" (an error log's time) -> integer microseconds."""
    sec, _, frac = text.partition(".")
    return int(sec) * 1_000_000 + int((frac + "000000")[:6])


def parse_uac_log(text: str, errors: dict[str, CallError]) -> tuple[SippReinvite, ...]:
    """The UAC's `sent`/`answered` lines (+ its errors) -> every re-INVITE, in send order."""
    sent: dict[tuple[str, int], int] = {}
    answered: dict[tuple[str, int], int] = {}
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 5 or parts[0] not in ("sent", "answered"):
            continue
        key = (parts[1], int(parts[2]))
        when = _stamp(parts[3], parts[4])
        (sent if parts[0] == "sent" else answered).setdefault(key, when)
    out = []
    for key, at in sent.items():
        if key in answered:
            out.append(SippReinvite(key[0], key[1], at, answered[key], 200))
            continue
        error = errors.get(key[0])
        if error is None:
            out.append(SippReinvite(key[0], key[1], at, reason="no response by the end"))
        else:
            final_us = error.at_us if error.status is not None else None
            out.append(SippReinvite(key[0], key[1], at, final_us, error.status, error.reason))
    return tuple(out)


def parse_uas_log(text: str) -> tuple[int, int]:
    """The UAS's `INVITE|ACK|BYE CALL-ID CSEQ` lines -> (requests that arrived before the
    ACK of the CSeq below them, 200s to INVITEs never acknowledged)."""
    acked: dict[str, set[int]] = {}
    invited: dict[str, set[int]] = {}
    overtaken = 0
    for line in text.splitlines():
        parts = line.split()
        if len(parts) != 3 or parts[0] not in ("INVITE", "ACK", "BYE") or not parts[2].isdigit():
            continue
        method, call_id, cseq = parts[0], parts[1], int(parts[2])
        if method == "ACK":
            acked.setdefault(call_id, set()).add(cseq)
            continue
        if method == "INVITE":
            invited.setdefault(call_id, set()).add(cseq)
        if cseq > 1 and cseq - 1 not in acked.get(call_id, set()):
            overtaken += 1
    missing = sum(len(cseqs - acked.get(call_id, set())) for call_id, cseqs in invited.items())
    return overtaken, missing


# ---------------------------------------------------------------------------- the pair


UAS_START_TRIES = 3
"""SIPp UAS starts, each on a new port, before a run gives up: the port is free when probed
and SIPp binds it a moment later, so another process can take it in between (seen once in
a CI run: the UAS exited at once)."""


def free_udp_port(host: str = "127.0.0.1") -> int:
    """A UDP port nobody is bound to right now (SIPp binds it a moment later)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def _bound(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.bind(("127.0.0.1", port))
        except OSError:
            return True
    return False


class SippPair:
    """One SIPp UAS and one SIPp UAC against `proxy`, in `workdir`, stopped by PID.

    Use as a context manager (every process is stopped on the way out, also on an
    exception or a cancellation): `await start_uas()`, `start_uac()`, `await wait(...)`,
    then `figures()`.
    """

    def __init__(
        self, workdir: Path, proxy: Address, plan: SippPlan, *, binary: str | None = None
    ) -> None:
        self.binary = binary or sipp_binary()
        if self.binary is None or not Path(self.binary).exists():
            raise SippError(
                "sipp not found: install the Debian package sip-tester "
                "(or set DEFERBENCH_SIPP to its path)"
            )
        self.workdir = workdir
        self.proxy = proxy
        self.plan = plan
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "uac.xml").write_text(uac_scenario(plan.reinvites, plan.gap_ms))
        (workdir / "uas.xml").write_text(uas_scenario(plan.reinvites))
        self.uas_port = free_udp_port()
        self.uas: subprocess.Popen[bytes] | None = None
        self.uac: subprocess.Popen[bytes] | None = None
        self.uac_started: float | None = None  # wall clock

    def __enter__(self) -> SippPair:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _command(self, side: str, port: int) -> list[str]:
        limit = f"{self.plan.timeout + UAS_LINGER_MS / 1000 + 1:g}s"
        return [
            self.binary or "sipp", "-sf", f"{side}.xml", "-i", "127.0.0.1", "-p", str(port),
            "-m", str(self.plan.calls), "-nostdin", "-buff_size", "1048576",
            "-trace_stat", "-stf", f"{side}-stats.csv", "-fd", "1",
            "-trace_err", "-error_file", f"{side}-errors.log",
            "-trace_logs", "-log_file", f"{side}-log.log",
            "-timeout", limit if side == "uas" else f"{self.plan.timeout:g}s",
        ]  # fmt: skip

    def _spawn(self, command: list[str], side: str) -> subprocess.Popen[bytes]:
        with open(self.workdir / f"{side}.out", "wb") as out:
            return spawn(
                command, cwd=self.workdir, stdin=subprocess.DEVNULL, stdout=out,
                stderr=subprocess.STDOUT, start_new_session=True,
            )  # fmt: skip

    async def start_uas(self, timeout: float = READY_TIMEOUT) -> None:
        """Start the UAS and wait (bounded) until it has bound its port; a UAS that exits
        first is started again on a new port (`UAS_START_TRIES`)."""
        if self.plan.calls == 0:
            return
        deadline = time.monotonic() + timeout
        for attempt in range(UAS_START_TRIES):
            if attempt:
                self.uas_port = free_udp_port()
            self.uas = self._spawn(self._command("uas", self.uas_port), "uas")
            while not _bound(self.uas_port):
                if self.uas.poll() is not None:
                    break
                if time.monotonic() > deadline:
                    raise SippError(f"the SIPp UAS did not start in {timeout:g} s: "
                                    f"{self._why('uas')}")  # fmt: skip
                await anyio.sleep(_POLL)
            else:
                return
        raise SippError(f"the SIPp UAS did not start ({UAS_START_TRIES} tries): {self._why('uas')}")

    def start_uac(self) -> float:
        """Start the UAC (calls begin at once); the wall-clock start."""
        self.uac_started = time.time()
        if self.plan.calls == 0:
            return self.uac_started
        command = self._command("uac", free_udp_port())
        command[command.index("-m") : command.index("-m")] = [
            "-rsa", f"{self.proxy[0]}:{self.proxy[1]}", f"127.0.0.1:{self.uas_port}",
            "-r", f"{self.plan.rate:g}", "-rp", "1000", "-l", str(self.plan.calls),
        ]  # fmt: skip
        self.uac = self._spawn(command, "uac")
        return self.uac_started

    async def wait(self, grace: float = 2.0) -> None:
        """Wait until the UAC has run its calls (bounded by its own -timeout + `grace`),
        then until the UAS has ended its last calls (bounded by its linger for late ACKs +
        `grace`: with the UAC gone, nothing else is coming); stop whatever still runs.
        A call SIPp's UAC aborted may stay open at the UAS for ever (SIPp's BYE for an
        aborted call carries no Route, so the proxy does not relay it): counted, not
        waited for."""
        if self.uac is not None and self.uac_started is not None:
            deadline = self.uac_started + self.plan.timeout + grace
            while self.uac.poll() is None and time.time() < deadline:
                await anyio.sleep(_POLL * 5)
        if self.uas is not None:
            deadline = time.time() + UAS_LINGER_MS / 1000 + grace
            while self.uas.poll() is None and time.time() < deadline:
                await anyio.sleep(_POLL * 5)
        self.stop()

    def stop(self, timeout: float = STOP_TIMEOUT) -> None:
        """SIGTERM (SIPp writes its files and exits), bounded wait, SIGKILL: by PID."""
        for process in (self.uac, self.uas):
            if process is not None:
                terminate(process, timeout)

    @property
    def pids(self) -> list[int]:
        return [p.pid for p in (self.uac, self.uas) if p is not None]

    def _read(self, name: str) -> str:
        try:
            return (self.workdir / name).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""

    def _why(self, side: str) -> str:
        """What SIPp said when it stopped: its error log's last line, else its screen's."""
        errors = [ln.strip() for ln in self._read(f"{side}-errors.log").splitlines()]
        errors = [ln for ln in errors if ln]
        return errors[-1] if errors else self._tail(side)

    def _tail(self, side: str) -> str:
        lines = [ln.strip() for ln in self._read(f"{side}.out").splitlines() if ln.strip()]
        return " | ".join(lines[-2:]) or "no output"

    def figures(self) -> SippFigures:
        """Everything the pair wrote, parsed (call after `wait` or `stop`)."""
        uac_stats = parse_stats(self._read("uac-stats.csv"))
        uas_stats = parse_stats(self._read("uas-stats.csv"))
        uac_errors = self._read("uac-errors.log")
        uas_errors = self._read("uas-errors.log")
        overtaken, missing = parse_uas_log(self._read("uas-log.log"))
        return SippFigures(
            plan=self.plan,
            successful=_stat(uac_stats, "SuccessfulCall"),
            failed=_stat(uac_stats, "FailedCall"),
            retransmissions=_stat(uac_stats, "Retransmissions"),
            unexpected=_stat(uac_stats, "FailedUnexpectedMessage"),
            uas_failed=_stat(uas_stats, "FailedCall"),
            uas_unexpected=_stat(uas_stats, "FailedUnexpectedMessage"),
            uas_unfinished=_stat(uas_stats, "CurrentCall", cumulative=False),
            reinvites=parse_uac_log(self._read("uac-log.log"), parse_errors(uac_errors)),
            acks_overtaken=overtaken,
            acks_missing=missing,
            first_error=_first_of(("uac", uac_errors), ("uas", uas_errors)),
            uac_status=None if self.uac is None else self.uac.returncode,
            uas_status=None if self.uas is None else self.uas.returncode,
        )


def _first_of(*logs: tuple[str, str]) -> str:
    for side, text in logs:
        if line := first_error(text):
            return f"{side}: {line}"
    return ""


async def drive(
    pair: SippPair,
    *,
    load_starts: Callable[[], Awaitable[None]] | None = None,
    window: float | None = None,
    window_ends: Callable[[], Awaitable[None]] | None = None,
    grace: float = 2.0,
) -> SippFigures:
    """The usual sequence: UAS up, `load_starts()`, UAC started; `window_ends()` `window`
    seconds later (None: once the UAC is done); wait (bounded); the figures."""
    with pair:
        await pair.start_uas()
        if load_starts is not None:
            await load_starts()
        pair.start_uac()
        if window is not None:
            await anyio.sleep(window)
            if window_ends is not None:
                await window_ends()
            await pair.wait(grace)
        else:
            await pair.wait(grace)
            if window_ends is not None:
                await window_ends()
    return pair.figures()
