"""Run the project's commands as real processes from the tests, and check that none is left.

Every process starts in a session of its own, so that a test (or its time-out) can stop it
with everything it started.
"""

from __future__ import annotations

import functools
import json
import os
import signal
import subprocess
from collections.abc import Sequence

import psutil

from launcher import supervision
from launcher.supervision import PYTHON, ROOT

# Launches in the tests use this device unit instead of a calibrated one (a probe costs seconds
# a launch, and a calibrated T0 slows a test cluster ~3x); tests of the calibration itself pass
# --emulation or --device-unit, which turns this off. They also evaluate inline unless they say
# --evaluator: the evaluator process costs each launch ~3 s to start (an MXNet import) before
# training; tests/e2e/test_device_time_runs.py and tests/e2e/test_compare.py run it.
TEST_DEVICE_UNIT = "0.02"

# Tests whose assertions depend on the devices' speed ratios (local iterations per round,
# pushes per worker) need a unit above what a LeNet batch really costs with a test cluster on
# this machine, or every device overruns and the ratios vanish. That cost moves from day to day
# (20-90 ms measured on this 2-core machine), so it is probed once per test session.
HETEROGENEITY_HEADROOM = 2.0  # x the probe: three workers computing at once on two cores
HETEROGENEITY_MIN_UNIT_S = 0.05


@functools.cache
def heterogeneous_device_unit() -> str:
    """``--device-unit`` for a test that checks heterogeneity: HETEROGENEITY_HEADROOM x a
    LeNet batch's seconds on an idle process here (main.py --probe-device, run once)."""
    argv = [PYTHON, "main.py", "-m", "local", "-n", "lenet", "--probe-device"]
    run = subprocess.run(argv, cwd=ROOT, env=clean_env(), capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    probe_s = float(json.loads(run.stdout.strip().splitlines()[-1])["probe_s"])
    return f"{max(HETEROGENEITY_MIN_UNIT_S, HETEROGENEITY_HEADROOM * probe_s):.4f}"


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without cluster variables, one thread per process."""
    return supervision.child_env(1, extra, drop=supervision.CLUSTER_VARS)


def _given(args: list[str], *flags: str) -> bool:
    return any(a.split("=")[0] in flags for a in args)


def with_test_device_unit(args: list[str]) -> list[str]:
    """``args`` of a launch.py command with the tests' device unit and inline evaluation,
    unless it says how to emulate or to evaluate already."""
    args = list(args)
    if not args or args[0] != "launch.py":
        return args
    if not _given(args, "--device-unit", "--emulation"):
        args += ["--device-unit", TEST_DEVICE_UNIT]
    if not _given(args, "--evaluator"):
        args += ["--evaluator", "inline"]
    return args


def popen_in_session(
    argv: Sequence[str],
    env: dict[str, str],
    cwd: str | os.PathLike = ROOT,
    stderr: int = subprocess.PIPE,
) -> subprocess.Popen:
    """``argv`` in a session of its own, its output captured as text (``stderr``:
    ``subprocess.STDOUT`` merges it into stdout)."""
    return subprocess.Popen(
        list(argv),
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=stderr,
        text=True,
        start_new_session=True,
    )


def communicate_or_kill(proc: subprocess.Popen, timeout: float) -> tuple[str, str, bool]:
    """(stdout, stderr, timed out) of ``proc``; on a time-out its whole session is killed
    first, so that nothing it started is left to disturb later runs."""
    try:
        out, err = proc.communicate(timeout=timeout)
        return out, err, False
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        return out, err, True


def run_py(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root and capture its output.

    On a time-out the whole session (a launcher and the cluster it started) is killed and
    the test fails with the output so far.
    """
    proc = popen_in_session([PYTHON, *with_test_device_unit(args)], clean_env(**env))
    out, err, timed_out = communicate_or_kill(proc, timeout)
    if timed_out:
        raise AssertionError(f"{args} timed out after {timeout} s:\n{out}\n{err}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_launcher(log_dir: str, *flags: str) -> subprocess.Popen:
    """``launch.py <flags> -ld <log_dir>`` running in its own session, output captured."""
    argv = [PYTHON, *with_test_device_unit(["launch.py", *flags]), "-ld", log_dir]
    return popen_in_session(argv, clean_env())


def kill_session(sid: int) -> None:
    """SIGKILL a process and all its descendants (a launcher's children have sessions of
    their own, so killing its session alone would leave them)."""
    try:
        root = psutil.Process(sid)
        family = [root, *root.children(recursive=True)]
    except psutil.NoSuchProcess:
        return
    for proc in family:
        supervision.signal_group(proc.pid, signal.SIGKILL)


def _live(proc: psutil.Process) -> bool:
    try:
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        return _live(psutil.Process(pid))
    except psutil.NoSuchProcess:
        return False


def group_alive(pgid: int) -> bool:
    """True when any live process is in process group ``pgid``."""
    for proc in psutil.process_iter():
        try:
            if os.getpgid(proc.pid) == pgid and _live(proc):
                return True
        except (ProcessLookupError, psutil.NoSuchProcess):
            continue
    return False


def assert_all_gone(pids: dict[str, int]) -> None:
    """No process (nor anything left in its process group) of the run is alive."""
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid) or group_alive(pid)}
    assert not alive, f"processes left behind: {alive}"
