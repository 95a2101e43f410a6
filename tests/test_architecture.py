"""The library and the gateway as a layered graph (docs/architecture.md): imports point down.

- The import-linter contracts in pyproject.toml (``[tool.importlinter]``) hold: every module of
  ``minitwitter`` and ``gateway`` has a layer, and imports only from layers below its own.
- No project import hides inside a function body, where a circle would not fail at import time,
  except the few on :data:`DEFERRED`, each deferred for a runtime reason its comment gives.
- No import circle at all, counting every import statement wherever it stands.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from minitwitter.config import REPO_ROOT

pytestmark = pytest.mark.no_stores

PACKAGES = {"minitwitter": REPO_ROOT / "shared" / "minitwitter", "gateway": REPO_ROOT / "gateway"}

#: Project imports inside a function body that are deliberate: (file, imported module) -> why.
#: Each is an entry point that must import the library only after it prepared the folder of
#: PROMETHEUS_MULTIPROC_DIR, because importing minitwitter.metrics (which logs, cache and db
#: import) creates the process's sample files there, in the storage prometheus_client picked.
DEFERRED: dict[tuple[str, str], str] = {
    ("gateway/run.py", "minitwitter.metrics"): "make run sets PROMETHEUS_MULTIPROC_DIR in main",
    ("gateway/run.py", "minitwitter.logs"): "make run sets PROMETHEUS_MULTIPROC_DIR in main",
    ("gateway/run.py", "gateway.serve"): "make run sets PROMETHEUS_MULTIPROC_DIR in main (serve imports metrics)",
    ("gateway/run.py", "gateway.worker"): "make run sets PROMETHEUS_MULTIPROC_DIR in main (worker imports metrics)",
    ("gateway/entrypoint.py", "minitwitter.logs"): "the container entrypoint empties the folder first",
    ("gateway/entrypoint.py", "minitwitter.db"): "the container entrypoint empties the folder first",
    ("gateway/entrypoint.py", "minitwitter.migrate"): "the container entrypoint empties the folder first",
    ("gateway/serve.py", "gateway.edge"): "granian's main process preloads the app before it forks "
                                          "(importlib.import_module: a name, not an import edge)",
}


def module_name(path: Path) -> str:
    for package, root in PACKAGES.items():
        if path.is_relative_to(root):
            parts = [package, *path.relative_to(root).with_suffix("").parts]
            return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
    raise ValueError(path)


def sources() -> Iterator[Path]:
    for root in PACKAGES.values():
        yield from sorted(root.rglob("*.py"))


def imported(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """The project modules (or names in them) an import statement or call names."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            base = module.split(".")[: len(module.split(".")) - node.level + (1 if is_package else 0)]
            target = ".".join(base + ([node.module] if node.module else []))
        else:
            target = node.module or ""
        names = [f"{target}.{alias.name}" for alias in node.names]
    elif (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute)
          and node.func.attr == "import_module" and node.args
          and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)):
        names = [node.args[0].value]
    return [n for n in names if n.split(".")[0] in PACKAGES]


def resolve(name: str, modules: set[str]) -> str | None:
    """The module ``name`` is, or lives in (``minitwitter.posts.get`` -> ``minitwitter.posts``)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def import_graph() -> tuple[dict[str, set[str]], list[tuple[str, int, str]]]:
    """Every module's project imports, and those made inside a function: (file, line, module)."""
    files = {module_name(path): path for path in sources()}
    modules = set(files)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    in_functions: list[tuple[str, int, str]] = []
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"))
        nested = {id(n) for f in ast.walk(tree) if isinstance(f, ast.FunctionDef | ast.AsyncFunctionDef)
                  for n in ast.walk(f) if n is not f}
        for node in ast.walk(tree):
            found = {resolve(n, modules) for n in imported(node, module, path.name == "__init__.py")}
            found -= {None, module}
            for target in sorted(t for t in found if t):
                graph[module].add(target)
                if id(node) in nested:
                    in_functions.append((str(path.relative_to(REPO_ROOT)), node.lineno, target))
    return graph, in_functions


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for succ in sorted(graph[node]):
            if succ not in index:
                visit(succ)
                low[node] = min(low[node], low[succ])
            elif succ in stack:
                low[node] = min(low[node], index[succ])
        if low[node] == index[node]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == node:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_layer_contracts_hold() -> None:
    """lint-imports (import-linter, pinned in requirements-dev.txt) over pyproject.toml's contracts."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO_ROOT / "shared"), str(REPO_ROOT)])}
    result = subprocess.run([str(Path(sys.executable).with_name("lint-imports")), "--no-cache", "--no-logo"],
                            cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "0 broken" in result.stdout


def test_no_project_import_inside_a_function_but_the_deferred_ones() -> None:
    _graph, in_functions = import_graph()
    unexpected = [f"{path}:{line} imports {target}" for path, line, target in in_functions
                  if (path, target) not in DEFERRED]
    assert unexpected == [], "import at the top, or move what creates the circle down a layer"
    stale = set(DEFERRED) - {(path, target) for path, _line, target in in_functions}
    assert not stale, f"DEFERRED lists imports that are gone: {sorted(stale)}"


def test_no_import_circles() -> None:
    graph, _ = import_graph()
    assert cycles(graph) == []


def test_the_checks_see_an_upward_import_and_a_circle() -> None:
    """The graph these tests read finds what they must refuse (a function-body import, a circle)."""
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(graph) == [["a", "b", "c"]]
    tree = ast.parse("def f():\n    from . import feed\n    import gateway.app\n")
    found = [imported(node, "minitwitter.posts", False) for node in ast.walk(tree)]
    assert ["minitwitter.feed"] in found and ["gateway.app"] in found


def test_handlers_use_the_library_only() -> None:
    """A function's handler runs in its own container too: it never imports the gateway."""
    for handler in sorted((REPO_ROOT / "functions").glob("*/handler.py")):
        tree = ast.parse(handler.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            names = imported(node, "handler", False)
            assert not [n for n in names if n.startswith("gateway")], f"{handler} imports {names}"
