"""`deferbench serve`: run the live proxy (record-routing SIP over UDP, deferring
re-INVITEs) until SIGINT/SIGTERM.

It must not import `harness.cli` (which imports it), nor the live target at module level:
it loads inside `cmd`, so `deferbench --help` stays fast.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import strategies
from harness.cli.common import UsageError, add_server_flags, server_settings
from strategies.spec import parse_duration


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `serve` subcommand and its flags."""
    p_serve = sub.add_parser(
        "serve",
        help="run the live proxy: a record-routing SIP proxy over UDP deferring re-INVITEs",
        description="A stateful record-routing SIP proxy over UDP (forwarding by "
        "Request-URI/Route) that defers in-dialog re-INVITEs with SPEC, on the real clock. "
        "One summary line per --interval on stderr, a final one on SIGINT/SIGTERM; SIGUSR1 "
        "takes a CPU snapshot for --report.",
    )
    p_serve.add_argument("--strategy", required=True, metavar="SPEC", help="strategy spec")
    p_serve.add_argument(
        "--listen", default="127.0.0.1:5060", metavar="HOST:PORT", help="UDP address (port 0: any)"
    )
    p_serve.add_argument("--backend", default="trio", choices=["trio", "asyncio"])
    p_serve.add_argument(
        "--interval", default="1s", metavar="DURATION", help="summary line period (0s: none)"
    )
    p_serve.add_argument(
        "--report", metavar="FILE", help="write per-role CPU and deferral records (JSON) at exit"
    )
    p_serve.add_argument(
        "--max-transactions",
        type=int,
        default=20_000,
        metavar="N",
        help="live transactions from which every new request is answered 503 (default 20000)",
    )
    p_serve.add_argument(
        "--max-queue",
        type=int,
        default=256,
        metavar="N",
        help="datagrams waiting (OS buffer + workers' queue + strategy backlog) from which "
        "new dialogs are answered 503 with Retry-After (default 256)",
    )
    p_serve.add_argument(
        "--max-rss",
        type=float,
        default=1024,
        metavar="MB",
        help="resident memory from which new dialogs are answered 503 while the "
        "transactions live then still live (default 1024)",
    )
    p_serve.add_argument(
        "--max-message",
        type=int,
        default=16_384,
        metavar="OCTETS",
        help="larger datagrams are answered 513 (requests) or dropped (default 16384)",
    )
    add_server_flags(p_serve)
    p_serve.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    from harness.targets.live.admission import AdmissionLimits
    from harness.targets.live.serve import ServeOptions, serve
    from harness.targets.live.udp import parse_address

    if args.costs:
        raise UsageError("--costs: the live proxy does real work and charges no modelled costs")
    settings = server_settings(args)
    try:
        listen = parse_address(args.listen, what="--listen")
        interval = parse_duration(args.interval)
        options = ServeOptions(
            strategy=strategies.parse_spec(args.strategy).spec,
            listen=listen,
            backend=args.backend,
            settings=settings,
            interval=interval,
            report=Path(args.report) if args.report else None,
            limits=AdmissionLimits(
                max_transactions=args.max_transactions,
                max_queue=args.max_queue,
                max_rss_mb=args.max_rss,
            ),
            max_message=args.max_message,
        )
    except ValueError as exc:  # SpecError is a ValueError too: one line either way
        raise UsageError(str(exc)) from None
    try:
        serve(options)
    except OSError as exc:
        raise UsageError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    return 0
