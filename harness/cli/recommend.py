"""`deferbench recommend`: the operator's question — which strategy, with what settings, for
R re-INVITEs/s held D each — answered from runs, with the kamailio.cfg lines to paste.

Runs on the sim by default; `--target kamailio` confirms the sim's choice on real Kamailio
(SIPp driving it). Exit 0 with a verdict, 1 when nothing meets the requirement. It must not
judge anything itself: `harness.analysis.recommend` does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from harness.analysis import page
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
from harness.load.spec import parse_load
from harness.profile import sim_profile
from strategies.spec import SpecError, parse_duration


def add_parser(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "recommend",
        help="which strategy and settings for R re-INVITEs/s held D: a verdict and cfg lines",
        description="Runs every sensible configuration (and the usual wrong ones) at the "
        "asked rate and at rate × headroom, and prints the cheapest that honours the delay "
        "with a clean ledger, the runner-up, what is wrong and why, and the kamailio.cfg "
        "lines to paste. Exit 0 with a verdict, 1 when nothing meets the requirement.",
    )
    p.add_argument("--rate", required=True, metavar="R/s", help="re-INVITEs per second, e.g. 500/s")
    p.add_argument(
        "--delay", required=True, metavar="DURATION", help="hold each, e.g. 10ms; 0 = none"
    )
    p.add_argument("--headroom", type=float, default=1.5, metavar="X",
                   help="must also carry rate × X cleanly (default 1.5)")  # fmt: skip
    p.add_argument("--max-late", default="10ms", metavar="DURATION",
                   help="p99 lateness still acceptable (default 10ms)")  # fmt: skip
    p.add_argument("--target", default="sim", choices=["sim", "kamailio"],
                   help="sim (default); kamailio: confirm on real Kamailio")  # fmt: skip
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--jobs", type=count, default=None, help="parallel sim runs (default: cores)")
    p.add_argument("--out", metavar="DIR", help="where recommend.json goes (default results/runs/)")
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_network_flag(p)
    add_server_flags(p)
    p.set_defaults(handler=cmd)


def cmd(args: argparse.Namespace) -> int:
    from harness.analysis import recommend as rec
    from harness.runner import local_executor, text_progress

    question = _question(args)
    costs, source = sim_profile(args.costs)
    sim = build_target("sim", args, costs, source)
    out = output_dir(default_out(args.out, "recommend"))
    executor = local_executor(args.jobs)
    progress = None if args.quiet else text_progress()
    try:
        verdicts = rec.evaluate(question, sim, executor, progress)
    finally:
        if executor is not None:
            executor.shutdown(cancel_futures=True)
    text, status = rec.render(verdicts, question, sim)
    print(text)
    if status == 0 and args.target == "kamailio":
        confirmed, status = _confirm(rec, rec.ranked(verdicts, question)[0], question)
        print(confirmed)
        text += "\n" + confirmed
    _write(args, out, question, verdicts, status)
    title = f"deferbench recommend: {question.rate:g} re-INVITEs/s held {question.delay_ms} ms"
    page.write(out, "recommend", title, [page.Section("verdict and evidence", text)],
               ["deferbench", *args.argv], sim.facts()["costs"])  # fmt: skip
    print(f"\nreproduce: deferbench {' '.join(args.argv)}\nwritten: {out}/ "
          "(recommend.json, recommend.html, recommend.md)")  # fmt: skip
    return status


def _question(args: argparse.Namespace):  # -> recommend.Question
    from harness.analysis.recommend import Question

    text = args.rate.strip().removesuffix("/s")
    try:
        rate = float(text)
    except ValueError:
        raise UsageError(f"--rate {args.rate!r}: write re-INVITEs per second, e.g. 500/s") from None
    try:
        delay = parse_duration(args.delay) if args.delay.strip() not in ("0", "0ms") else 0.0
        late = parse_duration(args.max_late)
    except SpecError as exc:
        raise UsageError(f"--delay/--max-late: {exc}") from None
    if not 0 < rate <= 100_000:
        raise UsageError(f"--rate must be in (0, 100000] re-INVITEs/s, got {args.rate!r}")
    if not args.headroom >= 1:
        raise UsageError(f"--headroom must be >= 1, got {args.headroom:g}")
    if delay > 10:
        raise UsageError(f"--delay {args.delay}: at most 10 s (async's seconds form is coarser)")
    return Question(rate, delay, server_settings(args), args.headroom, late, args.seed)


def _confirm(rec, winner, question) -> tuple[str, int]:  # noqa: ANN001
    """The winner on real Kamailio (SIPp driving) at the asked rate: a line and a status."""
    from harness import targets
    from harness.analysis import report
    from harness.runner import Job, execute
    from harness.targets.base import steal_of

    load = question.load(question.rate, arrival="constant")
    try:
        kamailio = targets.build("kamailio", targets.TargetOptions(driver="sipp"))
        kamailio.check(parse_load(load), question.seed)
        [entry] = execute([Job(winner.spec, load, question.seed, question.settings, kamailio)])
    except targets.TargetError as exc:
        raise UsageError(f"kamailio target: {exc}") from None
    fails = rec.failures(entry, question)
    delay = entry["delay_ms"]
    line = f"\nconfirmed on Kamailio at {question.rate:g}/s: " + (
        "meets it" if not fails else "FAILS: " + "; ".join(fails)
    )
    if delay["p50"] is not None:
        line += f" (delay p50/p99 {delay['p50']:.2f}/{delay['p99']:.2f} ms)"
    note = report.disturbed(steal_of(entry), winner.spec)
    return line + (f"\n{note}" if note else ""), 0 if not fails else 1


def _write(args: argparse.Namespace, out: Path, question, verdicts, status: int) -> None:  # noqa: ANN001
    document = {
        "schema": "deferbench.recommend/1",
        "command": ["deferbench", *args.argv],
        "question": {
            "rate": question.rate,
            "delay_ms": question.delay * 1e3,
            "headroom": question.headroom,
            "max_late_ms": question.late_bound * 1e3,
            "children": question.settings.children,
            "cores": question.settings.cores,
            "seed": question.seed,
        },  # fmt: skip
        "status": status,
        "configurations": [
            {
                "strategy": v.spec,
                "wrong": v.candidate.wrong,
                "failures": {f"{r:g}": f for r, f in v.failures.items()},
                "entries": {f"{r:g}": e for r, e in v.entries.items()},
            }
            for v in verdicts
        ],  # fmt: skip
    }
    (out / "recommend.json").write_text(json.dumps(document, indent=1), encoding="utf-8")
