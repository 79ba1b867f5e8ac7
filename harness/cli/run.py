"""`deferbench run`: the same seeded load through strategies (one suite); prints the
comparison table and writes the result files (and plots).

It must not import `harness.cli` (which imports it), nor the runner or live/kamailio
targets at module level: those load inside `cmd`, so `deferbench --help` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import strategies
from harness import targets
from harness.analysis import report
from harness.cli.common import (
    UsageError,
    add_network_flag,
    add_server_flags,
    build_target,
    count,
    default_out,
    output_dir,
    server_settings,
)
from harness.cli.stopping import StopSignals
from harness.load.spec import check_plausible, parse_load
from harness.load.suites import Suite, SuiteRun, load_suite
from harness.measure.results import RunResult, write_result
from harness.profile import sim_profile
from harness.targets import Target, TargetError, children

if TYPE_CHECKING:
    from harness.runner import Job


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `run` subcommand and its flags."""
    p_run = sub.add_parser(
        "run",
        help="the same seeded load through strategies; comparison table + result files",
        description="By default every strategy with its defaults at the default load "
        "(the 'default' suite). Writes result.json, result.csv and PNG plots under "
        "results/runs/<stamp>/ unless --out is given.",
    )
    p_run.add_argument(
        "--target",
        default="sim",
        choices=targets.NAMES,
        help="where to run (sim: the embedded model on virtual time; live: the same proxy "
        "over UDP on 127.0.0.1, real clock, started as `deferbench serve`; kamailio: real "
        "Kamailio 5.6 on 127.0.0.1 running the strategy's generated kamailio.cfg)",
    )
    p_run.add_argument(
        "--backend",
        choices=["trio", "asyncio"],
        help="anyio backend of the live proxy (default trio; live target only)",
    )
    p_run.add_argument(
        "--driver",
        choices=["python", "sipp"],
        help="who plays the UAC and UAS. kamailio target: sipp (default), SIPp, "
        "arrival=constant and whole-ms gaps only (without --load the default load runs with "
        "arrival=constant; a --load with another arrival is refused in one line); python, "
        "the harness's own UAC/UAS, any arrival, but it tops out near 1,000 re-INVITEs/s on "
        "two cores and competes with Kamailio for them (Kamailio's own delay p99 at 1,000/s: "
        "514 ms with it, ~15 ms with SIPp). sim target: sipp models SIPp's timing (its pauses "
        "end as late as the cost profile's driver_pause_late ± jitter, measured by calibrate); "
        "python (default) pauses on time",
    )
    p_run.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="SPEC",
        help="strategy spec NAME[:key=value,...]; repeat for several",
    )
    p_run.add_argument(
        "--load", metavar="SPEC", help="e.g. 'reinvite:rate=20/s,duration=30s,reinvites=10,gap=1ms'"
    )
    p_run.add_argument(
        "--suite",
        metavar="NAME|FILE",
        help="benchmark suite: default, idle, overload, ci, or a TOML file",
    )
    p_run.add_argument("--seed", type=int, metavar="N", help="load seed (default: the suite's)")
    p_run.add_argument("--out", metavar="DIR", help="where to write the result files")
    p_run.add_argument(
        "--jobs", type=count, metavar="N", help="strategies run in parallel (default: one per core)"
    )
    p_run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p_run.add_argument(
        "--records",
        action="store_true",
        help="also stream every re-INVITE's and every deferral's raw record to CSV files "
        "under records/ as the run goes (sim target)",
    )
    p_run.add_argument(
        "--wide", action="store_true", help="every column and full specs (wider than 100)"
    )
    p_run.add_argument(
        "--repeat",
        type=count,
        default=1,
        metavar="N",
        help="run every strategy N times in alternating rounds; wall-clock "
        "figures become samples for the statistical check (default 1)",
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    add_server_flags(p_run)
    add_network_flag(p_run)
    p_run.set_defaults(handler=cmd)


def _suite_from_args(args: argparse.Namespace) -> Suite:
    """--suite, or an ad-hoc suite from --strategy/--load/--seed (default: the main job)."""
    if args.suite:
        if args.strategy or args.load:
            raise UsageError("--suite names its own strategies and loads: drop --strategy/--load")
        suite = load_suite(args.suite)
        if args.seed is not None:
            suite = replace(suite, runs=tuple(replace(r, seed=args.seed) for r in suite.runs))
        return suite
    default = load_suite("default")
    base = default.runs[0]
    specs = tuple(strategies.canonical_specs(args.strategy)) or base.strategies
    load = parse_load(args.load) if args.load else base.load
    if not args.load and args.target == "kamailio" and (args.driver or "sipp") == "sipp":
        load = replace(load, arrival="constant")  # SIPp starts calls at a constant rate only
    seed = args.seed if args.seed is not None else base.seed
    name = "default" if not (args.strategy or args.load) else "adhoc"
    return Suite(name, default.description, (SuiteRun(args.target, seed, load, specs),))


def cmd(args: argparse.Namespace) -> int:
    from harness.runner import (
        Job,
        assemble,
        execute_repeated,
        local_executor,
        stop_pool,
        text_progress,
    )

    settings = server_settings(args)
    costs, costs_source = sim_profile(args.costs)
    suite = _suite_from_args(args)
    out = default_out(args.out, suite.name)
    command = ["deferbench", *args.argv]
    plan = [(run, build_target(run.target, args, costs, costs_source)) for run in suite.runs]
    if args.records:
        others = sorted({run.target for run in suite.runs} - {"sim"})
        if others:
            raise UsageError(
                f"--records: the sim target only (not {', '.join(others)}; `deferbench serve "
                "--report FILE` writes a live server's records)"
            )
    try:
        for run, target in plan:
            check_plausible(run.load)
            target.check(run.load, run.seed)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    output_dir(out)
    executor = local_executor(args.jobs)
    progress = None if args.quiet else text_progress()
    current: _Current | None = None
    with StopSignals() as stop:
        try:
            for i, (run, target) in enumerate(plan, start=1):
                directory = out if len(suite.runs) == 1 else out / f"run-{i}"
                if args.records:
                    target = replace(target, records=str(directory / "records"))
                jobs = [Job(spec, run.load.spec, run.seed, settings, target)
                        for spec in run.strategies]  # fmt: skip
                current = _Current(run, target, jobs, directory)
                # real-clock jobs run one at a time: they measure real CPU
                pool = None if target.real_clock else executor
                entries = execute_repeated(jobs, args.repeat, pool, progress, current.finished)
                _report(args, assemble(entries, load=run.load, seed=run.seed, settings=settings,
                                       target=target, command=command), directory)  # fmt: skip
            current = None
        except BaseException as exc:
            if stop.signum is None:
                if isinstance(exc, TargetError):  # e.g. not installed, or it never answered
                    raise UsageError(f"{run.target} target: {exc}") from None
                raise
        finally:
            if stop.signum is None and executor is not None:
                executor.shutdown(cancel_futures=True)
        if stop.signum is None:
            return 0
        stop_pool(executor)
        children.stop_all()
        if current is not None and current.finished:
            entries = [current.finished[k] for k in sorted(current.finished)]
            done = {e["strategy"] for e in entries}
            missing = [j.strategy for j in current.jobs if j.strategy not in done]
            result = assemble(entries, load=current.run.load, seed=current.run.seed,
                              settings=settings, target=current.target, command=command,
                              incomplete={"signal": stop.name, "missing": missing})  # fmt: skip
            _report(args, result, current.directory, plots=False)
            print(f"incomplete: stopped by {stop.name}; not finished: {', '.join(missing)}")
        print(f"deferbench: stopped by {stop.name}", file=sys.stderr)
        return stop.exit_status


@dataclass
class _Current:
    """The suite run in progress: what a signal's incomplete result is made of."""

    run: SuiteRun
    target: Target
    jobs: list[Job]
    directory: Path
    finished: dict[int, dict[str, Any]] = field(default_factory=dict)


def _report(
    args: argparse.Namespace, result: RunResult, directory: Path, plots: bool = True
) -> None:
    write_result(result, directory)
    images = report.write_plots(result, directory) if plots and not args.no_plots else []
    table = report.comparison_table(result, wide=args.wide)
    report.write_page(result, directory, images)
    print(f"\n{report.headline(result)}")
    print(table)
    print(f"\n{report.reproduce_line(result)}\nwritten: {directory}/")
