"""launch.py refuses a device mix that cannot fit on this machine and starts nothing."""

from __future__ import annotations

import os

import pytest

from tests.support.processes import run_py


@pytest.mark.slow
def test_launch_refuses_a_mix_that_cannot_fit_and_starts_nothing(log_dir: str) -> None:
    argv = ["launch.py", "-w", "200", "--slowdowns", "1", "-m", "esync", "--emulation", "device"]
    res = run_py([*argv, "-ld", log_dir])
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot emulate these devices (nothing was started)" in res.stderr
    assert "workers of this mix fit on" in res.stderr and "--device-unit" in res.stderr
    assert os.listdir(log_dir) == []
