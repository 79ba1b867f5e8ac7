"""The operator's question, answered: which strategy, with what settings, for R re-INVITEs/s
held D each, on this server — with the evidence and the kamailio.cfg lines to paste.

The answer comes from runs, not rules: every candidate configuration (and the configurations
that are wrong for the question, so the verdict can show why) goes through the same seeded
load on a target at the asked rate and at rate × headroom. A candidate qualifies when, at
both rates, the ledger is clean of what the strategy causes (losses, 408s, 5xx, duplicates;
491 races too when it claims to hold, since the hold exists to prevent them), it honours the
delay (at most `EARLY_LIMIT` resumed early) and its p99 lateness is within the bound. Among
those, the one with the least CPU at the asked rate wins; idle CPU breaks ties.

This module must not compute figures of its own beyond reading result entries
(`harness.measure` computes them), nor start servers except through a `Target`.
"""

from __future__ import annotations

import math
import re
import textwrap
from collections.abc import Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from typing import Any

import strategies
from core.runtime.server import ServerSettings
from harness.runner import Job, Progress, execute
from harness.targets import Target

EARLY_LIMIT = 0.01
"""Share of deferrals resumed before the requested delay that still counts as honoured."""

REINVITES_PER_CALL = 10
MIN_SECONDS, MAX_SECONDS, TARGET_REINVITES = 3.0, 10.0, 4000
"""Each run lasts long enough for about TARGET_REINVITES re-INVITEs, within these bounds."""

FAULTS = ("lost", "duplicated", "stale", "reordered", "timeout_408", "error_5xx", "other")
"""Ledger outcomes any strategy is to blame for."""


@dataclass(frozen=True, slots=True)
class Question:
    """What the operator asks: rate in re-INVITEs/s, delay in seconds, on these settings."""

    rate: float
    delay: float
    settings: ServerSettings
    headroom: float = 1.5
    late_bound: float = 0.010  # seconds of p99 lateness still acceptable
    seed: int = 1

    @property
    def delay_ms(self) -> int:
        return round(self.delay * 1000)

    @property
    def rates(self) -> tuple[float, float]:
        return (self.rate, self.rate * self.headroom)

    def load(self, rate: float, arrival: str = "poisson") -> str:
        seconds = min(MAX_SECONDS, max(MIN_SECONDS, TARGET_REINVITES / rate))
        calls = rate / REINVITES_PER_CALL
        return (
            f"reinvite:rate={calls:g}/s,duration={seconds:g}s,reinvites={REINVITES_PER_CALL},"
            f"gap=1ms,arrival={arrival}"
        )


@dataclass(frozen=True, slots=True)
class Candidate:
    """A configuration to run; `wrong` says why it is wrong for the question (None: it is a
    real contender)."""

    spec: str
    wrong: str | None = None


@dataclass
class Verdict:
    """One candidate's runs and what they show."""

    candidate: Candidate
    entries: dict[float, dict[str, Any]] = field(default_factory=dict)  # rate -> entry
    failures: dict[float, list[str]] = field(default_factory=dict)

    @property
    def spec(self) -> str:
        return self.candidate.spec

    @property
    def qualifies(self) -> bool:
        return self.candidate.wrong is None and not any(self.failures.values())

    def at(self, rate: float) -> dict[str, Any]:
        return self.entries[rate]

    def cost(self, rate: float) -> tuple[float, float]:
        cpu = self.at(rate)["cpu"]
        return (cpu["busy_share"] or 0.0, cpu["idle_share"] or 0.0)


def candidates(question: Question) -> list[Candidate]:
    """Every configuration worth running for `question`, contenders first."""
    if question.delay <= 0:
        return [
            Candidate("inline"),
            *(Candidate(f"async-task:async_workers={w}") for w in (1, 2, 4)),
        ]
    ms, interval = question.delay_ms, f"{question.delay_ms}ms"
    children = question.settings.children
    cap = children / question.delay
    blocking_wrong = (
        f"each held request blocks a SIP worker: {children} children ÷ {ms} ms cap ALL SIP "
        f"traffic of the server at {cap:,.0f} requests/s, and a burst or one slow request "
        "stalls every other call"
    )
    return [
        *(Candidate(f"async-route:ms={ms},async_workers={w}") for w in (1, 2, 4)),
        *(
            Candidate(f"mqueue-rtimer:timers={t},interval={interval},take={take},min_age={ms}ms")
            for t, take in ((4, "all"), (12, "all"), (12, "one"))
        ),
        Candidate(f"blocking-sleep:ms={ms}", blocking_wrong),
        Candidate(
            f"mqueue-rtimer:timers=12,interval={interval}",
            "the seed configuration resumes at any timer's next pass, not after "
            f"{ms} ms: most re-INVITEs go early and can still overtake their ACK",
        ),
        Candidate(
            f"async-route:ms={ms},async_workers=0",
            "async_ms_route without the core async_workers pool never resumes: every "
            "deferral strands until its 408 at fr_timer",
        ),
    ]


def failures(entry: dict[str, Any], question: Question) -> list[str]:
    """What in `entry` fails the question ([] = it meets it)."""
    ledger = entry["ledger"]
    why = [f"{k.replace('_', ' ')} {ledger[k]}" for k in FAULTS if ledger.get(k)]
    holds = (entry["requested_delay_ms"] or 0.0) > 0
    if holds and ledger.get("race_491"):
        why.append(f"{ledger['race_491']} re-INVITEs overtook their ACK (491)")
    if not ledger["transactions"]:
        why.append("no re-INVITE completed")
    if question.delay > 0:
        early = entry["early_share"]
        if early is None or not holds:
            why.append("does not hold the request")
        elif early > EARLY_LIMIT:
            why.append(f"{early:.1%} resumed before {question.delay_ms} ms")
    late = entry["lateness_ms"]["p99"]
    bound_ms = question.late_bound * 1e3
    if holds and (late is None or late > bound_ms):
        shown = "none resumed" if late is None else f"{late:.1f} ms"
        why.append(f"p99 lateness {shown} > {bound_ms:g} ms")
    return why


def evaluate(
    question: Question,
    target: Target,
    executor: Executor | None = None,
    progress: Progress | None = None,
) -> list[Verdict]:
    """Run every candidate at the asked rate and at rate × headroom on `target`."""
    verdicts = [Verdict(c) for c in candidates(question)]
    plan = [
        (
            verdict,
            rate,
            Job(verdict.spec, question.load(rate), question.seed, question.settings, target),
        )  # fmt: skip
        for verdict in verdicts
        for rate in question.rates
    ]
    pool = None if target.real_clock else executor
    for (verdict, rate, _), entry in zip(plan, execute([p[2] for p in plan], pool, progress),
                                         strict=True):  # fmt: skip
        verdict.entries[rate] = entry
        verdict.failures[rate] = failures(entry, question)
    return verdicts


def ranked(verdicts: Sequence[Verdict], question: Question) -> list[Verdict]:
    """The qualifying verdicts, cheapest at the asked rate first."""
    ok = [v for v in verdicts if v.qualifies]
    return sorted(ok, key=lambda v: (*v.cost(question.rate), v.spec))


def what_would(verdicts: Sequence[Verdict], question: Question) -> list[str]:
    """When nothing qualifies: what change of resources or delay would, from the runs."""
    hints = []
    contenders = [v for v in verdicts if v.candidate.wrong is None]
    peak = question.rates[-1]
    busy = [v.at(peak)["cpu"]["busy_share"] or 0.0 for v in contenders]
    if busy and min(busy) > 0.8:
        cores = math.ceil(question.settings.cores * min(busy) / 0.7)
        hints.append(f"the cheapest contender keeps {min(busy):.0%} of the cores busy at "
                     f"{peak:g}/s: about {cores} cores would leave room")  # fmt: skip
    late = [v for v in contenders if any("lateness" in f for fs in v.failures.values()
                                          for f in fs)]  # fmt: skip
    if late:
        hints.append("the lateness bound is what fails: a longer --max-late, or a lower rate")
    return hints or ["a lower rate: every contender fails even at the asked rate"]


def cfg_lines(spec: str, settings: ServerSettings) -> str:
    """The strategy's own part of its generated kamailio.cfg, commented: core parameters,
    modules and modparams beyond the base proxy's, and the deferral routes."""
    cfg = strategies.parse_spec(spec).kamailio_config(settings)
    base = strategies.parse_spec("inline").kamailio_config(settings).splitlines()
    lines = cfg.splitlines()
    routes_at = next(i for i, line in enumerate(lines) if line.startswith("route[DEFER]"))
    head = _new_lines(lines[:routes_at], base)
    return "\n".join([*head, "", *lines[routes_at:]]).strip() + "\n"


def _new_lines(lines: Sequence[str], base: Sequence[str]) -> list[str]:
    """The lines of `lines` that the base cfg does not have, with the comments above them."""
    known = set(base)
    out: list[str] = []
    comments: list[str] = []
    for line in lines:
        if line.startswith("#") and not line.startswith("####"):
            comments.append(line)
            continue
        if line.strip() and line not in known and not line.startswith("####"):
            out.extend(comments)
            out.append(line)
        comments = []
    return [line for line in out if not line.startswith("# deferbench strategy")]


# ---------------------------------------------------------------------------- the answer

WIDTH = 100


def render(verdicts: Sequence[Verdict], question: Question, target: Target) -> tuple[str, int]:
    """The answer as text within `WIDTH` columns, and the exit status (0: a verdict)."""
    low, high = question.rates
    out = [
        f"question: {question.rate:g} re-INVITEs/s, each held {question.delay_ms} ms, on "
        f"{question.settings.children} children and {question.settings.cores} cores",
        f"          and {high:g}/s must pass too (headroom {question.headroom:g}×)",
        f"evidence: {target.name} target, seed {question.seed}, each configuration at "
        f"{low:g} and {high:g} re-INVITEs/s",
        *_costs(target),
        "",
        _table(verdicts, question),
        "",
    ]
    best = ranked(verdicts, question)
    if not best:
        out.append("VERDICT: no configuration meets the requirement at these settings.")
        for hint in what_would(verdicts, question):
            out += textwrap.wrap(hint, WIDTH, initial_indent="  what would: ",
                                 subsequent_indent="    ")  # fmt: skip
        out += _wrong(verdicts, question)
        return "\n".join(out), 1
    winner = best[0]
    out.append(f"VERDICT: {winner.spec}")
    out += [f"  {line}" for line in _why(winner, question)]
    if len(best) > 1:
        out.append(f"runner-up: {best[1].spec}")
        out.append(f"  lost on CPU: {_cpu(best[1], low)} against {_cpu(winner, low)}")
    out += _wrong(verdicts, question)
    out += ["", f"kamailio.cfg lines to paste ({winner.spec}):", _paste(winner, question)]
    return "\n".join(out), 0


def _costs(target: Target) -> list[str]:
    """Whose costs the sim charged: the answer is as good as their fit to the operator's
    Kamailio and box, so name them, and the command that fits them to another box."""
    costs = target.facts().get("costs")
    if not costs:
        return []
    line = f"costs:    {costs}"
    if costs != "built-in":
        line += "; `deferbench calibrate --adopt` fits them to the Kamailio on your box"
    return textwrap.wrap(line, WIDTH, subsequent_indent=" " * 10)


def _table(verdicts: Sequence[Verdict], question: Question) -> str:
    low, high = question.rates
    cols = ("early", "delay p50/p99", "CPU %", "µs/re-INV", f"at {high:g}/s")
    rows = [
        f"{'configuration, at ' + format(low, 'g') + '/s':<44} {cols[0]:>6} {cols[1]:>13} "
        f"{cols[2]:>6} {cols[3]:>9}  {cols[4]}"
    ]
    for v in verdicts:
        e = v.at(low)
        early = "-" if e["early_share"] is None else f"{e['early_share']:.0%}"
        delay = e["delay_ms"]
        p = "-" if delay["p50"] is None else f"{delay['p50']:.1f}/{delay['p99']:.1f}"
        busy = e["cpu"]["busy_share"]
        per = e["cpu"]["per_txn_us"]
        mark = "ok" if not v.failures[high] else "FAIL"
        if v.candidate.wrong:
            mark = "wrong"
        name = _short(v.spec)
        rows.append(f"{name:<44} {early:>6} {p:>13} {100 * (busy or 0):>6.2f} "
                    f"{per or 0:>9.0f}  {mark}")  # fmt: skip
    return "\n".join(rows)


def _short(spec: str) -> str:
    """A spec without its default parameters, so a row fits."""
    text = strategies.parse_spec(spec).short_spec
    return text if len(text) <= 44 else text[:43] + "…"


def _cpu(verdict: Verdict, rate: float) -> str:
    cpu = verdict.at(rate)["cpu"]
    return f"{100 * (cpu['busy_share'] or 0):.2f} % of the cores ({cpu['per_txn_us'] or 0:.0f} µs)"


def _why(winner: Verdict, question: Question) -> list[str]:
    low, high = question.rates
    e = winner.at(low)
    delay, cpu = e["delay_ms"], e["cpu"]
    lines = []
    if question.delay > 0:
        lines.append(f"delay honoured: {e['early_share']:.1%} early; p50 {delay['p50']:.2f} ms, "
                     f"p99 {delay['p99']:.2f} ms (asked {question.delay_ms} ms)")  # fmt: skip
    lines += [
        f"CPU at {low:g}/s: {_cpu(winner, low)}; idle {100 * (cpu['idle_share'] or 0):.2f} %, "
        f"{cpu['wakeups_per_s'] or 0:,.0f} wake-ups/s",
        f"clean at {high:g}/s (headroom {question.headroom:g}×): "
        f"{winner.at(high)['ledger']['transactions']:,} re-INVITEs, nothing lost, "
        f"p99 e2e {winner.at(high)['e2e_ms']['p99']:.1f} ms",
    ]
    return [textwrap.shorten(line, WIDTH - 2, placeholder="…") for line in lines]


def _wrong(verdicts: Sequence[Verdict], question: Question) -> list[str]:
    out = ["", "ruled out:"]
    for v in verdicts:
        rate = question.rates[-1] if v.failures[question.rates[-1]] else question.rate
        fails = v.failures[rate]
        if v.candidate.wrong is None and not fails:
            continue
        reason = v.candidate.wrong or f"at {rate:g}/s: " + "; ".join(fails)
        evidence = "; ".join(fails[:2]) if v.candidate.wrong and fails else ""
        measured = f" (measured at {rate:g}/s: {evidence})" if evidence else ""
        text = f"{_short(v.spec)}: {reason}{measured}"
        out += textwrap.wrap(text, WIDTH, initial_indent="  - ", subsequent_indent="    ")
    return out if len(out) > 2 else []


def _paste(winner: Verdict, question: Question) -> str:
    lines = cfg_lines(winner.spec, question.settings).splitlines()
    call = ['# in the in-dialog branch, after loose_route(): if (is_method("INVITE"))',
            "# { route(DEFER); exit; }"]  # fmt: skip
    wrapped = [piece for line in [*call, *lines] for piece in _fit(line)]
    return "\n".join(wrapped)


def _fit(line: str) -> list[str]:
    """A cfg line within WIDTH: comments wrap; code breaks before a `+` or `-` between
    operands (whitespace, newlines included, separates tokens in Kamailio's cfg)."""
    if len(line) <= WIDTH:
        return [line]
    indent = line[: len(line) - len(line.lstrip())]
    if not line.lstrip().startswith("#"):
        return _break_code(line, indent)
    return textwrap.wrap(line.lstrip()[1:].strip(), WIDTH - len(indent) - 2,
                         initial_indent=f"{indent}# ", subsequent_indent=f"{indent}# ")  # fmt: skip


def _break_code(line: str, indent: str) -> list[str]:
    pieces = re.split(r"(?= [-+] )", line)
    out = [pieces[0]]
    for piece in pieces[1:]:
        if len(out[-1]) + len(piece) > WIDTH:
            out.append(indent + "\t" + piece.lstrip())
        else:
            out[-1] += piece
    return out
