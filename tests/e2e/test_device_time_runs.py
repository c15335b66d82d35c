"""Device time in real launcher runs: an overloaded device unit reports its overruns, and
the evaluator process keeps evaluation off the device clock (and survives a kill)."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest

from tests.support.processes import run_py, start_launcher
from tests.support.run_logs import read_rounds, worker_folders
from trainer import layout


@pytest.mark.slow
def test_an_overloaded_device_unit_reports_overruns_and_warns(log_dir: str) -> None:
    flags = "--compare local --device-unit 0.0005 --max-time 3 --rounds 100000 -e 0"
    res = run_py(["launch.py", *flags.split(), "--eval-interval", "1", "-ld", log_dir])
    assert res.returncode == 0, res.stdout + res.stderr
    with open(os.path.join(log_dir, "lenet", "local", "summary.json")) as fh:
        summary = json.load(fh)
    (worker,) = summary["workers"]
    assert summary["emulation"] == "device" and summary["device_unit_s"] == 0.0005
    assert worker["overrun_fraction"] > 0.9 and summary["fidelity"] < 0.1
    assert summary["fidelity"] == pytest.approx(1 - worker["overruns"] / worker["local_iterations"])
    warning = summary["fidelity_warnings"][0]
    assert warning.startswith("rank 0 (slowdown 1") and "larger --device-unit" in warning
    assert f"warning: local: {warning}" in res.stderr
    assert "Device time:" in res.stdout and "T0 = 0.50 ms" in res.stdout


def _evaluations(records: list[dict]) -> list[dict]:
    return [r for r in records if "test_acc" in r]


@pytest.mark.slow
def test_the_evaluator_is_off_the_device_clock_and_survives_a_kill(log_dir: str) -> None:
    """A standalone run evaluating every 0.2 s: the evaluations carry their round's device
    time, cost rank 0 almost nothing, and killing the evaluator stops neither training nor
    evaluation (it is started again and the record says it died)."""
    flags = "-m local --compare local --device-unit 0.05 --max-time 9 --rounds 100000 -e 0"
    flags += " --evaluator process"
    proc = start_launcher(log_dir, *flags.split(), "--eval-interval", "0.2", "--dashboard", "0")
    try:
        pid = _evaluator_pid(log_dir, deadline=time.monotonic() + 90)
        time.sleep(3.0)
        os.kill(pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 0, out + err
    log = layout.process_dir(log_dir, "lenet", "local") / "local.log"
    assert "the evaluator process exited with code -9; training goes on" in log.read_text()
    (folder,) = worker_folders(log_dir, "lenet", "local").values()
    records = read_rounds(folder)
    by_round = {r["round"]: r for r in records}
    died = [r for r in records if r.get("evaluator_exit") == -signal.SIGKILL]
    assert len(died) == 1
    evals = _evaluations(records)
    assert [e for e in evals if e["round"] > died[0]["round"]], "no evaluation after the kill"
    for e in evals:  # the answer's row is the device time of the round that was evaluated
        assert e["eval_round"] <= e["round"]
        assert e["eval_time"] == by_round[e["eval_round"]]["time"]
    assert evals[-1]["eval_round"] == records[-1]["round"]  # the final model, evaluated
    # handing a snapshot over costs milliseconds; evaluating the test set inline costs more
    handoffs = [r["eval_s"] for r in records[:-1] if r["eval_s"] > 0]
    assert len(handoffs) >= 10 and sorted(handoffs)[len(handoffs) // 2] < 0.02
    with open(os.path.join(folder, "meta.json")) as fh:
        meta = json.load(fh)
    assert meta["evaluator"] == "process" and meta["evaluator_pid"] == pid


def _evaluator_pid(log_dir: str, deadline: float) -> int:
    while time.monotonic() < deadline:
        for folder in worker_folders(log_dir, "lenet", "local").values():
            with open(os.path.join(folder, "meta.json")) as fh:
                pid = json.load(fh).get("evaluator_pid")
            if pid and read_rounds(folder):
                return pid
        time.sleep(0.2)
    raise AssertionError("the run did not start")
