"""Calibration, Kamailio's measured side kept on disk: what a refit needs without Kamailio.

Kamailio's runs take most of a calibration's time and are the only part that needs
Kamailio, SIPp and a quiet machine; the fits and the sim runs are cheap and change with
the model. So `calibrate` writes everything it measured on Kamailio (every repeat's result
entry, the idle runs, the traced rtimer phases, how late SIPp ended its pauses, the
capacity ladder's runs, and the settings they ran with) as `kamailio.json`, and
`calibrate --refit DIR` fits and judges the current model against those same runs.

It imports the fitting module (for `PhaseFit`) and the runs module (for its types) only.
"""

from __future__ import annotations

import json
import statistics
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from core.runtime.server import ServerSettings
from harness.analysis.calibrate.fit import PhaseFit
from harness.analysis.calibrate.runs import CALL_SHAPE, Disturbed, Lateness, Runs
from harness.load.spec import parse_load
from harness.targets.base import steal_of

SCHEMA = "deferbench.kamailio-side/1"
FILE = "kamailio.json"


class MeasuredError(ValueError):
    """A kept Kamailio side that cannot be read (missing, corrupt, another schema)."""


@dataclass
class KamailioSide:
    """Everything `calibrate` measured on Kamailio, and the settings it measured with."""

    specs: list[str]
    rates: list[float]
    duration: float
    seed: int
    settings: ServerSettings
    repeat: int
    runs: Runs  # (spec, rate) -> one result entry per repeat
    idle: dict[str, list[dict[str, Any]]]  # spec -> one idle entry per repeat
    phases: list[tuple[PhaseFit, float]]  # traced rtimer phases, the timer's interval (s)
    late: Lateness  # rate -> (how late SIPp stamped, stamp-to-suspend lag) per pause (s)
    capacity_rates: list[float] = field(default_factory=list)
    ladder: Runs = field(default_factory=dict)  # (spec, rate) -> [entry]: the climbed rungs
    command: list[str] = field(default_factory=list)  # what measured it
    max_steal: float | None = None  # the host-steal limit a run was repeated above
    disturbed: Disturbed = field(default_factory=list)  # runs set aside for the host's steal

    @property
    def gap(self) -> float:
        """The pause after each ACK in the calibration's calls (s)."""
        return parse_load(CALL_SHAPE).gap

    def to_json(self) -> dict[str, Any]:
        settings = self.settings
        return {
            "schema": SCHEMA,
            "command": self.command,
            "strategies": self.specs,
            "rates": self.rates,
            "duration_s": self.duration,
            "seed": self.seed,
            "settings": {"children": settings.children, "cores": settings.cores,
                         "fr_timer_s": settings.fr_timer},  # fmt: skip
            "repeat": self.repeat,
            "capacity_rates": self.capacity_rates,
            "runs": _keyed(self.runs),
            "idle": self.idle,
            "phases": [{**asdict(f), "interval_s": interval} for f, interval in self.phases],
            # SIPp's and Kamailio's stamps are whole µs: kept as such, they read back exact
            "pause_gap_s": self.gap,
            "pause_pairs_us": {f"{r!r}": [[round((late + self.gap) * 1e6), round(lag * 1e6)]
                                          for late, lag in pairs]
                               for r, pairs in self.late.items()},
            "ladder": _keyed(self.ladder),
            "max_steal": self.max_steal,
            "disturbed": self.disturbed,
        }  # fmt: skip

    def steal_note(self) -> str:
        """How much the host stole from the kept Kamailio runs, and what was run again."""
        entries = [e for runs in (self.runs, self.ladder) for es in runs.values() for e in es]
        entries += [e for es in self.idle.values() for e in es]
        shares = sorted(s for e in entries if (s := steal_of(e)) is not None)
        if not shares:
            return "host steal during Kamailio's runs: not measured"
        limit = "no limit" if self.max_steal is None else f"limit {self.max_steal:.1%}"
        again = len(self.disturbed)
        return (f"host steal during Kamailio's {len(shares)} kept runs: median "
                f"{statistics.median(shares):.2%}, max {shares[-1]:.2%} ({limit}; {again} "
                f"disturbed run{'' if again == 1 else 's'} run again)")  # fmt: skip


def save(side: KamailioSide, directory: Path) -> Path:
    """Write `side` as `directory/kamailio.json`; its path."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / FILE
    path.write_text(json.dumps(side.to_json(), separators=(",", ":")), encoding="utf-8")
    return path


def load(directory: Path) -> KamailioSide:
    """The Kamailio side `calibrate` kept in `directory` (or the file itself)."""
    path = directory / FILE if directory.is_dir() else directory
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise MeasuredError(f"{path}: no such file (calibrate writes {FILE})") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MeasuredError(f"{path}: not a readable {FILE}: {exc}") from None
    if not isinstance(doc, dict) or doc.get("schema") != SCHEMA:
        raise MeasuredError(f"{path}: not a {SCHEMA} document")
    try:
        settings = doc["settings"]
        return KamailioSide(
            specs=[str(s) for s in doc["strategies"]],
            rates=[float(r) for r in doc["rates"]],
            duration=float(doc["duration_s"]),
            seed=int(doc["seed"]),
            settings=ServerSettings(
                children=int(settings["children"]),
                cores=int(settings["cores"]),
                fr_timer=float(settings["fr_timer_s"]),
            ),  # fmt: skip
            repeat=int(doc["repeat"]),
            runs=_unkeyed(doc["runs"]),
            idle={str(k): list(v) for k, v in doc["idle"].items()},
            phases=[(_phase(p), float(p["interval_s"])) for p in doc["phases"]],
            late=_pairs(doc["pause_pairs_us"], float(doc["pause_gap_s"])),
            capacity_rates=[float(r) for r in doc["capacity_rates"]],
            ladder=_unkeyed(doc["ladder"]),
            command=[str(word) for word in doc.get("command", [])],
            max_steal=None if doc.get("max_steal") is None else float(doc["max_steal"]),
            disturbed=[dict(d) for d in doc.get("disturbed", [])],
        )
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise MeasuredError(f"{path}: malformed {FILE}: {type(exc).__name__} {exc}") from None


def _keyed(runs: Runs) -> list[dict[str, Any]]:
    return [{"strategy": s, "reinvite_rate": r, "entries": e} for (s, r), e in runs.items()]


def _unkeyed(rows: list[dict[str, Any]]) -> Runs:
    return {(str(row["strategy"]), float(row["reinvite_rate"])): list(row["entries"])
            for row in rows}  # fmt: skip


def _pairs(doc: dict[str, Any], gap: float) -> Lateness:
    """`pause_pairs_us` back to (late s, lag s) as `runs.pause_pairs` computed them."""
    return {float(r): [(int(since) / 1e6 - gap, int(lag) / 1e6) for since, lag in pairs]
            for r, pairs in doc.items()}  # fmt: skip


def _phase(doc: dict[str, Any]) -> PhaseFit:
    return PhaseFit(
        str(doc["role"]), int(doc["processes"]), tuple(map(float, doc["phase_gaps_us"])),
        tuple(map(float, doc["periods_us"])), tuple(map(float, doc["relative_steps_us"])),
    )  # fmt: skip
