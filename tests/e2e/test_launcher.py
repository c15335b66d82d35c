"""launch.py's ways of ending a run early: ``--timeout`` and SIGTERM; nothing may be left."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest

from launcher.supervision import PYTHON, ROOT
from tests.support.processes import assert_all_gone, clean_env, kill_session, run_py
from tests.support.run_logs import launched_pids, read_rounds, worker_folders

pytestmark = pytest.mark.slow

CLUSTER = ["-w", "2", "--slowdowns", "1,2", "-m", "esync", "-n", "lenet", "--rounds", "1000000"]


def test_timeout_fails_the_run_and_stops_every_process(log_dir: str) -> None:
    started = time.monotonic()
    res = run_py(["launch.py", *CLUSTER, "-e", "0", "-ld", log_dir, "--timeout", "5"], timeout=90)
    elapsed = time.monotonic() - started
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert "took longer than --timeout 5 s" in res.stderr, res.stderr[-2000:]
    assert 5 <= elapsed < 45, elapsed
    pids = launched_pids(log_dir, "lenet", "esync")
    assert {"state-server", "scheduler", "server", "worker0", "worker1"} <= set(pids)
    assert_all_gone(pids)


def _wait_for_records(log_dir: str, proc: subprocess.Popen, workers: int) -> dict[str, int]:
    """The run's pids once every worker has written a record."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if os.path.isdir(os.path.join(log_dir, "lenet", "esync")):
            folders = worker_folders(log_dir, "lenet", "esync")
            if len(folders) == workers and all(read_rounds(f) for f in folders.values()):
                return launched_pids(log_dir, "lenet", "esync")
        time.sleep(0.25)
    raise AssertionError("the run did not start training within 90 s")


def test_sigterm_stops_every_process_with_exit_130(log_dir: str) -> None:
    proc = subprocess.Popen(
        [PYTHON, "launch.py", *CLUSTER, "-e", "0", "-ld", log_dir, "--timeout", "120"],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        pids = _wait_for_records(log_dir, proc, 2)
        proc.send_signal(signal.SIGTERM)  # to the launcher alone, not to its process group
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            kill_session(proc.pid)
            proc.communicate()
    assert proc.returncode == 130, err[-2000:]
    assert "interrupted" in err and "every process was stopped" in err
    assert_all_gone(pids)
