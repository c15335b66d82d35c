"""The code base stays ruff-clean (lint rules and formatting from pyproject.toml)."""

from __future__ import annotations

import os
import subprocess
import sys

from launcher.supervision import ROOT

RUFF = os.path.join(os.path.dirname(sys.executable), "ruff")


def test_ruff_check_passes() -> None:
    res = subprocess.run([RUFF, "check", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


def test_ruff_format_is_applied() -> None:
    res = subprocess.run([RUFF, "format", "--check", "."], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0, res.stdout + res.stderr


MAX_FUNCTION_LINES = 60


def _source_files() -> list[str]:
    """Tracked and new Python files outside tests/ (git decides what belongs to the tree)."""
    res = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    return [p for p in res.stdout.split() if not p.startswith("tests/") and os.path.exists(p)]


def long_functions(paths: list[str], limit: int) -> list[str]:
    """``file:line name (N lines)`` of every function longer than ``limit`` lines, except
    argparse builders (a flat list of add_argument calls reads best in one piece)."""
    import ast

    found = []
    for path in paths:
        with open(os.path.join(ROOT, path)) as fh:
            tree = ast.parse(fh.read(), path)
        for node in ast.walk(tree):
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            length = node.end_lineno - node.lineno + 1
            if length > limit and "parser" not in node.name:
                found.append(f"{path}:{node.lineno} {node.name} ({length} lines)")
    return found


def test_no_function_is_longer_than_the_limit() -> None:
    assert long_functions(_source_files(), MAX_FUNCTION_LINES) == []


def test_long_function_check_can_fail(tmp_path) -> None:
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES))
    path = tmp_path / "long.py"
    path.write_text(f"def too_long():\n{body}\n")
    assert long_functions([str(path)], MAX_FUNCTION_LINES) == [f"{path}:1 too_long (61 lines)"]
