"""Raw per-transaction records, streamed to CSV on request (`run --records`)."""

from __future__ import annotations

import csv
import json
from collections import Counter
from pathlib import Path

from core.runtime.server import ServerSettings
from harness.cli import main
from harness.load.network import Link
from harness.load.spec import parse_load
from harness.measure.records import DEFERRAL_COLUMNS, REINVITE_COLUMNS
from harness.targets.sim import Links, record_stem, simulate

SETTINGS = ServerSettings(cores=2, children=4)
LOAD = parse_load("reinvite:rate=20/s,duration=2s,reinvites=5,gap=1ms")
WALL_CLOCK = ("wall_seconds", "sim_txn_per_wall_s")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as file:
        return list(csv.DictReader(file))


def _figures(result: dict) -> dict:
    return {k: v for k, v in result.items() if k not in WALL_CLOCK}


def test_one_row_per_reinvite_and_per_deferral_agreeing_with_the_figures(tmp_path) -> None:
    lossy = Links(proxy_to_uac=Link(loss=0.2))  # retransmissions, and some re-INVITEs twice
    plain = simulate("mqueue-rtimer", LOAD, 3, SETTINGS, links=lossy, measure_idle=False)
    recorded = simulate("mqueue-rtimer", LOAD, 3, SETTINGS, links=lossy, measure_idle=False,
                        records=tmp_path / "mq")  # fmt: skip
    result = recorded.result
    assert _figures(result) == _figures(plain.result)  # recording changes no figure
    reinvites = _rows(tmp_path / "mq.reinvites.csv")
    deferrals = _rows(tmp_path / "mq.deferrals.csv")
    assert tuple(reinvites[0]) == REINVITE_COLUMNS and tuple(deferrals[0]) == DEFERRAL_COLUMNS
    ledger = result["ledger"]
    assert len(reinvites) == ledger["transactions"]
    assert len({(r["call_id"], r["cseq"]) for r in reinvites}) == len(reinvites)
    statuses = Counter(r["status"] for r in reinvites)
    assert statuses["491"] == ledger["race_491"] and statuses["408"] == ledger["timeout_408"]
    retransmitted = sum(int(r["retransmissions"]) for r in reinvites)
    assert retransmitted == ledger["retransmissions"] > 0
    for r in reinvites:
        e2e = float(r["final_s"]) - float(r["intended_s"])
        assert abs(float(r["e2e_ms"]) - 1000 * e2e) < 0.01
    assert sum(int(d["resumes"]) for d in deferrals) >= ledger["resumed"] > 0
    delays = [float(d["delay_ms"]) for d in deferrals if d["delay_ms"]]
    early = sum(1 for d in delays if d < 10.0) / len(delays)
    assert abs(early - result["early_share"]) < 0.01
    assert {d["resumed_by"] for d in deferrals if d["delay_ms"]} == {"rtimer"}


def test_reinvites_the_run_ended_before_their_final_get_an_empty_final(tmp_path) -> None:
    settings = ServerSettings(cores=2, children=4, fr_timer=1.0)
    load = parse_load("reinvite:rate=5/s,duration=1s,reinvites=20,gap=1ms")
    run = simulate("async-route:ms=10,async_workers=0", load, 1, settings, measure_idle=False,
                   records=tmp_path / "cut")  # fmt: skip
    rows = _rows(tmp_path / "cut.reinvites.csv")
    open_at_cut = [r for r in rows if not r["final_s"]]
    assert len(open_at_cut) == run.result["ledger"]["lost"] == 5
    assert all(r["status"] == "" and r["e2e_ms"] == "" for r in open_at_cut)
    stranded = _rows(tmp_path / "cut.deferrals.csv")
    assert stranded and all(d["resumed_s"] == "" and d["resumed_by"] == "" for d in stranded)


def test_run_records_writes_two_files_per_strategy_under_the_output(tmp_path, capsys) -> None:
    out = tmp_path / "out"
    code = main(["run", "--strategy", "inline", "--strategy", "async-sleep:ms=20",
                 "--strategy", "async-route:ms=10", "--load",
                 "reinvite:rate=5/s,duration=1s,reinvites=3", "--records", "--no-plots",
                 "--quiet", "--out", str(out)])  # fmt: skip
    assert code == 0
    names = sorted(p.name for p in (out / "records").iterdir())
    # named by short spec (ms=10 is the default)
    assert names == [f"{s}.{kind}.csv" for s in ("async-route", "async-sleep_ms=20", "inline")
                     for kind in ("deferrals", "reinvites")]  # fmt: skip
    assert len(_rows(out / "records" / "inline.reinvites.csv")) == 15
    assert _rows(out / "records" / "inline.deferrals.csv") == []  # inline defers nothing


def test_records_on_a_real_target_is_a_one_line_error(tmp_path, capsys) -> None:
    code = main(["run", "--target", "kamailio", "--records", "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1
    assert "--records: the sim target only (not kamailio" in err[0]


def test_sweep_records_each_point_under_its_rate(tmp_path, capsys) -> None:
    """A sweep's points stream their rows as a run's do, one folder per offered rate, each
    agreeing with its point's figures; the sweep's figures are those without records."""
    out = tmp_path / "sweep"
    argv = ["sweep", "--strategy", "async-sleep:ms=20", "--param", "workers=1,2", "--rates",
            "10,40", "--load", "reinvite:duration=2s,reinvites=4,gap=1ms", "--no-plots",
            "--quiet", "--jobs", "1"]  # fmt: skip
    assert main([*argv, "--records", "--out", str(out)]) == 0
    assert main([*argv, "--out", str(tmp_path / "plain")]) == 0
    capsys.readouterr()
    assert sorted(p.name for p in (out / "records").iterdir()) == ["10", "40"]
    doc = json.loads((out / "sweep.json").read_text())
    plain = json.loads((tmp_path / "plain" / "sweep.json").read_text())
    assert len(doc["points"]) == 4
    for point, other in zip(doc["points"], plain["points"], strict=True):
        assert _figures(point["entry"]) == _figures(other["entry"])
        stem = out / "records" / f"{point['reinvite_rate']:g}" / record_stem(point["strategy"])
        deferrals = _rows(stem.with_name(stem.name + ".deferrals.csv"))
        reinvites = _rows(stem.with_name(stem.name + ".reinvites.csv"))
        assert len(deferrals) == point["entry"]["ledger"]["resumed"] > 0
        assert len(reinvites) >= len(deferrals)
