"""What several `deferbench` commands share: the usage error and its one-line parser, the
server and network flags, and turning those flags into settings and targets.

It must not import `harness.cli` or any command module (they import it), must not define a
command, and must not import heavy modules (plots, calibration, dask, live or kamailio
targets) at module level: `deferbench --help` loads it.
"""

from __future__ import annotations

import argparse
import os
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from core.runtime.costs import CostProfile
from core.runtime.server import ServerSettings
from harness import targets
from harness.load.network import Link, parse_link
from harness.targets import Target, TargetError, TargetOptions
from strategies.spec import SpecError, parse_duration

EXIT_USAGE = 2


class UsageError(Exception):
    """Bad input from the user: reported as one line, exit status 2."""


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a usage error is one line naming the problem (no usage dump)."""

    def _get_values(self, action: argparse.Action, arg_strings: list[str]) -> object:
        # Python 3.11 hands an option whose value is "--" an empty list instead of an error
        if action.nargs is None and action.option_strings and arg_strings == ["--"]:
            self.error(f"argument {'/'.join(action.option_strings)}: expected one argument")
        return super()._get_values(action, arg_strings)

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def server_settings(args: argparse.Namespace) -> ServerSettings:
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


def network(args: argparse.Namespace) -> Link:
    try:
        return parse_link(args.network)
    except ValueError as exc:
        raise UsageError(f"--network: {exc}") from None


def build_target(name: str, args: argparse.Namespace, costs: CostProfile, source: str) -> Target:
    """The target `name` configured from the command's flags (one-line error if a flag does
    not apply to it)."""
    options = TargetOptions(
        costs=costs,
        costs_source=source,
        costs_named=bool(getattr(args, "costs", None)),
        network=network(args) if name == "sim" else None,
        backend=getattr(args, "backend", None),
        driver=getattr(args, "driver", None),
    )
    try:
        return targets.build(name, options)
    except TargetError as exc:
        raise UsageError(str(exc)) from None


def rate_list(text: str, flag: str, alternative: str = "") -> list[float]:
    """`R1,R2,...` re-INVITE rates of a flag: positive numbers, at least one."""
    try:
        rates = [float(r) for r in text.split(",") if r.strip()]
    except ValueError:
        rates = []
    if not rates or any(not r > 0 for r in rates):
        also = f" {alternative}" if alternative else ""
        raise UsageError(f"{flag} needs positive re-INVITE rates{also}, got {text!r}")
    return rates


def count(text: str) -> int:
    """argparse type of a count such as --jobs: a whole number >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 1, got {text!r}")
    return value


def default_out(given: str | None, kind: str | None, under: str = "runs") -> Path:
    """--out as given, else results/<under>/<UTC stamp>[-<kind>]: where a command writes."""
    if given:
        return Path(given)
    stamp = datetime.now(UTC).strftime("%Y%m%d-%H%M%S")
    return Path("results") / under / (f"{stamp}-{kind}" if kind else stamp)


def output_dir(path: Path, flag: str = "--out") -> Path:
    """`path`, made now, before anything runs: a run (a calibration's Kamailio half hour)
    must not be lost to a directory it cannot write. UsageError (one line) if it cannot."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise UsageError(f"{flag} {path}: cannot create ({exc.strerror or exc})") from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise UsageError(f"{flag} {path}: not writable")
    return path


def add_network_flag(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--network",
        default=DEFAULT_NETWORK,
        metavar="SPEC",
        help="sim network, every direction: latency=DURATION,jitter=DURATION,"
        f"loss=PERCENT%% (default {DEFAULT_NETWORK.replace('%', '%%')})",
    )


def add_server_flags(parser: argparse.ArgumentParser) -> None:
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
