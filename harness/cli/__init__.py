"""The `deferbench` command line.

Every problem with user input ends as one line on stderr naming what was wrong and what is
allowed, and exit status 2 — never a traceback.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import textwrap
import zlib
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from tabulate import tabulate

import strategies
from core.runtime.costs import CostProfile, CostProfileError
from core.runtime.server import ServerSettings
from harness import targets
from harness.analysis import report
from harness.analysis.sweep import SweepError
from harness.load.network import Link, parse_link
from harness.load.spec import LoadError, parse_load
from harness.load.suites import Suite, SuiteError, SuiteRun, load_suite
from harness.measure.results import ResultError, RunResult, read_result, write_result
from harness.profile import ADOPTED, BUILT_IN, sim_profile
from harness.targets import Target, TargetError, TargetOptions
from strategies.spec import SpecError, parse_duration

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (no usage dump)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _cmd_strategies(args: argparse.Namespace) -> int:
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


def _server_settings(args: argparse.Namespace) -> ServerSettings:
    try:
        fr_timer = parse_duration(args.fr_timer)
    except SpecError as exc:
        raise UsageError(f"--fr-timer: {exc}") from None
    values = {"fr_timer": fr_timer}
    if args.children is not None:
        values["children"] = args.children
    if args.cores is not None:
        values["cores"] = args.cores
    try:
        return replace(ServerSettings(), **values)
    except ValueError as exc:
        raise UsageError(str(exc)) from None


DEFAULT_NETWORK = "latency=1ms,jitter=1ms,loss=0%"
"""The sim network of `run` and `sweep`: each direction 1 ms ± 1 ms. With the default 1 ms
gap, an ACK is then sometimes overtaken by the re-INVITE sent after it — the race deferral
exists to prevent, as parallel SIP workers and jitter make it happen in production."""


def _network(args: argparse.Namespace) -> Link:
    try:
        return parse_link(args.network)
    except ValueError as exc:
        raise UsageError(f"--network: {exc}") from None


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
    specs = tuple(strategies.parse_spec(s).spec for s in args.strategy) or base.strategies
    load = parse_load(args.load) if args.load else base.load
    seed = args.seed if args.seed is not None else base.seed
    name = "default" if not (args.strategy or args.load) else "adhoc"
    return Suite(name, default.description, (SuiteRun(args.target, seed, load, specs),))


def _target(name: str, args: argparse.Namespace, costs: CostProfile, source: str) -> Target:
    """The target `name` configured from the command's flags (one-line error if a flag does
    not apply to it)."""
    options = TargetOptions(
        costs=costs,
        costs_source=source,
        costs_named=bool(getattr(args, "costs", None)),
        network=_network(args) if name == "sim" else None,
        backend=getattr(args, "backend", None),
        driver=getattr(args, "driver", None),
    )
    try:
        return targets.build(name, options)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


def _cmd_run(args: argparse.Namespace) -> int:
    from harness.runner import Job, assemble, execute_repeated, local_executor, text_progress

    if args.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {args.repeat}")

    settings = _server_settings(args)
    costs, costs_source = sim_profile(args.costs)
    suite = _suite_from_args(args)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "runs" / f"{stamp}-{suite.name}"
    command = ["deferbench", *args.argv]
    plan = [(run, _target(run.target, args, costs, costs_source)) for run in suite.runs]
    try:
        for run, target in plan:
            target.check(run.load, run.seed)
    except TargetError as exc:
        raise UsageError(str(exc)) from None
    executor = local_executor(args.jobs)
    progress = None if args.quiet else text_progress()
    try:
        for i, (run, target) in enumerate(plan, start=1):
            jobs = [Job(spec, run.load.spec, run.seed, settings, target) for spec in run.strategies]
            # real-clock jobs run one at a time: they measure real CPU
            pool = None if target.real_clock else executor
            entries = execute_repeated(jobs, args.repeat, pool, progress)
            result = assemble(entries, load=run.load, seed=run.seed, settings=settings,
                              target=target, command=command)  # fmt: skip
            directory = out if len(suite.runs) == 1 else out / f"run-{i}"
            write_result(result, directory)
            if not args.no_plots:
                report.write_plots(result, directory)
            print(f"\n{report.headline(result)}")
            print(report.comparison_table(result))
            print(f"\n{report.reproduce_line(result)}\nwritten: {directory}/")
    except TargetError as exc:  # e.g. not installed, or it never answered
        raise UsageError(f"{run.target} target: {exc}") from None
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    return 0


def _cmd_serve(args: argparse.Namespace) -> int:
    from harness.targets.live.serve import ServeOptions, serve
    from harness.targets.live.udp import parse_address

    if args.costs:
        raise UsageError("--costs: the live proxy does real work and charges no modelled costs")
    settings = _server_settings(args)
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
            max_transactions=args.max_transactions,
            max_message=args.max_message,
        )
    except ValueError as exc:  # SpecError is a ValueError too: one line either way
        raise UsageError(str(exc)) from None
    try:
        serve(options)
    except OSError as exc:
        raise UsageError(f"--listen {args.listen}: {exc.strerror or exc}") from None
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    a, b = read_result(args.a), read_result(args.b)
    print(f"A = {args.a}: {report.headline(a)}")
    print(f"B = {args.b}: {report.headline(b)}\n")
    print(report.compare_table(a, b, "A", "B"))
    return 0


def _cmd_check(args: argparse.Namespace) -> int:
    from harness.analysis.check import check_results, render

    new = read_result(args.result)
    baseline_path = Path(args.baseline)
    if baseline_path.is_dir() or (not baseline_path.exists() and baseline_path.suffix != ".json"):
        baseline_path = _matching_baseline(baseline_path, new)
    if args.update:
        baseline_path.parent.mkdir(parents=True, exist_ok=True)
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


def _cmd_sweep(args: argparse.Namespace) -> int:
    import json

    from harness.analysis import plots
    from harness.analysis.sweep import capacity, run_sweep, tuning_answer
    from harness.runner import local_executor, text_progress

    settings = _server_settings(args)
    costs, source = sim_profile(args.costs)
    target = targets.build("sim", TargetOptions(costs=costs, costs_source=source))
    rates = _rate_list(args.rates, "--rates")
    try:
        bound = parse_duration(args.bound) * 1e3
        e2e_bound = parse_duration(args.e2e_bound) * 1e3
    except ValueError as exc:
        raise UsageError(f"sweep: {exc}") from None
    load = parse_load(args.load)
    specs = [strategies.parse_spec(s).spec for s in args.strategy] or strategies.names()
    client = None
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
        points = run_sweep(
            specs,
            rates,
            load,
            args.seed,
            settings,
            target,
            param=args.param,
            executor=executor,
            progress=None if args.quiet else text_progress(),
        )
    finally:
        if client is not None:
            client.close()
        elif executor is not None:
            executor.shutdown(cancel_futures=True)
    caps = capacity(points, bound, e2e_bound)
    rows = [
        [
            p.strategy,
            f"{p.reinvite_rate:g}",
            "yes" if p.clean() else "no",
            report._ms(p.lateness_p99),
            report._ms(p.e2e_p99),
            report._pct(p.busy_share, 2),
            "ok" if p.within(bound, e2e_bound) else "OVER",
        ]
        for p in points
    ]
    print(
        tabulate(
            rows,
            headers=[
                "strategy",
                "re-INV/s",
                "clean",
                "late p99 ms",
                "e2e p99 ms",
                "CPU %",
                f"within {args.bound}/{args.e2e_bound}",
            ],
            disable_numparse=True,
        )
    )
    print(
        f"\ncapacity (clean ledger, p99 lateness <= {args.bound}, "
        f"p99 e2e <= requested + {args.e2e_bound}):"
    )
    print(
        tabulate(
            [
                [v, "below lowest rate" if c is None else f"{c:g} re-INVITEs/s"]
                for v, c in caps.items()
            ],
            headers=["strategy", "capacity"],
        )
    )
    answer = None
    if args.param and args.target_rate:
        answer = tuning_answer(points, caps, args.target_rate)
        name = args.param.partition("=")[0]
        print(f"\nfor {args.target_rate:g} re-INVITEs/s, smallest {name}:")
        for base, value in answer.items():
            print(f"  {base}: {'none of the swept values' if value is None else value}")
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "runs" / f"{stamp}-sweep"
    out.mkdir(parents=True, exist_ok=True)
    document = {
        "schema": "deferbench.sweep/1",
        "command": ["deferbench", *args.argv],
        "load": load.spec,
        "seed": args.seed,
        "bound_ms": bound,
        "e2e_bound_ms": e2e_bound,
        "capacity": caps,
        "tuning": answer,
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
        series.setdefault(p.strategy, []).append((p.reinvite_rate, p.lateness_p99, p.busy_share))
    if not args.no_plots:
        plots.sweep(series, out / "sweep.png", f"sweep, {load.spec}")
    print(f"\nreproduce: deferbench {' '.join(args.argv)}\nwritten: {out}/")
    return 0


def _cmd_calibrate(args: argparse.Namespace) -> int:
    from harness.analysis import calibrate as cal
    from harness.runner import local_executor

    settings = _server_settings(args)
    base = sim_profile(args.costs or BUILT_IN)[0]  # fits start from the hand-derived costs
    rates = _rate_list(args.rates, "--rates")
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"calibrate: {exc}") from None
    if args.repeat < 1:
        raise UsageError(f"--repeat must be >= 1, got {args.repeat}")
    ladder = _capacity_rates(args.capacity_rates)
    if not duration > 0:
        raise UsageError(f"--duration must be > 0, got {args.duration!r}")
    specs = [strategies.parse_spec(s).spec for s in args.strategy] or strategies.names()
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    out = Path(args.out) if args.out else Path("results") / "calibration" / stamp
    command = ["deferbench", *args.argv]
    executor = local_executor(args.jobs)
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    try:
        result = cal.calibrate(
            specs, rates, duration, args.seed, settings, base, repeat=args.repeat,
            capacity_rates=ladder, executor=executor, progress=say,
        )  # fmt: skip
    except TargetError as exc:
        raise UsageError(f"kamailio target: {exc}") from None
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    profile = cal.write(result, out, command)
    print(cal.table(result))
    print("\nfitted:\n" + "\n".join(f"  {note}" for note in result.notes))
    bounds = "delay max(10 %, 0.5 ms), early 5 points, wake-ups 10 %, capacity 15 %"
    print(f"\nfidelity (within {bounds}):\n" + cal.summary(result))
    print(f"\nreproduce: {' '.join(command)}\nwritten: {out}/")
    if args.adopt:
        ADOPTED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(profile, ADOPTED)
        print(f"adopted: {ADOPTED} (every sim run uses it unless --costs says otherwise)")
    else:
        print(f"use it: deferbench run --costs {profile} (or calibrate --adopt: the default)")
    return 0


def _rate_list(text: str, flag: str, alternative: str = "") -> list[float]:
    """`R1,R2,...` re-INVITE rates of a flag: positive numbers, at least one."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or any(not r > 0 for r in rates):
        also = f" {alternative}" if alternative else ""
        raise UsageError(f"{flag} needs positive re-INVITE rates{also}, got {text!r}")
    return rates


def _capacity_rates(text: str) -> list[float]:
    """`--capacity-rates`: re-INVITE rates, or 'none' (no SIPp ladder); needs sipp."""
    from harness.targets.kamailio import sipp

    if text.strip().lower() == "none":
        return []
    rates = _rate_list(text, "--capacity-rates", "or 'none'")
    if sipp.sipp_binary() is None:
        raise UsageError(
            "--capacity-rates: the ladder is SIPp-driven and sipp is not installed "
            "(Debian package sip-tester), or pass --capacity-rates none"
        )
    return rates


def _add_network_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        metavar="SPEC",
        help="sim network, every direction: latency=DURATION,jitter=DURATION,"
        f"loss=PERCENT%% (default {DEFAULT_NETWORK})",
    )


def _add_server_flags(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("server (settings that belong to no strategy)")
    group.add_argument(
        "--children",
        type=int,
        metavar="N",
        help="SIP worker processes on the UDP socket (Kamailio children; default 8)",
    )
    group.add_argument(
        "--cores",
        type=int,
        metavar="N",
        help="CPU cores shared by all processes (default: this machine's)",
    )
    group.add_argument(
        "--fr-timer",
        default="30s",
        metavar="DURATION",
        help="deadline of a suspended transaction: 408 after it (default 30s)",
    )
    group.add_argument(
        "--costs",
        metavar="FILE",
        help="sim cost profile (TOML/JSON, µs per step); default: the adopted calibration "
        "results/calibration/profile.toml if present; 'built-in' for the hand-derived defaults",
    )


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

    p_kcfg = sub.add_parser(
        "kamailio-cfg",
        help="print the ready-to-use kamailio.cfg of a strategy (as `strategies SPEC`)",
        description="The Kamailio 5.6 configuration SPEC models, with comments on what each "
        "setting does (e.g. core async_workers vs the async module's workers).",
    )
    p_kcfg.add_argument(
        "--strategy", dest="spec", required=True, metavar="SPEC", help="strategy spec"
    )
    p_kcfg.set_defaults(handler=_cmd_strategies)

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
        help="who plays the UAC and UAS (kamailio target only): python, the harness's own "
        "(default); sipp, SIPp for 2,000+ re-INVITEs/s (arrival=constant only)",
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
        "--jobs", type=int, metavar="N", help="strategies run in parallel (default: one per core)"
    )
    p_run.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p_run.add_argument(
        "--repeat",
        type=int,
        default=1,
        metavar="N",
        help="run every strategy N times in alternating rounds; wall-clock "
        "figures become samples for the statistical check (default 1)",
    )
    p_run.add_argument("--quiet", action="store_true", help="no progress bar")
    _add_server_flags(p_run)
    _add_network_flag(p_run)
    p_run.set_defaults(handler=_cmd_run)

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
    p_sweep.add_argument("--jobs", type=int, metavar="N", help="local parallel points")
    p_sweep.add_argument("--out", metavar="DIR")
    p_sweep.add_argument("--no-plots", action="store_true")
    p_sweep.add_argument("--quiet", action="store_true")
    _add_server_flags(p_sweep)
    _add_network_flag(p_sweep)
    p_sweep.set_defaults(handler=_cmd_sweep)

    p_cal = sub.add_parser(
        "calibrate",
        help="the same loads on sim and kamailio; fit a cost profile; side-by-side table",
        description="Runs every strategy at every rate on real Kamailio and on the sim "
        "(identical seeded loads), fits the cost profile to Kamailio's figures, re-runs the "
        "sim with it and prints both side by side with PASS/MISS against the fidelity "
        "bounds. Writes profile.toml (for --costs) and calibration.json under "
        "results/calibration/<stamp>/ unless --out is given; --adopt also makes the fitted "
        "profile the sim's default (results/calibration/profile.toml).",
    )
    p_cal.add_argument(
        "--strategy",
        action="append",
        default=[],
        metavar="SPEC",
        help="strategy spec; repeat (default: every strategy)",
    )
    p_cal.add_argument(
        "--rates",
        default="50,200,500,1000",
        metavar="R1,R2,...",
        help="re-INVITEs/s (default 50,200,500,1000)",
    )
    p_cal.add_argument(
        "--duration", default="3s", metavar="DURATION", help="each run's load (default 3s)"
    )
    p_cal.add_argument("--seed", type=int, default=1, metavar="N")
    p_cal.add_argument("--out", metavar="DIR", help="where to write profile.toml and JSON")
    p_cal.add_argument("--jobs", type=int, metavar="N", help="parallel sim runs")
    p_cal.add_argument("--quiet", action="store_true", help="no progress lines")
    p_cal.add_argument(
        "--repeat", type=int, default=1, metavar="N",
        help="Kamailio runs per point: fits use all, judged figures are medians (default 1)",
    )  # fmt: skip
    p_cal.add_argument(
        "--capacity-rates", default="500,1000,1500,2000,2500,3000", metavar="R1,R2,...|none",
        help="the capacity ladder in re-INVITEs/s, SIPp-driven on Kamailio (default "
        "500,...,3000; none: judge capacity over --rates only)",
    )  # fmt: skip
    p_cal.add_argument(
        "--adopt", action="store_true",
        help="make the fitted profile the sim's default (results/calibration/profile.toml)",
    )  # fmt: skip
    _add_server_flags(p_cal)
    p_cal.set_defaults(handler=_cmd_calibrate, fr_timer="5s")

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
        help="live transactions above which new requests are answered 503 (default 20000)",
    )
    p_serve.add_argument(
        "--max-message",
        type=int,
        default=16_384,
        metavar="OCTETS",
        help="larger datagrams are answered 513 (requests) or dropped (default 16384)",
    )
    _add_server_flags(p_serve)
    p_serve.set_defaults(handler=_cmd_serve)

    p_cmp = sub.add_parser("compare", help="two result files side by side, with ratios")
    p_cmp.add_argument("a", metavar="A.json")
    p_cmp.add_argument("b", metavar="B.json")
    p_cmp.set_defaults(handler=_cmd_compare)

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
    p_check.set_defaults(handler=_cmd_check)
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
    try:
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
    except KeyboardInterrupt:
        print("deferbench: interrupted", file=sys.stderr)
        return 130
