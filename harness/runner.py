"""Runs a load through several strategies and assembles one result document.

Strategies run in parallel through any `concurrent.futures.Executor`: a process pool on
this machine's cores, or a Dask cluster's executor for sweeps that outgrow one machine —
the same code path either way. Each job is a pure function of picklable arguments, so the
sim figures do not depend on where or in which order the jobs ran.
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import Executor, Future, ProcessPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from typing import Any

import strategies
from core.runtime.server import ServerSettings
from harness.load.spec import LoadError, LoadSpec, parse_load
from harness.measure.results import MachineFacts, RunResult, tool_version, utc_now
from harness.targets import Target
from harness.targets.children import pool_worker_init


@dataclass(frozen=True, slots=True)
class Job:
    """One strategy under one load on one target: everything a worker process needs,
    picklable."""

    strategy: str
    load: str  # canonical load spec
    seed: int
    settings: ServerSettings
    target: Target


def run_job(job: Job) -> dict[str, Any]:
    """Execute one job (in whatever process the executor chose); a result-schema entry."""
    return job.target.run(job.strategy, parse_load(job.load), job.seed, job.settings)


Progress = Callable[[int, int, str, float], None]


def execute(
    jobs: Sequence[Job],
    executor: Executor | None = None,
    progress: Progress | None = None,
    finished: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run `jobs`, in parallel when an executor is given; results in the order of `jobs`.
    Each result also goes into `finished` (job index -> entry) as it arrives: what a run
    stopped by a signal still has.

    With an executor, the jobs offering the most re-INVITEs are handed to it first.
    A job whose target gives its strategy the same run key as an earlier job's
    (`Target.run_key`: on the sim the model, so `async-route` and `async-sleep` with the
    same parameters), under the same load, seed, settings and target, does not run again:
    it gets that job's entry under its own strategy spec."""
    started = time.perf_counter()
    results: list[dict[str, Any] | None] = [None] * len(jobs)
    if finished is None:
        finished = {}
    answers = _answered_by_one_run(jobs)
    done = 0

    def arrived(index: int, entry: dict[str, Any]) -> None:
        nonlocal done
        for twin in answers[index]:
            if twin != index:
                entry = {**entry, "strategy": strategies.parse_spec(jobs[twin].strategy).spec}
            results[twin] = finished[twin] = entry
            done += 1
            if progress:
                progress(done, len(jobs), jobs[twin].strategy, time.perf_counter() - started)

    if executor is None:
        for i in answers:
            arrived(i, run_job(jobs[i]))
    else:
        # Longest first: the pool's last jobs are then short ones, and its cores finish
        # together instead of one waiting for the other's big job.
        order = sorted(answers, key=lambda i: -_offered_transactions(jobs[i]))
        futures: dict[Future[dict[str, Any]], int] = {
            executor.submit(run_job, jobs[i]): i for i in order
        }
        for future in as_completed(futures):
            arrived(futures[future], future.result())
    return [r for r in results if r is not None]


def _answered_by_one_run(jobs: Sequence[Job]) -> dict[int, list[int]]:
    """The jobs that run (index, in order) -> the jobs their entry answers, themselves first."""
    answers: dict[int, list[int]] = {}
    groups: dict[tuple[str, str, int], list[int]] = {}  # (run key, load, seed) -> runs
    for i, job in enumerate(jobs):
        runs = None
        try:
            key = job.target.run_key(strategies.parse_spec(job.strategy))
        except strategies.SpecError:
            key = None  # its run reports the error
        if key is not None:
            runs = groups.setdefault((key, job.load, job.seed), [])
            twin = next((r for r in runs if _same_run(jobs[r], job)), None)
            if twin is not None:
                answers[twin].append(i)
                continue
        answers[i] = [i]
        if runs is not None:
            runs.append(i)
    return answers


def _offered_transactions(job: Job) -> float:
    """What a job's run time grows with: the re-INVITEs its load offers (0 if unparseable)."""
    try:
        load = parse_load(job.load)
    except LoadError:
        return 0.0
    return load.reinvite_rate * load.duration


def _same_run(a: Job, b: Job) -> bool:
    return a.settings == b.settings and a.target == b.target


WALL_CLOCK_FIELDS = ("wall_seconds", "sim_txn_per_wall_s")
"""Entry fields that depend on the machine, not on the model: excluded from the sim's
determinism and collected as per-repeat samples for the statistical check."""

LIVE_SAMPLED = {
    "delay_p99_ms": lambda e: e["delay_ms"]["p99"],
    "e2e_p99_ms": lambda e: e["e2e_ms"]["p99"],
    "cpu_per_txn_us": lambda e: e["cpu"]["per_txn_us"],
}
"""Figures of real-clock targets that vary between repeats and are compared statistically."""


def execute_repeated(
    jobs: Sequence[Job],
    repeat: int,
    executor: Executor | None = None,
    progress: Progress | None = None,
    finished: dict[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """Run `jobs` `repeat` times in alternating rounds (A B C, A B C, ...), so slow phases of a
    noisy machine hit every strategy alike; each entry gets `samples` of its wall-clock
    figures. Sim figures must not change between rounds: that would be a determinism bug.
    `finished` gets the first round's entries as they arrive (see `execute`)."""
    rounds = [execute(jobs, executor, progress, finished if n == 0 else None)
              for n in range(repeat)]  # fmt: skip
    if repeat == 1:
        return rounds[0]  # one value is no sample: nothing for a statistical check to judge
    merged = []
    for index, first in enumerate(rounds[0]):
        entries = [r[index] for r in rounds]
        samples: dict[str, list[float]] = {}
        for name in WALL_CLOCK_FIELDS:
            values = [e[name] for e in entries if e.get(name) is not None]
            if values:
                samples[name] = values
        if not jobs[index].target.real_clock:
            model = [_without_wall_clock(e) for e in entries]
            if any(m != model[0] for m in model[1:]):
                raise RuntimeError(f"{jobs[index].strategy}: sim figures differ between repeats")
        else:
            for name, get in LIVE_SAMPLED.items():
                values = [get(e) for e in entries if get(e) is not None]
                if values:
                    samples[name] = values
        merged.append({**first, "samples": samples})
    return merged


def _without_wall_clock(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in WALL_CLOCK_FIELDS and k != "samples"}


def local_executor(jobs: int | None = None) -> ProcessPoolExecutor | None:
    """A process pool on this machine's cores (None for a single job: run in-process). Its
    workers die with this process, even by kill -9 (`children.pool_worker_init`)."""
    workers = jobs or os.cpu_count() or 1
    if workers <= 1:
        return None
    return ProcessPoolExecutor(
        max_workers=workers, initializer=pool_worker_init, initargs=(os.getpid(),)
    )


def stop_pool(executor: Executor | None, timeout: float = 5.0) -> None:
    """Stop a process pool now: kill its workers by PID (their jobs are lost), then shut
    it down without waiting for them. Other executors are shut down without waiting."""
    if executor is None:
        return
    processes = list((getattr(executor, "_processes", None) or {}).values())
    for process in processes:  # ProcessPoolExecutor has no public kill before Python 3.14
        process.kill()
    executor.shutdown(wait=False, cancel_futures=True)
    deadline = time.monotonic() + timeout
    for process in processes:
        process.join(max(0.0, deadline - time.monotonic()))


def assemble(
    entries: Iterable[dict[str, Any]],
    *,
    load: LoadSpec,
    seed: int,
    settings: ServerSettings,
    target: Target,
    command: Sequence[str],
    incomplete: dict[str, Any] | None = None,
) -> RunResult:
    """Wrap strategy entries into a validated `deferbench.result/1` document (`incomplete`:
    {signal, missing} when a signal stopped the run before every strategy finished)."""
    facts = target.facts()
    document = {
        "schema": "deferbench.result/1",
        "tool_version": tool_version(),
        "created": utc_now(),
        "command": list(command),
        "target": target.name,
        "backend": facts["backend"],
        "load": {
            "spec": load.spec,
            "fields": load.fields(),
            "call_rate": load.call_rate,
            "reinvite_rate": load.reinvite_rate,
        },
        "seed": seed,
        "server": {
            "children": settings.children,
            "cores": settings.cores,
            "fr_timer_ms": settings.fr_timer * 1000.0,
        },
        "machine": asdict(MachineFacts.current()),
        "network": facts["network"],
        "costs": facts["costs"],
        "driver": facts.get("driver"),
        "strategies": list(entries),
    }
    if incomplete is not None:
        document["incomplete"] = incomplete
    return RunResult.from_json(document)


def text_progress(stream: Any = None) -> Progress | None:
    """A one-line progress bar on stderr, redrawn in place; None (quiet) when stderr is not
    a terminal, so logs and pipes get only the results."""
    out = stream or sys.stderr
    if not (hasattr(out, "isatty") and out.isatty()):
        return None

    def show(done: int, total: int, label: str, elapsed: float) -> None:
        width = 24
        filled = round(width * done / total) if total else width
        bar = "#" * filled + "-" * (width - filled)
        line = f"[{bar}] {done}/{total} {elapsed:5.1f}s  {label}"
        out.write("\r" + line[:99].ljust(99) + ("\n" if done == total else ""))
        out.flush()

    return show
