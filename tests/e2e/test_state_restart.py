"""The State Server is soft state: it can be killed and restarted in the middle of a run.

Real ESync runs whose State Server is killed with SIGKILL: the launcher's own one (restarted
by the launcher) and an external one (restarted by the test on the same port). The restart
policy with stand-in processes is tests/integration/test_restart_policy.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import urllib.request

import pytest

from launcher.supervision import wait_http
from tests.support.processes import (
    assert_all_gone,
    kill_session,
    pid_alive,
    start_launcher,
)
from tests.support.run_logs import launched_pids, read_rounds, worker_folders
from tests.support.state_server import RUNSERVER, RunningServer, serves

# --- real runs ----------------------------------------------------------------------------

ESYNC_RUN = "-w 3 --slowdowns 1,1,4 -m esync --rounds 100000 -e 0 --eval-interval 1".split()


def _launch(log_dir: str, max_time: int, *extra: str) -> subprocess.Popen:
    return start_launcher(log_dir, *ESYNC_RUN, "--max-time", str(max_time), *extra)


def _rounds_done(log_dir: str) -> dict[int, int]:
    """rank -> rounds written so far (empty until every worker has a folder)."""
    if not os.path.isdir(os.path.join(log_dir, "lenet", "esync")):
        return {}
    return {r: len(read_rounds(f)) for r, f in worker_folders(log_dir, "lenet", "esync").items()}


def _wait_for_rounds(log_dir: str, launcher: subprocess.Popen, rounds: int) -> dict[int, int]:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert launcher.poll() is None, launcher.communicate()
        done = _rounds_done(log_dir)
        if len(done) == 3 and min(done.values()) >= rounds:
            return done
        time.sleep(0.2)
    raise AssertionError(f"the run did not get to {rounds} rounds: {_rounds_done(log_dir)}")


def _finish(launcher: subprocess.Popen, timeout: float) -> tuple[str, str]:
    try:
        return launcher.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(launcher.pid)
        out, err = launcher.communicate()
        raise AssertionError(f"the launcher did not finish:\n{out}\n{err}") from None


def _check_records(log_dir: str, rounds_at_kill: dict[int, int]) -> list[dict]:
    """Every worker's rounds are 1..N without a gap, the same N and the same checksums
    everywhere, and the run went on well past the kill; returns the rejoin records."""
    folders = worker_folders(log_dir, "lenet", "esync")
    records = {rank: read_rounds(folder) for rank, folder in folders.items()}
    assert sorted(records) == [0, 1, 2]
    n = len(records[0])
    for rank, recs in records.items():
        assert [r["round"] for r in recs] == list(range(1, n + 1)), rank
    assert n >= max(rounds_at_kill.values()) + 5, (n, rounds_at_kill)
    for i in range(n):
        sums = {records[r][i]["checksum"] for r in records}
        assert len(sums) == 1, f"round {i + 1}: global parameters differ: {sums}"
    return [
        dict(r, rank=rank) for rank, recs in records.items() for r in recs if "state_rejoins" in r
    ]


@pytest.mark.slow
@pytest.mark.parametrize("fault", [signal.SIGKILL, signal.SIGSTOP], ids=["kill-9", "sigstop"])
def test_the_launchers_state_server_killed_or_stopped_mid_run(log_dir: str, fault) -> None:
    """A dead State Server is restarted at once; a stopped one (it still runs as far as its
    exit status tells) once it has not answered for config.HUNG_AFTER_S: no round is lost."""
    launcher = _launch(log_dir, 25)
    try:
        at_kill = _wait_for_rounds(log_dir, launcher, 5)
        old_pid = launched_pids(log_dir, "lenet", "esync")["state-server"]
        os.kill(old_pid, fault)
        out, err = _finish(launcher, 120)
    finally:
        kill_session(launcher.pid)
    assert launcher.returncode == 0, out + err
    if fault == signal.SIGSTOP:
        assert f"launch: state-server (pid {old_pid}) has not answered " in err
        assert "killing it, to restart it in place" in err
    assert f"launch: state-server (pid {old_pid}) exited with code -9; restarted as pid " in err
    assert "on the same port" in err
    rejoins = _check_records(log_dir, at_kill)
    assert rejoins and all(r["state_rejoins"] >= 1 for r in rejoins), rejoins
    assert all(r["round"] > min(at_kill.values()) for r in rejoins), (rejoins, at_kill)
    pids = launched_pids(log_dir, "lenet", "esync")
    assert pids["state-server"] != old_pid and not pid_alive(old_pid)
    assert_all_gone(pids)


@pytest.mark.slow
@serves(RUNSERVER, private=True)
def test_an_external_state_server_that_restarts(log_dir: str, state_server: RunningServer) -> None:
    proc, url, external = state_server.proc, state_server.url, state_server.cluster
    launcher = _launch(log_dir, 12, "--state-server-at", f"127.0.0.1:{state_server.port}")
    try:
        at_kill = _wait_for_rounds(log_dir, launcher, 3)
        old_pid = proc.pid
        os.kill(old_pid, signal.SIGKILL)
        time.sleep(1.0)  # down for a while: the workers retry
        external.restart(proc)  # the same command line: the same port
        wait_http(f"{url}/", proc, 30)
        out, err = _finish(launcher, 90)
    finally:
        kill_session(launcher.pid)
    with urllib.request.urlopen(f"{url}/", timeout=10) as resp:
        status = json.load(resp)
    state_server.stop()
    assert launcher.returncode == 0, out + err
    assert "restarted as pid" not in err  # not the launcher's server
    assert _check_records(log_dir, at_kill)
    assert status["num_workers"] == 3  # the new server was initialised by a rejoin
    assert_all_gone(launched_pids(log_dir, "lenet", "esync"))
    assert not pid_alive(old_pid) and not pid_alive(proc.pid)
