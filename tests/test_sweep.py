"""Sweeps: what counts against capacity, and the tuning answer's honesty about its range."""

from __future__ import annotations

from harness.analysis.sweep import SweepPoint, capacity, tuning_answer
from harness.cli import main


def _point(rate: float, value: int | None = None, **ledger: int) -> SweepPoint:
    entry = {
        "requested_delay_ms": 0.0,
        "lateness_ms": {"p99": None},
        "e2e_ms": {"p99": 12.0},
        "early_share": None,
        "cpu": {"busy_share": 0.1},
        "ledger": {"transactions": 100, "resumed": 100, **ledger},
    }
    spec = "mqueue-rtimer" if value is None else f"mqueue-rtimer:timers={value}"
    return SweepPoint(spec, "mqueue-rtimer", "timers" if value else None, value, rate, entry)


def test_races_and_an_undelayed_strategy_do_not_count_against_capacity() -> None:
    points = [_point(100, race_491=40), _point(200, race_491=90)]
    assert [p.failures(5.0, 50.0) for p in points] == [[], []]
    assert capacity(points, 5.0, 50.0) == {"mqueue-rtimer": 200}


def test_saturation_does_and_nothing_above_the_first_failing_rate_counts() -> None:
    points = [_point(100), _point(200, timeout_408=3), _point(400)]
    assert points[1].failures(5.0, 50.0) == ["timeout_408=3"]
    assert capacity(points, 5.0, 50.0) == {"mqueue-rtimer": 100}


def test_the_tuning_answer_names_the_smallest_value_and_its_variant() -> None:
    points = [_point(100, 2, lost=1), _point(100, 3), _point(100, 4)]
    caps = capacity(points, 5.0, 50.0)
    assert tuning_answer(points, caps, 100) == {"mqueue-rtimer": (3, "mqueue-rtimer:timers=3")}


def test_a_target_rate_above_the_swept_range_is_said_to_be_unanswerable(capsys, tmp_path):
    code = main(["sweep", "--strategy", "inline", "--param", "children=1", "--rates", "50",
                 "--target-rate", "800", "--load", "reinvite:duration=1s,reinvites=2",
                 "--quiet", "--no-plots", "--out", str(tmp_path)])  # fmt: skip
    out, err = capsys.readouterr()
    assert code == 2 and "inline has no parameter children" in err  # a bad --param, one line
    code = main(["sweep", "--strategy", "async-task", "--param", "async_workers=1,2",
                 "--rates", "50", "--target-rate", "800", "--load",
                 "reinvite:duration=1s,reinvites=2", "--quiet", "--no-plots", "--out",
                 str(tmp_path)])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0
    assert "not answerable: 800/s is above the highest rate swept (50/s)" in out
