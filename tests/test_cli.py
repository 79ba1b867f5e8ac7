"""End-to-end through the command line: what a user types, what they get back."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from harness.cli import main
from harness.measure.results import read_result

SMALL_LOAD = "reinvite:rate=5/s,duration=2s,reinvites=3,gap=1ms,arrival=poisson"


def run_cli(capsys, *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors and --help
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def test_console_script_help_works():
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "--help"], capture_output=True, text=True, timeout=60
    )
    assert proc.returncode == 0
    for command in ("run", "sweep", "strategies", "compare", "check"):
        assert command in proc.stdout


def test_strategies_lists_every_strategy_with_parameters(capsys):
    code, out, _ = run_cli(capsys, "strategies")
    assert code == 0
    for name in ("inline", "blocking-sleep", "mqueue-rtimer", "async-route", "async-sleep",
                 "async-task"):  # fmt: skip
        assert name in out
    assert "timers=12" in out and "interval=10ms" in out


def test_strategies_spec_prints_the_kamailio_config_with_the_core_pool_trap(capsys):
    code, out, _ = run_cli(capsys, "strategies", "async-route:ms=10,async_workers=0")
    assert code == 0
    assert 'modparam("async", "ms_timer"' in out.replace('","', '", "') or "ms_timer" in out
    assert "async_workers" in out
    assert "WARNING" in out  # the silent strand is called out in the generated cfg


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["strategies", "frobnicate"], "unknown strategy 'frobnicate'"),
        (["strategies", "mqueue-rtimer:timerz=3"], "unknown parameter timerz"),
        (["strategies", "mqueue-rtimer:interval=10"], "interval"),
        (["run", "--strategy", "inline", "--load", "reinvite:rate=fast"], "rate"),
        (["run", "--suite", "no-such-suite"], "unknown suite"),
        (["run", "--fr-timer", "30"], "--fr-timer"),
        (["run", "--children", "0"], "children"),
        (["compare", "/nonexistent/a.json", "/nonexistent/b.json"], "a.json"),
        (["sweep", "--strategy", "inline", "--param", "timers=1..4"], "no parameter timers"),
        (["run", "--out", "/proc/deferbench"], "--out /proc/deferbench: cannot"),
        (["run", "--jobs", "-1"], "--jobs: must be a whole number >= 1, got '-1'"),
        (["sweep", "--jobs", "0"], "--jobs: must be a whole number >= 1, got '0'"),
        (["sweep", "--rates", "10", "--out", "/proc/deferbench"], "--out /proc/deferbench: cannot"),
        (
            ["recommend", "--rate", "10/s", "--delay", "10ms", "--out", "/proc/deferbench"],
            "--out /proc/deferbench: cannot",
        ),
        (
            ["calibrate", "--refit", "results/calibration/20261206-073006", "--out", "/proc/d"],
            "--out /proc/d: cannot",
        ),
        (
            ["check", "--update", "--baseline", "/proc/d/b.json", "results/baseline/ci.json"],
            "--baseline /proc/d: cannot",
        ),
        (["sweep", "--strategy", "inline", "--target-rate", "500"], "--target-rate needs --param"),
        (["bogus-command"], "invalid choice"),
        (["run", "--network", "latency=1"], "bad latency"),
        (["run", "--network", "jitter=1ms,delay=2ms"], "not one of"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(capsys, argv, needle):
    code, _, err = run_cli(capsys, *argv)
    assert code == 2
    assert needle in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1


def test_corrupt_and_foreign_result_files_are_one_line_errors(capsys, tmp_path):
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_text('{"schema": "deferbench.result/1", "strat', encoding="utf-8")
    foreign = tmp_path / "foreign.json"
    foreign.write_text(json.dumps({"schema": "someone-else/3"}), encoding="utf-8")
    for path in (corrupt, foreign):
        code, _, err = run_cli(capsys, "check", "--baseline", str(path), str(path))
        assert code == 2
        assert str(path) in err and len(err.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def small_run(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("run")
    argv = ["run", "--strategy", "inline", "--strategy", "async-route", "--load", SMALL_LOAD]
    code = main([*argv, "--seed", "3", "--out", str(out), "--quiet", "--jobs", "1"])
    assert code == 0
    return out


def test_run_writes_result_csv_and_plots_and_prints_the_table(small_run, capsys):
    result = read_result(small_run / "result.json")
    assert [s.strategy.split(":")[0] for s in result.strategies] == ["inline", "async-route"]
    assert result.command[:2] == ["deferbench", "run"]
    assert result.load.reinvite_rate == pytest.approx(15.0)
    for name in ("result.csv", "delay_cdf.png", "delay_spectrum.png", "e2e_spectrum.png"):
        assert (small_run / name).stat().st_size > 0
    inline, routed = result.strategies
    assert result.network == "1ms±1ms"
    assert inline.ledger.race_491 > 0  # the default network shows the race ...
    assert routed.ledger.transactions > 0 and routed.ledger.clean  # ... that deferral prevents
    assert routed.delay_ms["min"] >= 10.0  # async ms never resumes early


def test_check_passes_against_itself_and_catches_a_worse_run(small_run, capsys, tmp_path):
    baseline_dir = tmp_path / "baseline"
    code, out, _ = run_cli(capsys, "check", "--baseline", str(baseline_dir),
                           str(small_run / "result.json"), "--update")  # fmt: skip
    assert code == 0 and "baseline updated" in out
    code, out, _ = run_cli(capsys, "check", "--baseline", str(baseline_dir),
                           str(small_run / "result.json"))  # fmt: skip
    assert code == 0, out
    # A baseline that was better (smaller delays) makes the same run a regression.
    [baseline_file] = baseline_dir.glob("*.json")
    doc = json.loads(baseline_file.read_text())
    doc["strategies"][1]["delay_ms"]["p99"] = doc["strategies"][1]["delay_ms"]["p99"] - 0.5
    baseline_file.write_text(json.dumps(doc))
    code, out, _ = run_cli(capsys, "check", "--baseline", str(baseline_dir),
                           str(small_run / "result.json"))  # fmt: skip
    assert code == 1
    assert "delay_ms.p99" in out


def test_same_seed_in_a_fresh_process_gives_identical_sim_figures(small_run, tmp_path):
    out = tmp_path / "again"
    exe = [sys.executable, "-m", "harness.cli"]  # CI runs pytest without the venv on PATH
    proc = subprocess.run(
        [*exe, "run", "--strategy", "inline", "--strategy", "async-route", "--load", SMALL_LOAD,
         "--seed", "3", "--out", str(out), "--quiet", "--no-plots"],
        capture_output=True, text=True, timeout=300, env=None,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    check = subprocess.run(
        [*exe, "check", "--baseline", str(small_run / "result.json"), str(out / "result.json")],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert check.returncode == 0, check.stdout + check.stderr


def test_compare_shows_both_runs_with_ratios(small_run, capsys):
    code, out, _ = run_cli(capsys, "compare", str(small_run / "result.json"),
                           str(small_run / "result.json"))  # fmt: skip
    assert code == 0
    assert "delay p99 ms" in out and "1×" in out


def test_suites_ship_and_validate():
    from harness.load.suites import load_suite, shipped_suites

    assert {"default", "idle", "overload", "ci"} <= set(shipped_suites())
    for name in shipped_suites():
        suite = load_suite(name)
        assert suite.runs and all(run.strategies for run in suite.runs)


def test_sweep_on_a_dask_local_cluster_reports_capacity(capsys, tmp_path):
    distributed = pytest.importorskip("distributed")
    with distributed.LocalCluster(
        n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None
    ) as cluster:
        code, out, err = run_cli(
            capsys,
            "sweep",
            "--strategy",
            "mqueue-rtimer",
            "--param",
            "timers=1,4",
            "--rates",
            "50,150",
            "--target-rate",
            "150",
            "--load",
            "reinvite:duration=2s,reinvites=5",
            "--scheduler",
            cluster.scheduler_address,
            "--out",
            str(tmp_path),
            "--quiet",
            "--no-plots",
            "--costs",
            "built-in",
        )  # fmt: skip  (built-in: the figures must not move with each calibration)
    assert code == 0, err
    assert "capacity" in out
    doc = json.loads((tmp_path / "sweep.json").read_text())
    assert len(doc["points"]) == 4
    caps = doc["capacity"]
    one = next(v for k, v in caps.items() if "timers=1," in k)
    four = next(v for k, v in caps.items() if "timers=4," in k)
    assert (four or 0) >= (one or 0)  # more timers never lower capacity
    assert list(doc["tuning"].values()) == [4]


def test_repeat_collects_wall_clock_samples_and_keeps_sim_figures_identical(capsys, tmp_path):
    code, _, err = run_cli(capsys, "run", "--strategy", "async-task", "--load", SMALL_LOAD,
                           "--repeat", "3", "--out", str(tmp_path), "--quiet", "--no-plots",
                           "--jobs", "1")  # fmt: skip
    assert code == 0, err
    [entry] = read_result(tmp_path / "result.json").strategies
    assert len(entry.samples["wall_seconds"]) == 3
    assert len(entry.samples["sim_txn_per_wall_s"]) == 3
    code, _, err = run_cli(capsys, "run", "--repeat", "0")
    assert code == 2 and "--repeat" in err


def test_a_strategy_named_twice_runs_and_reports_once(capsys, tmp_path):
    """Two spellings of one strategy (here: the same parameters in another order)
    are one strategy: one run, one row, one entry, in the order first given."""
    code, out, err = run_cli(capsys, "run", "--strategy", "async-sleep:ms=10,workers=2",
                             "--strategy", "inline", "--strategy", "async-sleep:workers=2,ms=10",
                             "--load", SMALL_LOAD, "--out", str(tmp_path), "--no-plots",
                             "--jobs", "1")  # fmt: skip
    assert code == 0, err
    entries = read_result(tmp_path / "result.json").strategies
    assert [e.strategy.split(":")[0] for e in entries] == ["async-sleep", "inline"]
    assert [line.split()[0] for line in out.splitlines() if line.startswith(("async", "inl"))
            ] == ["async-sleep:workers=2", "inline"]  # fmt: skip


def test_the_sim_charges_the_adopted_calibration_unless_told_otherwise(capsys, tmp_path):
    from harness.profile import ADOPTED

    costs = {}
    for name, extra in (("default", ()), ("built-in", ("--costs", "built-in"))):
        code, _, err = run_cli(capsys, "run", "--strategy", "inline", "--load", SMALL_LOAD,
                               "--out", str(tmp_path / name), "--quiet", "--no-plots",
                               *extra)  # fmt: skip
        assert code == 0, err
        result = read_result(tmp_path / name / "result.json")
        costs[name] = (result.costs, result.strategies[0].cpu.per_txn_us)
    assert costs["built-in"][0] == "built-in"
    if ADOPTED.is_file():  # committed with the project
        assert costs["default"][0] == "results/calibration/profile.toml"
        assert costs["default"][1] != costs["built-in"][1]  # a different profile was charged


def test_ctrl_c_while_the_command_line_loads_ends_quietly(monkeypatch, capsys):
    """The console script's first tenth of a second is spent importing; a ^C there must not
    print a traceback either."""
    from harness import launch

    class Interrupted:
        def find_spec(self, name, path=None, target=None):
            if name == "harness.cli":
                raise KeyboardInterrupt
            return None

    monkeypatch.delitem(sys.modules, "harness.cli")
    monkeypatch.setattr(sys, "meta_path", [Interrupted(), *sys.meta_path])
    try:
        code = launch.main()
    except KeyboardInterrupt:
        pytest.fail("the ^C escaped the console script")
    assert code == 130
    assert capsys.readouterr().err == "deferbench: interrupted\n"
