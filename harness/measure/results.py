"""Result files: one schema-versioned JSON document per run, plus a CSV of headline figures.

Every figure a report prints comes from one of these files, and each file carries the
command that reproduces it. Reading is strict: a missing, truncated, foreign or mistyped
file is one `ResultError` line naming the file and the JSON path of the problem
(e.g. `strategies[2].delay_ms.p99: expected a number or null, got 'fast'`). Unknown extra
fields are ignored, so a newer deferbench may add fields without bumping the schema.

Schema `deferbench.result/1` (times in ms unless the name says otherwise; null = not
measured or nothing to measure):

    {
      "schema": "deferbench.result/1",
      "tool_version": "0.1.0",
      "created": "2025-01-31T12:00:00Z",             # ISO 8601, UTC
      "command": ["deferbench", "run", ...],         # the argv that reproduces this file
      "target": "sim" | "live" | "kamailio",
      "backend": "trio" | "asyncio" | null,          # anyio backend (live), null if none
      "driver": "python" | "sipp" | null,            # who played UAC/UAS (live, kamailio)
      "load": {
        "spec": "reinvite:rate=20/s,duration=10s,...",  # canonical load spec
        "fields": {"scenario": "reinvite", "rate_per_s": 20.0, "duration_s": 10.0,
                   "reinvites": 10, "gap_s": 0.001, "arrival": "poisson",
                   "race_code": 491, ...},           # + burst / start_rate_per_s / steps
        "call_rate": 20.0,                           # new calls per second
        "reinvite_rate": 200.0                       # deferred re-INVITEs per second
      },
      "seed": 1,
      "server": {"children": 8, "cores": 4, "fr_timer_ms": 30000},
      "network": "1ms±1ms" | null,                   # sim: link latency ± jitter (loss)
      "costs": "results/calibration/profile.toml" | "built-in" | "<file>" | null,  # sim profile
      "machine": {"platform": "Linux-6.1-x86_64", "python": "3.11.2",
                  "cpu_count": 8, "cpu_model": "AMD EPYC ..." | null,
                  "engine": "compiled (mypyc)" | "Python (<why>)"},  # optional: ran the sim
      "strategies": [ {
        "strategy": "mqueue-rtimer:timers=12,interval=10ms,...",  # canonical strategy spec
        "params": {"timers": 12, ...},               # its parsed parameters
        "target": "sim", "load": "<load spec>", "seed": 1,
        "requested_delay_ms": 10.0 | null,           # null: the strategy has no delay
        "delay_ms":    {"min","p50","p90","p99","p999","max","mean"},  # resume − suspend
        "lateness_ms": {... same keys ...},          # delay − requested (may be negative)
        "e2e_ms":      {... same keys ...},          # intended send → final response at UAC
        "early_share": 0.0 | null,                   # share resumed before the requested delay
        "ledger": {"transactions","resumed","lost","duplicated","stale","reordered",
                   "race_491","timeout_408","error_5xx","retransmissions","other",
                   "unknown_events","duplicate_open"},   # counts, see harness.measure.ledger
        "cpu": {
          "busy_share": 0.12,          # busy CPU time of all processes / (wall time × cores):
                                       # 1.0 = every core of the server busy all the time
          "idle_share": 0.001,         # the same with no traffic: the standing cost of timers
          "wakeups_per_s": 1200.0,     # process wake-ups per second of wall time
          "per_txn_us": 35.0,          # busy CPU µs per deferred transaction
          "by_role": {"sip_worker": {"busy_share": 0.1, "wakeups_per_s": 20.0}, ...},
          "host_steal_share": 0.004    # optional, real targets: share of the machine's CPU
        },                             # time its hypervisor gave to others during the run
                                       # any cpu figure may be null when not observable
        "counters": {"event": 12},                   # named event counts from the target
        "queue_depth": {"max": 3 | null, "mean": 0.4 | null},
        "histograms": {"delay": "HISTF...", "e2e": "HISTF..."},  # HdrHistogram base64, µs
        "wall_seconds": 1.8,                         # real time the run took
        "sim_txn_per_wall_s": 1100.0 | null,         # sim speed; null for real-time targets
        "samples": {"metric": [1.0, ...]}            # optional: per-repeat values of
      } ],                                           # wall-clock figures (regression check)
      "incomplete": {"signal": "SIGTERM",            # optional, only when a signal stopped
                     "missing": ["<strategy spec>"]} # the run: `strategies` holds what had
    }                                                # finished, `missing` what had not

result.csv has one row per strategy with the headline figures (CSV_COLUMNS).
This module only reads and writes result files; it measures nothing.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
import platform
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from core import compiled
from harness.load.spec import LoadSpec
from harness.measure.ledger import LedgerSummary
from harness.measure.metrics import SUMMARY_KEYS, Distribution, Summary

SCHEMA = "deferbench.result/1"
SCHEMA_FAMILY = "deferbench.result/"
RESULT_JSON = "result.json"
RESULT_CSV = "result.csv"


class ResultError(ValueError):
    """A result file that cannot be used; str() is the one-line explanation."""


# ---------------------------------------------------------------------------------------
# Strict reading with JSON paths in the errors


class _Reader:
    """Typed access to one JSON object; every failure names its path."""

    def __init__(self, data: Any, path: str) -> None:
        if not isinstance(data, dict):
            raise ResultError(f"{path or 'document'}: expected an object, got {_kind(data)}")
        self.data = data
        self.path = path

    def _at(self, key: str) -> str:
        return f"{self.path}.{key}" if self.path else key

    def _get(self, key: str) -> Any:
        if key not in self.data:
            raise ResultError(f"{self._at(key)}: missing")
        return self.data[key]

    def string(self, key: str, *, nullable: bool = False) -> Any:
        value = self._get(key)
        if (value is None and nullable) or isinstance(value, str):
            return value
        return self._wrong(key, "a string" + (" or null" if nullable else ""), value)

    def integer(self, key: str, *, nullable: bool = False, minimum: int | None = None) -> Any:
        value = self._get(key)
        if value is None and nullable:
            return None
        if not isinstance(value, int) or isinstance(value, bool):
            return self._wrong(key, "an integer" + (" or null" if nullable else ""), value)
        if minimum is not None and value < minimum:
            raise ResultError(f"{self._at(key)}: {value} is below {minimum}")
        return value

    def number(self, key: str, *, nullable: bool = False) -> Any:
        value = self._get(key)
        if value is None and nullable:
            return None
        if not _is_number(value):
            return self._wrong(key, "a number" + (" or null" if nullable else ""), value)
        return float(value)

    def object(self, key: str) -> _Reader:
        value = self._get(key)
        if not isinstance(value, dict):
            self._wrong(key, "an object", value)
        return _Reader(value, self._at(key))

    def items(self, key: str) -> list[tuple[str, Any, str]]:
        """(name, value, path) of an object whose keys are free-form names."""
        reader = self.object(key)
        return [(name, value, f"{reader.path}.{name}") for name, value in reader.data.items()]

    def array(self, key: str) -> list[tuple[Any, str]]:
        value = self._get(key)
        if not isinstance(value, list):
            self._wrong(key, "a list", value)
        return [(item, f"{self._at(key)}[{i}]") for i, item in enumerate(value)]

    def _wrong(self, key: str, expected: str, value: Any) -> Any:
        raise ResultError(f"{self._at(key)}: expected {expected}, got {_show(value)}")


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


def _kind(value: Any) -> str:
    return {dict: "an object", list: "a list", str: "a string", bool: "a boolean"}.get(
        type(value), "null" if value is None else "a number"
    )


def _show(value: Any) -> str:
    if isinstance(value, dict | list):
        return _kind(value)
    text = json.dumps(value)
    return text if len(text) <= 40 else text[:37] + "..."


def _summary(reader: _Reader, key: str) -> Summary:
    block = reader.object(key)
    return {name: block.number(name, nullable=True) for name in SUMMARY_KEYS}


# ---------------------------------------------------------------------------------------
# The document


@dataclass
class RoleCpu:
    busy_share: float | None
    wakeups_per_s: float | None


@dataclass
class CpuFigures:
    """CPU as the target observed it; null figures could not be observed."""

    busy_share: float | None
    idle_share: float | None
    wakeups_per_s: float | None
    per_txn_us: float | None
    by_role: dict[str, RoleCpu] = field(default_factory=dict)
    host_steal_share: float | None = None  # absent from a sim's result

    @classmethod
    def from_json(cls, r: _Reader) -> CpuFigures:
        by_role = {}
        for role, value, path in r.items("by_role"):
            role_reader = _Reader(value, path)
            by_role[role] = RoleCpu(
                role_reader.number("busy_share", nullable=True),
                role_reader.number("wakeups_per_s", nullable=True),
            )
        return cls(
            busy_share=r.number("busy_share", nullable=True),
            idle_share=r.number("idle_share", nullable=True),
            wakeups_per_s=r.number("wakeups_per_s", nullable=True),
            per_txn_us=r.number("per_txn_us", nullable=True),
            by_role=by_role,
            host_steal_share=(
                r.number("host_steal_share", nullable=True)
                if "host_steal_share" in r.data
                else None
            ),
        )


@dataclass
class QueueDepth:
    max: float | None
    mean: float | None


@dataclass
class Histograms:
    """Raw HdrHistograms (µs, standard base64 encoding) of the delay and the e2e latency."""

    delay: str
    e2e: str


@dataclass
class StrategyResult:
    """Every figure of one strategy under the run's load."""

    strategy: str
    params: dict[str, Any]
    target: str
    load: str
    seed: int
    requested_delay_ms: float | None
    delay_ms: Summary
    lateness_ms: Summary
    e2e_ms: Summary
    early_share: float | None
    ledger: LedgerSummary
    cpu: CpuFigures
    counters: dict[str, int]
    queue_depth: QueueDepth
    histograms: Histograms
    wall_seconds: float
    sim_txn_per_wall_s: float | None
    samples: dict[str, list[float]] = field(default_factory=dict)

    def delay_distribution(self) -> Distribution:
        return Distribution.decode(self.histograms.delay)

    def e2e_distribution(self) -> Distribution:
        return Distribution.decode(self.histograms.e2e)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["ledger"] = self.ledger.to_json()
        if self.cpu.host_steal_share is None:
            del data["cpu"]["host_steal_share"]
        return data

    @classmethod
    def from_json(cls, r: _Reader) -> StrategyResult:
        ledger_reader = r.object("ledger")
        ledger = LedgerSummary(
            **{name: ledger_reader.integer(name, minimum=0) for name in LedgerSummary.field_names()}
        )
        hist = r.object("histograms")
        histograms = Histograms(delay=hist.string("delay"), e2e=hist.string("e2e"))
        for name in ("delay", "e2e"):
            try:
                Distribution.decode(getattr(histograms, name))
            except ValueError as exc:
                raise ResultError(f"{hist.path}.{name}: {exc}") from None
        counters = {}
        for name, value, path in r.items("counters"):
            if not isinstance(value, int) or isinstance(value, bool):
                raise ResultError(f"{path}: expected an integer, got {_show(value)}")
            counters[name] = value
        samples: dict[str, list[float]] = {}
        if "samples" in r.data:
            for name, value, path in r.items("samples"):
                if not isinstance(value, list) or not all(_is_number(v) for v in value):
                    raise ResultError(f"{path}: expected a list of numbers")
                samples[name] = [float(v) for v in value]
        queue = r.object("queue_depth")
        r.object("params")
        return cls(
            strategy=r.string("strategy"),
            params=dict(r.data["params"]),
            target=r.string("target"),
            load=r.string("load"),
            seed=r.integer("seed"),
            requested_delay_ms=r.number("requested_delay_ms", nullable=True),
            delay_ms=_summary(r, "delay_ms"),
            lateness_ms=_summary(r, "lateness_ms"),
            e2e_ms=_summary(r, "e2e_ms"),
            early_share=r.number("early_share", nullable=True),
            ledger=ledger,
            cpu=CpuFigures.from_json(r.object("cpu")),
            counters=counters,
            queue_depth=QueueDepth(
                queue.number("max", nullable=True), queue.number("mean", nullable=True)
            ),
            histograms=histograms,
            wall_seconds=r.number("wall_seconds"),
            sim_txn_per_wall_s=r.number("sim_txn_per_wall_s", nullable=True),
            samples=samples,
        )


@dataclass
class LoadRecord:
    """The run's load: canonical spec, its parsed fields, and the offered rates."""

    spec: str
    fields: dict[str, Any]
    call_rate: float
    reinvite_rate: float

    @classmethod
    def from_spec(cls, spec: LoadSpec) -> LoadRecord:
        return cls(spec.spec, spec.fields(), spec.call_rate, spec.reinvite_rate)


@dataclass
class ServerFacts:
    """The modelled (or real) Kamailio server: SIP workers, CPU cores, fr_timer."""

    children: int
    cores: int
    fr_timer_ms: float


@dataclass
class MachineFacts:
    platform: str
    python: str
    cpu_count: int | None
    cpu_model: str | None
    engine: str | None = None  # what ran the sim's hot path (`core.compiled.ENGINE`)

    @classmethod
    def current(cls) -> MachineFacts:
        """Facts about the machine running deferbench now."""
        return cls(
            platform=platform.platform(),
            python=platform.python_version(),
            cpu_count=os.cpu_count(),
            cpu_model=_cpu_model(),
            engine=compiled.ENGINE,
        )


def _cpu_model(cpuinfo: str = "/proc/cpuinfo") -> str | None:
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                name, sep, value = line.partition(":")
                if sep and name.strip() in ("model name", "Model", "cpu model"):
                    return value.strip() or None
    except OSError:
        return None
    return None


def tool_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("deferbench")
    except PackageNotFoundError:
        return "unknown"


def utc_now() -> str:
    """Now as ISO 8601 UTC to the second, e.g. '2025-01-31T12:00:00Z'."""
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, slots=True)
class Incomplete:
    """Why a run's document lacks strategies: the signal that stopped it, and which
    strategies (canonical specs) had not finished."""

    signal: str
    missing: list[str]

    @classmethod
    def from_json(cls, r: _Reader) -> Incomplete:
        marker = r.object("incomplete")
        missing = []
        for item, path in marker.array("missing"):
            if not isinstance(item, str):
                raise ResultError(f"{path}: expected a string, got {_show(item)}")
            missing.append(item)
        return cls(signal=marker.string("signal"), missing=missing)


@dataclass
class RunResult:
    """One run: the same load and seed through one or more strategies on one target."""

    tool_version: str
    created: str
    command: list[str]
    target: str
    backend: str | None
    load: LoadRecord
    seed: int
    server: ServerFacts
    machine: MachineFacts
    strategies: list[StrategyResult]
    network: str | None = None  # sim: the link model every direction used, e.g. "1ms±1ms"
    costs: str | None = None  # sim: the cost profile's source (adopted file, built-in, --costs)
    driver: str | None = None  # real targets: who played the UAC and UAS (python, sipp)
    schema: str = SCHEMA
    incomplete: Incomplete | None = None  # a signal stopped the run before every strategy ran

    def strategy(self, spec: str) -> StrategyResult | None:
        """The result of the strategy with this canonical spec, if the run has it."""
        return next((s for s in self.strategies if s.strategy == spec), None)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"schema": self.schema}
        data.update(asdict(self))
        data["strategies"] = [s.to_json() for s in self.strategies]
        if self.incomplete is None:
            del data["incomplete"]  # absent from complete runs, as before the field existed
        return data

    @classmethod
    def from_json(cls, data: Any) -> RunResult:
        """Validate and build; any problem is a ResultError naming the JSON path."""
        if not isinstance(data, dict):
            raise ResultError(f"not a JSON object (got {_kind(data)})")
        schema = data.get("schema")
        if schema is None:
            raise ResultError("not a deferbench result file (no 'schema' field)")
        if schema != SCHEMA:
            if isinstance(schema, str) and schema.startswith(SCHEMA_FAMILY):
                raise ResultError(f"schema {schema} is not {SCHEMA}, which this deferbench reads")
            raise ResultError(f"foreign schema {_show(schema)}: not a deferbench result")
        r = _Reader(data, "")
        command = [item for item, _ in r.array("command")]
        for item, path in r.array("command"):
            if not isinstance(item, str):
                raise ResultError(f"{path}: expected a string, got {_show(item)}")
        load = r.object("load")
        load.object("fields")
        server = r.object("server")
        machine = r.object("machine")
        return cls(
            schema=schema,
            tool_version=r.string("tool_version"),
            created=r.string("created"),
            command=command,
            target=r.string("target"),
            backend=r.string("backend", nullable=True),
            load=LoadRecord(
                spec=load.string("spec"),
                fields=dict(load.data["fields"]),
                call_rate=load.number("call_rate"),
                reinvite_rate=load.number("reinvite_rate"),
            ),
            seed=r.integer("seed"),
            server=ServerFacts(
                children=server.integer("children", minimum=0),
                cores=server.integer("cores", minimum=0),
                fr_timer_ms=server.number("fr_timer_ms"),
            ),
            machine=MachineFacts(
                platform=machine.string("platform"),
                python=machine.string("python"),
                cpu_count=machine.integer("cpu_count", nullable=True),
                cpu_model=machine.string("cpu_model", nullable=True),
                engine=(
                    machine.string("engine", nullable=True) if "engine" in machine.data else None
                ),
            ),
            strategies=[StrategyResult.from_json(_Reader(s, p)) for s, p in r.array("strategies")],
            network=r.string("network", nullable=True) if "network" in data else None,
            costs=r.string("costs", nullable=True) if "costs" in data else None,
            driver=r.string("driver", nullable=True) if "driver" in data else None,
            incomplete=Incomplete.from_json(r) if data.get("incomplete") is not None else None,
        )


# ---------------------------------------------------------------------------------------
# Files

CSV_COLUMNS: tuple[str, ...] = (
    "strategy",
    "target",
    "load",
    "seed",
    "requested_delay_ms",
    "delay_p50_ms",
    "delay_p99_ms",
    "delay_p999_ms",
    "delay_max_ms",
    "lateness_p99_ms",
    "early_share",
    "e2e_p50_ms",
    "e2e_p99_ms",
    *LedgerSummary.field_names(),
    "clean",
    "busy_share",
    "idle_share",
    "wakeups_per_s",
    "per_txn_us",
    "queue_depth_max",
    "wall_seconds",
    "sim_txn_per_wall_s",
)


def _csv_row(s: StrategyResult) -> list[Any]:
    row: dict[str, Any] = {
        "strategy": s.strategy,
        "target": s.target,
        "load": s.load,
        "seed": s.seed,
        "requested_delay_ms": s.requested_delay_ms,
        "delay_p50_ms": s.delay_ms["p50"],
        "delay_p99_ms": s.delay_ms["p99"],
        "delay_p999_ms": s.delay_ms["p999"],
        "delay_max_ms": s.delay_ms["max"],
        "lateness_p99_ms": s.lateness_ms["p99"],
        "early_share": s.early_share,
        "e2e_p50_ms": s.e2e_ms["p50"],
        "e2e_p99_ms": s.e2e_ms["p99"],
        **s.ledger.to_json(),
        "clean": int(s.ledger.clean),
        "busy_share": s.cpu.busy_share,
        "idle_share": s.cpu.idle_share,
        "wakeups_per_s": s.cpu.wakeups_per_s,
        "per_txn_us": s.cpu.per_txn_us,
        "queue_depth_max": s.queue_depth.max,
        "wall_seconds": s.wall_seconds,
        "sim_txn_per_wall_s": s.sim_txn_per_wall_s,
    }
    return ["" if row[c] is None else row[c] for c in CSV_COLUMNS]


def result_csv(result: RunResult) -> str:
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for strategy in result.strategies:
        writer.writerow(_csv_row(strategy))
    return out.getvalue()


def _write_atomically(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_result(result: RunResult, directory: str | os.PathLike[str]) -> Path:
    """Write result.json and result.csv into `directory` (created); returns result.json.
    A directory that cannot be created or written is one ResultError line."""
    folder = Path(directory)
    text = json.dumps(result.to_json(), indent=2, allow_nan=False) + "\n"
    json_path = folder / RESULT_JSON
    try:
        folder.mkdir(parents=True, exist_ok=True)
        _write_atomically(json_path, text)
        _write_atomically(folder / RESULT_CSV, result_csv(result))
    except OSError as exc:
        raise ResultError(f"{folder}: cannot write the result ({exc.strerror or exc})") from None
    return json_path


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in a result file")


def read_result(path: str | os.PathLike[str]) -> RunResult:
    """Read a result file (or a directory holding result.json); problems are one ResultError
    line naming the file and what is wrong."""
    file = Path(path)
    if file.is_dir():
        file = file / RESULT_JSON
    try:
        text = file.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ResultError(f"{file}: no such result file") from None
    except UnicodeDecodeError:
        raise ResultError(f"{file}: not JSON (not UTF-8 text)") from None
    except OSError as exc:
        raise ResultError(f"{file}: cannot read ({exc.strerror or exc})") from None
    try:
        data = json.loads(text, parse_constant=_reject_constant)
    except json.JSONDecodeError as exc:
        raise ResultError(f"{file}: not JSON ({exc.msg} at line {exc.lineno})") from None
    except ValueError as exc:
        raise ResultError(f"{file}: not JSON ({exc})") from None
    try:
        return RunResult.from_json(data)
    except ResultError as exc:
        raise ResultError(f"{file}: {exc}") from None
