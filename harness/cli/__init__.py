"""The `deferbench` command line.

Every problem with user input ends as one line on stderr naming what was wrong and what is
allowed, and exit status 2 — never a traceback.

This package assembles the subcommands (`build_parser`) and runs one (`main`). Each command
lives in its own module with its flags (`add_parser`) and handler (`cmd`); what several share
is in `harness.cli.common`. Command modules must not import this one (it imports them), and
nothing here may import heavy modules (plots, calibration, dask, live or kamailio targets)
at module level: `deferbench --help` must stay fast.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Callable, Sequence

from core import compiled
from core.runtime.costs import CostProfileError
from harness.analysis.sweep import SweepError
from harness.cli import calibrate, check, compare, recommend, run, serve, sweep
from harness.cli import strategies as strategies_cmd
from harness.cli.common import EXIT_USAGE, OneLineParser, UsageError
from harness.cli.stopping import StopSignals
from harness.load.spec import LoadError
from harness.load.suites import SuiteError
from harness.measure.results import ResultError
from strategies.spec import SpecError


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(
        prog="deferbench",
        description=(
            "Measure which way of deferring a Kamailio transaction to use: "
            "mqueue+rtimer, async timers, async tasks, or sleeps."
        ),
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=OneLineParser)
    # the order of `deferbench --help`
    for command in (strategies_cmd, run, recommend, sweep, calibrate, serve, compare, check):
        command.add_parser(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parser.parse_args(argv)
    args.argv = argv
    handler: Callable[[argparse.Namespace], int] | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_help()
        return 0
    if compiled.stale():  # a developer's edit: say why the sim runs slower than it did
        print(f"deferbench: note: the sim runs as {compiled.ENGINE}; `pip install -e .` "
              "compiles it again", file=sys.stderr)  # fmt: skip
    try:
        if args.command == "serve":  # serve handles its own signals
            return handler(args)
        with StopSignals():  # SIGTERM/SIGINT: Stopped, below; `run` writes what finished
            return handler(args)
    except (
        SpecError,
        CostProfileError,
        UsageError,
        LoadError,
        SuiteError,
        ResultError,
        SweepError,
    ) as exc:
        print(f"deferbench: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except BrokenPipeError:  # `deferbench strategies | head`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except KeyboardInterrupt as exc:  # ^C in a command without its own stop handling
        from harness.targets.children import Stopped, stop_all

        stop_all()  # every child still running, by PID
        print("deferbench: interrupted", file=sys.stderr)
        return 128 + exc.signum if isinstance(exc, Stopped) else 130
