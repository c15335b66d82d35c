"""A normal 2-worker cluster run with ps-lite heartbeats on (the watchdog's setting) exits 0.
The watchdog's decisions are tests/unit/test_watchdog.py's."""

from __future__ import annotations

import pytest

from tests.support.processes import run_py
from tests.support.run_logs import read_rounds, worker_folders


@pytest.mark.slow
def test_normal_run_with_heartbeats_exits_0(log_dir) -> None:
    res = run_py(
        # long enough for several 1-s heartbeats whatever the machine's speed
        ["launch.py", "-w", "2", "-m", "sync", "--rounds", "100000", "--max-time", "5", "-e", "0"]
        + ["-ld", log_dir],
        timeout=240,
        PS_VERBOSE="2",  # ps-lite logs every message, heartbeats included
    )
    assert res.returncode == 0, res.stdout + res.stderr
    procs = f"{log_dir}/processes/lenet/sync"
    with open(f"{procs}/scheduler.log") as fh:
        scheduler = fh.read()
    assert "cmd=HEARTBEAT, node={ role=worker" in scheduler
    assert "[scheduler] training ended; exiting" in scheduler
    for role in ("server", "worker0", "worker1"):
        with open(f"{procs}/{role}.log") as fh:
            text = fh.read()
        assert "FAILURE" not in text and "cmd=HEARTBEAT" in text, role
    folders = worker_folders(log_dir, "lenet", "sync")
    counts = [len(read_rounds(folders[r])) for r in (0, 1)]
    assert counts[0] == counts[1] > 10, counts
