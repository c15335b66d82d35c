"""summary.py and bench/breakdown.py as commands (a Python process each) on the hand-made
logs of tests/support/run_logs.py."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from launcher.supervision import ROOT
from tests.support.run_logs import NET, build_logs


def test_cli_writes_summary(tmp_path: Path) -> None:
    build_logs(tmp_path)
    out = subprocess.run(
        [
            sys.executable,
            str(Path(ROOT) / "summary.py"),
            "-b",
            str(tmp_path),
            "-n",
            NET,
            "-m",
            "esync-niid",
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    assert out.returncode == 0, out.stderr
    written = json.loads((tmp_path / NET / "esync-niid" / "summary.json").read_text())
    assert out.stdout.strip().endswith("summary.json")
    assert written["split"] == "niid" and written["duration_s"] == 4.0
    for key in (
        "mode",
        "network",
        "split",
        "num_workers",
        "duration_s",
        "accuracy",
        "final_accuracy",
        "best_accuracy",
        "samples_per_s",
        "bytes_per_s",
        "workers",
    ):
        assert key in written


def test_breakdown_cli_prints_the_table(tmp_path: Path) -> None:
    build_logs(tmp_path, niid=False)
    res = subprocess.run(
        [sys.executable, "-m", "bench.breakdown", "-b", str(tmp_path), "-n", NET, "-m", "esync"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=False,
    )
    assert res.returncode == 0, res.stderr
    assert "| hostB/gpu0-rank2 | 4 | 1 | 1.0 |" in res.stdout
