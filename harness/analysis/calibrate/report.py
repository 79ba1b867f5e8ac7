"""Calibration, the report: the figures both sides compare by, the verdicts, the outputs.

Normalised figures of a run (`figures`, `median_figures`), each judged against its fidelity
bound with a reason when it misses (`judge`, `judged_points`), the `Calibration` document,
and what a person or the CLI gets: `table`, `summary`, `write` (profile.toml and
calibration.json).

It must not run a target nor fit a cost: it reads the fitting module's results (and its
`marginal_us`), never the runs module.
"""

from __future__ import annotations

import json
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from core.runtime.costs import CostProfile
from harness.analysis.calibrate.fit import PhaseFit, TimerFit, marginal_us
from harness.load.spec import parse_load
from harness.targets.base import DISTURBED, most_stolen

Points = Mapping[tuple[str, float], Sequence[dict[str, Any]]]
"""(strategy spec, re-INVITE rate) -> one result entry per repeat."""

FIT, HELD_OUT = "fit", "held out"
"""A point's `cell`: its Kamailio runs fed the fits, or it is a prediction (judged)."""

# ---------------------------------------------------------------------------- figures


def core_share(entry: Mapping[str, Any], cores: int, key: str = "busy_share") -> float | None:
    """A CPU share of the entry as a share of ONE core."""
    value = entry["cpu"].get(key)
    return None if value is None else value * cores


def figures(
    entry: Mapping[str, Any], idle: Mapping[str, Any], cores: int, reinvite_rate: float
) -> dict[str, Any]:
    """The side-by-side figures of one run, normalised so both targets compare alike."""
    delay = entry["delay_ms"]
    idle_share = core_share(idle, cores)
    per_txn = entry["cpu"]["per_txn_us"]
    return {
        "strategy": entry["strategy"].partition(":")[0],
        "delay_p50_ms": delay["p50"],
        "delay_p90_ms": delay["p90"],
        "delay_p99_ms": delay["p99"],
        "early_pct": None if entry["early_share"] is None else entry["early_share"] * 100,
        "idle_wakeups_per_s": idle["cpu"]["wakeups_per_s"],
        "idle_cpu_pct_core": None if idle_share is None else idle_share * 100,
        "cpu_us_per_reinvite": per_txn,
        "cpu_us_per_call": (
            None if per_txn is None else per_txn * parse_load(entry["load"]).reinvites
        ),
        "marginal_us_per_reinvite": (
            None
            if per_txn is None or idle_share is None
            else marginal_us(per_txn, idle_share, reinvite_rate)
        ),
        "load_cpu_pct_core": core_share(entry, cores) * 100,
        "idle_by_role": {
            role: {
                "wakeups_per_s": v["wakeups_per_s"],
                "cpu_pct_core": v["busy_share"] * cores * 100,
            }
            for role, v in idle["cpu"]["by_role"].items()
        },
        "resumed_by": sorted(
            k.removeprefix("resumed by ") for k in entry["counters"] if k.startswith("resumed by ")
        ),
        "ledger": entry["ledger"],
    }


def median_figures(
    entries: Sequence[dict[str, Any]], idles: Sequence[dict[str, Any]], cores: int, rate: float
) -> dict[str, Any]:
    """`figures` of each (run, idle run) pair; numbers are the median over the pairs.

    Non-numeric figures (roles, ledger) come from the first pair; `runs` says how many;
    `spread` maps each number with two or more values to their range (max − min): how far
    the repeats of this point spread on their own (empty with one run).
    """
    each = [figures(e, i, cores, rate) for e, i in zip(entries, idles, strict=True)]
    out = dict(each[0])
    spread: dict[str, float] = {}
    for key, value in out.items():
        if isinstance(value, int | float) or value is None:
            values = [f[key] for f in each if f[key] is not None]
            out[key] = statistics.median(values) if values else None
            if len(values) > 1:
                spread[key] = max(values) - min(values)
    out["runs"] = len(each)
    out["spread"] = spread
    return out


def point_figures(
    runs: Points, idles: Mapping[str, Sequence[dict[str, Any]]], cores: int
) -> dict[tuple[str, float], dict[str, Any]]:
    """`median_figures` of every (strategy, rate) point of one side, with its idle runs."""
    return {(spec, rate): median_figures(entries, idles[spec], cores, rate)
            for (spec, rate), entries in runs.items()}  # fmt: skip


# ---------------------------------------------------------------------------- judging


@dataclass(frozen=True, slots=True)
class Check:
    figure: str
    kamailio: float | None
    sim: float | None
    verdict: str  # PASS | MISS | n/a
    why: str = ""
    bound: float | None = None  # the largest |sim − kamailio| that passes


WITHIN_SPREAD = "within Kamailio's own spread"
"""Said of a MISS whose |sim − Kamailio's median| is within the range of Kamailio's repeats."""

SPREAD_KEYS = {"delay p50 ms": "delay_p50_ms", "delay p99 ms": "delay_p99_ms",
               "early %": "early_pct", "idle wake-ups/s": "idle_wakeups_per_s",
               "CPU µs per re-INVITE": "cpu_us_per_reinvite"}  # fmt: skip
"""Judged figure -> the figure key whose repeat spread (`median_figures`) it is read by."""


def _delay_check(name: str, kam: float | None, sim: float | None) -> Check:
    if kam is None or sim is None:
        return Check(name, kam, sim, "n/a", "no delays recorded on one side")
    bound = max(0.1 * abs(kam), 0.5)
    return Check(name, kam, sim, "PASS" if abs(sim - kam) <= bound else "MISS", bound=bound)


def _with_spread(check: Check, spread: Mapping[str, float]) -> Check:
    """A MISS whose Kamailio repeats spread wider than its bound, with that spread beside it
    (and `WITHIN_SPREAD` when |sim − Kamailio's median| is no more than the spread)."""
    key = SPREAD_KEYS.get(check.figure)
    width = spread.get(key) if key else None
    if check.verdict != "MISS" or width is None or check.bound is None or width <= check.bound:
        return check
    assert check.kamailio is not None and check.sim is not None  # a MISS has both
    note = f"Kamailio's own repeats spread {width:.3g} (bound {check.bound:.3g})"
    if abs(check.sim - check.kamailio) <= width:
        note += f": {WITHIN_SPREAD}"
    return replace(check, why="; ".join(w for w in (note, check.why) if w))


def judge(
    kam: Mapping[str, Any],
    sim: Mapping[str, Any],
    kam_capacity: float | None,
    sim_capacity: float | None,
    highest_rate: float,
    capacity_why: str = "",
) -> list[Check]:
    """Each figure with a fidelity bound -> PASS/MISS, with a reason if known.

    `capacity_why`: what failed at the first failing rate on each side (`capacity_failure`).
    A MISS where Kamailio's own repeats (`kam["spread"]`) spread wider than the bound
    names that spread (`_with_spread`).
    """
    checks = [
        _delay_check("delay p50 ms", kam["delay_p50_ms"], sim["delay_p50_ms"]),
        _delay_check("delay p99 ms", kam["delay_p99_ms"], sim["delay_p99_ms"]),
    ]
    reasons = _delay_reasons(kam, sim)
    checks = [replace(c, why=reasons) if c.verdict == "MISS" else c for c in checks]
    ke, se = kam["early_pct"], sim["early_pct"]
    if ke is None or se is None:
        checks.append(Check("early %", ke, se, "n/a", "no delays recorded on one side"))
    else:
        ok = abs(se - ke) <= 5.0
        checks.append(Check("early %", ke, se, "PASS" if ok else "MISS", "" if ok else reasons,
                            5.0))  # fmt: skip
    kw, sw = kam["idle_wakeups_per_s"], sim["idle_wakeups_per_s"]
    ok = abs(sw - kw) <= 0.1 * kw
    why = _wakeup_reasons(kam, sim)
    if ok:  # the total can agree while the roles behind it differ: say so
        why = "" if why == "not diagnosed" else f"total within 10%, but {why}"
    checks.append(Check("idle wake-ups/s", kw, sw, "PASS" if ok else "MISS", why, 0.1 * kw))
    kc, sc = kam.get("cpu_us_per_reinvite"), sim.get("cpu_us_per_reinvite")
    if kc is None or sc is None:
        checks.append(Check("CPU µs per re-INVITE", kc, sc, "n/a", "no re-INVITE on one side"))
    else:
        ok = abs(sc - kc) <= 0.15 * kc
        checks.append(Check("CPU µs per re-INVITE", kc, sc, "PASS" if ok else "MISS",
                            bound=0.15 * kc))  # fmt: skip
    if kam_capacity == sim_capacity:
        why = "both below the lowest tested rate" if kam_capacity is None else ""
        if kam_capacity == highest_rate:
            why = "both reach the highest tested rate: a lower bound only"
        checks.append(Check("capacity re-INV/s", kam_capacity, sim_capacity, "PASS", why))
    elif kam_capacity is None or sim_capacity is None:
        checks.append(
            Check(
                "capacity re-INV/s",
                kam_capacity,
                sim_capacity,
                "MISS",
                capacity_why or "one side fails at the lowest tested rate",
            )  # fmt: skip
        )
    else:
        ok = abs(sim_capacity - kam_capacity) <= 0.15 * kam_capacity
        why = "" if ok else capacity_why or "tested rates too coarse to tell"
        if not ok and sim_capacity > kam_capacity:
            why += (
                "; the sim's cores are the server's alone, Kamailio shares them with the load "
                "generator (SIPp UAC and UAS, whose CPU deferbench does not measure)"
            )
        checks.append(Check("capacity re-INV/s", kam_capacity, sim_capacity,
                            "PASS" if ok else "MISS", why))  # fmt: skip
    spread = kam.get("spread") or {}
    return [_with_spread(c, spread) for c in checks]


KNOWN_DELAY_CAUSES = {
    "mqueue-rtimer": "the delay follows where the 12 rtimer phases fall, random per run: "
    "Kamailio's from its forks, the sim's from one seeded draw with the fitted fork gaps; a "
    "re-INVITE meets them at the phase SIPp's late pauses give it; near the pool's pop-one "
    "capacity (12 / period, the continuation runs inside the timer) the queue grows, so p50 "
    "and p99 follow how close each side is to it",
}
"""Causes found by inspection, named when a delay figure of that strategy misses."""


def _delay_reasons(kam: Mapping[str, Any], sim: Mapping[str, Any]) -> str:
    why = [KNOWN_DELAY_CAUSES[sim["strategy"]]] if sim.get("strategy") in KNOWN_DELAY_CAUSES else []
    if kam["resumed_by"] != sim["resumed_by"]:
        why.append(f"resumed by {'/'.join(kam['resumed_by'])} in Kamailio, "
                   f"{'/'.join(sim['resumed_by'])} in the sim")  # fmt: skip
    kt, st = _tail(kam), _tail(sim)
    if kt is not None and st is not None and abs(kt - st) > max(0.1 * kt, 0.5):
        why.append(
            f"tail p99 − p50 is {kt:.2f} ms in Kamailio, {st:.2f} ms in the sim: the sim's "
            "wake-up tail is a line in the load through the single-wake-up strategies' fit "
            "points, " + ("shorter" if kt > st else "longer") + " than Kamailio's here"
        )
    for side, figs in (("Kamailio", kam), ("sim", sim)):
        bad = {k: v for k, v in figs["ledger"].items() if k not in ("transactions", "resumed",
               "retransmissions") and v}  # fmt: skip
        if bad:
            why.append(f"{side} ledger not clean: {bad}")
    return "; ".join(why) or "not diagnosed"


def _tail(figs: Mapping[str, Any]) -> float | None:
    p50, p99 = figs["delay_p50_ms"], figs["delay_p99_ms"]
    return None if p50 is None or p99 is None else p99 - p50


def _wakeup_reasons(kam: Mapping[str, Any], sim: Mapping[str, Any]) -> str:
    kr, sr = kam["idle_by_role"], sim["idle_by_role"]
    missing = {r: v["wakeups_per_s"] for r, v in kr.items() if r not in sr and v["wakeups_per_s"]}
    why = []
    if missing:
        listed = ", ".join(f"{r} {w:.0f}/s" for r, w in sorted(missing.items()))
        why.append(f"roles the sim does not model: {listed}")
    differ = []
    for role in sorted(set(kr) & set(sr)):
        k, s = kr[role]["wakeups_per_s"], sr[role]["wakeups_per_s"]
        if abs(s - k) > max(0.1 * k, 1.0):
            differ.append(f"{role} {k:.0f}/s vs {s:.0f}/s")
    if differ:
        why.append(f"by role, Kamailio vs sim: {', '.join(differ)}")
    if why:
        why.append("Kamailio's wake-ups are context switches")
    return "; ".join(why) or "not diagnosed"


def _check_json(check: Check) -> dict[str, Any]:
    return {"figure": check.figure, "kamailio": check.kamailio, "sim": check.sim,
            "verdict": check.verdict, "why": check.why, "bound": check.bound}  # fmt: skip


def _with_disturbance(checks: Sequence[Check], stolen: float | None) -> list[Check]:
    """Each MISS but capacity's (whose ladder runs `capacity_why` speaks for) named as
    taken from `DISTURBED` when the host stole `stolen` of the CPU during one of the point's
    Kamailio runs (`most_stolen`: over `STEAL_LIMIT`, whatever `--max-steal` retried):
    still a miss, with its likely cause."""
    if stolen is None:
        return list(checks)
    note = f"{DISTURBED}: up to {stolen:.1%} stolen"
    return [replace(c, why="; ".join(w for w in (note, c.why) if w))
            if c.verdict == "MISS" and c.figure != "capacity re-INV/s" else c
            for c in checks]  # fmt: skip


def judged_points(
    specs: Sequence[str],
    loads: Mapping[float, str],
    figs: Mapping[str, Mapping[tuple[str, float], dict[str, Any]]],
    caps: Mapping[str, Mapping[str, float | None]],
    highest_rate: float,
    capacity_why: Mapping[str, str],
    entries: Mapping[str, Points],
    fit_rates: Sequence[float] | None = None,
) -> list[dict[str, Any]]:
    """One document point per strategy × rate of `loads`: the figures of each side
    ("kamailio", "sim" the fitted, "sim_starting"), the capacities, the `judge` checks of
    Kamailio against the fitted sim, the result entries of `entries`' sides, and its
    `cell`: "fit" when its rate is one of `fit_rates` (its Kamailio runs fed the fits;
    None: every rate), else "held out" (a prediction: only these count in `summary`)."""
    points = []
    for spec in specs:
        for rate, load in loads.items():
            k, f = figs["kamailio"][spec, rate], figs["sim"][spec, rate]
            checks = judge(k, f, caps["kamailio"][spec], caps["sim"][spec], highest_rate,
                           capacity_why[spec])  # fmt: skip
            if "kamailio" in entries:
                checks = _with_disturbance(checks, most_stolen(entries["kamailio"][spec, rate]))
            points.append({
                "strategy": spec, "reinvite_rate": rate, "load": load,
                "cell": FIT if fit_rates is None or rate in fit_rates else HELD_OUT,
                "kamailio": k, "sim": f, "sim_starting": figs["sim_starting"][spec, rate],
                "capacity": {side: caps[side][spec] for side in caps},
                "checks": [_check_json(c) for c in checks],
                "entries": {side: runs[spec, rate] for side, runs in entries.items()},
            })  # fmt: skip
    return points


# ---------------------------------------------------------------------------- output


@dataclass
class Calibration:
    """Everything one `calibrate` produced (the JSON document is `to_json`)."""

    strategies: list[str]
    rates: list[float]
    duration: float
    seed: int
    cores: int
    base: CostProfile
    fitted: CostProfile
    notes: list[str]
    timer_fits: list[TimerFit]
    repeat: int = 1
    phase_fits: list[PhaseFit] = field(default_factory=list)
    ladder: dict[str, dict[str, Any]] = field(default_factory=dict)  # capacity_ladder()
    points: list[dict[str, Any]] = field(default_factory=list)  # one per strategy × rate
    fit_rates: list[float] = field(default_factory=list)  # the rates the fits used
    idle: dict[str, dict[str, Any]] = field(default_factory=dict)  # target/side -> spec -> entry
    quiet_points: list[dict[str, Any]] = field(default_factory=list)
    """`points` judged against Kamailio's repeats the host did not disturb (where a point
    has one); empty when it disturbed none."""

    def to_json(self, command: Sequence[str]) -> dict[str, Any]:
        return {
            "schema": "deferbench.calibration/1",
            "command": list(command),
            "strategies": self.strategies,
            "rates": self.rates,
            "fit_rates": self.fit_rates,
            "held_out_rates": [r for r in self.rates if r not in self.fit_rates],
            "duration_s": self.duration,
            "repeat": self.repeat,
            "seed": self.seed,
            "cores": self.cores,
            "base_profile": asdict(self.base),
            "fitted_profile": asdict(self.fitted),
            "notes": self.notes,
            "timer_fits": [
                {
                    "role": f.role,
                    "processes": f.processes,
                    "interval_s": f.interval_s,
                    "wakeups_per_s": f.wakeups_per_s,
                    "busy_core_share": f.busy_core_share,
                    "pass_us": f.pass_us,
                    "overshoot_us": f.overshoot_us,
                }  # fmt: skip
                for f in self.timer_fits
            ],
            "phase_fits": [
                {
                    "role": f.role,
                    "processes": f.processes,
                    "phase_gaps_us": list(f.phase_gaps_us),
                    "fork_gap_us": f.fork_gap_us,
                    "fork_gap_spread": f.fork_gap_spread,
                    "period_us": f.period_us,
                    "jitter_us": f.jitter_us,
                }  # fmt: skip
                for f in self.phase_fits
            ],
            "capacity_ladder": self.ladder,
            "points": self.points,
            "idle": self.idle,
            "quiet_points": [
                {k: point[k] for k in ("strategy", "reinvite_rate", "cell", "kamailio", "checks")}
                for point in self.quiet_points
            ],
        }


def profile_toml(profile: CostProfile, header: Sequence[str]) -> str:
    """The profile as TOML `CostProfile.load` reads (a [costs] table, µs)."""
    lines = [f"# {line}" for line in header]
    lines.append("[costs]")
    for name, value in asdict(profile).items():
        if isinstance(value, tuple):
            lines.append(f"{name} = [{', '.join(f'{v:.1f}' for v in value)}]")
        elif 0 < value < 1:  # shares and small costs: the digits the fit has
            lines.append(f"{name} = {value:.6g}")
        else:
            lines.append(f"{name} = {value:.3f}")
    return "\n".join(lines) + "\n"


def write(calibration: Calibration, directory: Path, command: Sequence[str]) -> Path:
    """profile.toml (loadable by `CostProfile.load`) and calibration.json; the profile path."""
    directory.mkdir(parents=True, exist_ok=True)
    header = [
        "deferbench cost profile fitted to Kamailio by:",
        " ".join(command),
        *calibration.notes,
        "Costs not named above are the starting profile's.",
    ]
    path = directory / "profile.toml"
    path.write_text(profile_toml(calibration.fitted, header), encoding="utf-8")
    (directory / "calibration.json").write_text(
        json.dumps(calibration.to_json(command), indent=1), encoding="utf-8"
    )
    return path


def _fmt(value: float | None, digits: int = 2) -> str:
    return "—" if value is None else f"{value:.{digits}f}"


ROWS = (
    ("delay p50 ms", "delay_p50_ms", 2),
    ("delay p90 ms", "delay_p90_ms", 2),
    ("delay p99 ms", "delay_p99_ms", 2),
    ("early %", "early_pct", 1),
    ("idle wake-ups/s", "idle_wakeups_per_s", 0),
    ("idle CPU % of a core", "idle_cpu_pct_core", 3),
    ("CPU µs per re-INVITE", "cpu_us_per_reinvite", 0),
    ("CPU µs per call", "cpu_us_per_call", 0),
    ("marginal µs per re-INVITE", "marginal_us_per_reinvite", 0),
)


def table(calibration: Calibration) -> str:
    """The side-by-side table: Kamailio, sim (starting profile), sim (fitted), verdict."""
    from tabulate import tabulate

    rows = []
    for point in calibration.points:
        verdicts = {c["figure"]: c for c in point["checks"]}
        label = f"{point['strategy']} @ {point['reinvite_rate']:g}/s"
        cell = point.get("cell", FIT)
        for title, key, digits in ROWS:
            check = verdicts.get(title)
            rows.append([
                label, cell, title, _fmt(point["kamailio"][key], digits),
                _fmt(point["sim_starting"][key], digits), _fmt(point["sim"][key], digits),
                check["verdict"] if check else "", check["why"] if check else "",
            ])  # fmt: skip
            label = ""
        cap = verdicts["capacity re-INV/s"]
        caps = point["capacity"]
        rows.append(["", cell, "capacity re-INV/s", _cap(caps["kamailio"]),
                     _cap(caps["sim_starting"]), _cap(caps["sim"]), cap["verdict"],
                     cap["why"]])  # fmt: skip
    return tabulate(
        rows,
        headers=[
            "strategy @ rate",
            "rate is",
            "figure",
            "kamailio",
            "sim (starting)",
            "sim (fitted)",
            "fidelity",
            "why",
        ],  # fmt: skip
        disable_numparse=True,
    )


def _cap(value: float | None) -> str:
    return "< lowest" if value is None else f"{value:g}"


def summary(calibration: Calibration, points: Sequence[dict[str, Any]] | None = None) -> str:
    """PASS/MISS counts per figure over the held-out points only (the predictions); the
    fit points' counts are shown beside them, not counted. A MISS within Kamailio's own
    spread, or on a Kamailio run the host disturbed, is counted as a miss and said so.
    `points`: other judged points than the calibration's (its `quiet_points`)."""
    counts: dict[str, dict[str, dict[str, int]]] = {}
    for point in calibration.points if points is None else points:
        cell = point.get("cell", FIT)
        for check in point["checks"]:
            tallies = counts.setdefault(check["figure"], {})
            tally = tallies.setdefault(
                cell, {"PASS": 0, "MISS": 0, "n/a": 0, "spread": 0, "disturbed": 0}
            )
            tally[check["verdict"]] += 1
            tally["spread"] += int(check["verdict"] == "MISS" and WITHIN_SPREAD in check["why"])
            tally["disturbed"] += int(check["verdict"] == "MISS" and DISTURBED in check["why"])
    lines = []
    if not any(HELD_OUT in t for t in counts.values()):
        lines.append("  no held-out cell: every rate was a fit rate (--fit-rates), nothing "
                     "predicted is judged")  # fmt: skip
    for figure, tallies in counts.items():
        held = tallies.get(HELD_OUT)
        text = f"  {figure}: "
        if held is not None:
            na = f", {held['n/a']} n/a" if held["n/a"] else ""
            said = [f"{held['spread']} {WITHIN_SPREAD}"] if held["spread"] else []
            if held["disturbed"]:
                said.append(f"{held['disturbed']} on {DISTURBED}")
            within = f" ({', '.join(said)})" if said else ""
            text += f"held out {held['PASS']} pass, {held['MISS']} miss{within}{na}"
        fit = tallies.get(FIT)
        if fit is not None:
            na = f", {fit['n/a']} n/a" if fit["n/a"] else ""
            text += ("  " if held is not None else "") + (
                f"[fit, not counted: {fit['PASS']} pass, {fit['MISS']} miss{na}]"
            )
        lines.append(text)
    return "\n".join(lines)
