"""Shared helpers: run the project's commands as real processes and check what they leave."""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PYTHON = sys.executable


def child_env(**extra: str) -> dict[str, str]:
    """The test's environment without DMLC variables, one thread per process."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("DMLC_")}
    env.update(OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_py(args: list[str], timeout: float = 300, **env: str) -> subprocess.CompletedProcess:
    """Run ``python <args>`` from the repo root and capture its output."""
    return subprocess.run(
        [PYTHON, *args],
        cwd=ROOT,
        env=child_env(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def read_rounds(folder: str) -> list[dict]:
    """The records of one worker folder."""
    with open(os.path.join(folder, "rounds.jsonl")) as fh:
        return [json.loads(line) for line in fh if line.strip()]


def worker_folders(log_dir: str, network: str, mode_dir: str) -> dict[int, str]:
    """rank -> worker folder of one run."""
    found = {}
    for folder in glob.glob(os.path.join(log_dir, network, mode_dir, "*", "*-rank*")):
        with open(os.path.join(folder, "meta.json")) as fh:
            found[json.load(fh)["rank"]] = folder
    return found


def pid_alive(pid: int) -> bool:
    """True when ``pid`` exists and is not a zombie."""
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def group_alive(pgid: int) -> bool:
    """True when any live process is in process group ``pgid``."""
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            with open(stat) as fh:
                fields = fh.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if fields[0] != "Z" and int(fields[2]) == pgid:
            return True
    return False


def launched_pids(log_dir: str, network: str, mode_dir: str) -> dict[str, int]:
    """The pids launch.py recorded for one run."""
    with open(os.path.join(log_dir, "processes", network, mode_dir, "pids.json")) as fh:
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
