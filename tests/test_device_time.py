"""Device-time emulation: the device unit's arithmetic, overruns made visible, and the
evaluator process that keeps evaluation off the devices."""

from __future__ import annotations

import json
import os
import signal
import time

import pytest
from conftest import read_rounds, run_py, start_launcher, worker_folders

import config
from trainer import layout
from trainer.calibrate import UnitError, peak_inverse_sum, plan_unit
from trainer.slowdown import Schedule

DEFAULT_MIX = [Schedule.constant(s) for s in (1, 1, 4, 16)]
SIXTEEN = [Schedule.constant(s) for s in (1,) * 4 + (2,) * 4 + (4,) * 4 + (16,) * 4]


def test_the_unit_keeps_the_devices_at_the_configured_share_of_the_cores() -> None:
    plan = plan_unit(0.01, DEFAULT_MIX, cores=2, threads=1, share=0.5)
    # demand = busy x sum(1/S) / T0 = 0.5 x 2 cores: T0 = 0.01 x 2.3125 / 1.0
    assert plan.inverse_sum == pytest.approx(2.3125)
    assert plan.unit_s == pytest.approx(0.01 * 2.3125)
    assert plan.demand == pytest.approx(0.5)
    assert plan.workers_that_fit(4) == 4 and not plan.given
    default = plan_unit(0.01, DEFAULT_MIX, cores=2)
    assert default.demand == pytest.approx(config.DEVICE_CPU_SHARE)
    alone = plan_unit(0.01, [Schedule.constant(1)], cores=4, share=0.5, min_headroom=1.5)
    assert alone.unit_s == pytest.approx(0.015)  # never below the minimum headroom
    assert alone.workers_that_fit(1) == 3  # 3 lone devices at 2/3 of a core each in 2 cores
    threads = plan_unit(0.01, DEFAULT_MIX, cores=2, threads=2, share=0.5)
    assert threads.unit_s == pytest.approx(2 * plan.unit_s)  # twice the cores per device


def test_sixteen_workers_fit_on_two_cores() -> None:
    plan = plan_unit(0.01, SIXTEEN, cores=2)
    assert plan.inverse_sum == pytest.approx(7.25)
    assert plan.headroom == pytest.approx(7.25 / (2 * config.DEVICE_CPU_SHARE))
    assert plan.headroom <= config.DEVICE_MAX_HEADROOM and plan.workers_that_fit(16) == 16
    assert "16 workers of this mix fit" in plan.describe(16)


def test_a_mix_that_cannot_fit_is_refused_unless_the_unit_is_given() -> None:
    many = [Schedule.constant(1)] * 64
    with pytest.raises(UnitError, match="only 12 workers of this mix fit on 2 cores") as err:
        plan_unit(0.01, many, cores=2, share=0.75, max_headroom=8)
    assert "--device-unit" in str(err.value)
    given = plan_unit(0.01, many, cores=2, given=0.02)
    assert given.given and given.unit_s == 0.02 and given.demand == pytest.approx(16.0)


def test_schedules_count_at_their_busiest_moment() -> None:
    swap = [Schedule.parse("1/16@30"), Schedule.parse("4"), Schedule.parse("16/2@10")]
    # t=0: 1 + 1/4 + 1/16; t=10: 1 + 1/4 + 1/2 (the peak); t=30: 1/16 + 1/4 + 1/2
    assert peak_inverse_sum(swap) == pytest.approx(1.75)


@pytest.mark.slow
def test_launch_refuses_a_mix_that_cannot_fit_and_starts_nothing(log_dir: str) -> None:
    argv = ["launch.py", "-w", "200", "--slowdowns", "1", "-m", "esync", "--emulation", "device"]
    res = run_py([*argv, "-ld", log_dir])
    assert res.returncode == 2, res.stdout + res.stderr
    assert "cannot emulate these devices (nothing was started)" in res.stderr
    assert "workers of this mix fit on" in res.stderr and "--device-unit" in res.stderr
    assert os.listdir(log_dir) == []


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
