"""No import cycles among the tree's own modules.

The graph is built from the source with ``ast`` (nothing is imported): every ``import`` and
``from ... import`` counts, at module level or inside a function (a function-level import is
still a dependency, only a later one). Imports under ``if TYPE_CHECKING:`` go into a separate
"typed" graph, checked too: a cycle there is a design cycle even if it cannot fail at run time.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SKIP_DIRS = {".venv", ".git", "logs", "node_modules", "__pycache__"}

Graph = dict[str, set[str]]


def module_files(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file, for every .py of the tree (packages by their __init__)."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if SKIP_DIRS.intersection(rel.parts):
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        if parts:
            found[".".join(parts)] = path
    return found


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, typed: bool = False) -> Iterator[tuple[ast.stmt, bool]]:
    """Every import statement with whether it sits under ``if TYPE_CHECKING:``."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, typed
        elif isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), True)
            for child in node.orelse:
                yield from _imports(ast.Module(body=[child], type_ignores=[]), typed)
        else:
            yield from _imports(node, typed)


def _targets(node: ast.stmt, module: str, is_package: bool, known: set[str]) -> set[str]:
    """The tree's modules one import statement names (the longest known prefix of each)."""
    names: list[str] = []
    if isinstance(node, ast.Import):
        names = [alias.name for alias in node.names]
    elif isinstance(node, ast.ImportFrom):
        base = node.module or ""
        if node.level:  # relative: from the importing module's package
            package = module.split(".") if is_package else module.split(".")[:-1]
            package = package[: len(package) - node.level + 1]
            base = ".".join([*package, *([base] if base else [])])
        names = [f"{base}.{alias.name}" if base else alias.name for alias in node.names]
        names.append(base)
    found = set()
    for name in names:
        parts = name.split(".")
        for end in range(len(parts), 0, -1):
            if ".".join(parts[:end]) in known:
                found.add(".".join(parts[:end]))
                break
    return found


def import_graphs(files: dict[str, Path]) -> tuple[Graph, Graph]:
    """(run-time graph, typed graph = run-time edges plus the ``TYPE_CHECKING`` ones)."""
    known = set(files)
    runtime: Graph = {m: set() for m in files}
    typed: Graph = {m: set() for m in files}
    for module, path in files.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node, under_type_checking in _imports(tree):
            targets = _targets(node, module, is_package, known) - {module}
            typed[module] |= targets
            if not under_type_checking:
                runtime[module] |= targets
    return runtime, typed


def find_cycle(graph: Graph) -> list[str] | None:
    """One cycle of ``graph`` as [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(graph):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(graph[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, ()))))
    return None


# --- the checker's own behaviour, on small trees ---------------------------------------------


def _tree(tmp_path: Path, files: dict[str, str]) -> dict[str, Path]:
    for name, text in files.items():
        path = tmp_path / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return module_files(tmp_path)


def test_a_function_level_import_closes_a_cycle(tmp_path: Path) -> None:
    files = _tree(tmp_path, {"a.py": "import b\n", "b.py": "def f():\n    from a import x\n"})
    runtime, _ = import_graphs(files)
    assert find_cycle(runtime) == ["a", "b", "a"]


def test_type_checking_imports_go_to_the_typed_graph_only(tmp_path: Path) -> None:
    files = _tree(
        tmp_path,
        {
            "p/__init__.py": "",
            "p/x.py": "from p import y\n",
            "p/y.py": "import typing\nif typing.TYPE_CHECKING:\n    from p.x import X\n",
        },
    )
    runtime, typed = import_graphs(files)
    assert find_cycle(runtime) is None
    assert find_cycle(typed) == ["p.x", "p.y", "p.x"]


def test_relative_imports_and_no_cycle(tmp_path: Path) -> None:
    files = _tree(
        tmp_path,
        {"q/__init__.py": "", "q/m.py": "from . import n\n", "q/n.py": "import json\n"},
    )
    runtime, _ = import_graphs(files)
    assert runtime["q.m"] == {"q", "q.n"} and find_cycle(runtime) is None


# --- the tree -------------------------------------------------------------------------------


@pytest.mark.parametrize("which", ["runtime", "typed"])
def test_the_tree_has_no_import_cycle(which: str) -> None:
    runtime, typed = import_graphs(module_files())
    cycle = find_cycle(runtime if which == "runtime" else typed)
    assert cycle is None, f"{which} import cycle: {' -> '.join(cycle or [])}"
