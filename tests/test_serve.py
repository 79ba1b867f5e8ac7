"""`deferbench serve` as a process: hostile input, overload shedding, signals, the report.

Each test starts the real command on a free loopback port (stopped by PID, bounded waits)
and talks to it over UDP. Time bounds are generous: they must hold on a loaded 2-core box.
"""

from __future__ import annotations

import json
import signal
import socket
import time

import anyio
import pytest

from core.runtime.kernel import Kernel
from core.sip import parse_message
from harness.load.endpoints import Uac, Uas
from harness.measure.ledger import Ledger
from harness.targets.live.target import ServeProcess, UdpHost
from harness.targets.live.udp import UdpSocket, parse_address


def _request(
    method: str,
    uri: str,
    sender: tuple[str, int],
    *,
    call_id: str = "hostile-1",
    max_forwards: int | None = 70,
    extra: str = "",
    body: str = "",
    to_tag: str = "",
) -> bytes:
    host, port = sender
    lines = [
        f"{method} {uri} SIP/2.0",
        f"Via: SIP/2.0/UDP {host}:{port};branch=z9hG4bK-{call_id}-{method}",
    ]
    if max_forwards is not None:
        lines.append(f"Max-Forwards: {max_forwards}")
    lines += [
        f"From: <sip:test@{host}>;tag=t1",
        f"To: <{uri}>" + (f";tag={to_tag}" if to_tag else ""),
        f"Call-ID: {call_id}",
        f"CSeq: 1 {method}",
    ]
    if extra:
        lines.append(extra)
    lines.append(f"Content-Length: {len(body.encode())}")
    return ("\r\n".join(lines) + "\r\n\r\n" + body).encode()


def _statuses(sock: socket.socket, wait: float = 1.0) -> list[int]:
    """Status codes of the responses arriving within `wait` s (a 400 may echo bad headers,
    so only the status line is read)."""
    return [int(d.split(b" ", 2)[1]) for d in _datagrams(sock, wait)]


def _datagrams(sock: socket.socket, wait: float = 1.0) -> list[bytes]:
    """Every datagram arriving within `wait` seconds."""
    out = []
    deadline = time.monotonic() + wait
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data, _ = sock.recvfrom(65536)
        except TimeoutError:
            break
        out.append(data)
    return out


@pytest.fixture
def client():
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    yield sock
    sock.close()


async def _one_call(proxy: tuple[str, int], reinvites: int = 2, timeout: float = 15.0) -> Ledger:
    """One call UAC -> proxy -> UAS over UDP with the harness's own agents."""
    kernel = Kernel(live=True)
    uac_socket, uas_socket = UdpSocket(), UdpSocket()
    ledger = Ledger()
    uac = Uac(uac_socket.address, uas_socket.address, reinvites=reinvites, gap=0.001,
              outbound_proxy=proxy, observer=ledger, keep_calls=True)  # fmt: skip
    uas = Uas(uas_socket.address, observer=ledger)
    uac_host = UdpHost(kernel, uac_socket, uac)
    uas_host = UdpHost(kernel, uas_socket, uas)
    try:
        with anyio.fail_after(timeout):
            async with anyio.create_task_group() as tasks:
                tasks.start_soon(kernel.run)
                tasks.start_soon(uac_socket.receive_loop, uac_host.datagram)
                tasks.start_soon(uas_socket.receive_loop, uas_host.datagram)
                await anyio.sleep(0)
                kernel.submit(lambda: uac_host.emit(uac.start_call(0, kernel.now)))
                while not uac.calls or uac.active:
                    await anyio.sleep(0.02)
                tasks.cancel_scope.cancel()
    finally:
        uac_socket.close()
        uas_socket.close()
    assert uac.calls[0].outcome == "completed"
    return ledger


def _stop_and_report(process: ServeProcess) -> dict:
    assert process.stop() == 0, process.log_text()
    return process.report()


def test_hostile_input_is_answered_or_dropped_and_a_call_still_completes(serve, client):
    process = serve()
    proxy = process.address
    me = client.getsockname()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # where relayed requests go
    sink.bind(("127.0.0.1", 0))
    sink_uri = f"sip:sink@127.0.0.1:{sink.getsockname()[1]}"
    try:
        # garbage: no answer possible, dropped
        client.sendto(b"\x00\xffnot sip at all\r\n\r\n", proxy)
        client.sendto(b"", proxy)
        assert _datagrams(client, 0.5) == []
        # malformed but still a request with the five headers: 400
        bad_cseq = _request("OPTIONS", sink_uri, me).replace(b"CSeq: 1", b"CSeq: one")
        client.sendto(bad_cseq, proxy)
        bad_length = _request("OPTIONS", sink_uri, me, call_id="h2").replace(
            b"Content-Length: 0", b"Content-Length: many"
        )
        client.sendto(bad_length, proxy)
        # Max-Forwards 0: 483
        client.sendto(_request("OPTIONS", sink_uri, me, call_id="h3", max_forwards=0), proxy)
        # oversize: 513
        client.sendto(_request("MESSAGE", sink_uri, me, call_id="h4", body="x" * 20_000), proxy)
        # a response no transaction knows: dropped
        stray = b"SIP/2.0 200 OK\r\nVia: SIP/2.0/UDP 127.0.0.1:9;branch=z9hG4bKnone\r\n"
        stray += b"From: <sip:a@b>;tag=1\r\nTo: <sip:c@d>;tag=2\r\nCall-ID: stray\r\n"
        stray += b"CSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
        client.sendto(stray, proxy)
        # a loop: the Request-URI names the proxy itself; Max-Forwards runs out -> 483
        own = f"sip:loop@{proxy[0]}:{proxy[1]}"
        client.sendto(_request("OPTIONS", own, me, call_id="h5", max_forwards=5), proxy)
        statuses = sorted(_statuses(client, 2.0))
        assert 400 in statuses
        assert statuses.count(483) == 2  # Max-Forwards 0 and the loop
        assert 513 in statuses
        assert set(statuses) == {400, 483, 513}
        # an unknown method is relayed, Max-Forwards decremented
        client.sendto(_request("FROBNICATE", sink_uri, me, call_id="h6"), proxy)
        relayed = [parse_message(d) for d in _datagrams(sink, 1.0)]
        assert relayed and {m.method for m in relayed} == {"FROBNICATE"}  # + Timer E resends
        assert {m.get("Max-Forwards") for m in relayed} == {"69"}

        ledger = anyio.run(_one_call, proxy)
        assert ledger.close().clean
    finally:
        sink.close()
    report = _stop_and_report(process)
    proxy_stats = report["proxy"]
    assert proxy_stats["malformed_answered"] >= 2
    assert proxy_stats["too_many_hops"] >= 2
    assert proxy_stats["discarded:no matching transaction"] >= 1
    assert proxy_stats["discarded"] >= 3  # the two garbage datagrams and the stray response
    assert report["counters"]["live: oversize requests answered 513"] == 1
    assert "final t=" in process.log_text()


def test_a_burst_is_relayed_in_the_order_it_arrived(serve, client):
    """More requests at once than there are SIP workers: each is relayed in arrival order
    (an ACK relayed after the re-INVITE sent behind it would fail the call at the UAS)."""
    process = serve()
    me = client.getsockname()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind(("127.0.0.1", 0))
    sink_uri = f"sip:sink@127.0.0.1:{sink.getsockname()[1]}"
    burst = [f"burst-{i}" for i in range(40)]
    try:
        for call_id in burst:
            client.sendto(_request("MESSAGE", sink_uri, me, call_id=call_id), process.address)
        relayed = [parse_message(d).call_id for d in _datagrams(sink, 0.4)]  # before Timer E
    finally:
        sink.close()
    assert relayed == burst


def test_overload_is_shed_statelessly_and_every_request_is_accounted_for(serve, client):
    cap = 200
    process = serve("--max-transactions", str(cap))
    proxy = process.address
    me = client.getsockname()
    sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # never answers, never reads
    sink.bind(("127.0.0.1", 0))
    sink_uri = f"sip:sink@127.0.0.1:{sink.getsockname()[1]}"
    sent = 0
    try:
        # 1500 new INVITEs in ~0.75 s: far above what the cap allows to live at once (the
        # sink never answers, so each one lives for seconds); paced in bursts of 20 so
        # that most reach the proxy instead of overflowing the OS receive buffer.
        for i in range(1500):
            client.sendto(_request("INVITE", sink_uri, me, call_id=f"flood-{i}"), proxy)
            sent += 1
            if i % 20 == 19:
                time.sleep(0.01)
        time.sleep(1.5)
        anyio.run(_answered_after_flood, proxy)
    finally:
        sink.close()
    report = _stop_and_report(process)
    counters, stats = report["counters"], report["proxy"]
    shed = counters.get("shed: 503 over transaction cap", 0)
    assert shed > 0
    queue_drops = counters.get("udp_receive_buffer_drops", 0)
    os_drops = counters.get("udp: os receive drops", 0)
    received = counters["udp: received"]
    # every flood INVITE reached the socket or was dropped by the OS (counted) ...
    assert received + os_drops >= sent
    assert received >= cap  # the cap, not the OS buffer, did the shedding
    # ... and every datagram received was shed, dropped from the queue, or made a transaction
    created = stats["transactions_created"]
    assert received - queue_drops - shed <= created + 50  # + the test call's own messages
    assert created <= cap + 10  # shedding created no transaction: memory stays bounded


async def _answered_after_flood(proxy: tuple[str, int]) -> None:
    """After a flood the proxy still answers a new call (200 path or a 503 while shedding)."""
    with anyio.fail_after(20):
        sock = UdpSocket()
        try:
            uri = f"sip:nobody@{proxy[0]}:9"
            data = _request("OPTIONS", uri, sock.address, call_id="after", max_forwards=0)
            sock.send(data, proxy)
            while True:
                await anyio.wait_readable(sock.sock)
                reply = parse_message(sock.sock.recvfrom(65536)[0])
                if reply.status >= 200:
                    assert reply.status in (483, 503)  # served, or shed while over the cap
                    return
        finally:
            sock.close()


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
def test_sigint_prints_a_final_summary_and_writes_the_report(serve, backend):
    process = serve(strategy="mqueue-rtimer", backend=backend)
    ledger = anyio.run(_one_call, process.address, 3, backend=backend)
    assert ledger.close().clean
    process.process.send_signal(signal.SIGINT)
    process.process.wait(20)
    assert process.process.returncode == 0
    report = json.loads(process.report_path.read_text())
    assert report["backend"] == backend
    assert len(report["deferrals"]) == 3
    assert {d["outcome"] for d in report["deferrals"]} == {"resumed"}
    roles = report["snapshots"][-1]["cpu_by_role"]
    assert roles["rtimer"] > 0 and roles["sip-worker"] > 0  # real CPU measured per role
    assert "final t=" in process.log_text()


def test_serve_refuses_bad_flags_in_one_line(tmp_path):
    import subprocess
    import sys

    for flags, needle in (
        (["--strategy", "nope"], "nope"),
        (["--strategy", "inline", "--listen", "localhost"], "HOST:PORT"),
        (["--strategy", "inline", "--costs", str(tmp_path / "c.toml")], "--costs"),
    ):
        done = subprocess.run(
            [sys.executable, "-m", "harness.cli", "serve", *flags],
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert done.returncode == 2
        assert needle in done.stderr and "Traceback" not in done.stderr
        assert len(done.stderr.strip().splitlines()) == 1


def test_parse_address():
    assert parse_address("127.0.0.1:0") == ("127.0.0.1", 0)
    with pytest.raises(ValueError, match="HOST:PORT"):
        parse_address("127.0.0.1")
    with pytest.raises(ValueError, match="0..65535"):
        parse_address("127.0.0.1:70000")
