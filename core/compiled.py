"""The modules the build compiles to C (mypyc), and the switch back to their sources.

Why compile: a deferred transaction in the sim takes some 1,200 Python calls spread over
every layer it models (event kernel, process model, RFC 3261 transactions, proxy core, tm,
the UAC, UAS and network around them); the profile has no hot spot left for a redesign to
remove, so the interpreter's cost per call is the cost. mypyc compiles these modules, as
written and type-checked, into C extensions with native classes and direct calls; the same
code then runs 1.6–1.9× as fast (README: Benchmarks) and gives the same results for a seed.

`setup.py` compiles `MODULES` when it can (mypy in the build environment, a C compiler, no
`DEFERBENCH_PURE` in the environment) and records each source's SHA-256 in `MANIFEST`. An
extension is imported before the source beside it, so `install()` (run by `core/__init__`,
before any of them can be imported) checks that record: if any source changed since it was
compiled, or `DEFERBENCH_PURE` is set, every one of them is imported from its source (all
or none: compiled modules call each other directly, not through the import system).

This module must not import anything of deferbench: `setup.py` reads it before installing.
"""

from __future__ import annotations

import copyreg
import dataclasses
import hashlib
import importlib.machinery
import importlib.util
import json
import os
import sys
from pathlib import Path
from typing import Any

MODULES = (
    "core.runtime.kernel",
    "core.runtime.process",
    "core.runtime.server",
    "core.timer_heap",
    "core.transaction",
    "core.sip_message",
    "core.sip_headers",
    "core.sip_replies",
    "core.proxy",
    "core.proxy_routing",
    "core.tm",
    "harness.load.uac",
    "harness.load.uas",
    "harness.load.network",
    "strategies.mqueue_rtimer",
    "strategies.async_module",
)
"""The sim's hot path, by module name (each file must type-check: mypyc compiles by type)."""

GROUP = "core.compiled_native"
"""mypyc's shared library of the compiled modules, kept inside a package of ours."""

ROOT = Path(__file__).resolve().parents[1]
MANIFEST = Path(__file__).with_name("compiled.json")
PURE_ENV = "DEFERBENCH_PURE"
CHANGED = "changed since it was compiled"


def source_of(module: str) -> Path:
    return ROOT.joinpath(*module.split(".")).with_suffix(".py")


def digest(module: str) -> str:
    return hashlib.sha256(source_of(module).read_bytes()).hexdigest()


def _built(module: str) -> bool:
    """Whether an extension of `module` lies beside its source."""
    base = ROOT.joinpath(*module.split("."))
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    return any(base.with_name(base.name + suffix).exists() for suffix in suffixes)


def _state() -> tuple[bool, str]:
    """Whether the compiled modules are to be used, and why (or why not)."""
    if os.environ.get(PURE_ENV):
        return False, f"Python ({PURE_ENV} is set)"
    if not all(_built(module) for module in MODULES):
        return False, "Python (not compiled)"
    try:
        recorded = json.loads(MANIFEST.read_text())
    except (OSError, ValueError):
        return False, "Python (no record of what was compiled)"
    for module in MODULES:
        if recorded.get(module) != digest(module):
            changed = source_of(module).relative_to(ROOT)
            return False, f"Python ({changed} {CHANGED})"
    return True, "compiled (mypyc)"


class _Sources:
    """Imports the compiled modules from their sources, ahead of the extensions beside them
    (a meta path finder: `find_spec` is all the import system asks of one)."""

    def find_spec(
        self, fullname: str, path: object = None, target: object = None
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname in MODULES:
            return importlib.util.spec_from_file_location(fullname, source_of(fullname))
        return None


ACTIVE = False
"""Whether this process runs the compiled modules (decided by `install`)."""
ENGINE = ""
"""What runs the sim, for results and reports: 'compiled (mypyc)' or 'Python (why)'."""


def install() -> None:
    """Decide once per process, before any compiled module is imported."""
    global ACTIVE, ENGINE
    if ENGINE:
        return
    ACTIVE, ENGINE = _state()
    if not ACTIVE:
        sys.meta_path.insert(0, _Sources())


def stale() -> bool:
    """Compiled modules are there, but a source changed since: they run from the sources."""
    return CHANGED in ENGINE


def _by_fields(obj: Any) -> tuple[Any, tuple[Any, ...]]:
    return type(obj), tuple(getattr(obj, field.name) for field in dataclasses.fields(obj))


def pickle_by_fields(*classes: type) -> None:
    """Pickle (and copy) these frozen dataclasses through their constructors: compiled, a
    frozen class cannot be rebuilt field by field, which is how pickle would do it."""
    for cls in classes:
        copyreg.pickle(cls, _by_fields)
