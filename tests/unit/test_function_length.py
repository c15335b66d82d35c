"""No function in the tree is longer than 60 lines (#22), argparse tables aside: a long
function is split into named steps, so that the next engineer reads what each one does."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_LINES = 60
SKIPPED_DIRS = {".venv", ".git", "logs", "data", "node_modules", "__pycache__", ".ruff_cache"}
# a flag table: one add_argument call after another, read as a table, not as steps
ARGPARSE_TABLES = {("trainer/options.py", "build_parser")}


def python_files() -> list[Path]:
    return [
        path
        for path in ROOT.rglob("*.py")
        if not SKIPPED_DIRS.intersection(path.relative_to(ROOT).parts)
    ]


def long_functions(source: str, limit: int = MAX_LINES) -> list[tuple[str, int]]:
    """(name, lines) of every function or method in ``source`` above ``limit`` lines."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            lines = node.end_lineno - node.lineno + 1
            if lines > limit:
                found.append((node.name, lines))
    return found


def test_the_check_finds_a_long_function() -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_LINES))
    assert long_functions(f"def f():\n{body}\n") == [("f", MAX_LINES + 1)]
    assert long_functions(f"def f():\n{body}\n", limit=MAX_LINES + 1) == []


def test_no_function_is_longer_than_60_lines() -> None:
    files = python_files()
    assert any(p.name == "main.py" for p in files) and len(files) > 50, "the walk found the tree"
    too_long = [
        f"{rel}:{name} ({lines} lines)"
        for path in files
        for rel in [path.relative_to(ROOT).as_posix()]
        for name, lines in long_functions(path.read_text())
        if (rel, name) not in ARGPARSE_TABLES
    ]
    assert too_long == [], "split these into named steps:\n" + "\n".join(too_long)
