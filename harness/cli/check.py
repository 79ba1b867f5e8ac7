"""`deferbench check --baseline FILE|DIR RESULT.json`: regression check of a result against
its baseline (exit 0 pass, 1 worse, 3 unstable), or `--update` to replace the baseline.

It must not import `harness.cli` (which imports it), and must not write a baseline unless
`--update` asks for it. The comparison itself lives in `harness.analysis.check`.
"""

from __future__ import annotations

import argparse
import zlib
from pathlib import Path

from harness.cli.common import UsageError, output_dir
from harness.measure.results import ResultError, RunResult, read_result


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `check` subcommand and its flags."""
    p_check = sub.add_parser(
        "check",
        help="regression check of a result against a baseline (exit 0 pass, 1 worse, 3 unstable)",
        description="Sim figures at a fixed seed are deterministic and compared exactly; "
        "wall-clock samples statistically. --update rewrites the baseline deliberately.",
    )
    p_check.add_argument(
        "--baseline",
        required=True,
        metavar="FILE|DIR",
        help="baseline result file, or a directory of them (matched by target, load and seed)",
    )
    p_check.add_argument("result", metavar="RESULT.json")
    p_check.add_argument(
        "--update", action="store_true", help="replace the baseline by RESULT instead of checking"
    )
    p_check.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    from harness.analysis.check import check_results, render

    new = read_result(args.result)
    if new.incomplete is not None:
        raise UsageError(f"{args.result}: an incomplete run (stopped by {new.incomplete.signal}; "
                         f"not finished: {', '.join(new.incomplete.missing) or 'none'}): "
                         "neither checked nor made a baseline")  # fmt: skip
    baseline_path = Path(args.baseline)
    if not baseline_path.exists() and not args.update:
        raise UsageError(f"--baseline {args.baseline}: no such file or directory")
    if baseline_path.is_dir() or (not baseline_path.exists() and baseline_path.suffix != ".json"):
        baseline_path = _matching_baseline(baseline_path, new)
    if args.update:
        output_dir(baseline_path.parent, "--baseline")
        baseline_path.write_text(Path(args.result).read_text(encoding="utf-8"), encoding="utf-8")
        print(f"baseline updated: {baseline_path} <- {args.result}")
        return 0
    if not baseline_path.exists():
        raise UsageError(
            f"no baseline for target {new.target}, load {new.load.spec}, seed {new.seed} "
            f"in {args.baseline} (create it deliberately with --update)"
        )
    checked = check_results(read_result(baseline_path), new)
    print(f"baseline: {baseline_path}")
    print(render(checked))
    return checked.exit_code


def _matching_baseline(directory: Path, new: RunResult) -> Path:
    """The baseline in `directory` for the same target, load and seed as `new`."""
    if not directory.is_dir():
        return directory / _baseline_name(new)
    for candidate in sorted(directory.glob("*.json")):
        try:
            old = read_result(candidate)
        except ResultError:
            continue
        if (old.target, old.load.spec, old.seed) == (new.target, new.load.spec, new.seed):
            return candidate
    return directory / _baseline_name(new)


def _baseline_name(result: RunResult) -> str:
    digest = zlib.crc32(result.load.spec.encode())
    return f"{result.target}-seed{result.seed}-{digest:08x}.json"
