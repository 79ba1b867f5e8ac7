"""The shape of the code base, as promised in the README's architecture section.

- no import circle among the project's modules, counting imports made only for type
  checking and imports inside functions;
- the runtime (`core`) never imports `strategies` or `harness`; `strategies` never imports
  `harness`;
- no module over 700 lines and no function over 80 lines, unless its docstring says why
  (it contains "longer than the limit");
- at most 6 modules directly in `harness/`.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("core", "strategies", "harness")
MODULE_LINES = 700
FUNCTION_LINES = 80
EXEMPTION = "longer than the limit"


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in sorted((ROOT / package).rglob("*.py")):
            parts = list(path.relative_to(ROOT).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


MODULES = _modules()


def _imports(module: str, path: Path) -> set[str]:
    """Every project module `module` imports, wherever the import statement stands."""
    tree = ast.parse(path.read_text(), str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return {_owner(name) for name in names if _owner(name)} - {module}


def _owner(name: str) -> str:
    """The project module a dotted import name refers to ("" if none)."""
    while name and name not in MODULES:
        name = name.rpartition(".")[0]
    return name


GRAPH = {module: _imports(module, path) for module, path in MODULES.items()}


def _cycle() -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(GRAPH[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt) :] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for module in sorted(GRAPH):
        if module not in state and (found := visit(module)):
            return found
    return None


def test_no_import_circle() -> None:
    cycle = _cycle()
    assert cycle is None, " -> ".join(cycle or [])


def test_layers_import_downwards_only() -> None:
    forbidden = {"core": ("strategies", "harness"), "strategies": ("harness",)}
    wrong = [
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        for target in targets
        if target.split(".")[0] in forbidden.get(module.split(".")[0], ())
    ]
    assert not wrong, wrong


def test_importing_strategies_loads_no_harness_module() -> None:
    code = "import sys, strategies; print(sorted(m for m in sys.modules if 'harness' in m))"
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_the_command_line_starts_without_plotting_or_the_cluster() -> None:
    """`deferbench --help` and every command's parsing load no matplotlib, numpy or dask:
    a second of startup for nothing (they load when a plot is drawn or a cluster used)."""
    heavy = ("matplotlib", "numpy", "dask", "distributed")
    code = (
        "import sys, harness.cli; "
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({heavy!r})))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def _functions(tree: ast.AST) -> Iterator[ast.FunctionDef | ast.AsyncFunctionDef]:
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            yield node


def _exempt(node: ast.AST) -> bool:
    doc = ast.get_docstring(node) or ""  # type: ignore[arg-type]
    return EXEMPTION in " ".join(doc.split())


def test_modules_and_functions_stay_short() -> None:
    too_long = []
    for module, path in MODULES.items():
        text = path.read_text()
        tree = ast.parse(text, str(path))
        if len(text.splitlines()) > MODULE_LINES and not _exempt(tree):
            too_long.append(f"module {module}: {len(text.splitlines())} lines")
        for node in _functions(tree):
            lines = (node.end_lineno or node.lineno) - node.lineno + 1
            if lines > FUNCTION_LINES and not _exempt(node):
                too_long.append(f"{module}.{node.name}: {lines} lines")
    assert not too_long, too_long


def test_harness_top_level_holds_few_modules() -> None:
    top = sorted(p.name for p in (ROOT / "harness").glob("*.py"))
    assert len(top) <= 6, top
