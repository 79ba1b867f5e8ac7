"""Result files round-trip, and every corrupt, foreign or truncated file is one clear line."""

from __future__ import annotations

import copy
import csv
import json
from pathlib import Path

import pytest

from harness.load.spec import parse_load
from harness.measure.ledger import Ledger
from harness.measure.metrics import Distribution, early_share, lateness_summary
from harness.measure.results import (
    CSV_COLUMNS,
    SCHEMA,
    CpuFigures,
    Histograms,
    LoadRecord,
    MachineFacts,
    QueueDepth,
    ResultError,
    RoleCpu,
    RunResult,
    ServerFacts,
    StrategyResult,
    _cpu_model,
    read_result,
    write_result,
)

LOAD = "reinvite:rate=20/s,duration=2s,reinvites=3,gap=1ms,arrival=constant,race_code=491"


def make_strategy(
    spec: str = "mqueue-rtimer:timers=12,interval=10ms",
    delays: list[float] | None = None,
    requested: float | None = 0.010,
    lost: int = 0,
    busy_share: float = 0.12,
    target: str = "sim",
    seed: int = 1,
) -> StrategyResult:
    """A strategy result built the way a run builds one: from a Distribution and a Ledger."""
    delays = [0.010 + 0.0001 * (i % 50) for i in range(120)] if delays is None else delays
    delay, e2e = Distribution(), Distribution()
    delay.record_all(delays)
    e2e.record_all(d + 0.002 for d in delays)
    ledger = Ledger()
    for i in range(len(delays) + lost):
        key = (f"call-{i // 3}", 2 + i % 3)
        ledger.open(key)
        if i < len(delays):
            ledger.resumed(key)
            ledger.final(key, 200)
    delay_ms = delay.summary()
    requested_ms = None if requested is None else requested * 1e3
    return StrategyResult(
        strategy=spec,
        params={"timers": 12, "interval": 0.01},
        target=target,
        load=LOAD,
        seed=seed,
        requested_delay_ms=requested_ms,
        delay_ms=delay_ms,
        lateness_ms=lateness_summary(delay_ms, requested_ms or 0.0),
        e2e_ms=e2e.summary(),
        early_share=early_share(delays, requested or 0.0),
        ledger=ledger.close(),
        cpu=CpuFigures(
            busy_share=busy_share,
            idle_share=0.001,
            wakeups_per_s=1200.0,
            per_txn_us=35.5,
            by_role={"timer": RoleCpu(0.02, 1200.0), "sip_worker": RoleCpu(0.1, None)},
        ),
        counters={"suspended": len(delays), "mq_fetch_empty": 900},
        queue_depth=QueueDepth(max=3, mean=0.25),
        histograms=Histograms(delay=delay.encode(), e2e=e2e.encode()),
        wall_seconds=0.8,
        sim_txn_per_wall_s=150.0 if target == "sim" else None,
    )


def make_run(strategies: list[StrategyResult] | None = None, **changes) -> RunResult:
    load = parse_load(LOAD)
    run = RunResult(
        tool_version="0.1.0",
        created="2025-01-31T12:00:00Z",
        command=["deferbench", "run", "--load", LOAD, "--seed", "1"],
        target="sim",
        backend="trio",
        load=LoadRecord.from_spec(load),
        seed=1,
        server=ServerFacts(children=8, cores=4, fr_timer_ms=30000),
        machine=MachineFacts("Linux-test", "3.11.2", 8, "Test CPU"),
        strategies=strategies
        if strategies is not None
        else [make_strategy(), make_strategy("inline", requested=None, busy_share=0.05)],
    )
    for key, value in changes.items():
        setattr(run, key, value)
    return run


def write_json(path: Path, data) -> Path:
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


# --- round trip --------------------------------------------------------------------------


def test_write_then_read_gives_the_same_result(tmp_path):
    run = make_run()
    path = write_result(run, tmp_path / "out")
    assert path == tmp_path / "out" / "result.json"
    back = read_result(path)
    assert back == run
    assert read_result(tmp_path / "out") == run  # a directory is read as its result.json


def test_document_shape(tmp_path):
    data = json.loads(write_result(make_run(), tmp_path).read_text())
    assert list(data)[0] == "schema" and data["schema"] == SCHEMA == "deferbench.result/1"
    assert data["load"]["spec"] == LOAD
    assert data["load"]["call_rate"] == 20.0 and data["load"]["reinvite_rate"] == 60.0
    assert data["load"]["fields"]["arrival"] == "constant"
    first = data["strategies"][0]
    assert set(first["delay_ms"]) == {"min", "p50", "p90", "p99", "p999", "max", "mean"}
    assert first["ledger"]["transactions"] == 120 and first["ledger"]["resumed"] == 120
    assert set(first["cpu"]) == {
        "busy_share",
        "idle_share",
        "wakeups_per_s",
        "per_txn_us",
        "by_role",
    }
    assert first["histograms"]["delay"].startswith("HISTF")
    assert data["strategies"][1]["requested_delay_ms"] is None


def test_histograms_decode_to_the_recorded_distribution(tmp_path):
    back = read_result(write_result(make_run(), tmp_path))
    strategy = back.strategies[0]
    assert len(strategy.delay_distribution()) == 120
    assert strategy.delay_distribution().summary()["p50"] == pytest.approx(
        strategy.delay_ms["p50"], rel=2e-3
    )


def test_csv_has_one_row_per_strategy_with_headline_figures(tmp_path):
    run = make_run()
    write_result(run, tmp_path)
    with open(tmp_path / "result.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == list(CSV_COLUMNS)
    assert [r["strategy"] for r in rows] == [s.strategy for s in run.strategies]
    assert float(rows[0]["delay_p99_ms"]) == run.strategies[0].delay_ms["p99"]
    assert rows[0]["clean"] == "1" and rows[0]["lost"] == "0"
    assert rows[1]["requested_delay_ms"] == ""  # null is an empty cell


def test_empty_distributions_are_null(tmp_path):
    run = make_run([make_strategy(delays=[], lost=5)])
    back = read_result(write_result(run, tmp_path))
    assert back.strategies[0].delay_ms["p99"] is None
    assert back.strategies[0].early_share is None
    assert back.strategies[0].ledger.lost == 5


def test_machine_facts(tmp_path):
    facts = MachineFacts.current()
    assert facts.platform and facts.python.count(".") == 2
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 3.00GHz\n")
    assert _cpu_model(str(cpuinfo)) == "Example CPU @ 3.00GHz"
    assert _cpu_model(str(tmp_path / "missing")) is None


# --- bad files ---------------------------------------------------------------------------


def good_json(tmp_path: Path) -> dict:
    return json.loads(write_result(make_run(), tmp_path / "good").read_text())


def read_error(path: Path) -> str:
    with pytest.raises(ResultError) as info:
        read_result(path)
    message = str(info.value)
    assert "\n" not in message
    assert str(path) in message
    return message


def test_missing_file(tmp_path):
    assert "no such result file" in read_error(tmp_path / "nothing.json")


def test_truncated_file(tmp_path):
    text = (write_result(make_run(), tmp_path / "t")).read_text()
    path = tmp_path / "truncated.json"
    path.write_text(text[: len(text) // 2])
    assert "not JSON" in read_error(path)


def test_binary_file(tmp_path):
    path = tmp_path / "binary.json"
    path.write_bytes(b"\xff\xfe\x00garbage")
    assert "not JSON" in read_error(path)


def test_nan_is_not_accepted(tmp_path):
    path = tmp_path / "nan.json"
    path.write_text(
        json.dumps(good_json(tmp_path)).replace('"wall_seconds": 0.8', '"wall_seconds": NaN')
    )
    assert "NaN" in read_error(path)


def test_not_an_object(tmp_path):
    assert "not a JSON object" in read_error(write_json(tmp_path / "list.json", [1, 2]))


def test_no_schema(tmp_path):
    data = good_json(tmp_path)
    del data["schema"]
    assert "no 'schema' field" in read_error(write_json(tmp_path / "x.json", data))


def test_foreign_schema(tmp_path):
    message = read_error(write_json(tmp_path / "x.json", {"schema": "sipp.stats/3", "rows": []}))
    assert "foreign schema" in message and "sipp.stats/3" in message


def test_other_schema_version(tmp_path):
    data = good_json(tmp_path)
    data["schema"] = "deferbench.result/2"
    message = read_error(write_json(tmp_path / "x.json", data))
    assert "deferbench.result/2" in message and "deferbench.result/1" in message


@pytest.mark.parametrize(
    "path, value, expected",
    [
        ("strategies.1.delay_ms.p99", "missing", "strategies[1].delay_ms.p99: missing"),
        (
            "strategies.1.delay_ms.p99",
            "fast",
            "strategies[1].delay_ms.p99: expected a number or null",
        ),
        ("strategies.0.ledger.lost", 1.5, "strategies[0].ledger.lost: expected an integer"),
        ("strategies.0.ledger.lost", True, "strategies[0].ledger.lost: expected an integer"),
        ("strategies.0.ledger.lost", -1, "strategies[0].ledger.lost: -1 is below 0"),
        (
            "strategies.0.cpu.by_role.timer.busy_share",
            "x",
            "strategies[0].cpu.by_role.timer.busy_share",
        ),
        (
            "strategies.0.counters.suspended",
            2.5,
            "strategies[0].counters.suspended: expected an integer",
        ),
        (
            "strategies.0.histograms.delay",
            "HISTFbroken",
            "strategies[0].histograms.delay: not an HDR",
        ),
        (
            "strategies.0.wall_seconds",
            None,
            "strategies[0].wall_seconds: expected a number, got null",
        ),
        ("strategies.0.cpu", [], "strategies[0].cpu: expected an object, got a list"),
        ("strategies.0", "oops", "strategies[0]: expected an object"),
        ("strategies", {}, "strategies: expected a list"),
        ("seed", "1", "seed: expected an integer"),
        ("command.2", 7, "command[2]: expected a string"),
        ("load.call_rate", "missing", "load.call_rate: missing"),
        ("server.cores", "four", "server.cores: expected an integer"),
        ("machine.cpu_model", 3, "machine.cpu_model: expected a string or null"),
    ],
)
def test_missing_or_mistyped_fields_are_named_by_path(tmp_path, path, value, expected):
    data = good_json(tmp_path)
    *parents, last = path.split(".")
    node = data
    for part in parents:
        node = node[int(part)] if isinstance(node, list) else node[part]
    if value == "missing":
        del node[last]
    elif isinstance(node, list):
        node[int(last)] = value
    else:
        node[last] = value
    assert expected in read_error(write_json(tmp_path / "bad.json", data))


def test_unknown_extra_fields_are_ignored(tmp_path):
    data = good_json(tmp_path)
    data["future_field"] = {"x": 1}
    data["strategies"][0]["also_new"] = [1]
    assert read_result(write_json(tmp_path / "x.json", data)) == make_run()


def test_writing_does_not_change_the_result(tmp_path):
    run = make_run()
    before = copy.deepcopy(run)
    write_result(run, tmp_path)
    assert run == before
    assert not list(tmp_path.glob("*.tmp"))
