"""`deferbench recommend`: the operator's question answered end to end through the CLI, and
the judgement behind it on hand-made result entries."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest

from core.runtime.server import ServerSettings
from harness.analysis.recommend import Question, candidates, cfg_lines, failures
from harness.cli import main

QUESTION = Question(rate=500, delay=0.010, settings=ServerSettings(children=8, cores=2))


def _entry(**over) -> dict:
    ledger = {"transactions": 100, "resumed": 100, "race_491": 0, "lost": 0, "timeout_408": 0}
    entry = {
        "requested_delay_ms": 10.0,
        "early_share": 0.0,
        "lateness_ms": {"p99": 4.0},
        "ledger": ledger,
    }
    ledger.update(over.pop("ledger", {}))
    entry.update(over)
    return entry


def test_a_clean_honoured_hold_meets_the_question() -> None:
    assert failures(_entry(), QUESTION) == []


def test_early_resumes_races_losses_and_lateness_each_fail_it() -> None:
    assert failures(_entry(early_share=0.5), QUESTION) == ["50.0% resumed before 10 ms"]
    assert failures(_entry(ledger={"race_491": 3}), QUESTION) == [
        "3 re-INVITEs overtook their ACK (491)"
    ]
    assert failures(_entry(ledger={"timeout_408": 2}), QUESTION) == ["timeout 408 2"]
    assert failures(_entry(lateness_ms={"p99": 12.5}), QUESTION) == ["p99 lateness 12.5 ms > 10 ms"]


def test_races_count_against_a_strategy_only_when_it_claims_to_hold() -> None:
    no_hold = Question(500, 0.0, QUESTION.settings)
    inline = _entry(requested_delay_ms=0.0, early_share=None, ledger={"race_491": 40},
                    lateness_ms={"p99": None})  # fmt: skip
    assert failures(inline, no_hold) == []
    assert failures(inline, QUESTION) == ["does not hold the request"]


def test_the_known_wrong_configurations_are_run_as_evidence_and_ruled_out() -> None:
    wrong = {c.spec: c.wrong for c in candidates(QUESTION) if c.wrong}
    assert set(wrong) == {
        "blocking-sleep:ms=10",
        "mqueue-rtimer:timers=12,interval=10ms",
        "async-route:ms=10,async_workers=0",
    }
    assert "800 requests/s" in wrong["blocking-sleep:ms=10"]  # 8 children ÷ 10 ms


def _recommend(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["recommend", *flags, "--quiet", "--jobs", "2", "--out", str(tmp_path)])
    return code, capsys.readouterr().out


def test_ten_ms_at_100_per_second_gets_a_verdict_with_evidence_and_cfg(tmp_path, capsys) -> None:
    code, out = _recommend(tmp_path, capsys, "--rate", "100/s", "--delay", "10ms")
    assert code == 0
    own = ("reproduce: ", "written: ")  # they echo the user's command and paths
    assert max(len(line) for line in out.splitlines() if not line.startswith(own)) <= 100
    verdict = next(line for line in out.splitlines() if line.startswith("VERDICT: "))
    assert verdict.split()[1].split(":")[0] in {"async-route", "mqueue-rtimer"}
    assert "min_age" in verdict or "async-route" in verdict  # never the early-resuming seed
    assert "delay honoured: 0.0% early" in out
    assert "costs:    results/calibration/profile.toml; `deferbench calibrate --adopt`" in out
    assert "ruled out:" in out and "never resumes" in out
    assert "route[DEFER]" in out and (tmp_path / "recommend.json").is_file()
    assert "VERDICT: " in (tmp_path / "recommend.html").read_text()


def test_no_delay_is_answered_by_a_strategy_that_does_not_hold(tmp_path, capsys) -> None:
    code, out = _recommend(tmp_path, capsys, "--rate", "200/s", "--delay", "0")
    assert code == 0
    verdict = next(line for line in out.splitlines() if line.startswith("VERDICT: "))
    assert verdict.split()[1].split(":")[0] in {"inline", "async-task"}


def test_an_impossible_question_exits_1_saying_what_would_help(tmp_path, capsys) -> None:
    # a lateness bound tighter than any timer's overshoot, at a rate that loads one core
    code, out = _recommend(tmp_path, capsys, "--rate", "3000/s", "--delay", "10ms", "--cores",
                           "1", "--max-late", "100us")  # fmt: skip
    assert code == 1
    assert "no configuration meets the requirement" in out
    assert "what would:" in out and "--max-late" in out


BAD = [
    ["--rate", "fast", "--delay", "10ms"],
    ["--rate", "0/s", "--delay", "10ms"],
    ["--rate", "100/s", "--delay", "soon"],
    ["--rate", "100/s", "--delay", "10ms", "--headroom", "0.5"],
]


@pytest.mark.parametrize("flags", BAD)
def test_bad_questions_get_one_line_and_exit_2(flags, capsys) -> None:
    assert main(["recommend", *flags]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("deferbench: error:") and "\n" not in err


@pytest.mark.skipif(shutil.which("kamailio") is None and not Path("/usr/sbin/kamailio").exists(),
                    reason="kamailio not installed")  # fmt: skip
def test_the_cfg_lines_to_paste_are_accepted_by_kamailio(tmp_path) -> None:
    from harness.analysis.recommend import _fit

    spec = "mqueue-rtimer:timers=4,interval=10ms,take=all,min_age=10ms"
    assert "usleep" in cfg_lines(spec, QUESTION.settings)
    import strategies

    full = strategies.parse_spec(spec).kamailio_config(QUESTION.settings)
    wrapped = "\n".join(piece for line in full.splitlines() for piece in _fit(line))
    assert max(len(line) for line in wrapped.splitlines()) <= 100
    cfg = tmp_path / "kamailio.cfg"
    cfg.write_text(wrapped)
    binary = shutil.which("kamailio") or "/usr/sbin/kamailio"
    done = subprocess.run([binary, "-c", "-f", str(cfg)], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    assert done.returncode == 0, done.stderr[-500:]


@pytest.mark.parametrize(("stolen", "warned"), [(0.05, True), (0.01, False), (None, False)])
def test_the_kamailio_confirmation_names_a_run_the_host_disturbed(monkeypatch, stolen, warned):
    from types import SimpleNamespace

    from harness import runner, targets
    from harness.analysis import recommend
    from harness.cli import recommend as cli_recommend

    class _Kamailio:
        def check(self, load, seed) -> None:
            pass

    cpu = {} if stolen is None else {"host_steal_share": stolen}
    entry = _entry(delay_ms={"p50": 10.2, "p99": 10.5}, cpu=cpu)
    monkeypatch.setattr(targets, "build", lambda name, options: _Kamailio())
    monkeypatch.setattr(runner, "execute", lambda jobs: [entry])
    winner = SimpleNamespace(spec="async-route")
    line, status = cli_recommend._confirm(recommend, winner, QUESTION)
    assert status == 0 and "confirmed on Kamailio at 500/s: meets it" in line
    assert ("disturbed: the host stole 5.0% of the CPU during async-route's run" in line) == warned
