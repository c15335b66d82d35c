"""Shared helpers: run the project's commands as real processes and check what they leave."""

from __future__ import annotations

import json
import os
import signal
import subprocess

import psutil
import pytest

from launcher import supervision
from launcher.supervision import PYTHON, ROOT
from trainer import layout


def clean_env(**extra: str) -> dict[str, str]:
    """The test's environment without cluster variables, one thread per process."""
    return supervision.child_env(1, extra, drop=supervision.CLUSTER_VARS)


# Launches in the tests use this device unit instead of a calibrated one (a probe costs seconds
# a launch, and a calibrated T0 slows a test cluster ~3x); tests of the calibration itself pass
# --emulation or --device-unit, which turns this off. They also evaluate inline unless they say
# --evaluator: the evaluator process costs each launch ~3 s to start (an MXNet import) before
# training; tests/test_device_time.py and tests/test_compare.py run it.
TEST_DEVICE_UNIT = "0.02"


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


def run_py(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root and capture its output.

    The command runs in its own session; on a time-out the whole session (a launcher and the
    cluster it started) is killed, so nothing is left to disturb later tests.
    """
    proc = subprocess.Popen(
        [PYTHON, *with_test_device_unit(args)],
        cwd=ROOT,
        env=clean_env(**env),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        kill_session(proc.pid)
        out, err = proc.communicate()
        raise AssertionError(f"{args} timed out after {timeout} s:\n{out}\n{err}") from None
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def start_launcher(log_dir: str, *flags: str) -> subprocess.Popen:
    """``launch.py <flags> -ld <log_dir>`` running in its own session, output captured."""
    return subprocess.Popen(
        [PYTHON, *with_test_device_unit(["launch.py", *flags]), "-ld", log_dir],
        cwd=ROOT,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


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


def read_rounds(folder: str) -> list[dict]:
    """The records of one worker folder."""
    with open(os.path.join(folder, layout.ROUNDS_NAME)) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def worker_folders(log_dir: str, network: str, mode_dir: str) -> dict[int, str]:
    """rank -> worker folder of one run."""
    found = {}
    for worker in layout.worker_dirs(layout.mode_dir(log_dir, network, mode_dir)):
        with open(worker.meta) as fh:
            found[json.load(fh)["rank"]] = str(worker.path)
    return found


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


def launched_pids(log_dir: str, network: str, mode_dir: str) -> dict[str, int]:
    """The pids launch.py recorded for one run."""
    with open(layout.process_dir(log_dir, network, mode_dir) / layout.PIDS_NAME) as fh:
        return json.load(fh)


def assert_all_gone(pids: dict[str, int]) -> None:
    """No process (nor anything left in its process group) of the run is alive."""
    alive = {name: pid for name, pid in pids.items() if pid_alive(pid) or group_alive(pid)}
    assert not alive, f"processes left behind: {alive}"


@pytest.fixture
def log_dir(tmp_path) -> str:
    path = tmp_path / "logs"
    path.mkdir()
    return str(path)


# --- CI: no silent skips ------------------------------------------------------------------
# With ESYNC_REQUIRE_ALL=1 (.ci/run sets it) a test that skips because this machine lacks a
# capability the project needs (network namespaces, chromium, sshd), or any skip of a test
# marked ``netns``, is reported as a failure with its reason. Other skips, xfails, and runs
# without the variable are unchanged.

REQUIRE_ALL_VAR = "ESYNC_REQUIRE_ALL"
REQUIRED_SKIP_WORDS = ("netns", "namespace", "chromium", "sshd")


def _skip_reason(report: pytest.TestReport) -> str:
    longrepr = report.longrepr
    if isinstance(longrepr, tuple) and len(longrepr) == 3:
        return str(longrepr[2]).removeprefix("Skipped: ")
    return str(longrepr)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> pytest.TestReport:
    report = yield
    if (
        os.environ.get(REQUIRE_ALL_VAR, "") not in ("", "0")
        and report.skipped
        and not hasattr(report, "wasxfail")
    ):
        reason = _skip_reason(report)
        needed = item.get_closest_marker("netns") is not None
        if needed or any(word in reason.lower() for word in REQUIRED_SKIP_WORDS):
            report.outcome = "failed"
            report.longrepr = f"{REQUIRE_ALL_VAR}=1 forbids this skip: {reason}"
    return report
