"""SIPp interop: SIPp UAC -> live proxy -> SIPp UAS (or the harness's own UAS).

Uses the scenarios shipped in `harness/sipp/` (the re-INVITE call flow: INVITE/100/200/ACK,
3 x re-INVITE/100/200/ACK, BYE/200). Bounded: a few calls per run, loopback only, every
process stopped by PID with bounded waits. Skipped when sipp is not installed locally;
in CI (`CI` set) .ci/run installs sip-tester, so a missing sipp fails instead.
"""

from __future__ import annotations

import csv
import os
import shutil
import signal
import socket
import subprocess
from pathlib import Path

import anyio
import pytest

import strategies
from core.runtime.kernel import Kernel
from harness.load.endpoints import Uas
from harness.measure.ledger import Ledger
from harness.targets.kamailio import sipp
from harness.targets.live.target import UdpHost
from harness.targets.live.udp import UdpSocket

SIPP = shutil.which("sipp")
SCENARIOS = sipp.SCENARIOS
CALLS = 6
REINVITES = 3

if SIPP is None and not os.environ.get("CI"):
    pytest.skip("sipp (Debian package sip-tester) is not installed", allow_module_level=True)


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(5)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


def _uac(proxy: tuple[str, int], uas_port: int, workdir: Path) -> dict[str, int]:
    """Run the SIPp UAC for CALLS calls through `proxy`; its final statistics."""
    assert SIPP is not None, "sipp missing: .ci/run installs sip-tester"
    stats = workdir / "uac-stats.csv"
    command = [
        SIPP, "-sf", str(SCENARIOS / "reinvite_uac.xml"),
        "-i", "127.0.0.1", "-p", str(_free_port()),
        "-rsa", f"{proxy[0]}:{proxy[1]}", f"127.0.0.1:{uas_port}",
        "-m", str(CALLS), "-r", "20", "-nostdin",
        "-trace_stat", "-stf", str(stats), "-timeout", "30s", "-timeout_error",
    ]  # fmt: skip
    done = subprocess.run(command, cwd=workdir, capture_output=True, timeout=60)
    rows = list(csv.DictReader(stats.open(), delimiter=";"))
    last = rows[-1]
    return {
        "status": done.returncode,
        "successful": int(last["SuccessfulCall(C)"]),
        "failed": int(last["FailedCall(C)"]),
        "unexpected": int(last["FailedUnexpectedMessage(C)"]),
    }


@pytest.mark.parametrize("spec", strategies.names())
def test_sipp_uac_through_the_live_proxy_to_sipp_uas(spec, serve, tmp_path):
    proxy = serve(strategy=spec, children=4, fr_timer=5.0, interval="0s")
    uas_port = _free_port()
    uas = subprocess.Popen(
        [SIPP, "-sf", str(SCENARIOS / "reinvite_uas.xml"), "-i", "127.0.0.1",
         "-p", str(uas_port), "-nostdin"],
        cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        result = _uac(proxy.address, uas_port, tmp_path)
    finally:
        _stop(uas)
    assert result == {"status": 0, "successful": CALLS, "failed": 0, "unexpected": 0}
    assert proxy.stop() == 0
    deferrals = proxy.report()["deferrals"]
    if spec != "inline":
        assert len(deferrals) == CALLS * REINVITES
        assert {d["outcome"] for d in deferrals} == {"resumed"}


async def _harness_uas(ready, done, ledger: Ledger, out: dict) -> None:
    kernel = Kernel(live=True)
    sock = UdpSocket()
    uas = Uas(sock.address, observer=ledger)
    host = UdpHost(kernel, sock, uas)
    try:
        async with anyio.create_task_group() as tasks:
            tasks.start_soon(kernel.run)
            tasks.start_soon(sock.receive_loop, host.datagram)
            ready(sock.address)
            await done.wait()
            tasks.cancel_scope.cancel()
    finally:
        sock.close()
    out["uas"] = uas


class _UasLedger(Ledger):
    """A ledger fed by the UAS alone (SIPp is the UAC): each re-INVITE opens on arrival."""

    def reached_uas(self, key, dialog, cseq):
        if key not in self._entries:
            self.open(key)
        super().reached_uas(key, dialog, cseq)


@pytest.mark.parametrize("spec", ["inline", "async-sleep"])
def test_sipp_uac_through_the_live_proxy_to_the_harness_uas_counts_races(spec, serve, tmp_path):
    proxy = serve(strategy=spec, children=4, fr_timer=5.0, interval="0s")
    ledger = _UasLedger()
    out: dict = {}

    async def main() -> None:
        done = anyio.Event()
        address: list = []
        with anyio.fail_after(90):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(_harness_uas, address.append, done, ledger, out)
                while not address:
                    await anyio.sleep(0.01)
                out["sipp"] = await anyio.to_thread.run_sync(
                    _uac, proxy.address, address[0][1], tmp_path
                )
                done.set()

    anyio.run(main)
    uas: Uas = out["uas"]
    sipp = out["sipp"]
    races = uas.counters["races"]
    assert ledger.close().transactions == CALLS * REINVITES  # every re-INVITE reached the UAS
    assert ledger.close().reordered == 0
    # a race is a 491 the SIPp UAC did not expect: it fails exactly those calls
    assert sipp["successful"] + sipp["failed"] == CALLS
    assert (races == 0) == (sipp["failed"] == 0)
    if spec != "inline":
        assert races == 0 and sipp["successful"] == CALLS
