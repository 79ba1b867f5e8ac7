"""`deferbench calibrate`: the same loads on the sim and on real Kamailio; fit a cost
profile, print both side by side and write (optionally adopt) the profile.

It must not import `harness.cli` (which imports it), nor the calibration, the runner or
the kamailio target at module level: they load inside functions, so `deferbench --help`
stays fast. The fitting itself lives in `harness.analysis.calibrate`.
"""

from __future__ import annotations

import argparse
import math
import shutil
import sys
import textwrap
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

import strategies
from harness.cli.common import (
    UsageError,
    add_server_flags,
    count,
    default_out,
    output_dir,
    rate_list,
    server_settings,
)
from harness.profile import ADOPTED, BUILT_IN, sim_profile
from harness.targets import STEAL_LIMIT, TargetError
from strategies.spec import parse_duration

if TYPE_CHECKING:
    from core.runtime.server import ServerSettings
    from harness.analysis.calibrate.measured import KamailioSide


def add_parser(sub: argparse._SubParsersAction) -> None:
    """The `calibrate` subcommand and its flags (its --fr-timer defaults to 5s)."""
    p_cal = sub.add_parser(
        "calibrate",
        help="the same loads on sim and kamailio; fit a cost profile; side-by-side table",
        description="Runs every strategy at every rate on real Kamailio, SIPp driving (10 "
        "re-INVITEs per call, 20 ms after each ACK, constant arrivals), and on the sim "
        "(identical seeded loads), fits the cost profile to Kamailio's runs at --fit-rates "
        "(and the idle runs) only, re-runs the sim with it and prints both side by side with "
        "PASS/MISS against the fidelity bounds; the summary counts the held-out rates only "
        "(the sim's predictions; fit cells are shown, not counted). Writes profile.toml "
        "(for --costs), calibration.json and Kamailio's runs (kamailio.json, for --refit) under "
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
        "--fit-rates", metavar="R1,R2,...",
        help="the rates of --rates whose Kamailio runs the fits use; the others are held out "
        "and judged (default: the lowest and the highest of --rates, so each held-out rate "
        "lies between two fitted ones: 50,200,1000 fits 50 and 1000, predicts 200)",
    )  # fmt: skip
    p_cal.add_argument(
        "--duration", default="3s", metavar="DURATION", help="each run's load (default 3s)"
    )
    p_cal.add_argument("--seed", type=int, default=1, metavar="N")
    p_cal.add_argument("--out", metavar="DIR", help="where to write profile.toml and JSON")
    p_cal.add_argument("--jobs", type=count, metavar="N", help="parallel sim runs")
    p_cal.add_argument("--quiet", action="store_true", help="no progress lines")
    p_cal.add_argument(
        "--repeat", type=count, default=3, metavar="N",
        help="Kamailio runs per point: fits use all at the fit rates, judged figures are "
        "medians, a miss inside Kamailio's own spread of repeats says so (default 3)",
    )  # fmt: skip
    p_cal.add_argument(
        "--capacity-rates", default="500,1000,1500,2000,2500,3000", metavar="R1,R2,...|none",
        help="the capacity ladder in re-INVITEs/s, SIPp-driven on Kamailio (default "
        "500,...,3000; none: judge capacity over --rates only)",
    )  # fmt: skip
    p_cal.add_argument(
        "--max-steal", default=f"{STEAL_LIMIT:.0%}", metavar="PERCENT|none",
        help="run a Kamailio run again (up to 3 in all, the least disturbed kept) when the "
        "machine's hypervisor gave more than this share of the CPU to others during it "
        "(steal in /proc/stat; default %(default)s; none: keep every first run)",
    )  # fmt: skip
    p_cal.add_argument(
        "--refit", metavar="DIR",
        help="no Kamailio: fit and judge the current sim against the Kamailio runs an "
        "earlier calibrate kept in DIR (its kamailio.json), with the strategies, rates, "
        "duration, seed, repeats and server settings they ran with",
    )  # fmt: skip
    p_cal.add_argument(
        "--fit-on", choices=("all", "quiet"), default="all",
        help="which of Kamailio's repeats the fit learns from: all (default), or quiet: "
        "only those the host stole no more than --max-steal from, where a point has any",
    )  # fmt: skip
    p_cal.add_argument(
        "--adopt", action="store_true",
        help="make the fitted profile the sim's default (results/calibration/profile.toml)",
    )  # fmt: skip
    add_server_flags(p_cal)
    p_cal.set_defaults(handler=cmd, fr_timer="5s")
    p_cal.set_defaults(measured_with={name: p_cal.get_default(name) for name in MEASURING_FLAGS})


def cmd(args: argparse.Namespace) -> int:
    from harness.analysis import calibrate as cal
    from harness.runner import local_executor, stop_pool

    base = sim_profile(args.costs or BUILT_IN)[0]  # fits start from the hand-derived costs
    side = _kept_side(args) if args.refit else None
    rates = side.rates if side else rate_list(args.rates, "--rates")
    asked = rate_list(args.fit_rates, "--fit-rates") if args.fit_rates else None
    try:
        fit_rates = cal.fit_rates_of(rates, asked)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if side is None:
        settings, duration, ladder = _measuring_flags(args)
        max_steal = _max_steal(args.max_steal)
        specs = strategies.canonical_specs(args.strategy) or strategies.names()
    out = output_dir(default_out(args.out, None, under="calibration"))
    command = ["deferbench", *args.argv]
    executor = local_executor(args.jobs)
    say = None if args.quiet else (lambda line: print(line, file=sys.stderr, flush=True))
    measured: list[KamailioSide] = [side] if side is not None else []

    def keep(kept: KamailioSide) -> None:
        """Save Kamailio's side as soon as it is measured, before the sim's part runs."""
        kept = replace(kept, command=command)
        cal.save_side(kept, out)
        measured.append(kept)

    try:
        if side is not None:
            cal.save_side(side, out)  # the new directory holds the runs it was judged on
            result = cal.refit(side, base, fit_rates=fit_rates, executor=executor,
                               progress=say, fit_on=args.fit_on)  # fmt: skip
        else:
            result = cal.calibrate(
                specs, rates, duration, args.seed, settings, base, fit_rates=fit_rates,
                repeat=args.repeat, capacity_rates=ladder, executor=executor, progress=say,
                keep=keep, max_steal=max_steal, fit_on=args.fit_on,
            )  # fmt: skip
    except TargetError as exc:
        raise UsageError(f"kamailio target: {exc}") from None
    except BaseException:
        stop_pool(executor)  # ^C or SIGTERM: kill the workers, wait for no job
        raise
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    profile = cal.write(result, out, command)
    report = [cal.table(result), "\nfitted:\n" + "\n".join(f"  {note}" for note in result.notes)]
    bounds = ("delay max(10 %, 0.5 ms), early 5 points, wake-ups 10 %, CPU per re-INVITE "
              "15 %, capacity 15 %")  # fmt: skip
    held = [r for r in result.rates if r not in result.fit_rates]
    cells = (f"held-out rates {', '.join(f'{r:g}' for r in held) or 'none'}; fit on "
             f"{', '.join(f'{r:g}' for r in result.fit_rates)}")  # fmt: skip
    report.append(f"\nfidelity (within {bounds}; {cells}):\n" + cal.summary(result))
    if result.quiet_points:
        quiet, every = (sum(p["kamailio"]["runs"] for p in points if p["cell"] != "fit")
                        for points in (result.quiet_points, result.points))  # fmt: skip
        report.append(
            "  the same against only Kamailio's repeats the host did not disturb, where a "
            f"point has one ({quiet} of the {every} held-out repeats):\n"
            + textwrap.indent(cal.summary(result, result.quiet_points), "  ")
        )
    report.extend(f"  {kept.steal_note()}" for kept in measured)
    if side is not None and side.command:
        report.append(f"\nKamailio's runs measured by: {' '.join(side.command)}")
    report.append(f"\nreproduce: {' '.join(command)}")
    text = "\n".join(report) + "\n"
    (out / "calibrate.txt").write_text(text, encoding="utf-8")  # the table, kept beside its data
    print(text + f"written: {out}/")
    if args.adopt:
        ADOPTED.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(profile, ADOPTED)
        print(f"adopted: {ADOPTED} (every sim run uses it unless --costs says otherwise)")
    else:
        print(f"use it: deferbench run --costs {profile} (or calibrate --adopt: the default)")
    return 0


def _measuring_flags(args: argparse.Namespace) -> tuple[ServerSettings, float, list[float]]:
    """What a measuring run needs checked before Kamailio starts: (server settings, each
    run's duration, the capacity ladder); SIPp must be installed."""
    settings = server_settings(args)
    try:
        duration = parse_duration(args.duration)
    except ValueError as exc:
        raise UsageError(f"calibrate: {exc}") from None
    ladder = _capacity_rates(args.capacity_rates)
    _need_sipp()
    if not duration > 0:
        raise UsageError(f"--duration must be > 0, got {args.duration!r}")
    return settings, duration, ladder


MEASURING_FLAGS = ("strategy", "rates", "duration", "seed", "repeat", "capacity_rates",
                   "max_steal", "children", "cores", "fr_timer")  # fmt: skip
"""What Kamailio's runs were measured with: a refit takes them from the kept runs."""


def _kept_side(args: argparse.Namespace) -> KamailioSide:
    """`--refit DIR`'s kept Kamailio side; a flag that would change how it was measured is
    refused (it cannot apply to runs already made)."""
    from harness.analysis import calibrate as cal

    given = [f"--{name.replace('_', '-')}" for name in MEASURING_FLAGS
             if getattr(args, name) != args.measured_with[name]]  # fmt: skip
    if given:
        raise UsageError(f"--refit uses the kept runs' own settings: drop {', '.join(given)}")
    try:
        return cal.load_side(Path(args.refit))
    except cal.MeasuredError as exc:
        raise UsageError(f"--refit: {exc}") from None


def _max_steal(text: str) -> float | None:
    """`--max-steal`: a percentage of the machine's CPU, or 'none' (no limit)."""
    value = text.strip().lower()
    if value == "none":
        return None
    try:
        share = float(value.removesuffix("%")) / 100
    except ValueError:
        share = math.nan
    if not 0.0 <= share <= 1.0:
        raise UsageError(f"--max-steal must be a percentage in [0, 100] or 'none', got {text!r}")
    return share


def _capacity_rates(text: str) -> list[float]:
    """`--capacity-rates`: re-INVITE rates, or 'none' (no SIPp ladder)."""
    if text.strip().lower() == "none":
        return []
    return rate_list(text, "--capacity-rates", "or 'none'")


def _need_sipp() -> None:
    """SIPp drives every Kamailio run of a calibration: one line if it is not installed."""
    from harness.targets.kamailio import sipp

    if sipp.sipp_binary() is None:
        raise UsageError(
            "calibrate: SIPp drives every Kamailio run and sipp is not installed "
            "(Debian package sip-tester, or set DEFERBENCH_SIPP)"
        )
