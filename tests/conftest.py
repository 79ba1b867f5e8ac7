"""Fixtures shared by the test modules that start real processes."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import anyio
import pytest

from core.runtime.server import ServerSettings
from harness.targets.live.target import ServeProcess


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[..., ServeProcess]]:
    """Start `deferbench serve` processes (ready to answer); every one is stopped by PID."""
    started: list[ServeProcess] = []

    def start(
        *extra: str,
        strategy: str = "inline",
        backend: str = "trio",
        children: int = 2,
        fr_timer: float = 2.0,
        interval: str = "0.5s",
    ) -> ServeProcess:
        process = ServeProcess(
            strategy,
            backend=backend,
            settings=ServerSettings(children=children, fr_timer=fr_timer),
            workdir=tmp_path,
            extra=("--interval", interval, *extra),
        )
        started.append(process)
        anyio.run(process.wait_ready)
        return process

    yield start
    for process in started:
        process.stop()
