"""The code base stays ruff-clean (lint rules and formatting from pyproject.toml). The
function-length rule is tests/unit/test_function_length.py's."""

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
