"""Bad slowdowns fail launch.py and main.py before anything starts (one process each)."""

from __future__ import annotations

import os

from tests.support.processes import run_py


def test_bad_slowdowns_fail_before_anything_starts(log_dir: str, tmp_path) -> None:
    trace = tmp_path / "t.csv"
    trace.write_text("0,1\n5,x\n")
    for entry, message in (
        ("1,1/16@30/1@20", "--slowdowns: '1/16@30/1@20': change times must increase strictly"),
        (f"1,{trace}", f"--slowdowns: {trace}:2: slowdown 'x' is not a number"),
        ("1,0.5", "--slowdowns: '0.5': slowdowns must be finite numbers >= 1"),
    ):
        res = run_py(["launch.py", "-w", "2", "--slowdowns", entry, "-ld", log_dir], timeout=60)
        assert res.returncode == 2 and message in res.stderr, res.stderr
    assert os.listdir(log_dir) == []
    res = run_py(["main.py", "--slowdown-trace", str(trace)], timeout=60)
    assert res.returncode == 2 and "argument --slowdown-trace" in res.stderr
