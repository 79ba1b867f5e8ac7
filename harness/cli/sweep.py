"""`deferbench sweep`: every strategy variant at every offered re-INVITE rate on the sim;
prints each variant's capacity (and, with --param/--target-rate, the tuning answer) and
writes sweep.json and a plot.

It must not import `harness.cli` (which imports it), nor the runner, plots or dask at
module level: they load inside functions, so `deferbench --help` stays fast. The sweep
itself (points, capacity, tuning) lives in `harness.analysis.sweep`.
"""

from __future__ import annotations

import argparse
import contextlib
import io
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

from tabulate import tabulate

import strategies
from core.runtime.server import ServerSettings
from harness.analysis import page, report
from harness.analysis.sweep import SweepPoint
from harness.cli.common import (
    UsageError,
    add_network_flag,
    add_server_flags,
    build_target,
    count,
    default_out,
    output_dir,
    rate_list,
    server_settings,
)
from harness.load.spec import LoadSpec, parse_load
from harness.profile import sim_profile
from harness.targets import Target
from strategies.spec import parse_duration


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `sweep` subcommand and its flags."""
    p_sweep = sub.add_parser(
        "sweep",
        help="offered rates x strategies (x a parameter): capacity and tuning answers",
        description="Runs every strategy variant at every offered re-INVITE rate (in parallel "
        "on this machine's cores, or on a Dask cluster with --scheduler) and reports each "
        "variant's capacity. With --param and --target-rate it answers 'how many timers / "
        "workers for N re-INVITEs/s'.",
    )
    p_sweep.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="SPEC",
        help="strategy spec; repeat (default: every strategy)",
    )
    p_sweep.add_argument(
        "--rates",
        default="100,200,400,800,1600",
        metavar="R1,R2,...",
        help="offered re-INVITEs per second (default 100,200,400,800,1600)",
    )
    p_sweep.add_argument(
        "--param", metavar="NAME=VALUES", help="vary one parameter: timers=1..16 or take=one,all"
    )
    p_sweep.add_argument(
        "--target-rate",
        type=float,
        metavar="N",
        help="with --param: smallest value whose capacity reaches N re-INV/s",
    )
    p_sweep.add_argument(
        "--load",
        default="reinvite:duration=5s,reinvites=10,gap=1ms",
        metavar="SPEC",
        help="call shape; its rate is replaced by each rate",
    )
    p_sweep.add_argument(
        "--bound",
        default="5ms",
        metavar="DURATION",
        help="p99 lateness bound for capacity (default 5ms)",
    )
    p_sweep.add_argument(
        "--e2e-bound",
        default="50ms",
        metavar="DURATION",
        help="p99 end-to-end bound above the requested delay (default 50ms)",
    )
    p_sweep.add_argument("--seed", type=int, default=1, metavar="N")
    p_sweep.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        help="Dask scheduler address (tcp://host:8786): run points there",
    )
    p_sweep.add_argument("--jobs", type=count, metavar="N", help="local parallel points")
    p_sweep.add_argument("--out", metavar="DIR")
    p_sweep.add_argument("--no-plots", action="store_true")
    p_sweep.add_argument(
        "--records",
        action="store_true",
        help="also stream every point's raw re-INVITE and deferral records to CSV files "
        "under records/<rate>/ as it runs",
    )
    p_sweep.add_argument("--quiet", action="store_true")
    add_server_flags(p_sweep)
    add_network_flag(p_sweep)
    p_sweep.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    from harness.analysis.sweep import capacity, tuning_answer, variants

    settings = server_settings(args)
    costs, source = sim_profile(args.costs)
    target = build_target("sim", args, costs, source)
    rates = rate_list(args.rates, "--rates")
    try:
        bound = parse_duration(args.bound) * 1e3
        e2e_bound = parse_duration(args.e2e_bound) * 1e3
    except ValueError as exc:
        raise UsageError(f"sweep: {exc}") from None
    load = parse_load(args.load)
    specs = strategies.canonical_specs(args.strategy) or strategies.names()
    if args.target_rate and not args.param:
        raise UsageError("--target-rate needs --param: it asks for the smallest value of one")
    variants(specs, args.param)  # a bad --param is a one-line error before anything is made
    out = output_dir(default_out(args.out, "sweep"))  # before anything runs
    points = _run(args, specs, rates, load, settings, target, out)
    caps = capacity(points, bound, e2e_bound)
    answer = None
    if args.param and args.target_rate:
        answer = tuning_answer(points, caps, args.target_rate)
    tables = io.StringIO()
    with contextlib.redirect_stdout(tables):
        _print_tables(args, points, caps, answer, bound, e2e_bound)
    print(tables.getvalue(), end="")
    _write(args, out, points, caps, answer, load, bound, e2e_bound)
    page.write(out, "sweep", f"deferbench sweep: {', '.join(args.rates.split(','))} re-INVITEs/s",
               [page.Section("points, capacity and tuning", tables.getvalue().strip(),
                             (out / "sweep.png",))],
               ["deferbench", *args.argv], target.facts()["costs"])  # fmt: skip
    print(f"\nreproduce: deferbench {' '.join(args.argv)}\nwritten: {out}/")
    return 0


def _run(
    args: argparse.Namespace,
    specs: list[str],
    rates: list[float],
    load: LoadSpec,
    settings: ServerSettings,
    target: Target,
    out: Path,
) -> list[SweepPoint]:
    """Every point of the sweep, on this machine's cores or on the --scheduler's cluster."""
    from harness.analysis.sweep import run_sweep
    from harness.runner import local_executor, stop_pool, text_progress

    client = None
    executor: Executor | None
    if args.scheduler:
        try:
            from distributed import Client
        except ImportError:
            raise UsageError("--scheduler needs dask: pip install 'dask[distributed]'") from None
        try:
            client = Client(args.scheduler, timeout="10s")
        except OSError as exc:
            raise UsageError(f"--scheduler {args.scheduler}: cannot connect ({exc})") from None
        executor = client.get_executor()
    else:
        executor = local_executor(args.jobs)
    try:
        return run_sweep(
            specs,
            rates,
            load,
            args.seed,
            settings,
            target,
            param=args.param,
            records=out / "records" if args.records else None,
            executor=executor,
            progress=None if args.quiet else text_progress(),
        )
    except BaseException:
        if client is None:
            stop_pool(executor)  # ^C or SIGTERM: kill the workers, wait for no job
        raise
    finally:
        if client is not None:
            client.close()
        elif executor is not None:
            executor.shutdown(cancel_futures=True)


def _print_tables(
    args: argparse.Namespace,
    points: list[SweepPoint],
    caps: dict[str, Any],
    answer: dict[str, Any] | None,
    bound: float,
    e2e_bound: float,
) -> None:
    """The points table, the capacity table and, if asked for, the tuning answer."""
    rows = [
        [
            strategies.parse_spec(p.strategy).short_spec,
            f"{p.reinvite_rate:g}",
            p.races,
            report._pct(p.entry["early_share"]),
            report._ms(p.lateness_p99),
            report._ms(p.e2e_p99),
            report._pct(p.busy_share, 2),
            "ok" if p.within(bound, e2e_bound) else "OVER",
        ]
        for p in points
    ]
    headers = ["strategy (non-default params)", "re-INV/s", "491", "early %", "late p99 ms",
               "e2e p99 ms", "CPU %", f"within {args.bound}/{args.e2e_bound}"]  # fmt: skip
    print(tabulate(rows, headers=headers, disable_numparse=True))
    print(
        f"\ncapacity (no loss/408/5xx/duplicate, p99 lateness <= {args.bound}, p99 e2e <= "
        f"requested + {args.e2e_bound};\n491 races and the early share are shown above, not "
        "counted):"
    )
    top = max(p.reinvite_rate for p in points)
    print(
        tabulate(
            [
                [strategies.parse_spec(v).short_spec, _capacity_text(c, top)]
                for v, c in caps.items()
            ],
            headers=["strategy", "capacity"],
        )
    )
    if answer is not None:
        _print_tuning(args, answer, top)


def _capacity_text(capacity: float | None, top: float) -> str:
    if capacity is None:
        return "below the lowest rate swept"
    if capacity >= top:
        return f">= {capacity:g} re-INVITEs/s (the highest rate swept)"
    return f"{capacity:g} re-INVITEs/s"


def _print_tuning(args: argparse.Namespace, answer: dict[str, Any], top: float) -> None:
    name = args.param.partition("=")[0]
    print(f"\nfor {args.target_rate:g} re-INVITEs/s, the smallest {name}:")
    for spec, found in answer.items():
        base = strategies.parse_spec(spec).name
        if found is not None:
            print(f"  {base}: {name}={found[0]} ({strategies.parse_spec(found[1]).short_spec})")
        elif args.target_rate > top:
            print(f"  {base}: not answerable: {args.target_rate:g}/s is above the highest rate "
                  f"swept ({top:g}/s); add it to --rates")  # fmt: skip
        else:
            print(f"  {base}: none of the swept values carries {args.target_rate:g}/s")


def _write(
    args: argparse.Namespace,
    out: Path,
    points: list[SweepPoint],
    caps: dict[str, Any],
    answer: dict[str, Any] | None,
    load: LoadSpec,
    bound: float,
    e2e_bound: float,
) -> None:
    """sweep.json (and sweep.png unless --no-plots) in `out`."""
    import json

    from harness.analysis import plots

    document = {
        "schema": "deferbench.sweep/1",
        "command": ["deferbench", *args.argv],
        "load": load.spec,
        "seed": args.seed,
        "bound_ms": bound,
        "e2e_bound_ms": e2e_bound,
        "capacity": caps,
        "tuning": None if answer is None else {b: f and f[0] for b, f in answer.items()},
        "tuning_spec": None if answer is None else {b: f and f[1] for b, f in answer.items()},
        "target_rate": args.target_rate,
        "points": [
            {
                "strategy": p.strategy,
                "base": p.base,
                "param": p.param,
                "value": p.value,
                "reinvite_rate": p.reinvite_rate,
                "entry": p.entry,
            }
            for p in points
        ],
    }
    (out / "sweep.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
    series: dict[str, list[tuple[float, float | None, float | None]]] = {}
    for p in points:
        label = strategies.parse_spec(p.strategy).short_spec
        series.setdefault(label, []).append((p.reinvite_rate, p.lateness_p99, p.busy_share))
    if not args.no_plots:
        shape = f"{load.reinvites} re-INVITEs per call, {load.gap * 1e3:g} ms after each ACK"
        plots.sweep(series, out / "sweep.png", f"offered re-INVITE rate swept; {shape}")
