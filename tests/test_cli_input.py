"""What the command line does with what a user types: every --help page, files that do not
exist, loads no target can carry, and arbitrary text in every spec parser and result file —
always one line and exit 2, never a traceback."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import strategies
from harness.cli import build_parser, main
from harness.cli.common import UsageError, rate_list
from harness.load.network import parse_link
from harness.load.spec import SIM_REINVITES_PER_WALL_S, LoadError, check_plausible, parse_load
from harness.measure.results import ResultError, read_result
from strategies.spec import SpecError, parse_duration

NOWHERE = "/proc/deferbench-no-such-dir/out"  # --out that cannot be created: nothing runs


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exc:  # argparse usage errors and --help
        code = exc.code if isinstance(exc.code, int) else 1
    out, err = capsys.readouterr()
    return code, out, err


def one_line_usage_error(code: int, err: str) -> None:
    assert code == 2, err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert err.startswith("deferbench"), err


# ---------------------------------------------------------------------------- --help


def _commands(parser: argparse.ArgumentParser, path: tuple[str, ...] = ()) -> list[tuple]:
    """Every command path of the parser, found by walking its subparsers."""
    found = [path]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found += _commands(sub, (*path, name))
    return found


COMMANDS = _commands(build_parser())


def test_the_walk_finds_every_command():
    names = {path[0] for path in COMMANDS if path}
    assert {"run", "sweep", "calibrate", "serve", "compare", "check", "strategies"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "deferbench")
def test_every_help_page_works(capsys, path):
    code, out, err = run_cli(capsys, *path, "--help")
    assert code == 0, err
    assert out.strip() and "usage:" in out
    assert "Traceback" not in err


# ---------------------------------------------------------------------------- files


@pytest.mark.parametrize(
    "argv, path",
    [
        (["check", "--baseline", "/nope/base.json", "RESULT"], "/nope/base.json"),
        (["check", "--baseline", "/nope/dir", "RESULT"], "/nope/dir"),
        (["check", "--baseline", "RESULT", "/nope/result.json"], "/nope/result.json"),
        (["compare", "/nope/a.json", "RESULT"], "/nope/a.json"),
        (["compare", "RESULT", "/nope/b.json"], "/nope/b.json"),
        (["run", "--costs", "/nope/costs.toml"], "/nope/costs.toml"),
        (["run", "--suite", "/nope/suite.toml"], "/nope/suite.toml"),
        (["sweep", "--costs", "/nope/costs.toml", "--rates", "10"], "/nope/costs.toml"),
        (["run", "--strategy", "inline", "--load", "rate=1/s,duration=1s", "--out", NOWHERE],
         NOWHERE),
    ],
)  # fmt: skip
def test_a_missing_file_is_one_line_naming_it(capsys, small_result, argv, path):
    argv = [str(small_result) if a == "RESULT" else a for a in argv]
    code, _, err = run_cli(capsys, *argv)
    one_line_usage_error(code, err)
    assert path in err
    assert "no such" in err or "cannot" in err


def test_check_refuses_an_incomplete_result(capsys, small_result, tmp_path):
    data = json.loads(small_result.read_text())
    data["incomplete"] = {"signal": "SIGTERM", "missing": ["async-task"]}
    stopped = tmp_path / "stopped.json"
    stopped.write_text(json.dumps(data))
    assert read_result(stopped).incomplete.missing == ["async-task"]
    for extra in ([], ["--update"]):
        code, _, err = run_cli(capsys, "check", "--baseline", str(small_result), str(stopped),
                               *extra)  # fmt: skip
        one_line_usage_error(code, err)
        assert "incomplete" in err


@pytest.fixture(scope="module")
def small_result(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("small")
    assert main(["run", "--strategy", "inline", "--load", "rate=2/s,duration=1s,reinvites=2",
                 "--out", str(out), "--quiet", "--no-plots"]) == 0  # fmt: skip
    assert "incomplete" not in json.loads((out / "result.json").read_text())
    return out / "result.json"


# ---------------------------------------------------------------------------- loads


@pytest.mark.parametrize(
    "argv, needles",
    [
        (["run", "--load", "reinvite:rate=10000000/s,duration=1s"],
         ["100,000,000 re-INVITEs", "5,000,000", f"{SIM_REINVITES_PER_WALL_S:,} per wall second"]),
        (["run", "--load", "reinvite:rate=2000/s,duration=60s"],
         ["20,000 re-INVITEs/s", "GB", "7.5 KB"]),
        (["run", "--load", "reinvite:rate=0/s,duration=10s"], ["idle:duration=10s"]),
        (["run", "--suite", "SUITE_RATE_0"], ["idle:duration=5s"]),
        (["run", "--target", "live", "--load", "reinvite:rate=200/s,duration=2s"],
         ["2,000 re-INVITEs/s", "python driver", "1,000/s"]),
        (["run", "--target", "kamailio", "--driver", "python",
          "--load", "reinvite:rate=200/s,duration=2s"],
         ["python driver", "--driver sipp"]),
        (["run", "--target", "kamailio", "--driver", "sipp",
          "--load", "reinvite:rate=1000/s,duration=2s,arrival=constant"],
         ["10,000 re-INVITEs/s", "sipp driver", "6,000"]),
    ],
)  # fmt: skip
def test_a_load_no_target_can_carry_is_refused_before_it_runs(capsys, tmp_path, argv, needles):
    suite = tmp_path / "zero.toml"
    suite.write_text('target = "sim"\nseed = 1\n[[runs]]\nload = "reinvite:rate=0/s,duration=5s"\n'
                     'strategies = ["inline"]\n')  # fmt: skip
    argv = [str(suite) if a == "SUITE_RATE_0" else a for a in argv]
    code, out, err = run_cli(capsys, *argv, "--out", str(tmp_path / "out"))
    one_line_usage_error(code, err)
    for needle in needles:
        assert needle in err
    assert not (tmp_path / "out" / "result.json").exists() and out == ""


def test_the_idle_suite_still_runs_the_idle_load(capsys, tmp_path):
    from harness.load.suites import load_suite

    assert load_suite("idle").runs[0].load.spec == "idle:duration=10s"
    code, out, err = run_cli(
        capsys,
        "run",
        "--strategy",
        "mqueue-rtimer",
        "--load",
        "idle:duration=2s",
        "--out",
        str(tmp_path),
        "--quiet",
        "--no-plots",
    )
    assert code == 0, err
    result = read_result(tmp_path / "result.json")
    assert result.load.spec == "idle:duration=2s" and result.load.call_rate == 0
    assert result.strategies[0].cpu.idle_share > 0


# ---------------------------------------------------------------------------- properties

TEXT = st.one_of(
    st.text(max_size=60),
    st.text(alphabet="reinvt:=,/smuµ0123456789.-_ab kilo%", max_size=60),
    st.sampled_from(["inline", "reinvite:", "idle:", "rate=", "timers=", "latency=1ms"]).flatmap(
        lambda head: st.text(alphabet=":=,/sm0123456789.-e", max_size=30).map(head.__add__)
    ),
)
PARSERS = {
    "strategy": (strategies.parse_spec, SpecError),
    "load": (parse_load, LoadError),
    "network": (parse_link, ValueError),
    "duration": (parse_duration, SpecError),
    "rates": (lambda t: rate_list(t, "--rates"), UsageError),
}


@pytest.mark.parametrize("name", PARSERS)
@given(text=TEXT)
@settings(max_examples=300, deadline=None)
def test_every_spec_parser_gives_its_own_one_line_error(name, text):
    parse, error = PARSERS[name]
    try:
        parsed = parse(text)
    except error as exc:
        assert str(exc) and "\n" not in str(exc)
    else:
        if name == "load":
            try:
                check_plausible(parsed)
            except LoadError as exc:
                assert "\n" not in str(exc)


FLAGS = {
    "--strategy": ["run", "--load", "rate=1/s,duration=1s"],
    "--load": ["run", "--strategy", "inline"],
    "--network": ["run", "--strategy", "inline", "--load", "rate=1/s,duration=1s"],
    "--fr-timer": ["run", "--strategy", "inline", "--load", "rate=1/s,duration=1s"],
}


@pytest.mark.parametrize("flag", FLAGS)
@given(text=TEXT)
@settings(max_examples=150, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_arbitrary_text_through_main_is_one_line_and_exit_2(capsys, flag, text):
    # --out cannot be created: a spec that parses still stops before anything runs
    code, out, err = run_cli(capsys, *FLAGS[flag], f"{flag}={text}", "--out", NOWHERE, "--quiet")
    one_line_usage_error(code, err)


@given(
    content=st.one_of(
        st.binary(max_size=200),
        st.text(max_size=200).map(str.encode),
        st.recursive(
            st.none() | st.booleans() | st.integers() | st.text(),
            lambda kids: st.lists(kids) | st.dictionaries(st.text(), kids),
            max_leaves=20,
        ).map(lambda v: json.dumps(v).encode()),
    )
)
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_arbitrary_result_files_are_one_line_errors(capsys, tmp_path, content):
    path = tmp_path / "result.json"
    path.write_bytes(content)
    with pytest.raises(ResultError) as caught:
        read_result(path)
    assert "\n" not in str(caught.value) and str(path) in str(caught.value)
    code, _, err = run_cli(capsys, "compare", str(path), str(path))
    one_line_usage_error(code, err)


@given(
    document=st.fixed_dictionaries({"schema": st.just("deferbench.result/1")}).flatmap(
        lambda base: st.dictionaries(
            st.sampled_from(
                [
                    "tool_version",
                    "created",
                    "command",
                    "target",
                    "backend",
                    "load",
                    "seed",
                    "server",
                    "machine",
                    "strategies",
                    "incomplete",
                ]
            ),
            st.none()
            | st.integers()
            | st.text(max_size=5)
            | st.lists(st.integers(), max_size=2)
            | st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
        ).map(lambda d: {**base, **d})
    )
)
@settings(max_examples=300, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
def test_mistyped_result_documents_name_the_json_path(tmp_path, document):
    path = tmp_path / "result.json"
    path.write_text(json.dumps(document))
    with pytest.raises(ResultError) as caught:
        read_result(path)
    assert "\n" not in str(caught.value)
