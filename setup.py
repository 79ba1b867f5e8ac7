"""The build: pyproject.toml says what deferbench is; this compiles the sim's hot modules.

`core.compiled.MODULES` are compiled to C with mypyc when mypy and a C compiler are there
and `DEFERBENCH_PURE` is not set; otherwise (or if compiling fails) deferbench installs as
plain Python, which gives the same results, slower. Each compiled source's SHA-256 goes to
`core/compiled.json`, so an edited source is never shadowed by a stale extension.
"""

from __future__ import annotations

import json
import os
import runpy
import sys
from pathlib import Path

from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

HERE = Path(__file__).resolve().parent
compiled = runpy.run_path(str(HERE / "core" / "compiled.py"))


# pip runs this file once per step; the metadata steps only need to know that there are
# extensions, so they get a stand-in instead of paying for mypyc (≈ 13 s of type checking
# and generating C) that only the build step uses.
METADATA_STEPS = ("egg_info", "dist_info")


def _extensions() -> list:
    if os.environ.get(compiled["PURE_ENV"]):
        # an earlier in-place build's extensions stay on disk: without their record they
        # are never imported (`core.compiled`), so this install is plain Python throughout
        compiled["MANIFEST"].unlink(missing_ok=True)
        return []
    if sys.argv[1:2] and sys.argv[1] in METADATA_STEPS:
        return [Extension(compiled["GROUP"] + "__mypyc", [])]
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("deferbench: mypyc missing, installing plain Python", file=sys.stderr)
        return []
    sources = [str(compiled["source_of"](m).relative_to(HERE)) for m in compiled["MODULES"]]
    return mypycify(sources, opt_level="3", debug_level="0", group_name=compiled["GROUP"])


class BuildExt(build_ext):
    """Builds the extensions, then records what they were compiled from. A failed C build
    records nothing: deferbench then runs what an earlier record still vouches for, or else
    the sources (`core.compiled`)."""

    def run(self) -> None:
        try:
            super().run()
        except Exception as error:  # noqa: BLE001 - any compiler failure: fall back
            print(f"deferbench: compiling failed ({error}); plain Python", file=sys.stderr)
            return
        target = HERE if self.inplace else Path(self.build_lib)
        record = {module: compiled["digest"](module) for module in compiled["MODULES"]}
        path = target / compiled["MANIFEST"].relative_to(HERE)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(record, indent=1) + "\n")


setup(ext_modules=_extensions(), cmdclass={"build_ext": BuildExt})
