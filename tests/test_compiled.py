"""The compiled build of the sim's hot modules: the sources' results, never a stale extension."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest

from core import compiled
from tests.test_sim_target import without_wall_clock

LOAD = "reinvite:rate=20/s,duration=3s,reinvites=5,gap=0ms"
needs_build = pytest.mark.skipif(not compiled.ACTIVE, reason=f"the sim runs as {compiled.ENGINE}")


def _run(out: Path, *, pure: bool) -> dict:
    env = {k: v for k, v in os.environ.items() if k != compiled.PURE_ENV}
    if pure:
        env[compiled.PURE_ENV] = "1"
    proc = subprocess.run(
        [sys.executable, "-m", "harness.cli", "run", "--strategy", "mqueue-rtimer",
         "--strategy", "async-route", "--strategy", "async-task", "--load", LOAD,
         "--seed", "5", "--out", str(out), "--quiet", "--no-plots"],
        capture_output=True, text=True, timeout=300, env=env, cwd=compiled.ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return json.loads((out / "result.json").read_text())


@needs_build
def test_the_compiled_modules_give_the_sources_results_for_a_seed(tmp_path: Path) -> None:
    fast = _run(tmp_path / "compiled", pure=False)
    plain = _run(tmp_path / "sources", pure=True)
    assert fast["machine"]["engine"] == "compiled (mypyc)"
    assert plain["machine"]["engine"] == f"Python ({compiled.PURE_ENV} is set)"
    assert len(fast["strategies"]) == 3
    assert [without_wall_clock(s) for s in fast["strategies"]] == [
        without_wall_clock(s) for s in plain["strategies"]
    ]


@pytest.mark.parametrize("package", sorted({m.split(".")[0] for m in compiled.MODULES}))
def test_the_sources_are_imported_when_asked(package: str) -> None:
    """Whichever compiled module a process imports first (here one of `package`'s), the
    switch has already decided: every compiled module comes from its source."""
    first = next(m for m in compiled.MODULES if m.startswith(package + "."))
    probe = (
        f"import importlib, {first}, core.compiled as c\n"
        "print(c.ENGINE)\n"
        "for m in c.MODULES: print(importlib.import_module(m).__file__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, timeout=60,
        env={**os.environ, compiled.PURE_ENV: "1"}, cwd=compiled.ROOT,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    engine, *paths = proc.stdout.splitlines()
    assert engine == f"Python ({compiled.PURE_ENV} is set)"
    assert paths == [str(compiled.source_of(m)) for m in compiled.MODULES]


@needs_build
def test_a_source_edited_since_compiling_sends_every_module_back_to_its_source(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    record = json.loads(compiled.MANIFEST.read_text())
    assert set(record) == set(compiled.MODULES)
    record["core.tm"] = "0" * 64  # as if core/tm.py had been edited after the build
    stale = tmp_path / "compiled.json"
    stale.write_text(json.dumps(record))
    monkeypatch.setattr(compiled, "MANIFEST", stale)
    assert compiled._state() == (False, "Python (core/tm.py changed since it was compiled)")


@pytest.mark.skipif(not os.environ.get("CI"), reason="CI checks that its install compiled")
def test_ci_runs_the_compiled_build() -> None:
    assert compiled.ACTIVE, compiled.ENGINE


def test_settings_and_header_values_cross_process_boundaries() -> None:
    """The process pool pickles jobs and results; a compiled frozen class must survive it."""
    from core.runtime.server import ServerSettings
    from core.sip import parse_message
    from core.transaction import TimerSettings
    from harness.load.network import Link

    request = parse_message(
        b"INVITE sip:b@example.com SIP/2.0\r\nVia: SIP/2.0/UDP h:5060;branch=z9hG4bK1\r\n"
        b"Max-Forwards: 70\r\nFrom: <sip:a@example.com>;tag=1\r\nTo: <sip:b@example.com>\r\n"
        b"Call-ID: c\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n"
    )
    values = [ServerSettings(children=3, cores=2), TimerSettings(t1=0.25), Link(loss=0.01),
              request.cseq, request.top_via, request.from_addr]  # fmt: skip
    assert [pickle.loads(pickle.dumps(value)) for value in values] == values


def test_a_stale_build_is_named_when_deferbench_runs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from harness.cli import main

    engine = f"Python (core/tm.py {compiled.CHANGED})"
    monkeypatch.setattr(compiled, "ENGINE", engine)
    assert main(["strategies"]) == 0
    err = capsys.readouterr().err
    assert (
        err == f"deferbench: note: the sim runs as {engine}; `pip install -e .` compiles it again\n"
    )
    monkeypatch.setattr(compiled, "ENGINE", "compiled (mypyc)")
    assert main(["strategies"]) == 0
    assert capsys.readouterr().err == ""
