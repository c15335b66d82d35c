"""main.py's --failure-timeout, as a scheduler process checks it."""

from __future__ import annotations

from tests.support.processes import run_py


def test_scheduler_rejects_a_bad_failure_timeout() -> None:
    env = {"DMLC_ROLE": "scheduler", "DMLC_NUM_WORKER": "4", "DMLC_NUM_SERVER": "1"}
    env |= {"DMLC_PS_ROOT_URI": "127.0.0.1", "DMLC_PS_ROOT_PORT": "9091"}
    res = run_py(["main.py", "--failure-timeout", "0"], timeout=60, **env)
    assert res.returncode == 2
    assert "argument --failure-timeout: must be a finite number > 0, got 0" in res.stderr
