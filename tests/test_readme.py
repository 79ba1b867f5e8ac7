"""The README's examples run as written.

Every concrete `deferbench ...` command in the README (in a code span or a shell block; the
command-table templates with SPEC, R, N, [...] are skipped) must parse: its subcommand and
flags exist and every strategy and load spec in it is valid. The sim commands among them
are run for real (with `--out` into a temporary folder and `--quiet`), and must exit 0.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

import strategies
from harness.cli import build_parser, main
from harness.load.spec import parse_load

README = Path(__file__).resolve().parents[1] / "README.md"
TEMPLATE = re.compile(r"SPEC|\bR\b|R/s|\bN\b|\bD\b|\[|\]|\||\.\.\.|\bFILE|HOST|RESULT|A\.json")
RUNS_ON_SIM = ("run", "recommend", "sweep", "strategies", "kamailio-cfg")
NEVER_RUN = ("--adopt", "--target", "--update")  # changes the checkout, or needs Kamailio


def _examples() -> list[str]:
    text = README.read_text(encoding="utf-8")
    found = re.findall(r"`((?:\.venv/bin/)?deferbench [^`]+)`", text)
    for block in re.findall(r"```sh\n(.*?)```", text, flags=re.S):
        found += [
            line.split("#")[0].strip() for line in block.splitlines() if "deferbench " in line
        ]
    commands = []
    for command in found:
        command = command.split("&&")[-1].strip().removeprefix(".venv/bin/")
        if TEMPLATE.search(command) or len(shlex.split(command)) < 3:
            continue  # a template, or a bare mention of a command ("`deferbench check`")
        if command not in commands:
            commands.append(command)
    return commands


EXAMPLES = _examples()


def test_the_readme_has_examples_to_check() -> None:
    assert any(c.startswith("deferbench recommend") for c in EXAMPLES)
    assert any(c.startswith("deferbench run") for c in EXAMPLES)


@pytest.mark.parametrize("command", EXAMPLES)
def test_example_parses_with_valid_specs(command: str) -> None:
    argv = shlex.split(command)[1:]
    args = build_parser().parse_args(argv)  # an unknown flag or value exits here
    for spec in getattr(args, "strategy", None) or []:
        strategies.parse_spec(spec)
    if getattr(args, "load", None):
        parse_load(args.load)


@pytest.mark.parametrize(
    "command",
    [c for c in EXAMPLES
     if shlex.split(c)[1] in RUNS_ON_SIM and not any(f in c for f in NEVER_RUN)],
)  # fmt: skip
def test_sim_example_runs(command: str, tmp_path, capsys) -> None:
    argv = shlex.split(command)[1:]
    if argv[0] in ("run", "recommend", "sweep"):
        argv += ["--out", str(tmp_path), "--quiet"]
    assert main(argv) == 0, capsys.readouterr().err
