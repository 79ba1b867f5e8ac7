"""The comparison table a person reads after `deferbench run`: within 100 columns by default,
every figure with `wide`."""

from __future__ import annotations

from pathlib import Path

from harness.analysis import report
from harness.cli import main
from harness.measure.results import read_result

LOAD = "reinvite:rate=5/s,duration=2s,reinvites=4,gap=1ms"
SPECS = ["inline", "mqueue-rtimer:timers=12,interval=10ms,min_age=10ms", "async-route:s=1"]


def _result(tmp_path: Path):
    flags = [f"--strategy={s}" for s in SPECS]
    assert main(["run", *flags, "--load", LOAD, "--quiet", "--no-plots", "--out",
                 str(tmp_path)]) == 0  # fmt: skip
    return read_result(tmp_path / "result.json")


def test_default_table_and_headline_fit_100_columns_and_name_strategies_briefly(tmp_path, capsys):
    result = _result(tmp_path)
    capsys.readouterr()
    text = report.headline(result) + "\n" + report.comparison_table(result)
    assert max(len(line) for line in text.splitlines()) <= 100
    names = [line.split()[0] for line in report.comparison_table(result).splitlines()[2:5]]
    assert names == ["inline", "mqueue-rtimer:min_age=10ms", "async-route:s=1,ms_timer=0,asyn…"]


def test_wide_table_keeps_every_column_and_the_full_specs(tmp_path, capsys):
    result = _result(tmp_path)
    capsys.readouterr()
    wide = report.comparison_table(result, wide=True)
    for column in ("asked ms", "late p99", "e2e p99", "lost", "408", "dup/stale/reord",
                   "wakes/s"):  # fmt: skip
        assert column in wide.splitlines()[0]
    assert result.strategies[1].strategy in wide


def test_a_run_the_host_disturbed_is_named_under_the_table(tmp_path, capsys):
    result = _result(tmp_path)
    capsys.readouterr()
    assert "disturbed" not in report.comparison_table(result)  # a sim has no host
    result.strategies[0].cpu.host_steal_share = 0.05
    result.strategies[1].cpu.host_steal_share = 0.01  # under the limit: quiet enough
    for wide in (False, True):
        lines = [
            ln for ln in report.comparison_table(result, wide).splitlines() if "disturbed" in ln
        ]
        assert lines == [
            "disturbed: the host stole 5.0% of the CPU during inline's run (over 2%): its delays "
            "and CPU are unreliable; run it again on a quieter machine"
        ]


class _Stream:
    def __init__(self, tty: bool) -> None:
        self.tty, self.text = tty, ""

    def isatty(self) -> bool:
        return self.tty

    def write(self, text: str) -> None:
        self.text += text

    def flush(self) -> None:
        pass


def test_progress_is_drawn_on_a_terminal_only_and_within_100_columns() -> None:
    from harness.runner import text_progress

    assert text_progress(_Stream(tty=False)) is None  # a pipe or a CI log: quiet
    terminal = _Stream(tty=True)
    show = text_progress(terminal)
    assert show is not None
    show(1, 2, "x" * 300, 0.5)
    show(2, 2, "done", 1.0)
    lines = terminal.text.split("\r")[1:]
    assert all(len(line.rstrip("\n")) <= 100 for line in lines)
    assert terminal.text.endswith("\n")


def test_run_writes_a_self_contained_page_and_wide_prints_every_column(tmp_path, capsys):
    assert main(["run", "--strategy", "inline", "--load", LOAD, "--quiet", "--wide",
                 "--out", str(tmp_path)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert "dup/stale/reord" in out
    html = (tmp_path / "report.html").read_text()
    assert html.count("data:image/png;base64,") == 3  # the three plots, embedded
    assert "deferbench run --strategy inline" in html
    assert "![delay cdf](delay_cdf.png)" in (tmp_path / "report.md").read_text()
