"""`deferbench compare A.json B.json`: two result files side by side, with ratios.

It must not import `harness.cli` (which imports it) nor run or write anything.
"""

from __future__ import annotations

import argparse

from harness.analysis import report
from harness.measure.results import read_result


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `compare` subcommand and its arguments."""
    p_cmp = sub.add_parser("compare", help="two result files side by side, with ratios")
    p_cmp.add_argument("a", metavar="A.json")
    p_cmp.add_argument("b", metavar="B.json")
    p_cmp.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    a, b = read_result(args.a), read_result(args.b)
    print(f"A = {args.a}: {report.headline(a)}")
    print(f"B = {args.b}: {report.headline(b)}\n")
    print(report.compare_table(a, b, "A", "B"))
    return 0
