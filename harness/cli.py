"""The `deferbench` command line.

Every problem with user input ends as one line on stderr naming what was wrong and what is
allowed, and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable, Sequence

from tabulate import tabulate

import strategies
from core.runtime.costs import CostProfileError
from strategies.spec import SpecError

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_strategies(args: argparse.Namespace) -> int:
    if args.spec:
        strategy = strategies.parse_spec(args.spec)
        print(f"# deferbench strategy {strategy.spec}")
        print(strategy.kamailio_config().rstrip())
        return 0
    rows = []
    for name in strategies.names():
        cls = strategies.strategy_class(name)
        params = "\n".join(
            f"{p.name}={p.format(p.default)}  ({p.allowed()}) {p.help}" for p in cls.params
        )
        rows.append([name, cls.summary, params or "-"])
    print(tabulate(rows, headers=["strategy", "what it models", "parameters (default)"]))
    print("\nUse: deferbench strategies 'NAME:key=value,...' to print its kamailio.cfg.")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deferbench",
        description=(
            "Measure which way of deferring a Kamailio transaction to use: "
            "mqueue+rtimer, async timers, async tasks, or sleeps."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    p_strat = sub.add_parser(
        "strategies",
        help="list the deferral strategies, or print the kamailio.cfg one SPEC models",
        description="Without SPEC: every strategy with its parameters, defaults and units. "
        "With SPEC (NAME[:key=value,...]): the Kamailio configuration it models.",
    )
    p_strat.add_argument("spec", nargs="?", help="strategy spec, e.g. 'mqueue-rtimer:timers=4'")
    p_strat.set_defaults(handler=_cmd_strategies)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    try:
        return handler(args)
    except (SpecError, CostProfileError, UsageError) as exc:
        print(f"deferbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print("deferbench: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
