"""The runner runs each distinct sim once: strategies sharing a model share a run."""

from __future__ import annotations

from concurrent.futures import Executor, Future
from dataclasses import dataclass
from typing import Any, ClassVar

import pytest

from core.runtime.server import ServerSettings
from harness import runner
from harness.load.spec import parse_load
from harness.runner import WALL_CLOCK_FIELDS, Job, execute
from harness.targets.sim import SimTarget

LOAD = "reinvite:rate=5/s,duration=2s,reinvites=4"
SETTINGS = ServerSettings(cores=2, children=4)


def _model_figures(entry: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in entry.items() if k not in WALL_CLOCK_FIELDS and k != "strategy"}


@pytest.fixture
def runs(monkeypatch) -> list[str]:
    """The strategies `run_job` really ran, in order."""
    ran: list[str] = []
    real = runner.run_job

    def counted(job: Job) -> dict[str, Any]:
        ran.append(job.strategy)
        return real(job)

    monkeypatch.setattr(runner, "run_job", counted)
    return ran


def test_async_route_and_async_sleep_with_one_model_run_once_under_both_names(runs) -> None:
    target = SimTarget(measure_idle=False)
    specs = ["async-route:ms=10", "inline", "async-sleep:ms=10"]
    entries = execute([Job(s, LOAD, 1, SETTINGS, target) for s in specs])
    assert runs == ["async-route:ms=10", "inline"]
    names = [e["strategy"].split(":")[0] for e in entries]
    assert names == ["async-route", "inline", "async-sleep"]
    assert entries[2]["strategy"].startswith("async-sleep:ms=10,")
    assert _model_figures(entries[0]) == _model_figures(entries[2])
    # the shared entry is what async-sleep's own run gives: the two really are one model
    [alone] = execute([Job("async-sleep:ms=10", LOAD, 1, SETTINGS, target)])
    assert _model_figures(alone) == _model_figures(entries[2])


def test_runs_differing_in_parameters_seed_or_target_are_all_made(runs) -> None:
    target = SimTarget(measure_idle=False)
    jobs = [
        Job("async-route:ms=10", LOAD, 1, SETTINGS, target),
        Job("async-sleep:ms=20", LOAD, 1, SETTINGS, target),
        Job("async-sleep:ms=10", LOAD, 2, SETTINGS, target),
        Job("async-sleep:ms=10", LOAD, 1, SETTINGS, SimTarget(measure_idle=True)),
    ]
    execute(jobs)
    assert len(runs) == 4


@dataclass(frozen=True)
class _RealClock:
    """A target that measures real CPU: its runs are never shared."""

    name: ClassVar[str] = "fake"
    real_clock: ClassVar[bool] = True

    def run_key(self, strategy: Any) -> None:
        return None

    def run(self, strategy: str, load: Any, seed: int, settings: Any) -> dict[str, Any]:
        return {"strategy": strategy}


def test_real_clock_targets_run_every_job(runs) -> None:
    jobs = [Job(s, LOAD, 1, SETTINGS, _RealClock()) for s in ("async-route", "async-sleep")]
    entries = execute(jobs)  # type: ignore[arg-type]
    assert runs == ["async-route", "async-sleep"]
    assert [e["strategy"] for e in entries] == ["async-route", "async-sleep"]


def test_progress_counts_every_job_including_the_shared_ones(runs) -> None:
    seen: list[tuple[int, int, str]] = []
    target = SimTarget(measure_idle=False)
    specs = ["async-route:ms=10", "async-sleep:ms=10"]
    execute([Job(s, LOAD, 1, SETTINGS, target) for s in specs],
            progress=lambda done, total, label, _: seen.append((done, total, label)))  # fmt: skip
    assert seen == [(1, 2, "async-route:ms=10"), (2, 2, "async-sleep:ms=10")]


class _RecordingExecutor(Executor):
    """Runs each job when submitted, recording the order it was handed them in."""

    def __init__(self) -> None:
        self.order: list[str] = []

    def submit(self, fn: Any, /, *args: Any, **kwargs: Any) -> Future[Any]:
        self.order.append(args[0].load)
        future: Future[Any] = Future()
        future.set_result(fn(*args, **kwargs))
        return future


def test_the_pool_gets_the_biggest_loads_first_and_results_keep_job_order(runs) -> None:
    target = SimTarget(measure_idle=False)
    loads = [f"reinvite:rate={r}/s,duration=1s,reinvites=4" for r in (2, 8, 4)]
    jobs = [Job("inline", load, 1, SETTINGS, target) for load in loads]
    executor = _RecordingExecutor()
    entries = execute(jobs, executor)
    assert executor.order == [loads[1], loads[2], loads[0]]
    assert [e["load"] for e in entries] == [parse_load(load).spec for load in loads]


def test_a_sim_that_writes_record_files_runs_each_spec_once(runs, tmp_path) -> None:
    """Each spec writes its own files: one model no longer shares a run, one spec still
    does (two workers never write the same file)."""
    target = SimTarget(measure_idle=False, records=str(tmp_path))
    specs = ["async-route:ms=10", "async-sleep:ms=10", "async-route:ms=10"]
    entries = execute([Job(s, LOAD, 1, SETTINGS, target) for s in specs])
    assert runs == specs[:2] and entries[2] == entries[0]
    assert sorted(p.name for p in tmp_path.glob("*.reinvites.csv")) == [
        "async-route.reinvites.csv", "async-sleep.reinvites.csv"]  # fmt: skip
