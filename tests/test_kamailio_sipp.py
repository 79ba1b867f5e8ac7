"""SIPp as the kamailio target's load driver (`--driver sipp`, `harness.targets.kamailio.sipp`).

The parsing, ledger-mapping and plan tests need nothing. The UAS tests drive the SIPp UAS
scenario straight over UDP, in a chosen order (they need sipp). The end-to-end runs drive
400 re-INVITEs/s for 2 s through real Kamailio with SIPp and check a clean ledger, the
delay properties of the strategy, and that no Kamailio or SIPp process is left (by PID);
they need kamailio and sipp (.ci/run installs both) and are skipped without them outside CI.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import sys
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import anyio
import pytest

from core.runtime.server import ServerSettings
from harness import cli
from harness.load.spec import parse_load, schedule
from harness.targets.kamailio import sipp, target
from harness.targets.kamailio.sipp import SippPair, SippPlan
from harness.targets.kamailio.target import KamailioTargetError, kamailio_run

HAVE_SIPP = sipp.sipp_binary() is not None
HAVE_KAMAILIO = target.kamailio_binary() is not None
needs_sipp = pytest.mark.skipif(
    not HAVE_SIPP and not os.environ.get("CI"), reason="sipp not installed (CI installs it)"
)
needs_both = pytest.mark.skipif(
    not (HAVE_SIPP and HAVE_KAMAILIO) and not os.environ.get("CI"),
    reason="kamailio or sipp not installed (CI installs both)",
)

LOAD_400 = "reinvite:rate=40/s,duration=2s,reinvites=10,gap=1ms,arrival=constant"


# ---------------------------------------------------------------- scenarios and plan


def test_uac_scenario_logs_every_reinvite_with_its_cseq_and_pauses_the_gap():
    text = sipp.uac_scenario(3, 2)
    ET.fromstring(text.split("\n", 2)[2])  # well-formed (after the XML and DOCTYPE lines)
    for cseq in (2, 3, 4):
        assert f"CSeq: {cseq} INVITE" in text and f"CSeq: {cseq} ACK" in text
        assert f'"sent [call_id] {cseq} [$sec] [$usec]"' in text
        assert f'"answered [call_id] {cseq} [$sec] [$usec]"' in text
    assert "CSeq: 5 BYE" in text and "CSeq: 5 INVITE" not in text
    assert text.count('<pause milliseconds="2"/>') == 4  # before each re-INVITE and the BYE
    assert "<pause" not in sipp.uac_scenario(3, 0)
    # the stamp goes BEFORE the send: a <nop> right after it makes SIPp ignore the 200
    assert text.index('"sent [call_id] 2') < text.index("CSeq: 2 INVITE")


def test_uas_scenario_takes_every_ack_wherever_it_arrives_and_waits_for_late_ones():
    text = sipp.uas_scenario(4)
    root = ET.fromstring(text.split("\n", 2)[2])
    acks = [e for e in root if e.tag == "recv" and e.get("request") == "ACK"]
    anywhere = [e for e in acks if e.get("optional") == "global"]
    assert len(anywhere) == 5  # the INVITE's and each re-INVITE's
    (linger,) = [e for e in acks if e.get("timeout")]  # after the BYE, bounded
    assert int(linger.get("timeout")) == sipp.UAS_LINGER_MS and linger.get("ontimeout")
    assert 'value="5"' in text  # every ACK in: the call ends without waiting
    assert len([e for e in root if e.tag == "recv" and e.get("request") == "INVITE"]) == 5


def test_plan_maps_the_load_and_refuses_what_sipp_cannot_play():
    load = parse_load("reinvite:rate=2.5/s,duration=3s,reinvites=4,gap=3ms,arrival=constant")
    plan = sipp.plan_for(load, 1, drain=7.0)
    assert plan == SippPlan(2.5, len(schedule(load, 1)), 4, 3, 10.0)
    assert plan.calls == 8 and plan.reinvite_rate == 10.0
    with pytest.raises(sipp.SippError, match="^arrival=poisson: SIPp starts calls at a constant"):
        sipp.plan_for(parse_load("reinvite:rate=5/s,arrival=poisson"), 1, 0.0)
    with pytest.raises(sipp.SippError, match="^gap=1500us: SIPp pauses in whole milliseconds"):
        sipp.plan_for(parse_load("reinvite:rate=5/s,gap=1500us,arrival=constant"), 1, 0.0)


# ---------------------------------------------------------------- parsing and the ledger

_UAC_LOG = """\
sent c1 2 1700000000.000000 100000.000000
answered c1 2 1700000000.000000 100544.000000
sent c1 3 1700000000.000000 102000.000000
answered c1 3 1700000001.000000 1.000000
sent c2 2 1700000000.000000 200000.000000
answered c2 2 1700000000.000000 201000.000000
sent c2 3 1700000000.000000 203000.000000
sent c3 2 1700000000.000000 300000.000000
sent c4 2 1700000000.000000 400000.000000
sent c5 2 1700000000.000000 500000.000000
sent c6 2 1700000000.000000 600000.000000
sent c7 2 1700000000.000000 700000.000000
"""


def _abort(when: str, call_id: str, received: str, expecting: str = "200") -> str:
    return (
        f"2026-01-01\t00:00:00.000000\t{when}: Aborting call on unexpected message for "
        f"Call-Id '{call_id}': while expecting '{expecting}' (index 12), received "
        f"'{received}\nVia: SIP/2.0/UDP 127.0.0.1:5060\nCSeq: 3 INVITE\n\n'\n"
    )


_UAC_ERRORS = (
    "2026-01-01\t00:00:00.000000\t1700000000.000001: Dead call c1 (successful), received "
    "'SIP/2.0 200 OK\n'\n"
    + _abort("1700000002.203000", "c2", "SIP/2.0 408 Request Timeout")
    + _abort("1700000000.310000", "c3", "SIP/2.0 491 Request Pending")
    + _abort("1700000000.410000", "c4", "SIP/2.0 500 Server Internal Error")
    + "2026-01-01\t00:00:00.000000\t1700000016.000000: Aborting call on UDP retransmission "
    "timeout for Call-ID 'c5', index 6\n" + _abort("1700000000.710000", "c7", "SIP/2.0 180 Ringing")
)


def test_each_reinvite_gets_its_200_or_the_error_that_ended_its_call():
    reinvites = sipp.parse_uac_log(_UAC_LOG, sipp.parse_errors(_UAC_ERRORS))
    by_key = {(r.call_id, r.cseq): r for r in reinvites}
    assert [(r.call_id, r.cseq) for r in reinvites][:3] == [("c1", 2), ("c1", 3), ("c2", 2)]
    assert by_key[("c1", 2)].status == 200
    assert by_key[("c1", 2)].response_time == pytest.approx(0.000544, abs=1e-12)  # µs exact
    assert by_key[("c1", 3)].response_time == pytest.approx(0.898001, abs=1e-12)
    c2 = by_key[("c2", 3)]
    assert (c2.status, c2.reason) == (408, "unexpected 408 (expecting 200)")
    assert c2.response_time == pytest.approx(2.0, abs=1e-12)  # when SIPp logged the 408
    assert by_key[("c5", 2)].reason == "retransmission timeout"
    assert by_key[("c6", 2)].reason == "no response by the end"
    assert by_key[("c7", 2)].status is None  # a 1xx is not a final response

    summary = sipp.ledger_of(_figures(reinvites), race_code=491).close()
    assert summary.transactions == 9
    assert summary.resumed == 3  # c1 2, c1 3, c2 2
    assert summary.timeout_408 == 2  # c2 3 (Kamailio's 408) and c5 (Timer B)
    assert (summary.race_491, summary.error_5xx) == (1, 1)  # c3, c4
    assert summary.lost == 2  # c6 (nothing by the end), c7 (no final response)
    assert not summary.clean


def _figures(reinvites: tuple[sipp.SippReinvite, ...], **kw: int) -> sipp.SippFigures:
    names = ("successful", "failed", "retransmissions", "unexpected", "uas_failed",
             "uas_unexpected", "uas_unfinished", "acks_overtaken", "acks_missing")  # fmt: skip
    values = dict.fromkeys(names, 0) | kw
    return sipp.SippFigures(SippPlan(1.0, 7, 2, 1, 1.0), reinvites=reinvites, **values)


def test_first_error_prefers_the_line_that_ended_a_call():
    assert sipp.first_error(_UAC_ERRORS).startswith(
        "Aborting call on unexpected message for Call-Id 'c2': while expecting '200'"
    )
    assert sipp.first_error("") == ""


def test_uas_log_counts_requests_that_overtook_their_ack_and_acks_never_seen():
    log = "\n".join(
        [
            "INVITE a 1", "ACK a 1", "INVITE a 2", "INVITE a 3",  # 3 before ACK 2
            "ACK a 2", "ACK a 3", "BYE a 4",  # in order
            "INVITE b 1", "ACK b 1", "INVITE b 2", "BYE b 3",  # BYE before ACK 2 ...
            "ACK b 2",  # ... which came after it
            "INVITE c 1", "ACK c 1", "INVITE c 2", "BYE c 3",  # ACK 2 never came
        ]
    )  # fmt: skip
    assert sipp.parse_uas_log(log) == (3, 1)


def test_stats_file_last_row_by_column():
    text = "SuccessfulCall(C);FailedCall(C);\n1;0;\n7;2;\n"
    stats = sipp.parse_stats(text)
    assert stats["SuccessfulCall(C)"] == "7" and stats["FailedCall(C)"] == "2"
    assert sipp.parse_stats("") == {}


# ---------------------------------------------------------------- one-line errors


def _one_line_error(capsys, argv: list[str]) -> str:
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_cli_driver_sipp_with_another_target_is_one_line(capsys):
    err = _one_line_error(capsys, ["run", "--target", "live", "--driver", "sipp", "--quiet"])
    assert "--driver sipp: the kamailio and sim targets only (not live)" in err


def test_cli_driver_sipp_with_poisson_arrivals_is_one_line_before_anything_starts(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("DEFERBENCH_SIPP", sys.executable)  # "installed", never run
    monkeypatch.setattr(target, "KamailioProcess", _must_not_start)
    err = _one_line_error(
        capsys,
        ["run", "--target", "kamailio", "--driver", "sipp", "--strategy", "inline",
         "--load", "reinvite:rate=5/s,duration=1s,arrival=poisson", "--out", str(tmp_path)],
    )  # fmt: skip
    assert "arrival=poisson: SIPp starts calls at a constant rate only" in err


def test_cli_kamailio_defaults_to_sipp_and_the_default_load_to_constant_arrivals():
    from harness.cli import run as run_cmd

    def suite(*argv: str):
        args = cli.build_parser().parse_args(["run", *argv])
        return run_cmd._suite_from_args(args).runs[0].load

    assert suite("--target", "kamailio").arrival == "constant"  # SIPp can play it
    assert suite("--target", "kamailio", "--driver", "python").arrival == "poisson"
    assert suite("--target", "sim").arrival == "poisson"  # the default suite, as written
    assert target.KamailioTarget().driver == "sipp"


def test_cli_kamailio_with_a_poisson_load_names_arrival_constant_in_one_line(
    capsys, monkeypatch, tmp_path
):
    monkeypatch.setenv("DEFERBENCH_SIPP", sys.executable)  # "installed", never run
    monkeypatch.setattr(target, "KamailioProcess", _must_not_start)
    err = _one_line_error(
        capsys,
        ["run", "--target", "kamailio", "--strategy", "inline",  # no --driver: sipp
         "--load", "reinvite:rate=5/s,duration=1s", "--out", str(tmp_path)],
    )  # fmt: skip
    assert "use arrival=constant" in err


def test_cli_driver_sipp_without_sipp_is_one_line(capsys, monkeypatch):
    monkeypatch.setenv("DEFERBENCH_SIPP", "/nonexistent/sipp")
    err = _one_line_error(
        capsys,
        ["run", "--target", "kamailio", "--driver", "sipp", "--load", LOAD_400, "--quiet"],
    )
    assert "sipp not found: install the Debian package sip-tester" in err


def test_kamailio_run_refuses_a_load_sipp_cannot_play_before_kamailio_starts(monkeypatch):
    monkeypatch.setenv("DEFERBENCH_SIPP", sys.executable)
    monkeypatch.setattr(target, "KamailioProcess", _must_not_start)
    load = parse_load("reinvite:rate=5/s,duration=1s,gap=2500us,arrival=constant")
    with pytest.raises(KamailioTargetError, match="^driver sipp: gap=2500us: SIPp pauses"):
        kamailio_run("inline", load, 1, driver="sipp")
    with pytest.raises(KamailioTargetError, match="driver 'sip': use one of python, sipp"):
        kamailio_run("inline", parse_load(LOAD_400), 1, driver="sip")


def _must_not_start(*args, **kwargs):
    raise AssertionError("Kamailio was started")


# ---------------------------------------------------------------- the SIPp UAS, by hand


def _uas_call(tmp_path: Path, order: list[str]) -> sipp.SippFigures:
    """One call sent straight to the SIPp UAS (1 re-INVITE): the requests of `order`, each
    INVITE/BYE waiting for its 200 unless marked '!' (then the next follows at once)."""
    pair = SippPair(tmp_path, ("127.0.0.1", 9), SippPlan(1.0, 1, 1, 1, 5.0))

    async def play() -> None:
        await pair.start_uas()
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind(("127.0.0.1", 0))
            sock.settimeout(2.0)
            to_tag = ""
            for item in order:
                method, cseq = item.rstrip("!")[:-1], int(item.rstrip("!")[-1])
                sock.sendto(_request(method, cseq, sock.getsockname(), pair.uas_port, to_tag),
                            ("127.0.0.1", pair.uas_port))  # fmt: skip
                if method != "ACK" and not item.endswith("!"):
                    answer = sock.recv(65_536).decode()
                    assert answer.startswith("SIP/2.0 200"), answer
                    to_tag = to_tag or answer.split("\nTo:", 1)[1].split("\n", 1)[0].strip()
        await pair.wait(grace=3.0)

    with pair:
        anyio.run(play)
    return pair.figures()


def _request(method: str, cseq: int, me: tuple, port: int, to_tag: str) -> bytes:
    to = to_tag or f"<sip:uas@127.0.0.1:{port}>"
    return (
        f"{method} sip:uas@127.0.0.1:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bK-{method}-{cseq}\r\n"
        f"From: <sip:uac@{me[0]}:{me[1]}>;tag=u1\r\nTo: {to}\r\nCall-ID: by-hand\r\n"
        f"CSeq: {cseq} {method}\r\nContact: <sip:uac@{me[0]}:{me[1]}>\r\n"
        "Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n"
    ).encode()


@needs_sipp
def test_sipp_uas_tolerates_a_reinvite_and_a_bye_that_overtook_their_ack(tmp_path):
    figures = _uas_call(tmp_path, ["INVITE1", "INVITE2!", "ACK1", "BYE3!", "ACK2"])
    assert figures.uas_status == 0 and figures.uas_failed == 0
    assert figures.acks_overtaken == 2 and figures.acks_missing == 0


@needs_sipp
def test_sipp_uas_fails_the_call_when_an_ack_never_comes(tmp_path):
    figures = _uas_call(tmp_path, ["INVITE1", "ACK1", "INVITE2", "BYE3"])
    assert figures.uas_failed == 1 and figures.uas_status != 0
    assert figures.acks_missing == 1 and figures.acks_overtaken == 1  # the BYE came first


# ---------------------------------------------------------------- real Kamailio + SIPp


class _Pids:
    """Every Kamailio and SIPp process a run started, as (PID, start time)."""

    def __init__(self, monkeypatch) -> None:
        self.seen: dict[int, int | None] = {}
        self.dirs: list[Path] = []
        stop_kamailio = target.KamailioProcess.stop
        stop_pair = SippPair.stop

        def kamailio_stopping(process, *args, **kwargs):
            self._note([process.pid, *process.table])
            self.dirs.append(process.workdir)
            return stop_kamailio(process, *args, **kwargs)

        def pair_stopping(pair, *args, **kwargs):
            self._note(pair.pids)
            return stop_pair(pair, *args, **kwargs)

        monkeypatch.setattr(target.KamailioProcess, "stop", kamailio_stopping)
        monkeypatch.setattr(SippPair, "stop", pair_stopping)

    def _note(self, pids: list[int]) -> None:
        for pid in pids:
            self.seen.setdefault(pid, target._start_time(pid))

    def left(self) -> list[int]:
        return [p for p, t in self.seen.items() if t is not None and target._start_time(p) == t]


@needs_both
@pytest.mark.parametrize("spec", ["inline", "async-sleep:ms=10"])
def test_cli_run_with_the_sipp_driver_is_clean_and_leaves_nothing(spec, tmp_path, monkeypatch,
                                                                  capsys):  # fmt: skip
    pids = _Pids(monkeypatch)
    code = cli.main(
        ["run", "--target", "kamailio", "--driver", "sipp", "--strategy", spec, "--load",
         LOAD_400, "--children", "4", "--fr-timer", "5s", "--out", str(tmp_path), "--quiet",
         "--no-plots"]
    )  # fmt: skip
    assert code == 0, capsys.readouterr().err
    (entry,) = json.loads((tmp_path / "result.json").read_text())["strategies"]
    counters = entry["counters"]
    assert counters["driver: sipp"] == 1 and "driver: python" not in counters
    ledger = entry["ledger"]
    assert ledger["transactions"] == 800 and ledger["resumed"] == 800, (ledger, counters)
    assert ledger["unknown_events"] == 0 and ledger["duplicated"] == 0
    assert counters["sipp uac: calls successful"] == 80
    assert counters["sipp uas: ACKs missing"] == 0 and counters["sipp uas: calls failed"] == 0
    assert entry["e2e_ms"]["min"] > 0 and entry["cpu"]["per_txn_us"] > 0
    assert 0.0 <= entry["cpu"]["host_steal_share"] <= 1.0  # the machine's, over the load
    if spec == "inline":
        assert counters.get("trace: suspends", 0) == 0 and entry["delay_ms"]["p50"] is None
    else:  # async ms: due = suspend + ms, never early (§3), resumed by the task worker
        assert entry["delay_ms"]["min"] >= 10.0 and entry["early_share"] == 0.0
        assert counters["resumed by async-task-worker"] == 800
        assert entry["e2e_ms"]["min"] >= 10.0
    assert len(pids.seen) >= 6  # Kamailio's processes and the two SIPp
    assert pids.left() == []
    assert pids.dirs and not any(d.exists() for d in pids.dirs)


@needs_both
def test_a_transaction_kamailio_strands_is_a_408_in_the_sipp_ledger(monkeypatch):
    load = parse_load("reinvite:rate=10/s,duration=1s,reinvites=1,gap=1ms,arrival=constant")
    run = kamailio_run(
        "async-route:ms=10,async_workers=0", load, 1, ServerSettings(children=2, fr_timer=2.0),
        idle_window=0.2, driver="sipp",
    )  # fmt: skip
    ledger = run.result["ledger"]
    assert ledger["transactions"] == 10 and ledger["timeout_408"] == 10, run.result["counters"]
    assert run.sipp is not None and run.sipp.failed == 10
    assert "received 'SIP/2.0 408" in run.sipp.first_error
    assert 1.9 <= run.result["e2e_ms"]["p50"] / 1000 <= 2.5  # fr_timer, not the 10 ms asked


@needs_both
def test_kamailio_and_sipp_are_stopped_by_pid_when_the_run_is_interrupted(monkeypatch):
    pids = _Pids(monkeypatch)
    start_uac = SippPair.start_uac

    def interrupted(pair):
        start_uac(pair)
        time.sleep(0.3)  # calls under way
        pids._note(pair.pids)
        raise KeyboardInterrupt

    monkeypatch.setattr(SippPair, "start_uac", interrupted)
    with pytest.raises(KeyboardInterrupt):
        kamailio_run("inline", parse_load(LOAD_400), 1, ServerSettings(children=2),
                     idle_window=0.1, driver="sipp")  # fmt: skip
    assert len(pids.seen) >= 4
    assert pids.left() == []
    assert pids.dirs and not any(d.exists() for d in pids.dirs)  # SIPp's files went with it


def test_sipp_binary_honours_the_environment(monkeypatch):
    monkeypatch.setenv("DEFERBENCH_SIPP", "/nonexistent/sipp")
    assert sipp.sipp_binary() is None
    monkeypatch.setenv("DEFERBENCH_SIPP", sys.executable)
    assert sipp.sipp_binary() == sys.executable
    monkeypatch.delenv("DEFERBENCH_SIPP")
    assert sipp.sipp_binary() == shutil.which("sipp")


FAKE_SIPP = """#!{python}
import socket, sys, time
from pathlib import Path
tries = Path("tries")
n = int(tries.read_text()) + 1 if tries.exists() else 1
tries.write_text(str(n))
if n <= {failing}:
    Path("uas-errors.log").write_text("Unable to bind UDP socket: Address already in use\\n")
    sys.exit(1)
port = int(sys.argv[sys.argv.index("-p") + 1])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.bind(("127.0.0.1", port))
    time.sleep(5)
"""


@pytest.mark.parametrize("failing", [1, 3])
def test_a_sipp_uas_that_exits_before_binding_is_started_again_on_a_new_port(tmp_path, failing):
    """Its port, free when probed, can be taken before SIPp binds it: a UAS that exits at
    once is started again on another port, up to three times, then the run fails in one
    line naming what SIPp said."""
    fake = tmp_path / "sipp"
    fake.write_text(FAKE_SIPP.format(python=sys.executable, failing=failing))
    fake.chmod(0o755)
    workdir = tmp_path / "work"
    pair = SippPair(workdir, ("127.0.0.1", 9), SippPlan(1.0, 1, 1, 1, 5.0), binary=str(fake))
    first_port = pair.uas_port
    try:
        if failing < sipp.UAS_START_TRIES:
            anyio.run(pair.start_uas)
            assert pair.uas_port != first_port
            assert (workdir / "tries").read_text() == str(failing + 1)
        else:
            with pytest.raises(sipp.SippError, match="3 tries.*Address already in use"):
                anyio.run(pair.start_uas)
    finally:
        pair.stop()
