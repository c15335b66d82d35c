"""A short real ``launch.py --compare`` run: summaries, figures and a consistent report."""

from __future__ import annotations

import json
import os

import pytest

from summary import time_to_target
from tests.support.processes import run_py

pytestmark = pytest.mark.slow

MODES = ("esync", "sync", "local")
# Every mode reaches this accuracy within the run (SSGD's first evaluations are at 0.3-0.4, its
# curve then swings between 0.18 and 0.65 with the summed step), so every speedup to it is defined
# and checked; the final accuracy only has to be well above chance (0.1).
TARGET = 0.3
MIN_FINAL_ACCURACY = 0.15


def _check_device_time(summaries: dict, report: dict, stdout: str, base: str) -> None:
    """Device time: one T0 for every mode, the fidelity and device throughput in every row."""
    units = {summaries[m]["device_unit_s"] for m in MODES}
    assert len(units) == 1 and f"T0 = {units.pop() * 1e3:.2f} ms" in stdout
    assert "devices: device unit T0" in stdout and "workers of this mix fit" in stdout
    for mode in MODES:
        summ, row = summaries[mode], report["modes"][mode]
        assert summ["emulation"] == "device" and 0.0 < summ["fidelity"] <= 1.0
        assert row["fidelity"] == summ["fidelity"] and row["device_throughput"] > 0
        batches = sum(w["local_iterations"] for w in summ["workers"])
        overruns = sum(w["overruns"] for w in summ["workers"])
        assert summ["fidelity"] == pytest.approx(1 - overruns / batches)
    with open(os.path.join(base, "report.md")) as fh:
        assert "fidelity" in stdout and "batches / T0" in fh.read()


def _check_esync_against_the_others(summaries: dict, report: dict, stdout: str) -> None:
    """The speedups, traffic and throughput ratios the report gives for ESync, from the
    summaries; the fast workers' compute ratio above SSGD's."""
    esync_t = report["modes"]["esync"]["time_to_target_s"]
    for other in ("sync", "local"):
        other_t = report["modes"][other]["time_to_target_s"]
        speedup = report["esync_vs"][other]["speedup_to_target"]
        assert speedup == pytest.approx(other_t / esync_t), other
        assert f"{speedup:.2f}x" in stdout, other  # the console table shows it
    vs = report["esync_vs"]["sync"]
    assert vs["traffic_ratio"] == pytest.approx(
        summaries["esync"]["bytes_per_s"] / summaries["sync"]["bytes_per_s"]
    )
    assert vs["throughput_ratio"] == pytest.approx(
        summaries["esync"]["samples_per_s"] / summaries["sync"]["samples_per_s"]
    )
    # the fast ESync workers keep computing while SSGD's fast workers wait for the slow one
    fast = [w for w in summaries["sync"]["workers"] if w["slowdown"] == 1.0]
    assert max(w["compute_time_ratio"] for w in fast) < min(
        w["compute_time_ratio"] for w in summaries["esync"]["workers"] if w["slowdown"] == 1.0
    )


def test_compare_writes_consistent_report(log_dir: str) -> None:
    flags = f"-w 3 --slowdowns 1,1,4 -n lenet --rounds 100000 --max-time 6 -e 3 --target {TARGET}"
    flags += " --emulation device --evaluator process"  # the defaults: T0 probed, evaluator
    res = run_py(
        ["launch.py", "--compare", ",".join(MODES), *flags.split(), "-ld", log_dir]
        + ["--timeout", "120"],
        timeout=400,
    )
    assert res.returncode == 0, res.stdout + res.stderr
    base = os.path.join(log_dir, "lenet")
    for png in ("accuracy_iid.png", "throughput.png", "traffic.png", "compute_ratio.png"):
        with open(os.path.join(base, png), "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", png
    with open(os.path.join(base, "report.json")) as fh:
        report = json.load(fh)
    assert os.path.getsize(os.path.join(base, "report.md")) > 0
    assert report["target"] == TARGET and set(report["modes"]) == set(MODES)
    summaries = {}
    for mode in MODES:
        with open(os.path.join(base, mode, "summary.json")) as fh:
            summaries[mode] = json.load(fh)
        row, summ = report["modes"][mode], summaries[mode]
        assert row["num_workers"] == (1 if mode == "local" else 3)
        assert row["final_accuracy"] == summ["final_accuracy"] > MIN_FINAL_ACCURACY, mode
        assert row["samples_per_s"] == pytest.approx(summ["samples_per_s"])
        assert row["bytes_per_s"] == pytest.approx(summ["bytes_per_s"])
        assert row["min_compute_time_ratio"] == pytest.approx(
            min(w["compute_time_ratio"] for w in summ["workers"])
        )
        assert row["time_to_target_s"] == time_to_target(summ["accuracy"], TARGET)
        assert row["time_to_target_s"] is not None, (mode, summ["accuracy"])
        assert 5.0 <= summ["duration_s"] < 15.0
    _check_device_time(summaries, report, res.stdout, base)
    _check_evaluations(log_dir)
    _check_esync_against_the_others(summaries, report, res.stdout)


def _check_evaluations(log_dir: str) -> None:
    """Rank 0's accuracy rows carry the device time of the round that was evaluated, and
    its evaluation stays out of its compute time and off its clock."""
    from tests.support.run_logs import read_rounds, worker_folders

    for mode in MODES:
        records = read_rounds(worker_folders(log_dir, "lenet", mode)[0])
        by_round = {r["round"]: r for r in records}
        evals = [r for r in records if "test_acc" in r]
        assert evals and evals[-1]["eval_round"] == records[-1]["round"], mode
        for e in evals:
            assert e["eval_time"] == by_round[e["eval_round"]]["time"], (mode, e)
        times = [r["time"] for r in records]
        assert times == sorted(times)
