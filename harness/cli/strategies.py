"""`deferbench strategies [SPEC]` and `deferbench kamailio-cfg --strategy SPEC`: list the
deferral strategies, or print the kamailio.cfg one spec models.

It must not import `harness.cli` (which imports it) nor run or measure anything. (`import
strategies` here is the top-level strategies package, not this module.)
"""

from __future__ import annotations

import argparse
import textwrap

import strategies


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `strategies` and `kamailio-cfg` subcommands (one handler, the same output)."""
    p_strat = sub.add_parser(
        "strategies",
        help="list the deferral strategies, or print the kamailio.cfg one SPEC models",
        description="Without SPEC: every strategy with its parameters, defaults and units. "
        "With SPEC (NAME[:key=value,...]): the Kamailio configuration it models.",
    )
    p_strat.add_argument("spec", nargs="?", help="strategy spec, e.g. 'mqueue-rtimer:timers=4'")
    p_strat.set_defaults(handler=cmd)

    p_kcfg = sub.add_parser(
        "kamailio-cfg",
        help="print the ready-to-use kamailio.cfg of a strategy (as `strategies SPEC`)",
        description="The Kamailio 5.6 configuration SPEC models, with comments on what each "
        "setting does (e.g. core async_workers vs the async module's workers).",
    )
    p_kcfg.add_argument(
        "--strategy", dest="spec", required=True, metavar="SPEC", help="strategy spec"
    )
    p_kcfg.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    """`strategies [SPEC]`; also `kamailio-cfg --strategy SPEC` (the same output)."""
    if args.spec:
        strategy = strategies.parse_spec(args.spec)
        print(f"# deferbench strategy {strategy.spec}")
        print(strategy.kamailio_config().rstrip())
        return 0
    for name in strategies.names():
        cls = strategies.strategy_class(name)
        print(f"{name}: {cls.summary}")
        for p in cls.params:
            head = f"  {p.name}={p.format(p.default)}"
            body = textwrap.wrap(f"{p.help} [{p.allowed()}]", width=100 - 28)
            print(f"{head:<28}{body[0] if body else ''}")
            for line in body[1:]:
                print(" " * 28 + line)
        print()
    print("Use: deferbench strategies 'NAME:key=value,...' to print its kamailio.cfg.")
    return 0
