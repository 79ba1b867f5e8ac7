"""The live target end to end: `deferbench serve` in a subprocess, UDP on 127.0.0.1.

A modest load (a few seconds each) through every strategy on both anyio backends must
give a clean ledger and a valid result entry; the CLI's `run --target live` writes a
result document. Bounded: every run has a hard end and stops serve by PID.
"""

from __future__ import annotations

import json
import os

import pytest

import strategies
from core.runtime.server import ServerSettings
from harness.cli import main
from harness.load.spec import parse_load
from harness.measure.results import read_result
from harness.runner import Job, assemble, run_job
from harness.targets.base import host_ticks
from harness.targets.live.target import LiveTarget, live_run

LOAD = parse_load("reinvite:rate=10/s,duration=1s,reinvites=3,gap=1ms")
SETTINGS = ServerSettings(children=4, fr_timer=3.0)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


@pytest.mark.parametrize("backend", ["trio", "asyncio"])
@pytest.mark.parametrize("spec", strategies.names())
def test_every_strategy_runs_live_with_a_clean_ledger(spec, backend):
    run = live_run(spec, LOAD, 3, SETTINGS, backend, idle_window=0.2)
    entry = run.result
    ledger = entry["ledger"]
    assert ledger["transactions"] == 30  # 10 calls x 3 re-INVITEs, each accounted for
    for bad in ("lost", "duplicated", "stale", "reordered", "timeout_408", "error_5xx"):
        assert ledger[bad] == 0, (bad, ledger, entry["counters"])
    assert ledger["unknown_events"] == ledger["duplicate_open"] == 0
    if spec == "inline":  # the undeferred control may lose a glare race on a real clock
        assert ledger["resumed"] + ledger["race_491"] == 30
    else:
        assert ledger["resumed"] == 30, (ledger, entry["counters"])
    assert entry["target"] == "live"
    assert entry["counters"]["calls unfinished"] == 0
    assert entry["e2e_ms"]["p50"] is not None
    cpu = entry["cpu"]
    assert 0 < cpu["busy_share"] <= 1.5  # a share of one core (a little slack for jitter)
    assert cpu["by_role"]["sip-worker"]["busy_share"] > 0
    assert cpu["per_txn_us"] > 0
    if host_ticks() is not None:  # whether the host disturbed the run, as for Kamailio
        assert 0 <= cpu["host_steal_share"] <= 1
    if spec not in ("inline",):
        requested = entry["requested_delay_ms"]
        assert entry["delay_ms"]["p50"] is not None
        if requested:  # a timer-based deferral on the real clock is never far too short
            assert entry["delay_ms"]["max"] < requested + 1000
    assert not _alive(run.serve_pid)


def test_live_entry_assembles_into_a_valid_document():
    target = LiveTarget(backend="asyncio")
    entry = run_job(Job("mqueue-rtimer", LOAD.spec, 1, SETTINGS, target))
    result = assemble([entry], load=LOAD, seed=1, settings=SETTINGS, target=target,
                      command=["test"])  # fmt: skip
    assert result.backend == "asyncio"
    assert result.strategies[0].ledger.clean
    assert result.strategies[0].cpu.idle_share is not None
    assert (result.strategies[0].cpu.host_steal_share is None) == (host_ticks() is None)


def test_cli_run_target_live_writes_a_result(tmp_path, capsys):
    out = tmp_path / "live"
    status = main([
        "run", "--target", "live", "--backend", "trio", "--strategy", "async-task",
        "--load", "reinvite:rate=5/s,duration=1s,reinvites=2,gap=1ms", "--fr-timer", "3s",
        "--out", str(out), "--no-plots", "--quiet",
    ])  # fmt: skip
    assert status == 0
    result = read_result(out / "result.json")
    assert result.target == "live" and result.backend == "trio"
    assert result.strategies[0].ledger.transactions == 10
    assert json.loads((out / "result.json").read_text())["strategies"][0]["target"] == "live"


def test_cli_refuses_costs_on_the_live_target(tmp_path, capsys):
    costs = tmp_path / "c.toml"
    costs.write_text("[costs]\nrequest = 1\n")
    status = main(["run", "--target", "live", "--strategy", "inline", "--costs", str(costs)])
    assert status == 2
    assert "--costs" in capsys.readouterr().err


def test_shed_calls_are_visible_in_the_live_entry():
    """With a cap of one transaction the first call holds it for its wait timer: every later
    call's INVITE is answered 503, and the entry counts them on both sides."""
    run = live_run("inline", LOAD, 3, SETTINGS, "trio", idle_window=0.2,
                   serve_args=("--max-transactions", "1"))  # fmt: skip
    counters = run.result["counters"]
    refused = counters["harness: uac: calls refused 503"]
    assert refused >= 9  # calls 2..10 at least (call 1 found nothing live)
    assert counters["shed: 503 over transaction cap"] >= refused
    assert counters["calls unfinished"] == 0
